"""Batch, batch_at, DataConfig, option validation and the frame helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodel.data import (
    Batch,
    DataConfig,
    DatasetNotFoundError,
    VideoSource,
    batch_at,
    build_source,
)
from worldmodel.data.base import (
    convert_channels,
    prepare_video,
    resize_video,
    sample_windows,
    split_files,
    videos_to_frames,
)


def ramp_videos(lengths: list[int], size: int = 8) -> list[np.ndarray]:
    """Video i has frame t filled with 10 * i + t (so a window shows where it came from)."""
    return [
        np.broadcast_to((10 * i + np.arange(n, dtype=np.uint8))[:, None, None, None],
                        (n, size, size, 1)).copy()
        for i, n in enumerate(lengths)
    ]


def test_batch_checks_shapes_and_moves() -> None:
    batch = Batch(frames=torch.zeros(2, 3, 1, 4, 4), rewards=torch.zeros(2, 3))
    moved = batch.to("cpu")
    assert moved.frames.shape == (2, 3, 1, 4, 4) and moved.actions is None
    assert moved.batch_size == 2 and moved.seq_len == 3
    with pytest.raises(ValueError, match="frames"):
        Batch(frames=torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="rewards"):
        Batch(frames=torch.zeros(2, 3, 1, 4, 4), rewards=torch.zeros(3, 2))


def test_videos_to_frames_layout_and_range() -> None:
    videos = np.zeros((2, 3, 4, 5, 3), np.uint8)
    videos[1, 2, 3, 4, 2] = 255
    frames = videos_to_frames(videos)
    assert frames.shape == (2, 3, 3, 4, 5) and frames.dtype == torch.float32
    assert frames[1, 2, 2, 3, 4] == 1.0 and frames.sum() == 1.0


def test_convert_channels_and_resize() -> None:
    rgb = np.zeros((2, 6, 6, 3), np.uint8)
    rgb[..., 0] = 255
    gray = convert_channels(rgb, 1)
    assert gray.shape == (2, 6, 6, 1) and int(gray[0, 0, 0, 0]) == 77  # BT.601 red weight
    assert convert_channels(gray, 3).shape == (2, 6, 6, 3)
    rgba = np.zeros((1, 4, 4, 4), np.uint8)
    assert convert_channels(rgba, 3).shape == (1, 4, 4, 3)
    assert resize_video(rgb, 3).shape == (2, 3, 3, 3)
    assert resize_video(gray, 12).shape == (2, 12, 12, 1)
    video = prepare_video(np.zeros((4, 10, 12), np.uint8), 8, 3, "x")
    assert video.shape == (4, 8, 8, 3) and video.flags.c_contiguous
    with pytest.raises(ValueError, match="uint8"):
        prepare_video(np.zeros((4, 8, 8), np.float32), 8, 1, "clip.npy")


def test_video_source_windows_and_batch_at_determinism() -> None:
    source = VideoSource.from_arrays(ramp_videos([30, 40]), 8, 1)
    a = batch_at(source, seed=3, step=7, batch_size=6, seq_len=10)
    b = batch_at(source, seed=3, step=7, batch_size=6, seq_len=10)
    assert torch.equal(a.frames, b.frames)
    assert a.frames.shape == (6, 10, 1, 8, 8) and a.actions is None
    other_step = batch_at(source, seed=3, step=8, batch_size=6, seq_len=10)
    other_rank = batch_at(source, seed=3, step=7, batch_size=6, seq_len=10, rank=1)
    assert not torch.equal(a.frames, other_step.frames)
    assert not torch.equal(a.frames, other_rank.frames)
    values = torch.round(a.frames[:, :, 0, 0, 0] * 255)
    assert torch.all(values[:, 1:] - values[:, :-1] == 1)  # consecutive frames of one video
    e1, e2 = source.eval_batch(4, 10), source.eval_batch(4, 10)
    assert torch.equal(e1.frames, e2.frames)
    with pytest.raises(ValueError, match="seed"):
        batch_at(source, seed=-1, step=0, batch_size=1, seq_len=1)


def test_video_source_skips_short_videos_and_says_longest() -> None:
    source = VideoSource.from_arrays(ramp_videos([5, 20]), 8, 1)
    with pytest.warns(UserWarning, match="skipping 1 of 2"):
        batch = source.sample(np.random.default_rng(0), 8, 12)
    assert torch.all(torch.round(batch.frames[:, 0, 0, 0, 0] * 255) >= 10)  # from video 1
    with pytest.raises(ValueError, match="longest of 2 has 20"):
        source.sample(np.random.default_rng(0), 2, 21)


def test_sample_windows_is_uniform_over_windows() -> None:
    index, start = sample_windows(np.random.default_rng(0), [10, 100], 4000, 10)
    assert set(np.unique(index)) == {0, 1}
    assert (index == 0).mean() < 0.05  # 1 window against 91
    assert np.all(start[index == 0] == 0) and start.max() <= 90


def test_split_files_is_deterministic_and_disjoint() -> None:
    files = [Path(f"clip{i:02d}.npy") for i in range(20)]
    train = split_files(files[::-1], "train", 0.1, "video")
    test = split_files(files, "test", 0.1, "video")
    assert [p.name for p in test] == ["clip18.npy", "clip19.npy"]
    assert len(train) == 18 and not set(train) & set(test)
    assert len(split_files(files[:2], "test", 0.01, "video")) == 1
    with pytest.raises(ValueError, match="test_fraction"):
        split_files(files[:1], "test", 0.1, "video")


def test_data_config_validates_fields() -> None:
    cfg = DataConfig()
    assert cfg.name == "moving_ball" and cfg.image_size == 32 and cfg.options == {}
    for kwargs, field in [
        ({"name": "cifar"}, "data.name"),
        ({"channels": 2}, "data.channels"),
        ({"image_size": 4}, "data.image_size"),
        ({"seq_len": 0}, "data.seq_len"),
        ({"batch_size": True}, "data.batch_size"),
        ({"options": [1]}, "data.options"),
        ({"path": "/tmp"}, "data.path"),  # moving_ball takes no path
    ]:
        with pytest.raises(ValueError, match=field):
            DataConfig(**kwargs)


@pytest.mark.parametrize("name", ["moving_ball", "moving_mnist", "mnist_npy", "kth",
                                  "video_folder", "episodes"])
def test_unknown_option_is_named_with_allowed_list(name: str) -> None:
    with pytest.raises(ValueError, match="unknown option 'colour_fade'.*allowed options"):
        DataConfig(name=name, options={"colour_fade": 1})


@pytest.mark.parametrize("name, options, field", [
    ("moving_ball", {"lam": 1.5}, "lam"),
    ("moving_ball", {"lam": "high"}, "lam"),
    ("moving_ball", {"palette": [[1, 2, 3]]}, "palette"),
    ("moving_ball", {"speed": [3, 1]}, "speed"),
    ("moving_mnist", {"mode": "zip"}, "mode"),
    ("moving_mnist", {"num_digits": 2.5}, "num_digits"),
    ("mnist_npy", {"mode": "generate"}, "mode"),
    ("kth", {"train_persons": [0]}, "train_persons"),
    ("kth", {"actions": ["dancing"]}, "actions"),
    ("video_folder", {"cache": "yes"}, "cache"),
    ("episodes", {"test_fraction": -0.1}, "test_fraction"),
])
def test_bad_option_values_are_named(name: str, options: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"data.options.{field}"):
        DataConfig(name=name, options=options)


@pytest.mark.parametrize("name, hint", [
    ("moving_mnist", "dataset-fashion-mnist"),
    ("mnist_npy", "mnist_test_seq.npy"),
    ("kth", "csc.kth.se"),
    ("video_folder", "train/ and test/"),
    ("episodes", "save_episode"),
])
def test_missing_path_gives_instructions(name: str, hint: str, tmp_path: Path) -> None:
    for path in (None, str(tmp_path / "absent")):
        with pytest.raises(DatasetNotFoundError) as info:
            build_source(DataConfig(name=name, path=path))
        message = str(info.value)
        assert hint in message and "--set data.path=" in message


def test_build_source_rejects_bad_split() -> None:
    with pytest.raises(ValueError, match="split"):
        build_source(DataConfig(), split="valid")
