"""Moving MNIST: IDX files (raw and gzipped), generation, the time-major npy file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodel.data import DataConfig, DatasetNotFoundError, batch_at, build_source
from worldmodel.data.moving_mnist import (
    MovingMnistOptions,
    generate_moving_mnist,
    read_idx_images,
)


def write_idx(path: Path, images: np.ndarray, gz: bool, magic: int = 2051) -> Path:
    """Write (N, rows, cols) uint8 images in the IDX3 format."""
    raw = struct.pack(">IIII", magic, *images.shape) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_digits(n: int, seed: int, size: int = 28) -> np.ndarray:
    """Bright squares at random places: enough structure to see digits move."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c = rng.integers(4, size - 12, 2)
        images[i, r:r + 8, c:c + 8] = rng.integers(128, 256)
    return images


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", fake_digits(20, 0), gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", fake_digits(10, 1), gz=False)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_images_roundtrip(tmp_path: Path, gz: bool) -> None:
    images = fake_digits(5, 2)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images, gz)
    assert np.array_equal(read_idx_images(path), images)


def test_corrupt_idx_files_name_the_file(tmp_path: Path) -> None:
    images = fake_digits(5, 3)
    path = write_idx(tmp_path / "bad", images, gz=False)
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="bad.*truncated"):
        read_idx_images(path)
    write_idx(path, images, gz=False, magic=2049)  # a label file's magic
    with pytest.raises(ValueError, match="bad.*magic number 2049"):
        read_idx_images(path)
    gz = write_idx(tmp_path / "bad.gz", images, gz=True)
    gz.write_bytes(gz.read_bytes()[:40])  # truncated gzip stream
    with pytest.raises(ValueError, match="bad.gz"):
        read_idx_images(gz)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="bad"):
        read_idx_images(path)


def test_generate_source_batches(idx_folder: Path) -> None:
    cfg = DataConfig(name="moving_mnist", path=str(idx_folder), image_size=64, channels=1,
                     seq_len=30)
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert len(train.digits) == 20 and len(test.digits) == 10  # train vs t10k files
    batch = batch_at(train, 0, 0, 3, 30)
    assert batch.frames.shape == (3, 30, 1, 64, 64) and batch.frames.dtype == torch.float32
    assert 0 <= batch.frames.min() and batch.frames.max() <= 1 and batch.frames.max() > 0.5
    assert torch.equal(batch.frames, batch_at(train, 0, 0, 3, 30).frames)
    assert not torch.equal(batch.frames, batch_at(train, 0, 1, 3, 30).frames)
    assert not torch.equal(batch.frames, batch_at(test, 0, 0, 3, 30).frames)
    small = build_source(DataConfig(name="moving_mnist", path=str(idx_folder), image_size=32,
                                    channels=3, seq_len=10))
    assert batch_at(small, 0, 0, 2, 10).frames.shape == (2, 10, 3, 32, 32)
    with pytest.raises(ValueError, match="video_len"):
        train.sample(np.random.default_rng(0), 1, 301)


def test_generated_digits_move_within_speed_and_bounce() -> None:
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 0, 0] = 255  # one lit pixel marks the digit's corner
    opts = MovingMnistOptions(num_digits=1, speed_min=2, speed_max=6)
    videos = generate_moving_mnist(np.random.default_rng(4), digit, 6, 120, opts)
    assert videos.shape == (6, 120, 64, 64) and videos.dtype == np.uint8
    pos = np.stack(np.nonzero(videos), 1)  # (B * T, 4): b, t, row, col: one pixel each
    assert len(pos) == 6 * 120
    rows, cols = pos[:, 2].reshape(6, 120), pos[:, 3].reshape(6, 120)
    assert rows.max() <= 64 - 28 and cols.max() <= 64 - 28  # digit stays inside
    step = np.hypot(np.diff(rows, axis=1), np.diff(cols, axis=1))
    assert step.max() <= 6 + 1.5  # rounding to pixels adds at most ~1.4
    assert np.any(np.diff(np.sign(np.diff(cols, axis=1)), axis=1) != 0)  # some bounce


def test_digits_are_combined_with_max() -> None:
    digits = np.full((1, 28, 28), 100, np.uint8)
    videos = generate_moving_mnist(np.random.default_rng(0), digits, 4, 20,
                                   MovingMnistOptions(num_digits=2))
    assert set(np.unique(videos)) <= {0, 100}


def test_idx_missing_for_split(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", fake_digits(3, 0), gz=False)
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte"):
        build_source(DataConfig(name="moving_mnist", path=str(tmp_path)), "test")


def test_mnist_npy_time_major(tmp_path: Path) -> None:
    seqs = np.zeros((20, 10, 64, 64), np.uint8)  # (T, N, H, W) as the standard file
    seqs += (np.arange(20, dtype=np.uint8)[:, None, None, None]
             + 20 * np.arange(10, dtype=np.uint8)[None, :, None, None])
    np.save(tmp_path / "mnist_test_seq.npy", seqs)
    cfg = DataConfig(name="mnist_npy", path=str(tmp_path), image_size=64, channels=1,
                     seq_len=8)
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    batch = batch_at(train, 0, 0, 16, 8)
    assert batch.frames.shape == (16, 8, 1, 64, 64)
    values = torch.round(batch.frames[:, :, 0, 0, 0] * 255).long()
    assert torch.all(values[:, 1:] - values[:, :-1] == 1)  # consecutive time steps
    assert torch.all(values // 20 < 9)  # train: sequences 0..8
    test_values = torch.round(test.eval_batch(4, 8).frames[:, :, 0, 0, 0] * 255).long()
    assert torch.all(test_values // 20 == 9)  # test: the last 10 %
    file = str(tmp_path / "mnist_test_seq.npy")
    also = build_source(DataConfig(name="moving_mnist", path=file, image_size=32,
                                   options={"mode": "npy"}, seq_len=20))
    assert batch_at(also, 0, 0, 2, 20).frames.shape == (2, 20, 3, 32, 32)
    with pytest.raises(ValueError, match="longest of 9 has 20"):
        build_source(DataConfig(name="mnist_npy", path=str(tmp_path), seq_len=21))


def test_mnist_npy_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "mnist_test_seq.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="mnist_test_seq.npy"):
        build_source(DataConfig(name="mnist_npy", path=str(bad)))
    np.save(bad, np.zeros((20, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="mnist_test_seq.npy.*uint8"):
        build_source(DataConfig(name="mnist_npy", path=str(bad)))
