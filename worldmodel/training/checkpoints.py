"""Training checkpoints: one folder per step, written atomically, loadable without unpickling.

    run_dir/checkpoints/step_00001000/
        model.safetensors   weights + JSON config (worldmodel.load reads it)
        optimizer.pt        optimizer state (torch.load(weights_only=True): tensors and numbers only)
        trainer.json        step, config, metrics at the time
    run_dir/checkpoints/latest   name of the newest complete checkpoint

The noise of step k is seeded from (seed, k, rank) and the data of step k is a pure function
of the same, so the step counter is all the RNG and data state a resume needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import save_model
from ..files import atomic_directory, atomic_write_text

LATEST = "latest"


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
        save_model(model, tmp / "model.safetensors")  # type: ignore[arg-type]
        torch.save({"optimizer": optimizer.state_dict()}, tmp / "optimizer.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **info}, indent=1))

    path = atomic_directory(root / name, fill)
    atomic_write_text(root / LATEST, name)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = checkpoint_dir(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / "trainer.json").is_file():
            return path
    complete = [p for p in sorted(root.glob("step_*")) if (p / "trainer.json").is_file()]
    return complete[-1] if complete else None


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    device: torch.device,
) -> dict[str, Any]:
    """Restore model (and optimizer) from a checkpoint folder; returns its trainer.json."""
    from ..checkpoint import read_model_file

    path = Path(path)
    config, tensors = read_model_file(path / "model.safetensors")
    if config != model.config:  # type: ignore[attr-defined]
        raise ValueError(
            f"{path}: the checkpoint's model config differs from this run's; "
            "resume with the same model settings (or start a new out_dir)"
        )
    model.load_state_dict(tensors, strict=True)
    if optimizer is not None:
        state = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    return json.loads((path / "trainer.json").read_text())


__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "checkpoint_dir"]
