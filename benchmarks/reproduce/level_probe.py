"""What does each level hold? Linear probes from each level's posterior mean to the ball's
position and colour (Moving Ball), read off the frames.

    python benchmarks/reproduce/level_probe.py runs/x8/copy_s0 [--checkpoint step_00001200]

A thin wrapper of `worldmodel.evaluation.probes.level_probes`: 24 test windows of 60 frames
filtered with `observe_step`; the ball's centroid and palette colour come from
`SequenceSource.read_objects`; least squares on the first half of the sequences, R² on the
other half (R² ≈ 0: the level holds nothing linearly readable about it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from worldmodel.evaluation.loading import evaluation_source, resolve
from worldmodel.evaluation.probes import level_probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--sequences", type=int, default=24)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    resolved = resolve(run / "checkpoints" / args.checkpoint if args.checkpoint else run)
    source, _ = evaluation_source(resolved.data)
    probes = level_probes(resolved.model, source, sequences=args.sequences, length=args.length,
                          seed=args.seed)
    print(resolved.model_file)
    if probes is None:
        print(f"{resolved.data.name}: the data set cannot read its objects off the frames; no probes")
        return
    for n in range(1, resolved.model.config.levels + 1):
        print(f"level {n}: R² position {probes[f'level{n}_position_r2']:.3f}  "
              f"R² colour {probes[f'level{n}_colour_r2']:.3f}")


if __name__ == "__main__":
    main()
