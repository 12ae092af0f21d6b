"""Batches, sequence sources, and the frame helpers every data set shares.

A data set hands out videos as uint8 arrays ``(T, H, W, C)``; a
:class:`SequenceSource` cuts windows of ``seq_len`` frames from them and returns a
:class:`Batch` with ``frames: (B, T, C, H, W)`` float32 in [0, 1].

All randomness of :meth:`SequenceSource.sample` comes from the generator it is
given, so :func:`batch_at` makes a batch a pure function of ``(seed, step, rank)``.
"""

from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from worldmodel.arguments import check_int

# Salt mixed into the generator of ``eval_batch`` so that evaluation windows never
# coincide with the training stream of ``batch_at``.
EVAL_SALT = 0x5EED_E7A1


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing; the message says how to obtain them."""


def not_found(what: str, path: str | Path | None, how: str, option: str = "data.path") -> str:
    """Compose the message of a :class:`DatasetNotFoundError`."""
    where = "no path was given" if path is None else f"nothing usable at {str(path)!r}"
    return (
        f"{what}: {where}. {how} Then point the trainer at it with "
        f"`--set {option}=/path/to/it` (or `{option}:` in the YAML config). "
        "Nothing is downloaded at run time."
    )


@dataclasses.dataclass
class Batch:
    """A batch of training windows.

    Attributes:
        frames: (B, T, C, H, W) float32 in [0, 1].
        actions: (B, T, A) float32 or None; ``actions[:, t]`` led to frame t (zeros at
            an episode's first step).
        rewards: (B, T) float32 or None; reward received on arriving at frame t.
        is_first: (B, T) bool or None; True at an episode's first step.
        continues: (B, T) float32 or None; ``1 - is_terminal``.
    """

    frames: torch.Tensor
    actions: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    is_first: torch.Tensor | None = None
    continues: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.frames.ndim != 5:
            raise ValueError(
                f"Batch.frames must be (B, T, C, H, W), got shape {tuple(self.frames.shape)}"
            )
        bt = tuple(self.frames.shape[:2])
        for name in ("actions", "rewards", "is_first", "continues"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape[:2]) != bt:
                raise ValueError(
                    f"Batch.{name} must start with (B, T) = {bt}, got {tuple(value.shape)}"
                )

    @property
    def batch_size(self) -> int:
        return int(self.frames.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.frames.shape[1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved = {
            f.name: (None if (v := getattr(self, f.name)) is None
                     else v.to(device, non_blocking=non_blocking))
            for f in dataclasses.fields(self)
        }
        return Batch(**moved)


@dataclasses.dataclass
class ObjectReadout:
    """One object per frame, read off the pixels (`SequenceSource.read_objects`).

    Attributes:
        centroid: (B, T, 2) float64 (x, y) in pixels, pixel i spanning [i, i + 1); NaN where
            nothing is visible.
        colour: (B, T) int64 index into `palette`; -1 where nothing is visible.
        visible: (B, T) bool, whether the frame shows the object.
        palette: (P, C) float32 in [0, 1], the colours the object can take.
    """

    centroid: np.ndarray
    colour: np.ndarray
    visible: np.ndarray
    palette: np.ndarray


class SequenceSource(ABC):
    """Random windows of a data set, as :class:`Batch` objects.

    Attributes:
        channels: C of the frames (1 or 3).
        image_size: H = W of the frames.
        action_dim: A of ``Batch.actions``; 0 for plain video (``actions`` is None).
    """

    channels: int
    image_size: int
    action_dim: int = 0
    split: str = "train"

    @abstractmethod
    def sample(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> Batch:
        """``batch_size`` random windows of ``seq_len`` frames; all randomness from ``rng``."""

    def eval_batch(self, num: int, seq_len: int, seed: int = 0) -> Batch:
        """``num`` fixed evaluation windows: the same on every call with the same arguments."""
        return self.sample(self.eval_rng(seed), num, seq_len)

    def eval_rng(self, seed: int) -> np.random.Generator:
        """The generator of the fixed evaluation windows of `seed` (split-specific)."""
        split_id = 0 if self.split == "train" else 1
        return np.random.default_rng([EVAL_SALT, check_seed("seed", seed), split_id])

    def eval_batch_with_events(
        self, num: int, seq_len: int, seed: int = 0
    ) -> tuple[Batch, np.ndarray | None]:
        """`eval_batch` plus the data's ground-truth change flags (B, T) bool, or None.

        A source whose generator knows when its features change (Moving Ball's colour)
        overrides this; the flags are for measurement only and never reach training.
        """
        return self.eval_batch(num, seq_len, seed), None

    def read_objects(self, frames: torch.Tensor) -> ObjectReadout | None:
        """The objects of `frames` (B, T, C, H, W) in [0, 1] read off their pixels, or None.

        A source that knows what its frames show (Moving Ball: one ball on a known
        background, colours from a known palette) overrides this, so that real and
        predicted frames can be compared object by object (`worldmodel.evaluation.tracking`).
        Sources that do not return None and those scores are simply absent.
        """
        return None


def check_seed(name: str, value: int) -> int:
    return check_int(value, name, 0)


def check_batch_args(batch_size: int, seq_len: int) -> None:
    check_int(batch_size, "batch_size", 1)
    check_int(seq_len, "seq_len", 1)


def batch_at(
    source: SequenceSource, seed: int, step: int, batch_size: int, seq_len: int, rank: int = 0
) -> Batch:
    """The training batch of ``(seed, step, rank)``: a pure function of these three numbers.

    Resuming at ``step`` reproduces exactly the batches of an uninterrupted run, and
    data-parallel ranks draw different windows.
    """
    rng = np.random.default_rng(
        [check_seed("seed", seed), check_seed("step", step), check_seed("rank", rank)]
    )
    return source.sample(rng, batch_size, seq_len)


# --------------------------------------------------------------------------- frames


def as_video(video: np.ndarray, origin: str) -> np.ndarray:
    """Check a uint8 video and return it as (T, H, W, C); (T, H, W) gains C = 1."""
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8:
        dtype = getattr(video, "dtype", type(video).__name__)
        raise ValueError(f"{origin}: video must be a uint8 array, got {dtype}")
    if video.ndim == 3:
        video = video[..., None]
    if video.ndim != 4 or video.shape[-1] not in (1, 3, 4) or min(video.shape) == 0:
        raise ValueError(
            f"{origin}: video must be (T, H, W) or (T, H, W, C) with C in 1, 3, 4, "
            f"got shape {video.shape}"
        )
    return video


def convert_channels(video: np.ndarray, channels: int) -> np.ndarray:
    """(T, H, W, C) uint8 -> (T, H, W, ``channels``): RGB(A)->gray by luma, gray->RGB by copy."""
    c = video.shape[-1]
    if c == 4:  # drop alpha
        video, c = video[..., :3], 3
    if c == channels:
        return video
    if channels == 1:  # ITU-R BT.601 luma in fixed point, as OpenCV's RGB2GRAY
        rgb = video.astype(np.uint16)
        gray = (rgb[..., 0] * 77 + rgb[..., 1] * 150 + rgb[..., 2] * 29 + 128) >> 8
        return gray.astype(np.uint8)[..., None]
    if channels == 3:
        return np.repeat(video, 3, axis=-1)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def resize_video(video: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, C) uint8 -> (T, size, size, C) with ``cv2.INTER_AREA`` (no-op if already so)."""
    t, h, w, c = video.shape
    if h == size and w == size:
        return video
    out = np.empty((t, size, size, c), np.uint8)
    for i in range(t):
        frame = cv2.resize(video[i], (size, size), interpolation=cv2.INTER_AREA)
        out[i] = frame.reshape(size, size, c)
    return out


UPSCALE_WARNED = 4  # frames enlarged more than this many times (per side) get a warning
ASPECT_WARNED = 2.0  # frames this much wider than high (or higher than wide) get a warning


def check_frame_size(height: int, width: int, image_size: int, origin: str) -> None:
    """Warn (naming `origin`) when resizing H x W frames to image_size² distorts them: enlarged
    more than `UPSCALE_WARNED` times (a 1 x 1 video becomes flat squares) or squashed from an
    aspect ratio beyond `ASPECT_WARNED` (a 4000 x 3 video)."""
    if height == width == image_size:
        return
    if min(height, width) * UPSCALE_WARNED < image_size:
        warnings.warn(f"{origin}: frames of {height}x{width} pixels are enlarged to "
                      f"{image_size}x{image_size} (more than {UPSCALE_WARNED}x): little of an image is left",
                      stacklevel=3)
    if max(height, width) > ASPECT_WARNED * min(height, width):
        warnings.warn(f"{origin}: frames of {height}x{width} pixels (aspect ratio "
                      f"{max(height, width) / min(height, width):.3g}:1) are squashed to "
                      f"{image_size}x{image_size}: crop them to a square first", stacklevel=3)


def prepare_video(video: np.ndarray, image_size: int, channels: int, origin: str) -> np.ndarray:
    """Any uint8 video -> contiguous (T, image_size, image_size, channels) uint8; frames that
    resizing distorts get a warning naming `origin` (`check_frame_size`)."""
    video = as_video(video, origin)
    check_frame_size(video.shape[1], video.shape[2], image_size, origin)
    video = convert_channels(video, channels)  # before resizing: fewer channels to resize
    return np.ascontiguousarray(resize_video(video, image_size))


def videos_to_frames(videos: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, C) uint8 -> (B, T, C, H, W) float32 in [0, 1]."""
    frames = np.ascontiguousarray(videos.transpose(0, 1, 4, 2, 3)).astype(np.float32)
    frames /= np.float32(255.0)  # numpy: faster than torch here, and the same values
    return torch.from_numpy(frames)


# --------------------------------------------------------------------------- windows


def sample_windows(
    rng: np.random.Generator, lengths: Sequence[int] | np.ndarray, batch_size: int, seq_len: int,
    what: str = "video",
) -> tuple[np.ndarray, np.ndarray]:
    """Choose windows uniformly over all windows of ``seq_len`` steps inside the sequences.

    Returns ``(index, start)``, each (batch_size,) int64. Sequences shorter than
    ``seq_len`` are never chosen; if all are, ValueError says the longest length.
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size == 0:
        raise ValueError(f"cannot sample: the source holds no {what}s")
    counts = np.maximum(lengths - seq_len + 1, 0)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(
            f"no {what} has at least seq_len={seq_len} steps; the longest has "
            f"{int(lengths.max())} (of {lengths.size} {what}s): lower seq_len or add longer {what}s"
        )
    index = rng.choice(lengths.size, size=batch_size, p=counts / total)
    start = rng.integers(0, counts[index])
    return index.astype(np.int64), start.astype(np.int64)


# Reads frames [start, start + length) of video i, prepared: (length, S, S, C) uint8.
WindowReader = Callable[[int, int, int], np.ndarray]


class VideoSource(SequenceSource):
    """Windows of plain videos (no actions) of known lengths.

    Args:
        lengths: number of frames of each video.
        read_window: ``read_window(i, start, length)`` -> (length, S, S, C) uint8 frames of
            video ``i``, already resized and converted to ``channels``.
        image_size: S.
        channels: C.
        split: "train" or "test" (changes the stream of :meth:`eval_batch`).
        name: data-set name used in messages.
    """

    def __init__(
        self, lengths: Sequence[int], read_window: WindowReader, image_size: int, channels: int,
        split: str = "train", name: str = "video",
    ) -> None:
        self.lengths = np.asarray(lengths, np.int64)
        self.read_window = read_window
        self.image_size = image_size
        self.channels = channels
        self.action_dim = 0
        self.split = split
        self.name = name
        self._warned: set[int] = set()

    @classmethod
    def from_arrays(
        cls, videos: Sequence[np.ndarray], image_size: int, channels: int,
        split: str = "train", name: str = "video",
    ) -> VideoSource:
        """A source over in-memory prepared videos, each (T, image_size, image_size, channels)."""
        stored = list(videos)

        def read(i: int, start: int, length: int) -> np.ndarray:
            return stored[i][start:start + length]

        return cls([len(v) for v in stored], read, image_size, channels, split, name)

    @property
    def num_videos(self) -> int:
        return int(self.lengths.size)

    def check_seq_len(self, seq_len: int) -> None:
        """Warn (once per seq_len) about videos too short for ``seq_len``; raise if all are."""
        if seq_len in self._warned:
            return
        short = int((self.lengths < seq_len).sum())
        if short == self.lengths.size:
            longest = int(self.lengths.max()) if self.lengths.size else 0
            raise ValueError(
                f"{self.name} ({self.split}): no video has at least seq_len={seq_len} frames; "
                f"the longest of {self.lengths.size} has {longest}: lower data.seq_len"
            )
        if short:
            warnings.warn(
                f"{self.name} ({self.split}): skipping {short} of {self.lengths.size} videos "
                f"shorter than seq_len={seq_len}", stacklevel=3,
            )
        self._warned.add(seq_len)

    def sample(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> Batch:
        check_batch_args(batch_size, seq_len)
        self.check_seq_len(seq_len)
        index, start = sample_windows(rng, self.lengths, batch_size, seq_len)
        out = np.empty((batch_size, seq_len, self.image_size, self.image_size, self.channels),
                       np.uint8)
        for b, (i, s) in enumerate(zip(index.tolist(), start.tolist())):
            out[b] = self.read_window(i, s, seq_len)
        return Batch(frames=videos_to_frames(out))

    def __repr__(self) -> str:
        return (f"VideoSource(name={self.name!r}, split={self.split!r}, videos={self.num_videos}, "
                f"frames={int(self.lengths.sum())}, size={self.image_size}, "
                f"channels={self.channels})")


# --------------------------------------------------------------------------- files


def split_files(
    files: Sequence[Path], split: str, test_fraction: float, what: str
) -> list[Path]:
    """The files of ``split`` ("train" | "test"): the last ``test_fraction`` by sorted name are test.

    With ``test_fraction > 0`` and at least two files, the test split holds at least one.
    """
    files = sorted(files, key=lambda p: p.name)
    n_test = int(round(len(files) * test_fraction))
    if test_fraction > 0 and n_test == 0 and len(files) > 1:
        n_test = 1
    chosen = files[len(files) - n_test:] if split == "test" else files[:len(files) - n_test]
    if not chosen:
        raise ValueError(
            f"the {split!r} split of {len(files)} {what} file(s) is empty with "
            f"data.options.test_fraction={test_fraction}: add files, change test_fraction, "
            f"or use train/ and test/ sub-folders"
        )
    return chosen


def split_dir(root: Path, split: str) -> Path | None:
    """``root/split`` if ``root`` has both ``train/`` and ``test/`` sub-folders, else None."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / split
    return None


def check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split
