"""Open-loop tracking of a run's last checkpoints, averaged: the issue-24 read-out.

    python benchmarks/reproduce/track_checkpoints.py runs/a runs/b            # one markdown row each
    python benchmarks/reproduce/track_checkpoints.py runs/a --e-mode          # level changes at their mode

`worldmodel.evaluation.tracking.tracking_scores` (128 test windows, context 10, horizon 30, best
of 10 samples, seed 0) on each of the run's last `--last` checkpoints; the row gives the mean
over them of the error at +1 / +5 / +10 / +20 / +30 px, the +10 error of each checkpoint (one
checkpoint moves by up to 0.8 px from the next, so a single one cannot rank candidates), the +10
/ +30 of one rollout with every Gaussian draw at its mean and e^n at its mode, and colour kept.
`--e-mode`: also best of 10 with e^n at its mode (p > 0.5) instead of sampled, for the run's
final model (`model.safetensors`). `--each`: a learning curve instead — one row per checkpoint
(`--last 0`: all the run keeps; train with `--set logging.keep_checkpoints=N`), with the
wall time from the run's start to each checkpoint.

    python benchmarks/reproduce/track_checkpoints.py runs/long --each --last 0
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import torch

from worldmodel import load
from worldmodel.distributions import Gaussian
from worldmodel.evaluation.context import evaluation_source
from worldmodel.evaluation.tracking import tracking_scores
from worldmodel.training.config import load_config

AT = (1, 5, 10, 20, 30)


def scores(model, source, samples: int, sequences: int, *, at_mean: bool = False, sample_e: bool = True):
    """`tracking_scores` of `model`, its rollouts drawn as asked (the model's imagine is patched)."""
    model.imagine = functools.partial(type(model).imagine, model, sample_e=sample_e and not at_mean)
    real = Gaussian.rsample
    if at_mean:
        Gaussian.rsample = lambda self, generator=None: self.mean
    try:
        return tracking_scores(model, source, sequences=sequences, samples=samples, seed=0)
    finally:
        Gaussian.rsample = real
        del model.imagine


def wall_minutes(run: Path, step: int) -> str:
    """Wall time from the run's start (its config.yaml, written first) to the checkpoint of `step`
    (its model file), in minutes: training and the periodic probes, on whatever machine and load
    the run had; wrong for a run resumed after a pause."""
    checkpoint = run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"
    try:
        return f"{(checkpoint.stat().st_mtime - (run / 'config.yaml').stat().st_mtime) / 60:.1f}"
    except OSError:
        return "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--last", type=int, default=3, help="checkpoints averaged")
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--e-mode", action="store_true")
    parser.add_argument("--each", action="store_true", help="one row per checkpoint (a learning curve)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in map(Path, args.runs):
        source = evaluation_source(load_config(run / "config.yaml").data)[0]
        checkpoints = sorted((run / "checkpoints").glob("step_*"))[-args.last:]
        if args.each:
            print(f"{run.name}\n| step | wall min | +1 / +5 / +10 / +20 / +30 px (best of 10) "
                  "| at the mean +10 / +30 | colour kept |\n|---|---|---|---|---|")
        best, mean = [], []
        for checkpoint in checkpoints:
            model = load(checkpoint / "model.safetensors")
            model.eval()
            model.hierarchy.step_mode = "eager"  # the fused step draws its own noise
            sampled = scores(model, source, 10, args.sequences)
            at_mean = scores(model, source, 1, args.sequences, at_mean=True)
            best.append([sampled[f"centroid_px_at{k}"] for k in AT] + [sampled["colour_kept"]])
            mean.append([at_mean[f"centroid_px_at{k}"] for k in AT])
            if args.each:
                step = int(checkpoint.name.split("_")[1])
                print(f"| {step:,} | {wall_minutes(run, step)} | "
                      + " / ".join(f"{x:.2f}" for x in best[-1][:5])
                      + f" | {mean[-1][2]:.2f} / {mean[-1][4]:.2f} | {best[-1][5]:.2f} |", flush=True)
        if args.each:
            continue
        b, m = np.array(best), np.array(mean)
        steps = ", ".join(c.name.split("_")[1].lstrip("0") for c in checkpoints)
        print(f"| {run.name} | {steps} | " + " / ".join(f"{x:.2f}" for x in b[:, :5].mean(0))
              + " | " + " / ".join(f"{x:.2f}" for x in b[:, 2])
              + f" | {m[:, 2].mean():.2f} / {m[:, 4].mean():.2f} | {b[:, 5].mean():.2f} |", flush=True)
        if args.e_mode:
            model = load(run / "model.safetensors")
            model.eval()
            for sample_e in (True, False):
                s = scores(model, source, 10, args.sequences, sample_e=sample_e)
                print(f"  {run.name}, e {'sampled' if sample_e else 'at its mode'}: "
                      + " / ".join(f"{s[f'centroid_px_at{k}']:.2f}" for k in AT)
                      + f", colour kept {s['colour_kept']:.2f}", flush=True)


if __name__ == "__main__":
    main()
