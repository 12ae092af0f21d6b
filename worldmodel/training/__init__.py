"""Training: configs, the trainer, checkpoints, monitoring, DDP."""

from .config import OptimConfig, TrainConfig, load_config
from .trainer import Trainer, TrainingDiverged, train

__all__ = ["OptimConfig", "TrainConfig", "load_config", "train", "Trainer", "TrainingDiverged"]
