"""Model files: weights in safetensors with the JSON config in the file's metadata.

`DLH.save` writes them (atomically); this module reads them. Loading never unpickles
anything and trusts nothing in the file before checking it:

1. the metadata: the format tag, a format version this code reads, a config that is valid
   JSON and a valid `DLHConfig`;
2. the stored tensors' names, shapes and dtypes, read from the file's header without
   loading any data, against those of a model built from the config on the `meta` device
   (which allocates nothing) — so a config that does not match its weights, or one that
   asks for a model far larger than the file, fails before any memory is spent;
3. the values: NaN or ±inf weights are an error, or a warning with `allow_nonfinite=True`.

Every failure is a ValueError (FileNotFoundError for a missing file) that names the file.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from .arguments import brief
from .config import MODEL_FILE_FORMAT as FORMAT
from .config import MODEL_FILE_VERSION as VERSION
from .config import DLHConfig, config_from_metadata
from .files import one_line
from .model import DLH

FLOATING_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names of the float dtypes
SHOWN = 5  # how many offending tensors an error names


def save_model(model: DLH, path: str | os.PathLike) -> None:
    """Write `model`'s weights and config to one safetensors file at `path` (kept for callers
    of earlier versions: it is `model.save(path)`)."""
    model.save(path)


def expected_shapes(config: DLHConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state_dict of `DLH(config)`, without allocating it."""
    with torch.device("meta"):
        model = DLH(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _names(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _check_layout(path: Path, config: DLHConfig, stored: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """ValueError naming `path` unless the stored (shape, dtype) per name fit `config`'s model."""
    # a config with more layers than the file has tensors cannot match it: say so without
    # building the (possibly huge) module tree of such a config, even on the meta device
    hidden = ("enc_hidden", "dec_hidden", "state_hidden", "factor_hidden", "head_hidden")
    layers = max([config.levels] + [len(getattr(config, name)) for name in hidden])
    if layers > len(stored):
        raise ValueError(
            f"{path}: the stored config describes {layers} levels or layers but the file holds "
            f"only {len(stored)} tensors: the config does not match the weights"
        )
    try:  # on the meta device; sizes past torch's integers fail while the layers are made
        expected = expected_shapes(config)
    except (RuntimeError, TypeError, OverflowError, ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: the stored config describes a model that cannot be built "
                         f"({first[:200]}): the config does not match the weights") from None
    missing = [name for name in expected if name not in stored]
    unexpected = [name for name in stored if name not in expected]
    shapes = [
        f"{name} stored {list(stored[name][0])}, config needs {list(shape)}"
        for name, shape in expected.items()
        if name in stored and stored[name][0] != shape
    ]
    dtypes = [f"{name} stored as {dtype}" for name, (_, dtype) in stored.items()
              if dtype not in FLOATING_DTYPES]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} tensor(s) of another shape: {_names(shapes)}")
    if missing:
        problems.append(f"missing tensor(s): {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensor(s): {_names(unexpected)}")
    if dtypes:
        problems.append(f"tensor(s) not of a float dtype {list(FLOATING_DTYPES)}: {_names(dtypes)}")
    if problems:
        raise ValueError(f"{path}: the weights do not match the stored config: " + "; ".join(problems))


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Re-raise the errors of reading a corrupt file (safetensors has its own types) as ValueError."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors model file ({exc})") from exc


def read_model_file(
    path: str | os.PathLike, *, allow_nonfinite: bool = False
) -> tuple[DLHConfig, dict[str, torch.Tensor]]:
    """The config and weights stored in a model file, checked as the module docstring says.

    Args:
        path: a file written by `DLH.save`.
        allow_nonfinite: warn (RuntimeWarning) instead of failing when weights hold NaN or ±inf.
    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: naming `path`, for any other problem with the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    with _reading(path):  # the header only: names, shapes, dtypes and metadata
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            stored = {}
            for name in f.keys():
                info = f.get_slice(name)
                stored[name] = (tuple(info.get_shape()), info.get_dtype())
    config = config_from_metadata(metadata, str(path))
    _check_layout(path, config, stored)
    with _reading(path):
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in stored}
    bad = [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        message = f"{path}: non-finite weights (NaN or inf) in {len(bad)} tensor(s): {_names(bad)}"
        if not allow_nonfinite:
            raise ValueError(message + "; pass allow_nonfinite=True to load them anyway")
        warnings.warn(message + "; loaded anyway (allow_nonfinite=True)", RuntimeWarning, stacklevel=3)
    return config, tensors


def load(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, allow_nonfinite: bool = False
) -> DLH:
    """Rebuild the DLH saved at `path`: config from the file, weights checked and loaded strictly.

    Args:
        path: a file written by `DLH.save`.
        map_location: the device of the returned model; one this machine lacks ('cuda' without
            CUDA) or a name that is no device is a ValueError before the file is read.
        allow_nonfinite: load weights holding NaN or ±inf with a RuntimeWarning instead of a
            ValueError (e.g. to inspect a run that diverged).
    """
    device = _target_device(map_location)
    config, tensors = read_model_file(path, allow_nonfinite=allow_nonfinite)
    model = DLH(config)
    model.load_state_dict(tensors, strict=True)
    return model.to(device)


def _target_device(map_location: object) -> torch.device:
    """`map_location` as a device this machine has, else a ValueError naming it."""
    try:
        device = torch.device(map_location)  # type: ignore[call-overload]
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"map_location: not a device: {brief(map_location)}; "
                         "give e.g. 'cpu' or 'cuda:0'") from None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:  # torch without CUDA asserts
        raise ValueError(f"map_location: device {str(device)!r} is not available on this machine "
                         f"({one_line(exc)[:120]}); give e.g. 'cpu'") from None
    return device


__all__ = ["FORMAT", "VERSION", "save_model", "load", "read_model_file", "expected_shapes"]
