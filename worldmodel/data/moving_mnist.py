"""Moving MNIST: the standard ``mnist_test_seq.npy`` file, or long generated sequences.

* ``mode: npy`` (also the data-set name ``mnist_npy``): the 20-frame file of
  Srivastava et al. (2015), uint8 of shape (20, 10000, 64, 64), time-major.
* ``mode: generate`` (default): ``num_digits`` digits from MNIST IDX files bounce
  in a ``canvas`` x ``canvas`` frame at speeds uniform in [speed_min, speed_max]
  px/frame and are combined with max, as in the paper's 300-frame data set. The
  train split uses ``train-images-idx3-ubyte[.gz]``, the test split
  ``t10k-images-idx3-ubyte[.gz]``. Fashion-MNIST files have the same format.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from worldmodel.data.base import (
    Batch,
    DatasetNotFoundError,
    SequenceSource,
    VideoSource,
    check_batch_args,
    convert_channels,
    not_found,
    prepare_video,
    resize_video,
    videos_to_frames,
)
from worldmodel.data.options import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    set_field,
)

if TYPE_CHECKING:
    from worldmodel.data.config import DataConfig

IDX_IMAGES_MAGIC = 2051
_IDX_PREFIX = {"train": "train", "test": "t10k"}

_MNIST_HOW = (
    "Moving MNIST generation needs MNIST IDX image files (train-images-idx3-ubyte[.gz] and "
    "t10k-images-idx3-ubyte[.gz], from the MNIST site or any mirror) in one folder. "
    "Fashion-MNIST files have the same format and make a real stand-in: "
    "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist "
    "(`dpkg -L dataset-fashion-mnist` lists them)."
)
_NPY_HOW = (
    "The standard Moving MNIST test set is the file mnist_test_seq.npy "
    "(uint8, shape (20, 10000, 64, 64), time-major) from "
    "http://www.cs.toronto.edu/~nitish/unsupervised_video/ ; pass the file or its folder, "
    "or generate long sequences from MNIST IDX files with data.options.mode=generate."
)


@dataclasses.dataclass(frozen=True)
class MovingMnistOptions:
    """Options of ``moving_mnist`` / ``mnist_npy`` (``data.options``).

    Attributes:
        mode: "generate" (digits from IDX files at data.path) or "npy" (mnist_test_seq.npy).
        video_len: length of a generated sequence; windows have seq_len <= video_len.
        num_digits: digits per generated video.
        canvas: side of the generated frame in pixels (resized to image_size if different).
        speed_min, speed_max: digit speed range in px/frame.
        test_fraction: npy mode: the last fraction of the file's sequences forms the test split.
        time_major: npy mode: the array is (T, N, H, W) (the standard file) rather than (N, T, H, W).
    """

    mode: str = "generate"
    video_len: int = 300
    num_digits: int = 2
    canvas: int = 64
    speed_min: float = 2.0
    speed_max: float = 6.0
    test_fraction: float = 0.1
    time_major: bool = True

    def __post_init__(self) -> None:
        set_field(self, "mode", check_choice("mode", self.mode, ("generate", "npy")))
        set_field(self, "video_len", check_int("video_len", self.video_len, 1))
        set_field(self, "num_digits", check_int("num_digits", self.num_digits, 1, 16))
        set_field(self, "canvas", check_int("canvas", self.canvas, 8))
        set_field(self, "speed_min", check_float("speed_min", self.speed_min, 0.0))
        set_field(self, "speed_max", check_float("speed_max", self.speed_max, 0.0))
        if self.speed_min > self.speed_max:
            raise ValueError(f"data.options.speed_min={self.speed_min} must not exceed "
                             f"data.options.speed_max={self.speed_max}")
        set_field(self, "test_fraction", check_float("test_fraction", self.test_fraction, 0, 1))
        set_field(self, "time_major", check_bool("time_major", self.time_major))


# --------------------------------------------------------------------------- IDX files


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX3 image file (gzipped or raw): (N, rows, cols) uint8.

    Raises ValueError naming the file if it is unreadable, has the wrong magic
    number (2051), or its size disagrees with its header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: cannot read IDX file ({err})") from err
    if len(raw) < 16:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs 16)")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IDX_IMAGES_MAGIC:
        raise ValueError(f"{path}: not an IDX image file (magic number {magic}, expected "
                         f"{IDX_IMAGES_MAGIC})")
    expected = 16 + n * rows * cols
    if n == 0 or rows == 0 or cols == 0 or len(raw) != expected:
        raise ValueError(f"{path}: truncated or corrupt IDX file: {len(raw)} bytes, the header "
                         f"({n} images of {rows}x{cols}) says {expected}")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)


def find_idx_images(folder: str | Path | None, split: str) -> Path:
    """The IDX image file of ``split`` in ``folder``; DatasetNotFoundError if absent."""
    if folder is None or not Path(folder).is_dir():
        raise DatasetNotFoundError(not_found("Moving MNIST (generate)", folder, _MNIST_HOW))
    prefix = _IDX_PREFIX[split]
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"):
        for candidate in (Path(folder) / name, Path(folder) / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetNotFoundError(not_found(
        f"Moving MNIST (generate): no {prefix}-images-idx3-ubyte[.gz] for the {split} split",
        folder, _MNIST_HOW))


# --------------------------------------------------------------------------- generation


def generate_moving_mnist(
    rng: np.random.Generator, digits: np.ndarray, batch: int, length: int,
    opts: MovingMnistOptions | None = None,
) -> np.ndarray:
    """Generate Moving MNIST videos from a pool of digit images.

    Args:
        rng: the only source of randomness.
        digits: (N, d, d) uint8 digit images.
        batch, length: B, T.
        opts: canvas size, number of digits, speed range.

    Returns:
        (B, T, canvas, canvas) uint8: digits bouncing off the walls, combined with max.
    """
    opts = opts or MovingMnistOptions()
    size, d, k = opts.canvas, digits.shape[1], opts.num_digits
    travel = size - d
    if travel < 1 or opts.speed_max >= travel:
        raise ValueError(f"data.options.canvas={size} leaves {travel} px of travel for "
                         f"{d}-px digits; it must exceed speed_max={opts.speed_max}")
    chosen = rng.integers(0, len(digits), (batch, k))
    speed = rng.uniform(opts.speed_min, opts.speed_max, (batch, k))
    angle = rng.uniform(0.0, 2 * np.pi, (batch, k))
    velocity = speed[..., None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)  # (B, K, 2)
    start = rng.uniform(0.0, travel, (batch, k, 2))
    steps = np.arange(length, dtype=np.float64)
    unfolded = start[:, :, None, :] + velocity[:, :, None, :] * steps[:, None]  # (B, K, T, 2)
    # Bouncing in closed form: fold the straight-line coordinate into [0, travel].
    corner = np.rint(travel - np.abs(np.mod(unfolded, 2 * travel) - travel)).astype(np.int64)

    videos = np.zeros((batch, length, size, size), np.uint8)
    b_index = np.arange(batch)[:, None, None, None]
    t_index = np.arange(length)[None, :, None, None]
    offsets = np.arange(d)
    for j in range(k):
        rows = (corner[:, j, :, 1, None] + offsets)[..., :, None]  # (B, T, d, 1)
        cols = (corner[:, j, :, 0, None] + offsets)[..., None, :]  # (B, T, 1, d)
        where = (b_index, t_index, rows, cols)
        videos[where] = np.maximum(videos[where], digits[chosen[:, j]][:, None])
    return videos


class MovingMnistSource(SequenceSource):
    """Generated Moving MNIST windows of seq_len <= ``options.video_len`` frames.

    Args:
        digits: (N, d, d) uint8 digit images (train or t10k IDX images).
        image_size: S; channels: C; options: generation options; split: "train" | "test".
    """

    def __init__(
        self, digits: np.ndarray, image_size: int, channels: int,
        options: MovingMnistOptions | None = None, split: str = "train",
    ) -> None:
        self.digits = digits
        self.image_size = image_size
        self.channels = channels
        self.action_dim = 0
        self.split = split
        self.options = options or MovingMnistOptions()
        generate_moving_mnist(np.random.default_rng(0), digits[:1], 1, 1, self.options)

    def sample(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> Batch:
        check_batch_args(batch_size, seq_len)
        if seq_len > self.options.video_len:
            raise ValueError(f"seq_len={seq_len} exceeds data.options.video_len="
                             f"{self.options.video_len} of generated Moving MNIST")
        # A window of a longer generated video has the same law as a video generated from
        # a random start, so exactly seq_len frames are generated.
        videos = generate_moving_mnist(rng, self.digits, batch_size, seq_len, self.options)
        flat = videos.reshape(batch_size * seq_len, *videos.shape[2:])[..., None]
        flat = resize_video(convert_channels(flat, self.channels), self.image_size)
        return Batch(frames=videos_to_frames(flat.reshape(batch_size, seq_len, *flat.shape[1:])))

    def __repr__(self) -> str:
        return (f"MovingMnistSource(split={self.split!r}, digits={len(self.digits)}, "
                f"size={self.image_size}, channels={self.channels}, options={self.options})")


# --------------------------------------------------------------------------- npy file


def load_mnist_npy(path: str | Path | None, time_major: bool = True) -> np.ndarray:
    """Memory-map ``mnist_test_seq.npy`` (a file or a folder holding it): (N, T, H, W) view."""
    file = Path(path) if path is not None else None
    if file is not None and file.is_dir():
        file = file / "mnist_test_seq.npy"
    if file is None or not file.is_file():
        raise DatasetNotFoundError(not_found("Moving MNIST (npy)", path, _NPY_HOW))
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{file}: not a readable .npy file ({err})") from err
    if array.dtype != np.uint8 or array.ndim != 4:
        raise ValueError(f"{file}: expected a uint8 array (T, N, H, W), got {array.dtype} "
                         f"{array.shape}")
    return array.transpose(1, 0, 2, 3) if time_major else array


def build_npy_source(
    path: str | Path | None, image_size: int, channels: int, options: MovingMnistOptions,
    split: str,
) -> VideoSource:
    """Windows of the sequences of ``mnist_test_seq.npy``; the last test_fraction are test."""
    sequences = load_mnist_npy(path, options.time_major)  # (N, T, H, W)
    n = sequences.shape[0]
    n_test = int(round(n * options.test_fraction))
    if options.test_fraction > 0 and n_test == 0 and n > 1:
        n_test = 1
    first, count = (n - n_test, n_test) if split == "test" else (0, n - n_test)
    if count == 0:
        raise ValueError(f"the {split!r} split of {n} Moving MNIST sequences is empty with "
                         f"data.options.test_fraction={options.test_fraction}")
    origin = str(path)

    def read(i: int, start: int, length: int) -> np.ndarray:
        window = np.asarray(sequences[first + i, start:start + length])
        return prepare_video(window, image_size, channels, origin)

    lengths = [sequences.shape[1]] * count
    return VideoSource(lengths, read, image_size, channels, split, "moving_mnist (npy)")


def build(cfg: DataConfig, options: MovingMnistOptions, split: str) -> SequenceSource:
    if options.mode == "npy":
        source = build_npy_source(cfg.path, cfg.image_size, cfg.channels, options, split)
        source.check_seq_len(cfg.seq_len)
        return source
    if cfg.seq_len > options.video_len:
        raise ValueError(f"data.seq_len={cfg.seq_len} exceeds data.options.video_len="
                         f"{options.video_len} of generated Moving MNIST")
    digits = read_idx_images(find_idx_images(cfg.path, split))
    return MovingMnistSource(digits, cfg.image_size, cfg.channels, options, split)
