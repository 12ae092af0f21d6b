"""Is SSIM on Moving Ball measuring the ball or the background? One open-loop sample per test
window; per model: mean predicted intensity where the truth is background, SSIM/PSNR as is,
and SSIM/PSNR after zeroing predicted pixels below a threshold (a faint-background filter).

    python benchmarks/reproduce/background.py RUN [RUN ...] --threshold 0.05
"""

from __future__ import annotations

import argparse

import torch

from worldmodel.evaluation.loading import eval_sequences, evaluation_source, resolve
from worldmodel.metrics import psnr, ssim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--context", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=50)
    ap.add_argument("--threshold", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"| run | mean predicted background | SSIM | SSIM, pred < {args.threshold} zeroed | PSNR "
          f"| PSNR, zeroed |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        r = resolve(run)
        source, _ = evaluation_source(r.data)
        batch, _ = eval_sequences(source, args.sequences, args.context + args.horizon, args.seed)
        frames = batch.frames
        torch.manual_seed(args.seed)
        with torch.no_grad():
            state = r.model.observe(frames[:, :args.context]).state
            traj = r.model.imagine(state, args.horizon)
            pred = r.model.decode(traj).flatten(0, 1)  # (B·horizon, C, H, W)
        truth = frames[:, args.context:].flatten(0, 1)
        background = truth.max(1, keepdim=True).values < args.threshold  # (N, 1, H, W)
        bg = pred.mean(1, keepdim=True)[background].mean()
        zeroed = torch.where(pred < args.threshold, torch.zeros_like(pred), pred)
        print(f"| {run} | {bg:.4f} | {ssim(pred, truth).mean():.3f} | {ssim(zeroed, truth).mean():.3f} "
              f"| {psnr(pred, truth).mean():.2f} | {psnr(zeroed, truth).mean():.2f} |")


if __name__ == "__main__":
    main()
