"""worldmodel: the Dynamic Latent Hierarchy (DLH) as a world model for model-based RL.

The public names are imported on first use, so that light modules of the package
(`worldmodel.arguments`, `worldmodel.files`, `worldmodel.npz`, `worldmodel.episode_format`)
can be used — by `envs`, say — without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import load
    from .config import DLHConfig, InferenceConfig, LossConfig
    from .model import DLH
    from .state import HierarchicalState, ObserveOutput, Trajectory

_PUBLIC = {"DLH": ".model", "DLHConfig": ".config", "InferenceConfig": ".config", "LossConfig": ".config",
           "load": ".checkpoint", "HierarchicalState": ".state", "ObserveOutput": ".state",
           "Trajectory": ".state"}

__version__ = "0.1.0"
__all__ = ["DLH", "DLHConfig", "InferenceConfig", "LossConfig", "load", "HierarchicalState", "ObserveOutput",
           "Trajectory"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'worldmodel' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
