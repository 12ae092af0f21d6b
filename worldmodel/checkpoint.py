"""Model files: weights in safetensors with the JSON config in its metadata, written
atomically (temporary file, then rename). Loading never unpickles anything."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import DLHConfig, from_dict
from .files import atomic_write

if TYPE_CHECKING:
    from .model import DLH

FORMAT = "worldmodel.dlh"
VERSION = "1"


def save_model(model: DLH, path: str | os.PathLike) -> None:
    """Write `model`'s weights and config to one safetensors file at `path`."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "version": VERSION, "config": json.dumps(model.config.to_dict())}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_model_file(path: str | os.PathLike) -> tuple[DLHConfig, dict[str, torch.Tensor]]:
    """The config and weights stored in a model file; ValueError for a file of another kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors model file ({exc})") from exc
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"{path}: not a worldmodel DLH file (metadata {sorted(metadata)})")
    config = from_dict(DLHConfig, json.loads(metadata["config"]))
    return config, tensors


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DLH:
    """Rebuild the DLH saved at `path` (config from the file, weights loaded strictly)."""
    from .model import DLH

    config, tensors = read_model_file(path)
    model = DLH(config)
    model.load_state_dict(tensors, strict=True)
    return model.to(map_location)


__all__ = ["save_model", "load", "read_model_file"]
