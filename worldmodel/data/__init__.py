"""Data sets for the DLH world model.

Every data set is a :class:`SequenceSource` that hands out random windows as a
:class:`Batch` (``frames: (B, T, C, H, W)`` float32 in [0, 1], plus actions,
rewards, ``is_first`` and ``continues`` for recorded episodes).
:func:`build_source` makes one from a :class:`DataConfig`; :func:`batch_at` makes
the batch of a training step a pure function of ``(seed, step, rank)``.
"""

from worldmodel.data.base import (
    Batch,
    DatasetNotFoundError,
    ObjectReadout,
    SequenceSource,
    VideoSource,
    batch_at,
)
from worldmodel.data.config import DataConfig
from worldmodel.data.episodes import (
    EpisodeSource,
    load_episode,
    save_episode,
    validate_episode,
)
from worldmodel.data.moving_ball import MovingBallSource, generate_moving_ball
from worldmodel.data.moving_mnist import MovingMnistSource, read_idx_images
from worldmodel.data.registry import DATASETS, build_source  # importing it fills DATASETS

__all__ = [
    "DATASETS",
    "Batch",
    "DataConfig",
    "DatasetNotFoundError",
    "EpisodeSource",
    "MovingBallSource",
    "MovingMnistSource",
    "ObjectReadout",
    "SequenceSource",
    "VideoSource",
    "batch_at",
    "build_source",
    "generate_moving_ball",
    "load_episode",
    "read_idx_images",
    "save_episode",
    "validate_episode",
]
