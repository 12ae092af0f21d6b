"""KTH Action: .avi files read with OpenCV, grayscale, person split, short and corrupt files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from worldmodel.data import DataConfig, DatasetNotFoundError, build_source
from worldmodel.data.kth import parse_kth_name


def write_avi(path: Path, length: int, value: int) -> Path:
    """A small MJPG .avi (KTH's 160x120 shrunk to 40x30) with every pixel = value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (40, 30), True)
    assert writer.isOpened()
    frame = np.full((30, 40, 3), value, np.uint8)
    for _ in range(length):
        writer.write(frame)
    writer.release()
    return path


def person_level(person: int) -> int:
    return 10 * person


@pytest.fixture
def kth_root(tmp_path: Path) -> Path:
    for person, action, scenario in [(1, "walking", 1), (2, "boxing", 2), (16, "running", 3),
                                     (17, "walking", 1), (25, "handclapping", 4)]:
        name = f"person{person:02d}_{action}_d{scenario}_uncomp.avi"
        write_avi(tmp_path / action / name, 24, person_level(person))
    return tmp_path


def gray_levels(frames: torch.Tensor) -> set[int]:
    """Person ids read back from the gray level of each window."""
    means = frames.mean(dim=(1, 2, 3, 4)) * 255 / person_level(1)
    return {int(round(v)) for v in means.tolist()}


def test_person_split_and_grayscale(kth_root: Path) -> None:
    cfg = DataConfig(name="kth", path=str(kth_root), image_size=16, channels=1, seq_len=10)
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert train.num_videos == 3 and test.num_videos == 2
    batch = train.eval_batch(40, 10)
    assert batch.frames.shape == (40, 10, 1, 16, 16) and batch.frames.dtype == torch.float32
    assert gray_levels(batch.frames) == {1, 2, 16}
    assert gray_levels(test.eval_batch(40, 10).frames) == {17, 25}
    rgb = build_source(DataConfig(name="kth", path=str(kth_root), image_size=16, channels=3,
                                  seq_len=10))
    frames = rgb.eval_batch(2, 10).frames
    assert frames.shape == (2, 10, 3, 16, 16)
    assert torch.equal(frames[:, :, 0], frames[:, :, 1])  # gray content in three channels


def test_person_and_action_options(kth_root: Path) -> None:
    cfg = DataConfig(name="kth", path=str(kth_root), image_size=8, channels=1, seq_len=4,
                     options={"train_persons": [2, 17], "actions": ["boxing", "walking"],
                              "center_crop": True})
    source = build_source(cfg, "train")
    assert source.num_videos == 2
    assert gray_levels(source.eval_batch(30, 4).frames) == {2, 17}


def test_short_videos_are_skipped_with_warning(kth_root: Path) -> None:
    write_avi(kth_root / "walking" / "person03_walking_d1_uncomp.avi", 5, person_level(3))
    cfg = DataConfig(name="kth", path=str(kth_root), image_size=8, channels=1, seq_len=10)
    with pytest.warns(UserWarning, match="skipping 1 of 4 videos shorter than seq_len=10"):
        source = build_source(cfg)
    assert 3 not in gray_levels(source.eval_batch(30, 10).frames)
    with pytest.raises(ValueError, match="no video has at least seq_len=30.*has 24"):
        build_source(DataConfig(name="kth", path=str(kth_root), image_size=8, seq_len=30))


def test_corrupt_avi_is_named(kth_root: Path) -> None:
    bad = kth_root / "jogging" / "person05_jogging_d1_uncomp.avi"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF not really an avi" * 40)
    with pytest.raises(ValueError, match="person05_jogging_d1_uncomp.avi"):
        build_source(DataConfig(name="kth", path=str(kth_root), image_size=8, seq_len=4))


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no .avi files"):
        build_source(DataConfig(name="kth", path=str(tmp_path)))
    write_avi(tmp_path / "person20_walking_d1_uncomp.avi", 5, 10)
    with pytest.raises(DatasetNotFoundError, match="no .avi file of persons"):
        build_source(DataConfig(name="kth", path=str(tmp_path)), "train")
    write_avi(tmp_path / "intro.avi", 5, 10)
    with pytest.warns(UserWarning, match="intro.avi"):
        build_source(DataConfig(name="kth", path=str(tmp_path), seq_len=4), "test")


def test_parse_kth_name() -> None:
    assert parse_kth_name(Path("person07_handwaving_d3_uncomp.avi")) == (7, "handwaving")
    assert parse_kth_name(Path("Person12_Walking_d1_uncomp.AVI")) == (12, "walking")
    assert parse_kth_name(Path("walking.avi")) is None
