"""The data configuration: which data set, where, and how to cut it.

:class:`DataConfig` checks ``name`` and ``options`` against :data:`DATASETS`, the table of
data sets (each one's options class and builder). The table lives here but starts empty:
:mod:`worldmodel.data.registry` fills it when it imports the loaders, and importing any
``worldmodel.data`` module runs the package's ``__init__``, which imports the registry. So
this module imports no loader, and every loader can import :class:`DataConfig` from it
without an import cycle.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from worldmodel.arguments import check_int, is_int
from worldmodel.data.base import SequenceSource
from worldmodel.data.options import parse_options


class DatasetEntry(NamedTuple):
    """A data set: its options dataclass and ``build(cfg, options, split) -> SequenceSource``."""

    options: type
    build: Callable[..., SequenceSource]


# name -> entry; filled by worldmodel.data.registry (see the module docstring)
DATASETS: dict[str, DatasetEntry] = {}


def _int_field(config: Any, name: str, lo: int, hi: int) -> None:
    object.__setattr__(config, name, check_int(getattr(config, name), f"data.{name}", lo, hi))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set to train on and how to cut it.

    Attributes:
        name: moving_ball | moving_mnist | mnist_npy | kth | video_folder | episodes.
        path: file or folder of the data set; required by all but moving_ball.
        image_size: frames are resized (cv2.INTER_AREA) to image_size x image_size.
        channels: 1 or 3; gray and RGB are converted as needed.
        seq_len: frames per training window.
        batch_size: windows per batch.
        options: data-set specific options, checked against the data set's options class
            (e.g. :class:`~worldmodel.data.moving_ball.MovingBallOptions`).
    """

    name: str = "moving_ball"
    path: str | None = None
    image_size: int = 32
    channels: int = 3
    seq_len: int = 100
    batch_size: int = 100
    options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"data.name must be one of {list(DATASETS)}, got {self.name!r}")
        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)) or str(self.path) == "":
                raise ValueError(f"data.path must be a non-empty path string or null, "
                                 f"got {self.path!r}")
            object.__setattr__(self, "path", os.fspath(self.path))
        if self.name == "moving_ball" and self.path is not None:
            raise ValueError(f"data.path must be null for moving_ball (it is generated), "
                             f"got {self.path!r}")
        _int_field(self, "image_size", 8, 4096)
        if not is_int(self.channels) or self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels!r}")
        object.__setattr__(self, "channels", int(self.channels))
        _int_field(self, "seq_len", 1, 10**7)
        _int_field(self, "batch_size", 1, 10**7)
        if not isinstance(self.options, Mapping):
            raise ValueError(f"data.options must be a mapping, got {self.options!r}")
        object.__setattr__(self, "options", dict(self.options))
        self.parsed_options()  # reject unknown or bad options now

    def parsed_options(self) -> Any:
        """The options as the data set's frozen options dataclass."""
        entry = DATASETS[self.name]
        opts = parse_options(entry.options, self.options, self.name)
        if self.name == "mnist_npy":
            if self.options.get("mode", "npy") != "npy":
                raise ValueError(f"data.options.mode must be 'npy' for mnist_npy, got "
                                 f"{self.options['mode']!r} (use name moving_mnist to generate)")
            opts = dataclasses.replace(opts, mode="npy")
        return opts


__all__ = ["DATASETS", "DataConfig", "DatasetEntry"]
