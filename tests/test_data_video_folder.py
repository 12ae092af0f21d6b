"""video_folder: .npy / .npz / .mp4 / .avi files, splits, lazy reading, corrupt files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from worldmodel.data import DataConfig, DatasetNotFoundError, batch_at, build_source
from worldmodel.data.video_io import read_video, read_video_window, video_length


def write_cv2_video(path: Path, frames: np.ndarray, fourcc: str) -> Path:
    """frames: (T, H, W, 3) uint8 RGB."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (w, h), True)
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def flat_video(length: int, value: int, size: int = 16, channels: int = 3) -> np.ndarray:
    return np.full((length, size, size, channels), value, np.uint8)


def ramp(length: int, base: int, size: int = 16) -> np.ndarray:
    """(T, H, W) with frame t = base + t."""
    return np.broadcast_to((base + np.arange(length, dtype=np.uint8))[:, None, None],
                           (length, size, size)).copy()


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    np.save(tmp_path / "a.npy", ramp(20, 0))  # gray (T, H, W)
    np.savez_compressed(tmp_path / "b.npz", video=flat_video(20, 60))
    np.savez_compressed(tmp_path / "c.npz", image=flat_video(20, 100, channels=1))
    write_cv2_video(tmp_path / "d.mp4", flat_video(20, 150, size=32), "mp4v")
    (tmp_path / "sub").mkdir()
    write_cv2_video(tmp_path / "sub" / "e.avi", flat_video(20, 200, size=24), "MJPG")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_reads_every_file_type(mixed_folder: Path) -> None:
    expected = {"a.npy": 0, "b.npz": 60, "c.npz": 100, "d.mp4": 150, "e.avi": 200}
    for path in sorted(mixed_folder.rglob("*.*")):
        if path.name not in expected:
            continue
        video = read_video(path)
        assert video.dtype == np.uint8 and len(video) == 20 == video_length(path)
        assert abs(float(video[0].mean()) - expected[path.name]) < 3, path.name
        window = read_video_window(path, 5, 4)
        assert len(window) == 4 and abs(float(window[0].mean()) - float(video[5].mean())) < 1


@pytest.mark.parametrize("cache", [True, False])
def test_source_from_mixed_folder(mixed_folder: Path, cache: bool) -> None:
    cfg = DataConfig(name="video_folder", path=str(mixed_folder), image_size=8, channels=3,
                     seq_len=10, options={"test_fraction": 0.0, "cache": cache})
    source = build_source(cfg)
    assert source.num_videos == 5
    batch = batch_at(source, 0, 0, 32, 10)
    assert batch.frames.shape == (32, 10, 3, 8, 8) and batch.frames.dtype == torch.float32
    assert 0 <= batch.frames.min() and batch.frames.max() <= 1
    levels = torch.round(batch.frames.mean((1, 2, 3, 4)) * 255)
    assert len({round(v / 10) for v in levels.tolist()}) >= 4  # windows from many files
    assert torch.equal(batch.frames, batch_at(source, 0, 0, 32, 10).frames)


def test_cached_and_lazy_give_the_same_windows(tmp_path: Path) -> None:
    for i in range(3):
        np.save(tmp_path / f"clip{i}.npy", ramp(30 + i, 50 * i))
    kwargs = dict(name="video_folder", path=str(tmp_path), image_size=16, channels=1, seq_len=12)
    cached = build_source(DataConfig(**kwargs, options={"cache": True, "test_fraction": 0}))
    lazy = build_source(DataConfig(**kwargs, options={"cache": False, "test_fraction": 0}))
    assert torch.equal(batch_at(cached, 1, 2, 8, 12).frames, batch_at(lazy, 1, 2, 8, 12).frames)


def test_split_by_fraction_and_by_subfolders(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(10):
        np.save(flat / f"clip{i}.npy", flat_video(12, 20 * i, channels=1))
    kwargs = dict(name="video_folder", path=str(flat), image_size=16, channels=1, seq_len=12,
                  options={"test_fraction": 0.2})
    train = build_source(DataConfig(**kwargs), "train")
    test = build_source(DataConfig(**kwargs), "test")
    assert train.num_videos == 8 and test.num_videos == 2
    test_levels = torch.round(test.eval_batch(16, 12).frames[:, 0].mean((1, 2, 3)) * 255)
    assert set(test_levels.tolist()) == {160.0, 180.0}  # clip8, clip9: last by name
    nested = tmp_path / "nested"
    for split, value in (("train", 10), ("test", 90)):
        (nested / split).mkdir(parents=True)
        np.save(nested / split / "x.npy", flat_video(12, value, channels=1))
    cfg = DataConfig(name="video_folder", path=str(nested), image_size=16, channels=1,
                     seq_len=12)
    for split, value in (("train", 10), ("test", 90)):
        frames = build_source(cfg, split).eval_batch(2, 12).frames
        assert torch.all(torch.round(frames * 255) == value)


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    cases = {
        "garbage.mp4": lambda p: p.write_bytes(b"\x00\x01not a video" * 50),
        "twokeys.npz": lambda p: np.savez(p, a=np.zeros((3, 4, 4), np.uint8),
                                          b=np.zeros(3, np.uint8)),
        "floats.npy": lambda p: np.save(p, np.zeros((3, 4, 4), np.float32)),
        "broken.npz": lambda p: p.write_bytes(b"PK\x03\x04 truncated zip"),
        "pickled.npy": lambda p: np.save(p, np.array([{"a": 1}], dtype=object)),
    }
    for name, write in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        write(folder / name)
        cfg = DataConfig(name="video_folder", path=str(folder), seq_len=2,
                         options={"test_fraction": 0.0})
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            build_source(cfg)


def test_no_video_files(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no .npy/.npz/.mp4/.avi files"):
        build_source(DataConfig(name="video_folder", path=str(tmp_path)))
