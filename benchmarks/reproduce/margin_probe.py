"""Level-2 event scores of a trained model when eq. 4's decision margin is changed after training.

    python benchmarks/reproduce/margin_probe.py runs/x8/copy_s0 --margins 0 10 30 100
    python benchmarks/reproduce/margin_probe.py runs/x8/copy_s0 --checkpoint step_00001600 --margins 0 30

Same weights, only `model.decision_margin` changes (nats the change component must win by);
64 fresh test windows of 100 frames (the windows of `dlh analyze --seed 0`). A diagnostic of how
far apart true changes and drift lie in KL, not a training recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from worldmodel.evaluation.events import level_event_scores
from worldmodel.evaluation.loading import eval_sequences, evaluation_source, resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--checkpoint", default=None, help="name under RUN/checkpoints (default: latest)")
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 10.0, 30.0, 100.0])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--length", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    resolved = resolve(run / "checkpoints" / args.checkpoint if args.checkpoint else run)
    model = resolved.model
    source, _ = evaluation_source(resolved.data)
    batch, truth = eval_sequences(source, args.sequences, args.length, 0)
    if truth is None:
        raise SystemExit(f"{resolved.data.name} supplies no change flags")
    base = model.hierarchy.cfg
    print(resolved.model_file)
    for margin in args.margins:
        model.hierarchy.cfg = base.replace(decision_margin=margin)
        torch.manual_seed(0)
        with torch.no_grad():
            changed = torch.cat([model.observe(batch.frames[i:i + 16]).changed
                                 for i in range(0, args.sequences, 16)])
        r = level_event_scores(changed, truth)["level2"]
        ex = r["exact"]
        print(f"margin {margin:6.1f} nats: F1 {ex['f1']:.3f}  precision {ex['precision']:.3f}  "
              f"recall {ex['recall']:.3f}  (±1: {r['tol1']['f1']:.3f})  change rate {r['change_rate']:.3f}")


if __name__ == "__main__":
    main()
