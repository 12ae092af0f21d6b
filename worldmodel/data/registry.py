"""The table of data sets and the factory that turns a :class:`DataConfig` into a
:class:`SequenceSource`.

This module imports every loader and fills :data:`~worldmodel.data.config.DATASETS` with
them; :class:`DataConfig` lives in :mod:`worldmodel.data.config` (which imports no loader,
so loaders may import it) and is re-exported here.

Example::

    >>> cfg = DataConfig(name="moving_ball", image_size=32, options={"lam": 0.1})
    >>> source = build_source(cfg, split="train")
    >>> batch = batch_at(source, seed=0, step=0, batch_size=cfg.batch_size, seq_len=cfg.seq_len)
    >>> batch.frames.shape
    torch.Size([100, 100, 3, 32, 32])
"""

from __future__ import annotations

from worldmodel.data import episodes, kth, moving_ball, moving_mnist, video_folder
from worldmodel.data.base import SequenceSource, check_split
from worldmodel.data.config import DATASETS, DataConfig, DatasetEntry

DATASETS.update({
    "moving_ball": DatasetEntry(moving_ball.MovingBallOptions, moving_ball.build),
    "moving_mnist": DatasetEntry(moving_mnist.MovingMnistOptions, moving_mnist.build),
    "mnist_npy": DatasetEntry(moving_mnist.MovingMnistOptions, moving_mnist.build),
    "kth": DatasetEntry(kth.KthOptions, kth.build),
    "video_folder": DatasetEntry(video_folder.VideoFolderOptions, video_folder.build),
    "episodes": DatasetEntry(episodes.EpisodeOptions, episodes.build),
})


def build_source(cfg: DataConfig, split: str = "train") -> SequenceSource:
    """The :class:`SequenceSource` of ``cfg`` for ``split`` ("train" | "test").

    Raises DatasetNotFoundError (with instructions) when the data are missing and
    ValueError naming the file when a file is corrupt.
    """
    check_split(split)
    return DATASETS[cfg.name].build(cfg, cfg.parsed_options(), split)


__all__ = ["DATASETS", "DataConfig", "build_source"]
