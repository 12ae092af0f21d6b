"""worldmodel: the Dynamic Latent Hierarchy (DLH) as a world model for model-based RL."""

from .checkpoint import load
from .config import DLHConfig
from .model import DLH
from .state import HierarchicalState, ObserveOutput, Trajectory

__version__ = "0.1.0"
__all__ = ["DLH", "DLHConfig", "load", "HierarchicalState", "ObserveOutput", "Trajectory"]
