"""Issue 18 for the data layer: files whose headers claim gigabytes, episodes too short to
sample, action sizes that do not fit the model."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from test_data_episodes import make_episode

from worldmodel.data import DataConfig, build_source
from worldmodel.data.episodes import EpisodeSource, save_episode
from worldmodel.training import Trainer, load_config


def lying_npy(path: Path, shape: tuple[int, ...]) -> Path:
    """A valid .npy header claiming `shape` uint8, followed by a few bytes only."""
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64))
    return path


def test_an_npy_header_claiming_terabytes_names_the_file_before_allocating(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((12, 16, 16, 1), np.uint8))
    bad = lying_npy(folder / "b.npy", (100_000, 4096, 4096, 1))  # 1.6 TiB in 200 bytes
    assert bad.stat().st_size < 300
    cfg = DataConfig(name="video_folder", path=str(folder), image_size=16, channels=1, seq_len=4,
                     options={"test_fraction": 0})
    claims = r"its header claims an array of shape \(100000, 4096, 4096, 1\).*but the file holds 64"
    with pytest.raises(ValueError, match=rf"{bad}: {claims}"):
        build_source(cfg, "train")


def test_an_npz_member_claiming_more_than_it_stores_is_named(tmp_path):
    import zipfile

    from worldmodel.episode_format import load_episode

    good = save_episode(tmp_path / "ep.npz", make_episode(1, 6))
    lying = lying_npy(tmp_path / "image.npy", (10**6, 64, 64, 3))
    crafted = tmp_path / "crafted.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(crafted, "w") as dst:
        for info in src.infolist():
            data = lying.read_bytes() if info.filename == "image.npy" else src.read(info)
            dst.writestr(info.filename, data)
    with pytest.raises(ValueError, match=rf"{crafted} \(array 'image'\): its header claims"):
        load_episode(crafted)


def test_episodes_shorter_than_seq_len_are_counted_in_one_warning(tmp_path):
    for i, length in enumerate([10, 3, 4, 12]):
        save_episode(tmp_path / f"ep{i}.npz", make_episode(i + 1, length))
    cfg = DataConfig(name="episodes", path=str(tmp_path), image_size=8, channels=3, seq_len=8,
                     options={"test_fraction": 0})
    with pytest.warns(UserWarning, match=r"2 of 4 episodes are shorter than data\.seq_len=8 steps"):
        build_source(cfg, "train")


def test_an_odd_episode_names_its_file_and_the_first_episodes_action_size(tmp_path):
    save_episode(tmp_path / "ep0.npz", make_episode(1, 6, action_dim=3))
    odd = save_episode(tmp_path / "ep1.npz", make_episode(2, 6, action_dim=2))
    with pytest.raises(ValueError, match=rf"{odd}: its actions have size 2, but those of "
                                         rf".*ep0\.npz have size 3"):
        EpisodeSource.from_directory(tmp_path, image_size=8)


def test_an_action_size_that_does_not_fit_the_model_is_named_at_start(tmp_path):
    for i in range(3):
        save_episode(tmp_path / "data" / f"ep{i}.npz", make_episode(i + 1, 10, action_dim=3))
    cfg = load_config(None, [
        "data.name=episodes", f"data.path={tmp_path / 'data'}", "data.image_size=16", "data.channels=3",
        "data.seq_len=4", "data.batch_size=2", "model.image_size=16", "model.channels=3",
        "model.action_dim=2", f"out_dir={tmp_path / 'run'}", "steps=2", "media_every=0", "event_every=0"])
    with pytest.raises(ValueError, match=rf"data \(data\.path='{tmp_path / 'data'}'\) has actions of size 3, "
                                         r"but model\.action_dim=2: set model\.action_dim=3"):
        Trainer(cfg, progress=False)


# ---------------------------------------------------------------------------- issue 27
@pytest.mark.parametrize("shape, match", [
    ((12, 1, 1, 1), r"frames of 1x1 pixels are enlarged to 16x16 \(more than 4x\)"),
    ((12, 3, 4000, 1), r"frames of 3x4000 pixels \(aspect ratio 1\.33e\+03:1\) are squashed to 16x16"),
])
def test_a_video_that_resizing_distorts_is_taken_with_a_warning_naming_it(tmp_path, shape, match):
    folder = tmp_path / "videos"
    folder.mkdir()
    np.save(folder / "fine.npy", np.zeros((12, 16, 16, 1), np.uint8))
    odd = folder / "odd.npy"
    np.save(odd, np.zeros(shape, np.uint8))
    cfg = DataConfig(name="video_folder", path=str(folder), image_size=16, channels=1, seq_len=4,
                     options={"test_fraction": 0})
    with pytest.warns(UserWarning, match=rf"{odd}: {match}"):
        source = build_source(cfg, "train")
    assert len(source.lengths) == 2


def _episode_with(**changes) -> dict[str, np.ndarray]:
    episode = make_episode(2, 6, size=16)
    episode.update(changes)
    return episode


@pytest.mark.parametrize("changes, match", [
    ({"image": np.zeros((6, 24, 40, 3), np.uint8)},
     r"frames of 24x40 with 3 channel\(s\), unlike .*ep0\.npz \(16x16 with 3\): taken resized and "
     r"converted to 16x16 with 3"),
    ({"image": np.zeros((6, 16, 16), np.uint8)}, r"frames of 16x16 with 1 channel\(s\), unlike .*ep0\.npz "
                                                 r"\(16x16 with 3\)"),
    ({"log_seed": np.full(6, np.nan)}, r"'log_seed' holds float64 values, not integer seeds; it is ignored"),
    ({"action": np.full((6, 2), 1e30, np.float32)}, r"actions up to 1e\+30 in magnitude"),
])
def test_an_odd_episode_is_taken_with_a_warning_naming_its_file(tmp_path, changes, match):
    save_episode(tmp_path / "ep0.npz", make_episode(1, 6, size=16))
    odd = save_episode(tmp_path / "ep1.npz", _episode_with(**changes))
    with pytest.warns(UserWarning, match=rf"{odd}: {match}"):
        source = EpisodeSource.from_directory(tmp_path, image_size=16, channels=3)
    assert source.num_episodes == 2
