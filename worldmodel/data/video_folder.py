"""A folder of videos: ``.npy`` (T, H, W[, C]) uint8, ``.npz``, ``.mp4``, ``.avi``.

DML / GQN Mazes as distributed with CW-VAE (64x64 RGB mp4, 300 frames) load this
way, as does any other collection of clips. Files are found recursively. The
split is the ``train/`` and ``test/`` sub-folders when both exist, else the last
``test_fraction`` of the files by sorted name form the test split.

With ``cache: true`` (default) every video is decoded once, resized and kept in
memory; with ``cache: false`` only lengths are read up front and each window is
read from its file when sampled (for data sets larger than memory).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from worldmodel.data.base import (
    DatasetNotFoundError,
    VideoSource,
    not_found,
    prepare_video,
    split_dir,
    split_files,
)
from worldmodel.data.options import check_bool, check_float, set_field
from worldmodel.data.video_io import (
    VIDEO_SUFFIXES,
    read_many,
    read_video,
    read_video_window,
    video_length,
)

if TYPE_CHECKING:
    from worldmodel.data.config import DataConfig

_HOW = (
    f"video_folder needs a folder of video files ({', '.join(VIDEO_SUFFIXES)}), optionally "
    "with train/ and test/ sub-folders. DML / GQN Mazes come as mp4 files with CW-VAE's "
    "data release."
)


@dataclasses.dataclass(frozen=True)
class VideoFolderOptions:
    """Options of ``video_folder`` (``data.options``).

    Attributes:
        test_fraction: without train/ and test/ sub-folders, the last fraction of the files
            (by sorted name) form the test split.
        cache: decode every video once and keep it in memory (else read windows on demand).
    """

    test_fraction: float = 0.1
    cache: bool = True

    def __post_init__(self) -> None:
        set_field(self, "test_fraction", check_float("test_fraction", self.test_fraction, 0, 1))
        set_field(self, "cache", check_bool("cache", self.cache))


def find_video_files(root: Path) -> list[Path]:
    """Video files under ``root`` (recursive), sorted by path."""
    if root.is_file():
        return [root] if root.suffix.lower() in VIDEO_SUFFIXES else []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in VIDEO_SUFFIXES)


def split_video_files(path: str | None, split: str, test_fraction: float) -> list[Path]:
    """The video files of ``split``; DatasetNotFoundError if there are none at ``path``."""
    root = Path(path) if path is not None else None
    if root is None or not root.exists():
        raise DatasetNotFoundError(not_found("video_folder", path, _HOW))
    sub = split_dir(root, split) if root.is_dir() else None
    files = find_video_files(sub if sub is not None else root)
    if not files:
        where = sub if sub is not None else root
        raise DatasetNotFoundError(not_found(
            f"video_folder: no {'/'.join(VIDEO_SUFFIXES)} files", str(where), _HOW))
    if sub is not None:
        return files
    return split_files(files, split, test_fraction, "video")


def build_video_source(
    files: list[Path], image_size: int, channels: int, split: str, cache: bool = True,
    name: str = "video_folder",
) -> VideoSource:
    """A :class:`VideoSource` over video files, cached in memory or read on demand."""
    if cache:
        def load(file: Path) -> np.ndarray:
            return prepare_video(read_video(file), image_size, channels, str(file))

        videos = read_many(load, files)
        return VideoSource.from_arrays(videos, image_size, channels, split, name)

    lengths = read_many(video_length, files)

    def read(i: int, start: int, length: int) -> np.ndarray:
        window = read_video_window(files[i], start, length)
        return prepare_video(window, image_size, channels, str(files[i]))

    return VideoSource(lengths, read, image_size, channels, split, name)


def build(cfg: DataConfig, options: VideoFolderOptions, split: str) -> VideoSource:
    files = split_video_files(cfg.path, split, options.test_fraction)
    source = build_video_source(files, cfg.image_size, cfg.channels, split, options.cache)
    source.check_seq_len(cfg.seq_len)
    return source
