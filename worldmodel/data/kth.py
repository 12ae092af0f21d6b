"""KTH Action: the original ``.avi`` files, grayscale, with the standard person split.

Files are named ``person{NN}_{action}_d{K}_uncomp.avi`` and may sit in one folder
or in one sub-folder per action. Each whole video is one long clip; it is decoded
once with OpenCV, converted to grayscale, resized to ``image_size`` (64 in the
paper) and kept in memory (roughly 0.8 GB for the training persons at 64x64).
Persons 1-16 train, 17-25 test, as in the video-prediction literature.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from worldmodel.data.base import (
    DatasetNotFoundError,
    VideoSource,
    convert_channels,
    not_found,
    prepare_video,
)
from worldmodel.data.options import check_bool, check_int_tuple, set_field
from worldmodel.data.video_io import read_cv2_video, read_many

if TYPE_CHECKING:
    from worldmodel.data.config import DataConfig

KTH_ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
_NAME = re.compile(r"person(\d+)_([a-z]+)_d(\d+)", re.IGNORECASE)
_HOW = (
    "KTH Action: download the six zip files (boxing, handclapping, handwaving, jogging, "
    "running, walking) from https://www.csc.kth.se/cvap/actions/ and unzip them into one "
    "folder (a sub-folder per action is fine); the files are named "
    "person01_walking_d1_uncomp.avi and so on."
)


@dataclasses.dataclass(frozen=True)
class KthOptions:
    """Options of ``kth`` (``data.options``).

    Attributes:
        train_persons: person ids (1..25) of the train split.
        test_persons: person ids of the test split.
        actions: the action classes to load.
        center_crop: crop the 160x120 frames to a centred 120x120 square before resizing
            (default: resize the whole frame, squashing it).
    """

    train_persons: tuple[int, ...] = tuple(range(1, 17))
    test_persons: tuple[int, ...] = tuple(range(17, 26))
    actions: tuple[str, ...] = KTH_ACTIONS
    center_crop: bool = False

    def __post_init__(self) -> None:
        set_field(self, "train_persons", check_int_tuple("train_persons", self.train_persons,
                                                         1, 99))
        set_field(self, "test_persons", check_int_tuple("test_persons", self.test_persons, 1, 99))
        actions = self.actions
        if isinstance(actions, str) or not isinstance(actions, (list, tuple)) or not actions:
            raise ValueError(f"data.options.actions must be a non-empty list of KTH actions "
                             f"{list(KTH_ACTIONS)}, got {actions!r}")
        for action in actions:
            if action not in KTH_ACTIONS:
                raise ValueError(f"data.options.actions: unknown KTH action {action!r}; "
                                 f"expected some of {list(KTH_ACTIONS)}")
        set_field(self, "actions", tuple(actions))
        set_field(self, "center_crop", check_bool("center_crop", self.center_crop))


def parse_kth_name(path: Path) -> tuple[int, str] | None:
    """``(person, action)`` from a KTH file name, or None if it does not follow the pattern."""
    match = _NAME.search(path.name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2).lower()


def find_kth_files(path: str | None, persons: tuple[int, ...], actions: tuple[str, ...]
                   ) -> list[Path]:
    """The ``.avi`` files of the given persons and actions, sorted by name."""
    root = Path(path) if path is not None else None
    if root is None or not root.is_dir():
        raise DatasetNotFoundError(not_found("KTH Action", path, _HOW))
    avis = sorted((p for p in root.rglob("*") if p.suffix.lower() == ".avi" and p.is_file()),
                  key=lambda p: p.name)
    if not avis:
        raise DatasetNotFoundError(not_found("KTH Action: no .avi files", path, _HOW))
    chosen, unnamed = [], []
    for avi in avis:
        parsed = parse_kth_name(avi)
        if parsed is None:
            unnamed.append(avi.name)
        elif parsed[0] in persons and parsed[1] in actions:
            chosen.append(avi)
    if unnamed:
        warnings.warn(f"KTH: ignoring {len(unnamed)} .avi file(s) not named like "
                      f"person01_walking_d1_uncomp.avi, e.g. {unnamed[0]!r}", stacklevel=2)
    if not chosen:
        raise DatasetNotFoundError(not_found(
            f"KTH Action: no .avi file of persons {list(persons)} and actions {list(actions)}",
            path, _HOW))
    return chosen


def load_kth_video(path: Path, image_size: int, channels: int, center_crop: bool = False
                   ) -> np.ndarray:
    """Decode one KTH video: (T, image_size, image_size, channels) uint8, gray content."""
    video = convert_channels(read_cv2_video(path), 1)  # (T, H, W, 1)
    if center_crop:
        h, w = video.shape[1:3]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        video = video[:, top:top + side, left:left + side]
    return prepare_video(video, image_size, channels, str(path))


def build(cfg: DataConfig, options: KthOptions, split: str) -> VideoSource:
    persons = options.train_persons if split == "train" else options.test_persons
    files = find_kth_files(cfg.path, persons, options.actions)
    videos = read_many(
        lambda f: load_kth_video(f, cfg.image_size, cfg.channels, options.center_crop), files)
    source = VideoSource.from_arrays(videos, cfg.image_size, cfg.channels, split, "kth")
    source.check_seq_len(cfg.seq_len)
    return source
