"""The episode file format (docs/design.md §4), in one place for its writers (`envs.recorder`) and its
readers (`worldmodel.data.episodes`, the agent loop).

One compressed ``.npz`` per episode; for steps t = 0..T (length L = T + 1):

* ``image``: (L, H, W, C) uint8 observation at step t;
* ``action``: (L, A) float, the action that led to step t (zeros at t = 0);
* ``reward``: (L,) float, the reward received on arriving at step t (0 at t = 0);
* ``is_first``, ``is_last``, ``is_terminal``: (L,) bool (Gymnasium's ``terminated``
  is ``is_terminal``; ``terminated or truncated`` is ``is_last``);
* ``log_*``: extra per-step values, kept but never trained on; ``log_seed`` (L,) int is the
  seed of the episode's reset (-1: reset without one).

Files are written atomically (`worldmodel.files.atomic_write`: a hidden temporary, then a
rename; `remove_stale_temporaries` clears what a killed writer left) and read with
``allow_pickle=False``, each array's header checked against its stored size first.

NumPy only (no torch): `envs` imports it at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.files import atomic_write
from worldmodel.npz import READ_ERRORS, open_npz

EPISODE_KEYS = ("image", "action", "reward", "is_first", "is_last", "is_terminal")
FLAG_KEYS = ("is_first", "is_last", "is_terminal")
SEED_KEY = "log_seed"
"""Per-step copy of the episode's reset seed (-1: reset without one)."""


def _flags(name: str, value: np.ndarray, origin: str) -> np.ndarray:
    if value.dtype == np.bool_:
        return value
    if np.issubdtype(value.dtype, np.number) and np.isin(value, (0, 1)).all():
        return value.astype(bool)
    raise ValueError(f"{origin}: {name!r} must be bool (or 0/1), got {value.dtype}")


def validate_episode(ep: Mapping[str, Any], origin: str = "episode", *, exact: bool = False
                     ) -> dict[str, np.ndarray]:
    """Check an episode's keys, dtypes and lengths; return a normalised copy.

    The copy has ``image`` (L, H, W, C) uint8, ``action`` (L, A) float32, ``reward`` (L,)
    float32 and bool flags; extra keys are kept unchanged. With ``exact`` (what a recorder
    checks before writing) the layout must also be stored exactly: the dtypes and shapes the
    copy has, no extra keys but ``log_*`` ones with one entry per step, and ``is_last`` at
    the final step.

    Raises:
        ValueError: prefixed with ``origin``, naming the first problem found.
    """
    if not isinstance(ep, Mapping):
        raise ValueError(f"{origin}: an episode must be a mapping of arrays, got "
                         f"{type(ep).__name__}")
    missing = [k for k in EPISODE_KEYS if k not in ep]
    if missing:
        raise ValueError(f"{origin}: episode is missing key(s) {missing}; required: "
                         f"{list(EPISODE_KEYS)}")
    out = {k: np.asarray(v) for k, v in ep.items()}
    image = out["image"]
    if image.dtype != np.uint8:
        raise ValueError(f"{origin}: 'image' must be uint8, got {image.dtype}")
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3) or image.shape[0] == 0:
        raise ValueError(f"{origin}: 'image' must be (L, H, W, C) with C in 1, 3 and L >= 1, "
                         f"got {image.shape}")
    out["image"] = image
    length = image.shape[0]
    expected = {"action": 2, "reward": 1, "is_first": 1, "is_last": 1, "is_terminal": 1}
    for key, ndim in expected.items():
        value = out[key]
        if value.ndim != ndim or value.shape[0] != length:
            want = f"({length}, A)" if ndim == 2 else f"({length},)"
            raise ValueError(f"{origin}: {key!r} must have shape {want} to match 'image' "
                             f"with {length} steps, got {value.shape}")
    for key in ("action", "reward"):
        value = out[key]
        if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.number):
            raise ValueError(f"{origin}: {key!r} must be numeric, got {value.dtype}")
        if not np.isfinite(value).all():
            raise ValueError(f"{origin}: {key!r} contains NaN or infinity")
        out[key] = value.astype(np.float32)
    if out["action"].shape[1] == 0:
        raise ValueError(f"{origin}: 'action' has no components (shape {out['action'].shape}); "
                         "one-hot encode discrete actions")
    for key in FLAG_KEYS:
        out[key] = _flags(key, out[key], origin)
    if not out["is_first"][0]:
        raise ValueError(f"{origin}: 'is_first' must be True at step 0")
    if exact:
        _check_exact(ep, out, origin)
    return out


def _check_exact(ep: Mapping[str, Any], normalised: dict[str, np.ndarray], origin: str) -> None:
    """The stricter rules of `validate_episode(exact=True)`."""
    length = normalised["image"].shape[0]
    extra = [k for k in ep if k not in EPISODE_KEYS and not k.startswith("log_")]
    if extra:
        raise ValueError(f"{origin}: episode has unknown keys {extra}; extra keys must start with 'log_'")
    for key in EPISODE_KEYS:
        stored, wanted = np.asarray(ep[key]), normalised[key]
        if stored.dtype != wanted.dtype or stored.shape != wanted.shape:
            raise ValueError(f"{origin}: '{key}' must be stored as {wanted.dtype} {wanted.shape}, "
                             f"got {stored.dtype} {stored.shape}")
    for key in ep:
        if key.startswith("log_") and (np.ndim(ep[key]) < 1 or len(ep[key]) != length):
            raise ValueError(f"{origin}: '{key}' must have {length} entries, got shape {np.shape(ep[key])}")
    if not normalised["is_last"][-1]:
        raise ValueError(f"{origin}: 'is_last' must be True at the last step")


def load_episode(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read and validate one episode ``.npz`` (never unpickles); ValueError names the file."""
    path = Path(path)
    archive = open_npz(path, "episode .npz file")
    try:
        with archive:
            ep = {key: archive[key] for key in archive.files}
    except READ_ERRORS as err:
        raise ValueError(f"{path}: corrupt episode .npz file ({err})") from err
    return validate_episode(ep, str(path))


def save_episode(path: str | os.PathLike[str], ep: Mapping[str, Any], *, exact: bool = False) -> Path:
    """Validate (`validate_episode`, with `exact`) and write an episode as compressed ``.npz``
    at `path`, atomically; returns `path`."""
    path = Path(path)
    data = validate_episode(ep, str(path), exact=exact)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **data)
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


__all__ = ["EPISODE_KEYS", "FLAG_KEYS", "SEED_KEY", "validate_episode", "load_episode", "save_episode"]
