"""Training: configs, the trainer, checkpoints, monitoring, DDP."""

from .config import OptimConfig, TrainConfig, load_config
from .trainer import TrainingDiverged, train

__all__ = ["OptimConfig", "TrainConfig", "load_config", "train", "TrainingDiverged"]
