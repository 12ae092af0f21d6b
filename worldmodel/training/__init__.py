"""Training: configs, the trainer, checkpoints, monitoring, DDP."""

from .config import LoggingConfig, OptimConfig, ProbeConfig, TrainConfig, load_config
from .trainer import Trainer, TrainingDiverged, TrainingInterrupted, train

__all__ = ["OptimConfig", "LoggingConfig", "ProbeConfig", "TrainConfig", "load_config", "train", "Trainer",
           "TrainingDiverged", "TrainingInterrupted"]
