"""Training checkpoints: one folder per step, written atomically, loadable without unpickling.

    run_dir/checkpoints/step_00001000/
        model.safetensors   weights + JSON config (worldmodel.load reads it)
        optimizer.pt        optimizer state (torch.load(weights_only=True): tensors and numbers only)
        trainer.json        step, config, metrics at the time
    run_dir/checkpoints/latest   name of the newest complete checkpoint

The noise of step k is seeded from (seed, k, rank) and the data of step k is a pure function
of the same, so the step counter is all the RNG and data state a resume needs.

A checkpoint is only written when every weight and optimizer tensor is finite (the trainer
checks with `non_finite_tensors`), so the newest checkpoint is always one to go back to.
A checkpoint whose files cannot be read raises `CorruptCheckpoint`, naming the file; the
trainer then falls back to the one before (`checkpoint_candidates` lists them newest first).
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..arguments import is_int
from ..checkpoint import read_model_file
from ..config import DLHConfig
from ..files import as_os_error, atomic_directory, atomic_write_text, naming, one_line

LATEST = "latest"
STEP_NAME = re.compile(r"step_(\d+)")  # a checkpoint folder's name: its step, zero-padded
CORRUPT_PREFIX = "corrupt_"


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be read; the message names the file."""


@dataclass
class CheckpointContents:
    """What a checkpoint folder holds, read into memory (CPU tensors)."""

    path: Path
    model_config: DLHConfig
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    info: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.info["step"])


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write the checkpoint of `step` (atomically), point `latest` at it, prune old ones."""
    root = checkpoint_dir(run_dir)
    name = f"step_{step:08d}"

    def fill(tmp: Path) -> None:
        with naming(root / name / "model.safetensors", str(tmp / "model.safetensors")):
            model.save(tmp / "model.safetensors")  # type: ignore[operator]
        target = root / name / "optimizer.pt"
        with naming(target, str(tmp / "optimizer.pt")):
            try:  # through a Python file, so that a failed write's OSError (ENOSPC) is the context
                with open(tmp / "optimizer.pt", "wb") as file:
                    torch.save({"optimizer": optimizer.state_dict()}, file)
            except RuntimeError as exc:  # torch's zip writer reports a failed write as "unexpected pos"
                mapped = as_os_error(exc, target)
                if mapped is not None:
                    raise mapped from exc
                raise OSError(errno.EIO, f"write failed ({one_line(exc)})", str(target)) from exc
        with naming(root / name / "trainer.json", str(tmp / "trainer.json")):
            (tmp / "trainer.json").write_text(json.dumps({"step": step, **info}, indent=1))

    path = atomic_directory(root / name, fill)
    atomic_write_text(root / LATEST, name)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def non_finite_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> list[str]:
    """Names of the weights and optimizer-state tensors holding NaN or ±inf (empty: all finite)."""
    bad = [f"weight {name}" for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        for param, state in optimizer.state.items():
            for key, t in state.items():
                if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(f"optimizer {key} of {names.get(id(param), '?')}")
    return bad


def checkpoint_candidates(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run, newest first: the one `latest` names, then the others
    by step, newest first (a reader falls back along this list when one is corrupt)."""
    root = checkpoint_dir(run_dir)
    complete = [p for p in sorted(root.glob("step_*"), reverse=True)
                if STEP_NAME.fullmatch(p.name) and (p / "trainer.json").is_file()]
    pointed = _pointed_to(root)
    return [pointed] + [p for p in complete if p != pointed] if pointed is not None else complete


