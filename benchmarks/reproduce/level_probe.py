"""What does each level hold? Linear probes from each level's posterior mean to the ball's
position and colour (Moving Ball), read off the frames.

    python benchmarks/reproduce/level_probe.py runs/x8/copy_s0 [--checkpoint step_00001200]

24 test windows of 60 frames filtered with `observe_step`; the ball's centroid and mean colour
come from the frame's non-black pixels; least squares on the first half of the steps, R² on the
second half (R² ≈ 0: the level holds nothing linearly readable about it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from worldmodel.evaluation.loading import eval_sequences, evaluation_source, resolve


def r2(x: np.ndarray, y: np.ndarray) -> float:
    x1 = np.c_[x, np.ones(len(x))]
    half = len(x) // 2
    w, *_ = np.linalg.lstsq(x1[:half], y[:half], rcond=None)
    residual = y[half:] - x1[half:] @ w
    return float(1 - (residual**2).sum() / ((y[half:] - y[half:].mean(0)) ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    resolved = resolve(run / "checkpoints" / args.checkpoint if args.checkpoint else run)
    model = resolved.model
    source, _ = evaluation_source(resolved.data)
    batch, _ = eval_sequences(source, 24, 60, 0)
    frames = batch.frames
    b, t = frames.shape[:2]
    state, means = model.initial_state(b), []
    with torch.no_grad():
        for step in range(t):
            state = model.observe_step(state, frames[:, step])
            means.append([m.clone() for m in state.mean])
    pixels = frames.permute(0, 1, 3, 4, 2).reshape(b * t, frames.shape[3], frames.shape[4], -1).numpy()
    ball = pixels.sum(-1) > 0.5
    ys, xs = np.mgrid[: pixels.shape[1], : pixels.shape[2]]
    colour = np.array([p[m].mean(0) if m.any() else np.zeros(p.shape[-1]) for p, m in zip(pixels, ball)])
    position = np.array([[ys[m].mean(), xs[m].mean()] if m.any() else [0.0, 0.0] for m in ball])
    print(resolved.model_file)
    for n in range(model.config.levels):
        level = torch.stack([m[n] for m in means], 1).reshape(b * t, -1).numpy()
        print(f"level {n + 1}: R² position {r2(level, position):.3f}  R² colour {r2(level, colour):.3f}")


if __name__ == "__main__":
    main()
