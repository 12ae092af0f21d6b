"""Input checks for the public API: every bad input is a ValueError that names what was
expected and what came, raised before any network runs."""

from __future__ import annotations

import torch
from torch import Tensor

from .config import DLHConfig


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def check_frames(frames: object, cfg: DLHConfig, *, sequence: bool, name: str = "frames") -> Tensor:
    """frames: (B, T, C, H, W) if `sequence` else (B, C, H, W), floating, finite, in [0, 1]."""
    size, ch = cfg.image_size, cfg.channels
    layout = "(B, T, C, H, W)" if sequence else "(B, C, H, W)"
    if not isinstance(frames, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor {layout}, got {_describe(frames)}")
    rank = 5 if sequence else 4
    if frames.dim() != rank:
        raise ValueError(
            f"{name}: expected a rank-{rank} tensor {layout} with C={ch}, H=W={size}, "
            f"got shape {tuple(frames.shape)}"
        )
    if tuple(frames.shape[-3:]) != (ch, size, size):
        raise ValueError(
            f"{name}: expected {layout} with C={ch}, H=W={size} (channels first), "
            f"got shape {tuple(frames.shape)}"
        )
    if not frames.is_floating_point():
        raise ValueError(
            f"{name}: expected a floating tensor with values in [0, 1], got dtype {frames.dtype} "
            "(convert uint8 frames with frames.float() / 255)"
        )
    if frames.numel() == 0:
        raise ValueError(f"{name}: got an empty tensor of shape {tuple(frames.shape)}")
    finite = torch.isfinite(frames)
    if not bool(finite.all()):
        bad = "NaN" if bool(torch.isnan(frames).any()) else "inf"
        raise ValueError(f"{name}: expected finite values in [0, 1], found {bad}")
    lo, hi = float(frames.min()), float(frames.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name}: expected values in [0, 1], got min {lo:.4g} and max {hi:.4g}")
    return frames


def check_actions(
    actions: object, cfg: DLHConfig, leading: tuple[int, ...], name: str = "actions"
) -> Tensor | None:
    """actions: (*leading, A) floating and finite for an action model; None otherwise."""
    layout = "(" + ", ".join(["B", "T"][: len(leading)] + ["A"]) + ")"
    if cfg.action_dim == 0:
        if actions is not None:
            raise ValueError(
                f"{name}: this model takes no actions (action_dim=0), got {_describe(actions)}; "
                "build it with DLHConfig(action_dim=A) to condition on actions"
            )
        return None
    if actions is None:
        raise ValueError(
            f"{name}: this model takes actions of size A={cfg.action_dim}: expected {layout}, got None"
        )
    if not isinstance(actions, Tensor):
        raise ValueError(f"{name}: expected a tensor {layout}, got {_describe(actions)}")
    expected = (*leading, cfg.action_dim)
    if tuple(actions.shape) != expected:
        raise ValueError(f"{name}: expected shape {expected} {layout}, got {tuple(actions.shape)}")
    if not actions.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor, got dtype {actions.dtype}")
    if not bool(torch.isfinite(actions).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return actions


def check_mask(mask: object, leading: tuple[int, ...], name: str) -> Tensor | None:
    """A bool-like (*leading) tensor (is_first), or None."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name}: expected a bool tensor of shape {leading}, got {_describe(mask)}")
    if tuple(mask.shape) != leading:
        raise ValueError(f"{name}: expected shape {leading}, got {tuple(mask.shape)}")
    if mask.is_floating_point() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name}: expected booleans (0/1), got other values")
    return mask.bool()


def check_targets(x: object, leading: tuple[int, ...], name: str) -> Tensor | None:
    """Per-step scalars (rewards, continues) of shape `leading`, finite; or None."""
    if x is None:
        return None
    if not isinstance(x, Tensor) or tuple(x.shape) != leading:
        raise ValueError(f"{name}: expected a tensor of shape {leading}, got {_describe(x)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return x.float()


def check_horizon(horizon: object) -> int:
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon <= 0:
        raise ValueError(f"horizon: expected a positive int, got {horizon!r}")
    return horizon


__all__ = ["check_frames", "check_actions", "check_mask", "check_targets", "check_horizon"]
