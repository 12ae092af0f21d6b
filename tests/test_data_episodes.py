"""Episodes: validation, atomic save / load without pickle, windows inside one episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodel.data import (
    DataConfig,
    EpisodeSource,
    batch_at,
    build_source,
    load_episode,
    save_episode,
    validate_episode,
)
from worldmodel.data.episodes import split_episode_files


def make_episode(episode_id: int, length: int, action_dim: int = 2, size: int = 8,
                 terminal: bool = True) -> dict[str, np.ndarray]:
    """Steps t = 0..length-1; pixel values encode (episode_id, t), actions and rewards too."""
    steps = np.arange(length)
    image = np.zeros((length, size, size, 3), np.uint8)
    image[..., 0] = episode_id  # red: which episode
    image[..., 1] = steps[:, None, None]  # green: which step
    action = np.stack([episode_id + steps * 0.5] * action_dim, axis=1).astype(np.float32)
    action[0] = 0.0  # no action led to the first step
    is_last = steps == length - 1
    return {
        "image": image,
        "action": action,
        "reward": (steps * 0.1).astype(np.float32),
        "is_first": steps == 0,
        "is_last": is_last,
        "is_terminal": is_last & terminal,
        "log_velocity": steps.astype(np.float64),
    }


def test_validate_episode_problems_are_named() -> None:
    good = make_episode(1, 5)
    out = validate_episode(good)
    assert out["image"].shape == (5, 8, 8, 3) and out["action"].dtype == np.float32
    assert "log_velocity" in out
    ints = dict(good, is_first=good["is_first"].astype(np.int64))
    assert validate_episode(ints)["is_first"].dtype == bool
    bad_cases = [
        ({k: v for k, v in good.items() if k != "reward"}, "missing key.*reward"),
        (dict(good, image=good["image"].astype(np.float32)), "'image' must be uint8"),
        (dict(good, action=good["action"][:4]), "'action' must have shape \\(5, A\\)"),
        (dict(good, action=good["action"][:, 0]), "'action' must have shape"),
        (dict(good, reward=np.full(5, np.nan, np.float32)), "'reward' contains NaN"),
        (dict(good, is_terminal=np.full(5, 2)), "'is_terminal' must be bool"),
        (dict(good, is_first=np.zeros(5, bool)), "'is_first' must be True at step 0"),
    ]
    for episode, message in bad_cases:
        with pytest.raises(ValueError, match=message):
            validate_episode(episode)


def test_save_is_atomic_and_load_roundtrips(tmp_path: Path) -> None:
    episode = make_episode(3, 7)
    path = save_episode(tmp_path / "replay" / "ep-0003.npz", episode)
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == ["ep-0003.npz"]
    loaded = load_episode(path)
    for key, value in episode.items():
        assert np.array_equal(loaded[key], value), key
    with pytest.raises(ValueError, match="'image' must be uint8"):
        save_episode(tmp_path / "bad.npz", dict(episode, image=episode["image"] * 1.0))
    assert not (tmp_path / "bad.npz").exists()


def test_load_rejects_corrupt_and_pickled_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing_keys.npz"
    np.savez_compressed(missing, image=np.zeros((3, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="missing_keys.npz.*missing key"):
        load_episode(missing)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **make_episode(1, 3), log_obj=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        load_episode(pickled)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    with pytest.raises(ValueError, match="garbage.npz"):
        load_episode(garbage)


def test_windows_never_cross_an_episode_end() -> None:
    source = EpisodeSource(image_size=8, channels=3)
    for episode_id, length in enumerate([12, 30, 5, 17], start=1):
        source.add_episode(make_episode(episode_id, length))
    assert source.action_dim == 2 and source.num_steps == 64
    batch = source.sample(np.random.default_rng(0), 200, 12)
    assert batch.frames.shape == (200, 12, 3, 8, 8)
    ids = torch.round(batch.frames[:, :, 0, 0, 0] * 255)
    steps = torch.round(batch.frames[:, :, 1, 0, 0] * 255)
    assert torch.all(ids == ids[:, :1])  # one episode per window
    assert torch.all(steps[:, 1:] - steps[:, :-1] == 1)  # consecutive steps
    assert 3 not in ids[:, 0].tolist()  # the 5-step episode is too short
    assert set(ids[:, 0].tolist()) == {1.0, 2.0, 4.0}
    # Actions, rewards, flags travel with their frames.
    expected_action = torch.where(steps == 0, 0.0, ids + steps * 0.5)
    assert torch.allclose(batch.actions[..., 0], expected_action)
    assert torch.allclose(batch.rewards, steps * 0.1)
    assert torch.equal(batch.is_first, steps == 0)
    lengths = torch.tensor([0, 12, 30, 5, 17], dtype=torch.float32)[ids.long()]
    assert torch.equal(batch.continues, (steps != lengths - 1).float())
    assert batch.actions.dtype == torch.float32 and batch.is_first.dtype == torch.bool
    with pytest.raises(ValueError, match="longest has 30"):
        source.sample(np.random.default_rng(0), 2, 31)


def test_add_episode_checks_action_dim_and_capacity() -> None:
    source = EpisodeSource(image_size=4, channels=1, action_dim=2, capacity=25)
    with pytest.raises(ValueError, match=r"actions have size 3, but the source.s \(action_dim=2\)"):
        source.add_episode(make_episode(1, 5, action_dim=3))
    for i in range(4):
        source.add_episode(make_episode(i, 10))
    assert source.num_episodes == 2 and source.num_steps == 20  # oldest dropped
    assert source.sample(np.random.default_rng(0), 2, 4).frames.shape == (2, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="holds no episodes"):
        EpisodeSource().sample(np.random.default_rng(0), 1, 1)


def test_build_source_from_directory_with_split(tmp_path: Path) -> None:
    for i in range(10):
        save_episode(tmp_path / f"ep{i:02d}.npz", make_episode(i + 1, 20 + i))
    (tmp_path / ".ep10.npz").write_bytes(b"half-written by a recorder")  # hidden: ignored
    cfg = DataConfig(name="episodes", path=str(tmp_path), image_size=8, channels=3, seq_len=16,
                     options={"test_fraction": 0.2})
    train, test = build_source(cfg, "train"), build_source(cfg, "test")
    assert train.num_episodes == 8 and test.num_episodes == 2 and train.action_dim == 2
    a = batch_at(train, 0, 3, 4, 16)
    assert torch.equal(a.frames, batch_at(train, 0, 3, 4, 16).frames)
    assert not torch.equal(a.frames, batch_at(train, 0, 3, 4, 16, rank=1).frames)
    test_ids = torch.round(test.eval_batch(20, 16).frames[:, 0, 0, 0, 0] * 255)
    assert set(test_ids.tolist()) == {9.0, 10.0}
    with pytest.raises(ValueError, match="longest has 28"):
        build_source(DataConfig(name="episodes", path=str(tmp_path), seq_len=29), "train")
    nested = tmp_path / "nested"
    save_episode(nested / "train" / "a.npz", make_episode(1, 6))
    save_episode(nested / "test" / "b.npz", make_episode(2, 6))
    cfg = DataConfig(name="episodes", path=str(nested), image_size=8, seq_len=6)
    assert build_source(cfg, "test").num_episodes == 1
    every = EpisodeSource.from_directory(nested, image_size=8)
    assert every.num_episodes == 2


def test_split_keeps_copies_of_an_episode_on_one_side(tmp_path: Path) -> None:
    """A re-recorded copy (same arrays) sorted into the test range stays with its original."""
    for i in range(9):
        save_episode(tmp_path / f"ep{i:02d}.npz", make_episode(i + 1, 8))
    save_episode(tmp_path / "ep09.npz", make_episode(1, 8))  # a copy of ep00, named last
    cfg = DataConfig(name="episodes", path=str(tmp_path), image_size=8, channels=3, seq_len=8,
                     options={"test_fraction": 0.2})
    ids = {}
    for split in ("train", "test"):
        frames = build_source(cfg, split).eval_batch(20, 8).frames
        ids[split] = set(torch.round(frames[:, 0, 0, 0, 0] * 255).tolist())
    assert ids["test"] == {8.0, 9.0} and not ids["train"] & ids["test"]
    files = sorted(tmp_path.glob("*.npz"))
    assert [p.name for p in split_episode_files(files, "test", 0.2)] == ["ep07.npz", "ep08.npz"]
    assert "ep09.npz" in [p.name for p in split_episode_files(files, "train", 0.2)]


def test_split_keeps_episodes_of_one_reset_seed_on_one_side(tmp_path: Path) -> None:
    for i in range(4):
        episode = make_episode(i + 1, 6)
        episode["log_seed"] = np.full(6, [0, 1, 2, 0][i], np.int64)  # ep03: reset like ep00
        save_episode(tmp_path / f"ep{i:02d}.npz", episode)
    files = sorted(tmp_path.glob("*.npz"))
    test = split_episode_files(files, "test", 0.34)
    assert [p.name for p in test] == ["ep02.npz"]
    assert [p.name for p in split_episode_files(files, "train", 0.34)] == ["ep00.npz", "ep01.npz", "ep03.npz"]
    # -1 means "reset without a seed": it groups nothing
    for path in files:
        episode = load_episode(path)
        episode["log_seed"][:] = -1
        save_episode(path, episode)
    assert [p.name for p in split_episode_files(files, "test", 0.34)] == ["ep03.npz"]


def test_split_of_only_copies_names_the_distinct_episodes(tmp_path: Path) -> None:
    for i in range(3):
        save_episode(tmp_path / f"ep{i:02d}.npz", make_episode(1, 6))
    with pytest.raises(ValueError, match="'test' split of 1 distinct episode file"):
        split_episode_files(sorted(tmp_path.glob("*.npz")), "test", 0.5)
    (tmp_path / "ep03.npz").write_bytes(b"not a zip")  # unreadable: its own group, reported on load
    assert [p.name for p in split_episode_files(sorted(tmp_path.glob("*.npz")), "test", 0.5)] == ["ep03.npz"]
