"""Decision bench: score eq. 4 decision rules on the fixed weights of a trained run, in seconds.

    python benchmarks/reproduce/decision_bench.py runs/quick --rules paper margin:30 relative:2
    python benchmarks/reproduce/decision_bench.py runs/quick --checkpoint step_00000800 --json out.json

Only the rule that turns a candidate posterior q'(s^n) and the two mixture components into e^n
changes; the weights do not. For each rule, filtering runs on 64 fresh test windows of 100 frames
(the windows of `dlh analyze --seed 0`) and the level-2 flags are scored against the data's true
changes (Moving Ball's colour): precision / recall / F1 exact and ±1 step, the change rate, L̄;
and the loss runs on the same windows under the rule (the negative ELBO per frame and its terms)
— what training with that rule would be optimising at these weights. Statistics a rule needs (a
running mean and spread) come from a calibration pass with the paper's rule on other windows
(`--seed 1`), as a running estimate would see them in training.

Rules (name[:parameter]), each a `model.decision` setting of the library:
  paper           eq. 4: the nearer component wins (`decision: kl`).
  margin:M        the change component must win by M nats (`decision_margin`).
  map             the learned prior odds join the rule (`decision: map`).
  tolerant:C      `decision: tolerant`, `decision_tolerance: C` (the static std widened by C
                  drift scales for the decision only).
  relative:G      `decision: relative`, `decision_gamma: G` (eq. 4 and log KL_static G running
                  standard deviations above its running mean).
The running statistics of `tolerant`/`relative` come from a calibration pass in training mode
(eq. 4 deciding, as during `decision_warmup`) over 32 other windows (`--seed 1`); they are frozen
for the scored pass, as in evaluation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from worldmodel.decisions import RUNNING_RULES, describe, initial_stats
from worldmodel.evaluation.events import level_event_scores
from worldmodel.evaluation.loading import eval_sequences, evaluation_source, resolve


def rule_config(base, spec: str):
    """The model config of a rule spec (see the module docstring)."""
    name, _, value = spec.partition(":")
    x = float(value) if value else None

    def rule(**changes):
        return base.replace(inference=base.inference.replace(**changes))

    if name == "paper":
        return rule(decision="kl", decision_margin=0.0)
    if name == "margin":
        return rule(decision="kl", decision_margin=x)
    if name == "map":
        return rule(decision="map", decision_margin=0.0)
    if name == "tolerant":
        return rule(decision="tolerant", decision_tolerance=x, decision_margin=0.0, decision_warmup=0)
    if name == "relative":
        return rule(decision="relative", decision_gamma=x, decision_margin=0.0, decision_warmup=0)
    raise SystemExit(f"unknown rule {spec!r}; expected paper, margin:M, map, tolerant:C or relative:G")


def calibrate(model, cfg, frames, chunk: int = 32) -> None:
    """Fill the levels' running statistics of rule `cfg.inference.decision` from `frames` (the training
    loss in training mode, without gradients, eq. 4 deciding), starting from scratch."""
    hierarchy = model.hierarchy
    for level in list(hierarchy.levels)[1:]:
        level.decision_stats = initial_stats(level.s_dim)
    hierarchy.cfg = cfg.replace(inference=cfg.inference.replace(decision_warmup=10**9, decision_rate=0.05))
    model.train()
    try:
        with torch.no_grad():
            for i in range(0, len(frames), chunk):
                torch.manual_seed(i)
                model.loss(frames[i:i + chunk])  # the training objective moves the statistics
    finally:
        model.eval()
        hierarchy.cfg = cfg


def scored(model, frames, chunk: int = 16):
    """observe + loss over `frames` in chunks (eval mode): (changed, mean metrics per frame)."""
    changed, sums, count = [], {}, 0
    for i in range(0, len(frames), chunk):
        part = frames[i:i + chunk]
        torch.manual_seed(i)
        with torch.no_grad():
            changed.append(model.observe(part).changed)
            _, metrics = model.loss(part, beta=1.0)
        for key in ("loss", "recon", "kl", "factor_kl"):
            sums[key] = sums.get(key, 0.0) + metrics[key] * len(part)
        count += len(part)
    return torch.cat(changed), {k: v / count for k, v in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--checkpoint", default=None, help="name under RUN/checkpoints (default: latest)")
    parser.add_argument("--rules", nargs="+", default=["paper", "map", "margin:10", "margin:30",
                                                       "tolerant:1", "tolerant:2", "tolerant:4",
                                                       "relative:1", "relative:2", "relative:3"])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    resolved = resolve(run / "checkpoints" / args.checkpoint if args.checkpoint else run)
    model = resolved.model
    source, _ = evaluation_source(resolved.data)
    batch, truth = eval_sequences(source, args.sequences, args.length, 0)
    calib, _ = eval_sequences(source, 32, args.length, 1)
    if truth is None:
        raise SystemExit(f"{resolved.data.name} supplies no change flags")
    base = model.hierarchy.cfg
    print(resolved.model_file)
    rows = []
    print(f"{'rule':>14} {'F1':>6} {'P':>6} {'R':>6} {'F1±1':>6} {'rate':>6} {'L̄':>6} "
          f"{'-ELBO':>9} {'recon':>9} {'KL':>7} {'fKL':>6}")
    for spec in args.rules:
        cfg = rule_config(base, spec)
        model.hierarchy.cfg = cfg
        for level in list(model.hierarchy.levels)[1:]:
            level.decision_stats = None
        note = ""
        if cfg.inference.decision in RUNNING_RULES:
            calibrate(model, cfg, calib.frames)
            d = describe(model.hierarchy.levels[1].decision_stats)
            note = (f"  [level 2: median KL_static {d['kl_median']:.1f} nats, log std "
                    f"{d['log_kl_std']:.2f}, drift RMS {d['drift_rms']:.4f}]")
        changed, metrics = scored(model, batch.frames)
        r = level_event_scores(changed, truth)["level2"]
        ex = r["exact"]
        lbar = float(changed.float().sum(-1).mean())
        row = {"rule": spec, "f1": ex["f1"], "precision": ex["precision"], "recall": ex["recall"],
               "f1_tol1": r["tol1"]["f1"], "change_rate": r["change_rate"], "levels_used": lbar,
               **metrics}
        rows.append(row)
        print(f"{spec:>14} {ex['f1']:6.3f} {ex['precision']:6.3f} {ex['recall']:6.3f} "
              f"{r['tol1']['f1']:6.3f} {r['change_rate']:6.3f} {lbar:6.3f} {metrics['loss']:9.1f} "
              f"{metrics['recon']:9.1f} {metrics['kl']:7.2f} {metrics['factor_kl']:6.3f}{note}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
