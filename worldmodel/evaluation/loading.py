"""Finding what an evaluation command needs: the model file, the run's data config, the data.

`--checkpoint` may name a model file (`*.safetensors`), a checkpoint folder
(`run/checkpoints/step_*/`) or a run folder (`run/`: its `model.safetensors`, else its latest
checkpoint, falling back to the one before when it is corrupt, as `--resume` does). The data
section comes from `--config` when given, else from the run's `config.yaml` (its checkpoint's
`trainer.json` when that file has no `data:` section, with a warning), else from the
checkpoint's `trainer.json`, else Moving Ball at the model's size; `--set data.key=value`
overrides apply on top.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..arguments import check_int
from ..checkpoint import load
from ..config import from_dict
from ..data import Batch, DataConfig, SequenceSource
from ..files import one_line
from ..model import DLH
from ..training.checkpoints import checkpoint_candidates
from ..training.config import apply_overrides, read_yaml, yaml_problem
from ..validation import check_memory
from .context import evaluating, evaluation_source  # noqa: F401 - kept importable here

MODEL_FILE = "model.safetensors"


@dataclass
class Resolved:
    """A loaded model with where it came from and the data it was trained on."""

    model: DLH
    model_file: Path
    run_dir: Path | None
    data: DataConfig
    data_origin: str


def _run_dir_of(model_file: Path) -> Path | None:
    """The run folder of a model file: its folder, or run/ for run/checkpoints/step_*/model."""
    folder = model_file.parent
    if (folder / "config.yaml").is_file():
        return folder
    if folder.name.startswith("step_") and folder.parent.name == "checkpoints":
        return folder.parent.parent
    return None


def resolve_model_file(checkpoint: str | Path) -> tuple[Path, Path | None]:
    """(model file, run folder or None) of a `--checkpoint` argument; FileNotFoundError if none."""
    files, run_dir = model_file_candidates(checkpoint)
    return files[0], run_dir


def model_file_candidates(checkpoint: str | Path) -> tuple[list[Path], Path | None]:
    """The model files a `--checkpoint` argument may mean, best first, and the run folder.

    One file, except for a run folder without `model.safetensors`: its complete checkpoints,
    newest first, to fall back along as training does (`checkpoint_candidates`).
    """
    path = Path(checkpoint)
    if path.is_file():
        return [path], _run_dir_of(path)
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return [path / MODEL_FILE], _run_dir_of(path / MODEL_FILE) or path
        candidates = checkpoint_candidates(path)
        if candidates:
            return [c / MODEL_FILE for c in candidates], path
        raise FileNotFoundError(
            f"--checkpoint {path}: no {MODEL_FILE} and no checkpoints/step_*/ in this folder "
            "(pass a model file, a checkpoint folder or a training run folder)"
        )
    raise FileNotFoundError(f"--checkpoint {path}: no such file or folder")


def _config_tree(config: str | Path | None, model_file: Path, run_dir: Path | None) -> tuple[dict, str]:
    """The config mapping holding the data section, and a word on where it came from."""
    candidates: list[Path] = []
    if config is not None:
        if not Path(config).is_file():
            raise FileNotFoundError(f"--config {config}: no such file")
        candidates.append(Path(config))
    elif run_dir is not None:
        candidates.append(run_dir / "config.yaml")
    for path in candidates:
        if path.is_file():
            try:
                tree = read_yaml(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: invalid YAML: {yaml_problem(exc)}") from None
            except ValueError as exc:  # not UTF-8, an int Python will not build
                raise ValueError(f"{path}: invalid YAML: {one_line(exc)}") from None
            if not isinstance(tree, dict):
                raise ValueError(f"{path}: expected a mapping at the top level")
            if "data" in tree:
                return tree, str(path)
            stored = _stored_config(model_file, run_dir) if config is None else None
            if stored is not None and "data" in stored[0]:
                warnings.warn(f"{path} has no data: section; evaluating on the data of {stored[1]} "
                              "(the run's own)", stacklevel=3)
                return {**tree, "data": stored[0]["data"]}, stored[1]
            warnings.warn(f"{path} has no data: section; evaluating on the default data (moving_ball "
                          "at the model's image size): give the run's data with --set data.name=... "
                          "(and data.path=...)", stacklevel=3)
            return tree, f"{path} (no data section: defaults)"
    stored = _stored_config(model_file, run_dir)
    if stored is not None:
        return stored
    return {}, "defaults (moving_ball at the model's image size)"


def _stored_config(model_file: Path, run_dir: Path | None) -> tuple[dict, str] | None:
    """The config a checkpoint's trainer.json holds (the model file's folder first, then the run's
    checkpoints, newest first), with the file's name; None when there is none."""
    files = [model_file.parent / "trainer.json"]
    if run_dir is not None:
        files += [c / "trainer.json" for c in checkpoint_candidates(run_dir)]
    for trainer in files:
        if trainer.is_file():
            try:
                info = json.loads(trainer.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                raise ValueError(f"{trainer}: not valid JSON ({one_line(exc)[:200]})") from None
            if isinstance(info, dict) and isinstance(info.get("config"), dict):
                return info["config"], str(trainer)
    return None


def resolve(
    checkpoint: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str = "cpu",
) -> Resolved:
    """Load the model of `checkpoint` on `device` and its data config (see module docstring)."""
    files, run_dir = model_file_candidates(checkpoint)
    device = _device(device)
    model, model_file = _load_first_readable(files, device)
    model.eval()
    tree, origin = _config_tree(config, model_file, run_dir)
    for item in overrides or []:
        if not item.split("=", 1)[0].strip().startswith("data."):
            raise ValueError(f"--set {item!r}: only data.* settings can be overridden here")
    tree = apply_overrides(dict(tree), list(overrides or []))
    section: dict[str, Any] = dict(tree.get("data") or {})
    section.setdefault("image_size", model.config.image_size)
    section.setdefault("channels", model.config.channels)
    data = from_dict(DataConfig, section, "data")
    if (data.image_size, data.channels) != (model.config.image_size, model.config.channels):
        raise ValueError(
            f"data.image_size/channels ({data.image_size}, {data.channels}) differ from the model's "
            f"({model.config.image_size}, {model.config.channels})"
        )
    return Resolved(model, model_file, run_dir, data, origin)


def _load_first_readable(files: list[Path], device: torch.device) -> tuple[DLH, Path]:
    """The first of `files` that loads; a corrupt one (truncated, ...) is skipped with a warning
    naming it, as `--resume` skips a corrupt checkpoint. ValueError naming all if none loads."""
    problems = []
    for file in files:
        try:
            return load(file, map_location=device), file
        except (ValueError, FileNotFoundError) as exc:
            if len(files) == 1:
                raise
            problems.append(one_line(exc))
            if file is not files[-1]:
                warnings.warn(f"{one_line(exc)}; falling back to the checkpoint before it", stacklevel=3)
    raise ValueError("no readable checkpoint: " + "; ".join(problems))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(name)
    raise ValueError(f"--device must be auto, cpu or cuda[:i], got {name!r}")


def eval_sequences(
    source: SequenceSource, num: int, length: int, seed: int, what: str = "length"
) -> tuple[Batch, np.ndarray | None]:
    """`num` fixed windows of `length` frames (`SequenceSource.eval_batch`), and for Moving
    Ball the (B, T) ground-truth colour changes of the same windows (else None).

    ValueError with the lengths involved when the data set's videos are too short (`what`
    names the setting that asked for `length` frames).
    """
    num, length = check_int(num, "sequences", 1), check_int(length, "length", 1)
    seed = check_int(seed, "seed", 0)
    frame = source.channels * source.image_size**2 * 5  # bytes: float32 frames and their uint8 source
    check_memory(num * length * frame, torch.device("cpu"), f"{num} sequence(s) of {length} frames ({what})",
                 f"lower the {what} or the number of sequences")
    try:
        # the same windows as eval_batch (`dlh eval`'s), with change flags where the data has them
        return source.eval_batch_with_events(num, length, seed)
    except ValueError as exc:
        raise ValueError(
            f"cannot cut {num} sequence(s) of {length} frames ({what}) from the "
            f"{getattr(source, 'split', '')} data: {exc}"
        ) from exc


__all__ = ["evaluating", "Resolved", "resolve", "resolve_model_file", "model_file_candidates",
           "evaluation_source", "eval_sequences"]
