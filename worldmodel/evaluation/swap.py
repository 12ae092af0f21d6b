"""Which level does the frame follow? The swap test of level usage.

Fixed test windows are filtered (`DLH.observe`); their final states are paired, sequence A
(the first half of the windows) with sequence B (the second half). For each level n >= 2 the
frame is decoded from A's levels below n under B's levels n..N: the top-down pass (eq. 11)
recomputed from the top with the posterior means s^m of A for m < n and of B for m >= n,
then the image decoder. Posterior means, not samples, so the test measures what each level
holds, not its noise.

- `level{n}_pixel_share` (any data): Σ‖swap − recon_A‖² / Σ‖recon_B − recon_A‖² over the
  pairs, recon_X the frame decoded from X's own means. 0: the frame ignores levels n..N
  (they hold nothing the decoder uses); 1: the frame is B's (levels below n hold nothing).
- For sources that read their objects off pixels (`read_objects`; Moving Ball), on the pairs
  whose true last-frame colours differ (both objects visible): `level{n}_colour_upper`, the
  fraction whose swapped ball has B's colour (the colour lives in levels n..N);
  `level{n}_colour_lower`, A's colour (it lives below n); the rest show another colour or no
  ball. `level{n}_position_px`: the median distance of the swapped ball from A's true
  centroid (the position stays below n when small), `level{n}_position_upper_px` from B's.

    usage = level_usage(model, source)       # swap shares and, for Moving Ball, colour/position
    usage["level2_colour_upper"], usage["level2_pixel_share"]
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..arguments import check_int
from ..data import SequenceSource
from ..model import DLH
from ..state import HierarchicalState
from .loading import eval_sequences, evaluating
from .tracking import reads_objects


def decode_means(model: DLH, means: list[Tensor]) -> Tensor:
    """Frames (B, C, H, W) decoded from per-level posterior means (B, S_n), top-down from level N."""
    hierarchy = model.hierarchy
    levels = len(means)
    top_down = [torch.zeros(m.shape[0], model.config.c_dim, device=m.device, dtype=m.dtype) for m in means]
    _, top_down = hierarchy.decode_from(levels, list(means), top_down)
    return model.decoder(top_down[0])


def swap_frames(model: DLH, lower: HierarchicalState, upper: HierarchicalState, level: int) -> Tensor:
    """Frames decoded from `lower`'s means below 1-based `level` and `upper`'s from `level` up.

    lower, upper: states of the same batch size. Returns (B, C, H, W), not clamped.
    """
    if not 1 <= level <= lower.levels:
        raise ValueError(f"level: expected 1..{lower.levels}, got {level}")
    if lower.batch_size != upper.batch_size:
        raise ValueError(f"swap_frames: batch sizes differ ({lower.batch_size} vs {upper.batch_size})")
    means = [lower.mean[i] if i + 1 < level else upper.mean[i] for i in range(lower.levels)]
    return decode_means(model, means)


def pixel_share(swapped: Tensor, recon_lower: Tensor, recon_upper: Tensor) -> float:
    """Σ‖swapped − lower‖² / Σ‖upper − lower‖² over the batch (NaN when the two do not differ)."""
    moved = (swapped - recon_lower).double().square().sum()
    spread = (recon_upper - recon_lower).double().square().sum()
    return float(moved / spread) if float(spread) > 0 else math.nan


@torch.no_grad()
def level_usage(
    model: DLH, source: SequenceSource, *, sequences: int = 256, length: int = 20, seed: int = 0,
) -> dict[str, float]:
    """The swap test for every level n >= 2 (module docstring).

    Args:
        model: a DLH with at least 2 levels (its train/eval mode is restored afterwards).
        source: the data (the test split, as `dlh analyze` uses); actions are used when it has them.
        sequences: windows filtered; pairs = sequences // 2 (at least 2 windows).
        length: frames per window: the swap reads the state after the last one.
        seed: the windows and the filtering noise; torch's global generator is forked.

    Returns:
        {"swap_pairs", "level{n}_pixel_share"} and, for sources with `read_objects`,
        {"swap_scored", "level{n}_colour_upper", "level{n}_colour_lower",
        "level{n}_position_px", "level{n}_position_upper_px"} for n = 2..N.
    """
    sequences = check_int(sequences, "sequences", 2, hint="one pair needs two windows")
    length = check_int(length, "length", 1)
    if model.config.levels < 2:
        raise ValueError("level_usage: the swap test needs a model with at least 2 levels")
    batch, _ = eval_sequences(source, sequences, length, seed, "swap length")
    half = sequences // 2
    with evaluating(model, seed):
        frames = batch.frames[: 2 * half].to(model.device)
        actions = batch.actions[: 2 * half].to(model.device) if batch.actions is not None else None
        state = model.observe(frames, actions).state
        a, b = state.index(slice(0, half)), state.index(slice(half, 2 * half))
        recon_a, recon_b = decode_means(model, a.mean), decode_means(model, b.mean)
        swaps = {n: swap_frames(model, a, b, n) for n in range(2, model.config.levels + 1)}
    out: dict[str, float] = {"swap_pairs": float(half)}
    for n, frames_n in swaps.items():
        out[f"level{n}_pixel_share"] = pixel_share(frames_n, recon_a, recon_b)
    if not reads_objects(source):
        return out
    last = batch.frames[: 2 * half, -1:]  # (2·half, 1, C, H, W) the true last frames
    truth = source.read_objects(last)
    if truth is None:
        return out
    ta, tb = truth.colour[:half, 0], truth.colour[half:, 0]
    scored = truth.visible[:half, 0] & truth.visible[half:, 0] & (ta != tb)
    out["swap_scored"] = float(scored.sum())
    for n, frames_n in swaps.items():
        seen = source.read_objects(frames_n.clamp(0, 1).unsqueeze(1).cpu())
        colour = seen.colour[:, 0]
        pos = seen.centroid[:, 0]
        if scored.any():
            out[f"level{n}_colour_upper"] = float((colour[scored] == tb[scored]).mean())
            out[f"level{n}_colour_lower"] = float((colour[scored] == ta[scored]).mean())
        else:
            out[f"level{n}_colour_upper"] = out[f"level{n}_colour_lower"] = math.nan
        visible = seen.visible[:, 0] & truth.visible[:half, 0] & truth.visible[half:, 0]
        if visible.any():
            to_a = np.linalg.norm(pos[visible] - truth.centroid[:half, 0][visible], axis=-1)
            to_b = np.linalg.norm(pos[visible] - truth.centroid[half:, 0][visible], axis=-1)
            out[f"level{n}_position_px"] = float(np.median(to_a))
            out[f"level{n}_position_upper_px"] = float(np.median(to_b))
        else:
            out[f"level{n}_position_px"] = out[f"level{n}_position_upper_px"] = math.nan
    return out


def format_usage(usage: dict[str, float]) -> str:
    """One line per level n >= 2: pixel share and, where measured, colour and position."""
    lines = []
    n = 2
    while f"level{n}_pixel_share" in usage:
        line = f"level {n}..N swapped in: pixel share {usage[f'level{n}_pixel_share']:.3f}"
        if f"level{n}_colour_upper" in usage:
            line += (f", colour follows it on {usage[f'level{n}_colour_upper']:.0%} of "
                     f"{int(usage['swap_scored'])} pairs "
                     f"(stays below on {usage[f'level{n}_colour_lower']:.0%}), "
                     f"ball {usage[f'level{n}_position_px']:.2f} px from the lower sequence's "
                     f"({usage[f'level{n}_position_upper_px']:.2f} from the upper's)")
        lines.append(line)
        n += 1
    return "\n".join(lines)


__all__ = ["level_usage", "swap_frames", "decode_means", "pixel_share", "format_usage"]
