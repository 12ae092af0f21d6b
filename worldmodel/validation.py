"""Input checks for the public API: every bad input is a ValueError that names what was
expected and what came, raised before any network runs.

Floating inputs of another float dtype than the model's (float64 from NumPy, float16, ...)
are accepted and converted to the model's dtype after their values are checked; inputs on
another device than the model's are an error (moving them silently would hide a copy).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import fields

import torch
from torch import Tensor

from .arguments import check_int
from .config import DLHConfig
from .state import HierarchicalState, Trajectory


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def _check_device(x: Tensor, device: torch.device | None, name: str) -> None:
    """`x` dense (strided) and on `device`, else a ValueError naming it (before any value check:
    a sparse tensor fails deep in torch's kernels)."""
    if x.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense tensor, got a {str(x.layout).replace('torch.', '')} one "
                         "(call .to_dense())")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected a tensor on the model's device {device}, got one on {x.device}")


def _as_model_float(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def check_frames(
    frames: object,
    cfg: DLHConfig,
    *,
    sequence: bool,
    name: str = "frames",
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """frames: (B, T, C, H, W) if `sequence` else (B, C, H, W), floating, finite, in [0, 1].

    A floating tensor of another dtype (e.g. float64 from `torch.from_numpy(x / 255.)`) is
    returned converted to `dtype`; integer frames are an error (values in 0..255 are not in
    [0, 1]).
    """
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
    _check_device(frames, device, name)
    if frames.numel() == 0:
        raise ValueError(f"{name}: got an empty tensor of shape {tuple(frames.shape)}")
    finite = torch.isfinite(frames)
    if not bool(finite.all()):
        bad = "NaN" if bool(torch.isnan(frames).any()) else "inf"
        raise ValueError(f"{name}: expected finite values in [0, 1], found {bad}")
    lo, hi = float(frames.min()), float(frames.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name}: expected values in [0, 1], got min {lo:.4g} and max {hi:.4g}")
    return _as_model_float(frames, dtype)


def check_actions(
    actions: object,
    cfg: DLHConfig,
    leading: tuple[int, ...],
    name: str = "actions",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """actions: (*leading, A) floating and finite for an action model (converted to `dtype`);
    None for a model without actions."""
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
    _check_device(actions, device, name)
    if not bool(torch.isfinite(actions).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return _as_model_float(actions, dtype)


def _check_binary(x: Tensor, name: str) -> None:
    if x.dtype != torch.bool and not bool(((x == 0) | (x == 1)).all()):
        odd = x[(x != 0) & (x != 1)].flatten()[0].item()
        raise ValueError(f"{name}: expected booleans (0/1 or True/False), got the value {odd!r}")


def check_mask(
    mask: object, leading: tuple[int, ...], name: str, *, device: torch.device | None = None
) -> Tensor | None:
    """A bool-like (*leading) tensor (is_first) holding only 0/1, as bool; or None."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name}: expected a bool tensor of shape {leading}, got {_describe(mask)}")
    if tuple(mask.shape) != leading:
        raise ValueError(f"{name}: expected shape {leading}, got {tuple(mask.shape)}")
    _check_device(mask, device, name)
    _check_binary(mask, name)
    return mask.bool()


def check_targets(
    x: object,
    leading: tuple[int, ...],
    name: str,
    *,
    binary: bool = False,
    device: torch.device | None = None,
) -> Tensor | None:
    """Per-step scalars (rewards; continues with `binary`, 0/1 only) of shape `leading`,
    finite, as float32; or None."""
    if x is None:
        return None
    if not isinstance(x, Tensor) or tuple(x.shape) != leading:
        raise ValueError(f"{name}: expected a tensor of shape {leading}, got {_describe(x)}")
    if x.is_complex():
        raise ValueError(f"{name}: expected real values, got dtype {x.dtype}")
    _check_device(x, device, name)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    if binary:
        _check_binary(x, name)
    return x.float()


def check_horizon(horizon: object) -> int:
    """A positive int (a NumPy integer too), as an int."""
    return check_int(horizon, "horizon", 1)


def check_weight(value: object, name: str) -> float:
    """A loss weight (β): a finite real number >= 0 (not a bool), as a float."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:  # type: ignore[arg-type]
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


_STATE_FLOATS = ("s", "mean", "std", "d", "top_down", "factor")  # per-level float fields


def _converted_state(state: HierarchicalState, dtype: torch.dtype | None, name: str) -> HierarchicalState:
    """`state` with its float tensors in the model's `dtype`, checked for NaN/inf in one pass.

    A float field of another dtype (float64 from NumPy, ...) is converted as frames are, except
    the autocast dtype inside an autocast region (a state filtered under autocast keeps it).
    """
    if state.pending.dtype != torch.bool:
        raise ValueError(f"{name}.pending: expected a bool tensor, got dtype {state.pending.dtype}")
    if state.t.dtype.is_floating_point or state.t.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise ValueError(f"{name}.t: expected an integer tensor (steps), got dtype {state.t.dtype}")
    autocast: torch.dtype | None = None
    if torch.is_autocast_enabled(state.t.device.type):
        autocast = torch.get_autocast_dtype(state.t.device.type)
    values: dict[str, list[Tensor]] = {}
    for key in _STATE_FLOATS:
        values[key] = []
        for n, x in enumerate(getattr(state, key)):
            if not x.is_floating_point():
                raise ValueError(f"{name}.{key} of level {n + 1}: expected a floating tensor, "
                                 f"got dtype {x.dtype}")
            if dtype is not None and x.dtype not in (dtype, autocast):
                x = x.to(dtype)
            values[key].append(x)
    tensors = [x for key in _STATE_FLOATS for x in values[key] if x.numel()]
    if tensors and not bool(torch.stack([torch.isfinite(x).all() for x in tensors]).all()):  # one sync
        for key in _STATE_FLOATS:
            for n, x in enumerate(values[key]):
                if not bool(torch.isfinite(x).all()):
                    bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
                    raise ValueError(f"{name}.{key} of level {n + 1}: expected finite values, found {bad} "
                                     "(a state changed in place, or filtered from non-finite input?)")
    return HierarchicalState(**values, pending=state.pending, t=state.t)


def check_state(
    state: object,
    cfg: DLHConfig,
    factor_sizes: list[int],
    batch: int | None = None,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    name: str = "state",
) -> HierarchicalState:
    """A HierarchicalState that fits the model of `cfg` (levels, |s|, |d|, |c|, factor widths)
    with `batch` rows (any batch if None), on `device`, with finite values.

    Returns the state with float fields of another dtype converted to `dtype` (as frames are);
    the checks cost one device sync per call, not one per tensor.
    """
    if not isinstance(state, HierarchicalState):
        raise ValueError(f"{name}: expected a HierarchicalState, got {_describe(state)}")
    levels = cfg.levels
    for f in fields(state):
        value = getattr(state, f.name)
        if isinstance(value, list) and len(value) != levels:
            raise ValueError(
                f"{name}: expected {levels} levels (the model's), got {len(value)} in state.{f.name}"
            )
        for x in value if isinstance(value, list) else [value]:
            if not isinstance(x, Tensor):
                raise ValueError(f"{name}.{f.name}: expected tensors, got {_describe(x)}")
            _check_device(x, device, f"{name}.{f.name}")
    if state.t.dim() != 1:
        raise ValueError(f"{name}.t: expected shape (B,), got {tuple(state.t.shape)}")
    rows = state.batch_size
    if batch is not None and rows != batch:
        raise ValueError(f"{name}: expected batch {batch} (the input's rows), got a state of batch {rows}")
    s_dims = [cfg.level_s_dim(n) for n in range(1, levels + 1)]
    d_dims = [cfg.level_d_dim(n) for n in range(1, levels + 1)]
    widths = {"s": ("s_dim", s_dims), "mean": ("s_dim", s_dims), "std": ("s_dim", s_dims),
              "d": ("d_dim", d_dims), "top_down": ("c_dim", [cfg.c_dim] * levels)}
    for key, (what, per_level) in widths.items():
        for n, (x, width) in enumerate(zip(getattr(state, key), per_level)):
            if tuple(x.shape) != (rows, width):
                raise ValueError(
                    f"{name}.{key} of level {n + 1}: expected shape {(rows, width)} ({what}={width}), "
                    f"got {tuple(x.shape)}: a state of a model with other sizes?"
                )
    for n, (x, width) in enumerate(zip(state.factor, factor_sizes)):
        if tuple(x.shape) != (rows, width):
            raise ValueError(
                f"{name}.factor of level {n + 1}: expected shape {(rows, width)} "
                f"(prior_factor={cfg.prior_factor!r}), got {tuple(x.shape)}"
            )
    if tuple(state.pending.shape) != (rows, levels):
        raise ValueError(f"{name}.pending: expected shape {(rows, levels)}, got {tuple(state.pending.shape)}")
    return _converted_state(state, dtype, name)


def _host_free() -> int | None:
    """The host's MemAvailable in bytes, None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _process_room() -> int | None:
    """Bytes this process may still map under its own limits (`ulimit -v` / `-d`: RLIMIT_AS
    and RLIMIT_DATA against VmSize and VmData), None when it has no limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    used: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmSize", "VmData"):
                    used[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    rooms = []
    for limit, key in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and key in used:
            rooms.append(max(0, soft - used[key]))
    return min(rooms) if rooms else None


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (free accelerator memory; on the host the
    smaller of MemAvailable and what the process's own limits leave), None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    known = [free for free in (_host_free(), _process_room()) if free is not None]
    return min(known) if known else None


def parameter_count(cfg: DLHConfig) -> int:
    """A lower bound on the number of weights of `DLH(cfg)`, computed without building it: the
    conv towers, and per level the decoder, GRU, posterior and prior networks (and the
    encoder below the top level). Exact integers, so absurd sizes do not overflow."""
    def mlp(inp: int, hidden: tuple[int, ...], out: int) -> int:
        sizes = [inp, *hidden, out]
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))

    d, side2 = cfg.conv_depth, (cfg.image_size // 16) ** 2
    widths = [cfg.channels, d, 2 * d, 4 * d, 8 * d]
    convs = sum(16 * a * b + b for a, b in zip(widths[:-1], widths[1:]))
    towers = 2 * convs + (8 * d * side2 * cfg.x_dim + cfg.x_dim) + (cfg.c_dim * 8 * d * side2 + 8 * d * side2)
    def level(s_dim: int, d_dim: int) -> int:
        gru = 3 * d_dim * (s_dim + d_dim) + 6 * d_dim
        return (mlp(s_dim + cfg.c_dim, cfg.dec_hidden, cfg.c_dim) + gru
                + mlp(cfg.x_dim + cfg.c_dim, cfg.state_hidden, 2 * s_dim)
                + mlp(d_dim + cfg.c_dim, cfg.state_hidden, 2 * s_dim))

    if cfg.level_s_dims is None and cfg.level_d_dims is None:  # no loop over a million levels
        levels = cfg.levels * level(cfg.s_dim, cfg.d_dim)
    else:
        levels = sum(level(cfg.level_s_dim(n), cfg.level_d_dim(n)) for n in range(1, cfg.levels + 1))
    actions = sum(3 * cfg.level_d_dim(n) * cfg.action_dim for n in cfg.action_levels)
    encoders = (cfg.levels - 1) * mlp(cfg.x_dim, cfg.enc_hidden, cfg.x_dim)
    return towers + levels + encoders + actions


def check_model_memory(cfg: DLHConfig, device: torch.device, dtype: torch.dtype) -> None:
    """ValueError before building `DLH(cfg)` on `device` when its weights alone need more memory
    than is free there (the number of weights in the message)."""
    count = parameter_count(cfg)
    needed = count * torch.empty((), dtype=dtype, device="meta").element_size()
    free = available_memory(device)
    if free is not None and needed > free:
        gib = 2.0**30
        raise ValueError(
            f"DLH: this config has at least {count:,} weights, {needed / gib:.3g} GiB, more than the "
            f"{free / gib:.3g} GiB free on {device.type}: lower its sizes (x_dim, c_dim, d_dim, "
            f"conv_depth, image_size, levels, hidden sizes)")


def check_memory(needed: int, device: torch.device, what: str, remedy: str) -> None:
    """ValueError before allocating when `needed` bytes exceed what `device` has free."""
    free = available_memory(device)
    if free is not None and needed > free:
        gib = 2.0**30
        raise ValueError(f"{what} needs about {needed / gib:.3g} GiB of memory, more than the "
                         f"{free / gib:.3g} GiB free on {device.type}: {remedy}")


def check_features(features: object, cfg: DLHConfig, *, dtype: torch.dtype | None = None,
                   device: torch.device | None = None) -> Tensor:
    """features: (..., F) floating with F = cfg.feature_dim, converted to `dtype`."""
    if not isinstance(features, Tensor):
        raise ValueError(f"features: expected a tensor (..., {cfg.feature_dim}), got {_describe(features)}")
    if features.dim() == 0 or features.shape[-1] != cfg.feature_dim:
        raise ValueError(
            f"features: expected shape (..., {cfg.feature_dim}) (F = levels·(s_dim + d_dim)), "
            f"got {tuple(features.shape)}"
        )
    if not features.is_floating_point():
        raise ValueError(f"features: expected a floating tensor, got dtype {features.dtype}")
    _check_device(features, device, "features")
    return _as_model_float(features, dtype)


def check_trajectory(traj: Trajectory, cfg: DLHConfig, *, device: torch.device | None = None) -> Tensor:
    """The decoder input (B, horizon, C) of a Trajectory, C = cfg.c_dim."""
    x = traj.decoder_input
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != cfg.c_dim:
        raise ValueError(
            f"trajectory.decoder_input: expected a tensor (B, horizon, {cfg.c_dim}), got {_describe(x)}"
        )
    _check_device(x, device, "trajectory.decoder_input")
    return x


__all__ = ["check_frames", "check_actions", "check_mask", "check_targets", "check_horizon", "check_weight",
           "check_state", "check_features", "check_trajectory", "check_int", "available_memory",
           "check_memory", "parameter_count", "check_model_memory"]
