"""What does each level hold? Linear probes from each level's posterior mean to the objects.

For sources that can read their objects off pixels (`SequenceSource.read_objects`; Moving
Ball), fixed test windows are filtered one frame at a time (`DLH.observe_step`) and, per
level n, a least-squares linear map (with bias) is fitted from the posterior mean of s^n_t
to the object's position (x, y in pixels) and to its colour (the palette colour, C values)
on the first half of the sequences; R² is measured on the other half (held-out sequences).
R² ≈ 0: the level holds nothing linearly readable about it; 1: all of it. Frames that show
no object are left out.

    probes = level_probes(model, source)   # None when the source cannot read objects
    probes["level2_colour_r2"], probes["level1_position_r2"]
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..arguments import check_int
from ..data import SequenceSource
from ..model import DLH
from .loading import eval_sequences, evaluating
from .tracking import reads_objects


def linear_r2(features: np.ndarray, target: np.ndarray, train: np.ndarray) -> float:
    """R² on the rows not in `train` of a least-squares fit (with bias) on the `train` rows.

    features (M, F), target (M, D), train (M,) bool. R² pools the D outputs:
    1 − Σ residual² / Σ (y − mean y)² over the held-out rows; NaN when they do not vary.
    """
    x = np.c_[features.astype(np.float64), np.ones(len(features))]
    y = target.astype(np.float64).reshape(len(target), -1)
    test = ~train
    if not train.any() or not test.any():
        return math.nan
    weights, *_ = np.linalg.lstsq(x[train], y[train], rcond=None)
    residual = y[test] - x[test] @ weights
    spread = ((y[test] - y[test].mean(0)) ** 2).sum()
    return float(1 - (residual**2).sum() / spread) if spread > 0 else math.nan


@torch.no_grad()
def level_probes(
    model: DLH, source: SequenceSource, *, sequences: int = 24, length: int = 60, seed: int = 0,
) -> dict[str, float] | None:
    """Per-level linear-probe R² to the objects' position and colour (module docstring).

    Args:
        model: a DLH (its device is used; its train/eval mode is restored afterwards).
        source: the data, with `read_objects` (the test split, as `dlh analyze` uses).
        sequences, length: test windows filtered (`eval_batch` with `seed`); at least 2
            sequences, one half to fit and one to score.
        seed: the windows and the posterior sampling noise; torch's global generator is
            forked, so a caller's random stream is untouched.

    Returns:
        {"level{n}_position_r2", "level{n}_colour_r2"} for n = 1..N, or None.
    """
    sequences = check_int(sequences, "sequences", 2, hint="half to fit, half to score")
    if not reads_objects(source):
        return None
    batch, _ = eval_sequences(source, sequences, length, seed, "probe length")
    if batch.actions is not None:
        raise ValueError("level_probes: the probe filters plain video; this source has actions")
    frames = batch.frames
    objects = source.read_objects(frames)
    if objects is None:
        return None
    b, t = frames.shape[:2]
    means: list[list[torch.Tensor]] = [[] for _ in range(model.config.levels)]
    with evaluating(model, seed):
        state = model.initial_state(b)
        for step in range(t):
            state = model.observe_step(state, frames[:, step].to(model.device))
            for n, mean in enumerate(state.mean):
                means[n].append(mean.float().cpu())
    visible = objects.visible.reshape(-1)  # (B·T,) rows in (sequence, step) order
    train = (np.arange(b * t) < (b // 2) * t)[visible]
    position = objects.centroid.reshape(b * t, 2)[visible]
    colour = objects.palette[objects.colour.reshape(-1)[visible]]  # (M, C)
    out: dict[str, float] = {}
    for n, steps in enumerate(means, start=1):
        level = torch.stack(steps, 1).reshape(b * t, -1).numpy()[visible]
        out[f"level{n}_position_r2"] = linear_r2(level, position, train)
        out[f"level{n}_colour_r2"] = linear_r2(level, colour, train)
    return out


__all__ = ["level_probes", "linear_r2"]