def _pointed_to(root: Path) -> Path | None:
    """The checkpoint `root/latest` names, if it names a complete one inside `root`.

    The pointer holds a folder name (`step_00001000`); anything else — a path leading out of
    the run (`../../other/checkpoints/step_5`), a name that is not a checkpoint's — is
    ignored with a warning, so a run never reports another run's model as its own.
    """
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not STEP_NAME.fullmatch(name):
        warnings.warn(f"{pointer} names {name[:200]!r}, not a checkpoint folder of this run "
                      "(step_NNNNNNNN): ignored, the newest complete checkpoint is used", stacklevel=3)
        return None
    path = root / name
    return path if (path / "trainer.json").is_file() else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (the one `checkpoints/latest` names), or None."""
    candidates = checkpoint_candidates(run_dir)
    return candidates[0] if candidates else None


def _non_finite_entries(value: Any, where: str) -> list[str]:
    """Where a nested optimizer state holds a NaN or ±inf (tensor or number)."""
    if isinstance(value, dict):
        return [bad for key, v in value.items() for bad in _non_finite_entries(v, f"{where}[{key!r}]")]
    if isinstance(value, (list, tuple)):
        return [bad for i, v in enumerate(value) for bad in _non_finite_entries(v, f"{where}[{i}]")]
    if torch.is_tensor(value):
        finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
        return [] if finite else [where]
    if isinstance(value, float) and not math.isfinite(value):
        return [where]
    return []


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Read a checkpoint folder into memory; CorruptCheckpoint (naming the file) if it cannot."""
    path = Path(path)
    info_file = path / "trainer.json"
    try:
        info = json.loads(info_file.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptCheckpoint(f"{info_file}: not a readable trainer.json ({one_line(exc)})") from exc
    step = info.get("step") if isinstance(info, dict) else None
    if not is_int(step):
        raise CorruptCheckpoint(f"{info_file}: expected a mapping with an integer 'step'")
    named = STEP_NAME.fullmatch(path.name)
    if named and int(named.group(1)) != step:
        raise CorruptCheckpoint(f"{info_file}: its step {step} differs from its folder's name "
                                f"{path.name}: the file was changed or copied from another checkpoint")
    try:
        model_config, weights = read_model_file(path / "model.safetensors")
    except (ValueError, FileNotFoundError) as exc:  # the message names the file
        raise CorruptCheckpoint(one_line(exc)) from exc
    optimizer_file = path / "optimizer.pt"
    try:
        state = torch.load(optimizer_file, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a bad file
        raise CorruptCheckpoint(
            f"{optimizer_file}: not a readable optimizer state ({one_line(exc)})"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("optimizer"), dict):
        raise CorruptCheckpoint(f"{optimizer_file}: expected {{'optimizer': state_dict}}")
    bad = _non_finite_entries(state["optimizer"], "optimizer")
    if bad:  # the writer never stores these (non_finite_tensors): the file was changed since
        raise CorruptCheckpoint(f"{optimizer_file}: NaN or inf in {', '.join(bad[:3])}"
                                f"{' ...' if len(bad) > 3 else ''}")
    return CheckpointContents(path, model_config, weights, state["optimizer"], info)


def restore(
    contents: CheckpointContents, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    """Load read checkpoint contents into `model` (and `optimizer`)."""
    if contents.model_config != model.config:  # type: ignore[attr-defined]
        raise ValueError(
            f"{contents.path}: the checkpoint's model config differs from this run's; "
            "resume with the same model settings (or start a new out_dir)"
        )
    try:
        model.load_state_dict(contents.weights, strict=True)
    except RuntimeError as exc:
        raise CorruptCheckpoint(f"{contents.path / 'model.safetensors'}: {one_line(exc)}") from exc
    if optimizer is not None:
        stored = contents.optimizer.get("param_groups") if isinstance(contents.optimizer, dict) else None
        if isinstance(stored, list) and len(stored) != len(optimizer.param_groups):
            raise ValueError(  # a setting, not a damaged file: the checkpoint stays where it is
                f"{contents.path}: its optimiser has {len(stored)} parameter group(s), this run "
                f"{len(optimizer.param_groups)}: resume with the same optim.level_lr_scale "
                "(None: one group; a list: one group per level and one for the rest)")
        scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(contents.optimizer)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CorruptCheckpoint(
                f"{contents.path / 'optimizer.pt'}: does not match the model ({one_line(exc)})"
            ) from exc
        for group, scale in zip(optimizer.param_groups, scales):  # this run's factors, not the stored ones
            group["lr_scale"] = scale


def set_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint folder to `corrupt_<name>` (kept for inspection, out of the way)."""
    target = path.with_name(CORRUPT_PREFIX + path.name)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    path.rename(target)
    return target


__all__ = ["save_checkpoint", "latest_checkpoint", "checkpoint_dir", "read_checkpoint",
           "restore", "CheckpointContents", "CorruptCheckpoint", "checkpoint_candidates",
           "non_finite_tensors", "set_aside"]
