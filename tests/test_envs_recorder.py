"""EpisodeRecorder / record_episodes: the docs/design.md §4 .npz layout, atomic writes, policies."""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import envs
from envs.pixels import PixelObservation, make_pixel_env
from envs.point_target import PointTargetEnv
from envs.policies import make_policy
from envs.recorder import (
    EPISODE_KEYS,
    EpisodeRecorder,
    encode_action,
    load_episode,
    record_episodes,
    save_next_episode,
)
from worldmodel.episode_format import validate_episode


class FakeImageEnv(gym.Env):
    """8x8 images showing the step count; Discrete(3) actions; reward = action index;
    terminates after ``terminate_at`` steps. info carries ``t`` and a string ``name``."""

    metadata = {"render_modes": []}

    def __init__(self, terminate_at: int = 3, channels: int | None = 3) -> None:
        shape = (8, 8) if channels is None else (8, 8, channels)
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self.action_space = spaces.Discrete(3)
        self.terminate_at = terminate_at
        self.t = 0

    def _obs(self):
        return np.full(self.observation_space.shape, self.t, np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"t": self.t, "name": "fake"}

    def step(self, action):
        self.t += 1
        terminated = self.t >= self.terminate_at
        return self._obs(), float(action), terminated, False, {"t": self.t, "name": "fake"}


def check_layout(episode: dict[str, np.ndarray], length: int, image_shape, action_dim: int):
    """Every key, dtype, shape and flag of an episode of ``length`` steps."""
    n = length + 1
    assert set(EPISODE_KEYS) <= set(episode)
    assert episode["image"].dtype == np.uint8 and episode["image"].shape == (n, *image_shape)
    assert episode["action"].dtype == np.float32 and episode["action"].shape == (n, action_dim)
    assert episode["reward"].dtype == np.float32 and episode["reward"].shape == (n,)
    for key in ("is_first", "is_last", "is_terminal"):
        assert episode[key].dtype == np.bool_ and episode[key].shape == (n,)
    assert episode["is_first"].tolist() == [True] + [False] * length
    assert episode["is_last"].tolist() == [False] * length + [True]
    assert not episode["action"][0].any() and episode["reward"][0] == 0.0


class LoggingPolicy:
    """Seeded random policy that remembers the observations it saw and its actions."""

    def __init__(self, space: gym.Space, seed: int = 0) -> None:
        self.space = space
        space.seed(seed)
        self.observations: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []

    def __call__(self, obs):
        action = self.space.sample()
        self.observations.append(np.array(obs))
        self.actions.append(action)
        return action


def test_round_trip_point_target(tmp_path: Path) -> None:
    env = make_pixel_env(envs.POINT_TARGET_ID, size=32, max_episode_steps=12, switch_every=5)
    policy = LoggingPolicy(env.action_space)
    paths = record_episodes(
        env,
        policy,
        episodes=3,
        out_dir=tmp_path,
        seed=10,
        progress=False,
        info_keys=["switched", "agent_pos"],
    )
    assert [p.name for p in paths] == [f"episode_{i:06d}_12.npz" for i in range(3)]
    # nothing else but the folder's lock and settings, no temporary files
    assert sorted(tmp_path.iterdir()) == sorted([*paths, tmp_path / ".lock", tmp_path / "recording.json"])
    for i, path in enumerate(paths):
        with np.load(path, allow_pickle=False) as data:
            episode = {key: data[key] for key in data.files}
        check_layout(episode, 12, (32, 32, 3), 2)
        assert not episode["is_terminal"].any()  # truncated, never terminated
        assert episode["log_switched"].tolist() == [t in (5, 10) for t in range(13)]
        assert episode["log_agent_pos"].shape == (13, 2)

        # image[t] is what the policy saw before choosing action[t + 1]
        seen = np.stack(policy.observations[i * 12 : (i + 1) * 12])
        np.testing.assert_array_equal(episode["image"][:12], seen)
        np.testing.assert_array_equal(episode["action"][1:], np.stack(policy.actions[i * 12 : (i + 1) * 12]))
        # replaying the actions from the same seed gives the same frames and rewards
        replay = make_pixel_env(envs.POINT_TARGET_ID, size=32, switch_every=5)
        obs, _ = replay.reset(seed=10 + i)
        np.testing.assert_array_equal(obs, episode["image"][0])
        for t in range(1, 13):
            obs, reward, *_ = replay.step(episode["action"][t])
            np.testing.assert_array_equal(obs, episode["image"][t])
            assert np.float32(reward) == episode["reward"][t]


def test_round_trip_pendulum(tmp_path: Path) -> None:
    base = gym.wrappers.TimeLimit(gym.make("Pendulum-v1", render_mode="rgb_array"), 15)
    env = PixelObservation(base, size=32)
    paths = record_episodes(env, "random", episodes=2, out_dir=tmp_path, seed=0, progress=False)
    assert len(paths) == 2
    for path in paths:
        episode = load_episode(path)
        check_layout(episode, 15, (32, 32, 3), 1)
        assert not episode["is_terminal"].any()
        assert (episode["reward"][1:] <= 0).all()  # Pendulum's cost is negative
        assert np.abs(episode["action"]).max() <= 2.0
        assert episode["image"].std() > 0
    env.close()


def test_terminal_and_discrete_one_hot(tmp_path: Path) -> None:
    actions = iter([2, 0, 1])
    paths = record_episodes(
        FakeImageEnv(terminate_at=3),
        lambda obs: next(actions),
        1,
        tmp_path,
        progress=False,
        info_keys=["t"],
    )
    episode = load_episode(paths[0])
    check_layout(episode, 3, (8, 8, 3), 3)
    assert episode["is_terminal"].tolist() == [False, False, False, True]
    np.testing.assert_array_equal(episode["action"], [[0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(episode["reward"], [0, 2, 0, 1])
    np.testing.assert_array_equal(episode["image"][:, 0, 0, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(episode["log_t"], [0, 1, 2, 3])


def test_two_dim_images_get_a_channel_axis(tmp_path: Path) -> None:
    env = EpisodeRecorder(FakeImageEnv(terminate_at=2, channels=None), tmp_path)
    env.reset()
    env.step(0)
    _, _, _, _, info = env.step(1)
    assert load_episode(info["episode_path"])["image"].shape == (3, 8, 8, 1)


def test_recorder_reports_paths(tmp_path: Path) -> None:
    env = EpisodeRecorder(FakeImageEnv(terminate_at=2), tmp_path)
    for _ in range(2):
        env.reset()
        _, _, _, _, info = env.step(0)
        assert "episode_path" not in info
        _, _, _, _, info = env.step(0)
        assert Path(info["episode_path"]) == env.episode_paths[-1]
    assert [p.name for p in env.episode_paths] == ["episode_000000_2.npz", "episode_000001_2.npz"]


def test_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "episode_000005_3.npz").write_bytes(b"someone else's")
    (tmp_path / "notes.txt").write_text("unrelated")
    first = record_episodes(FakeImageEnv(), "random", 2, tmp_path, progress=False)
    again = record_episodes(FakeImageEnv(), "random", 1, tmp_path, progress=False)
    assert [p.name for p in first + again] == [
        "episode_000006_3.npz",
        "episode_000007_3.npz",
        "episode_000008_3.npz",
    ]
    assert (tmp_path / "episode_000005_3.npz").read_bytes() == b"someone else's"


def test_failed_write_leaves_no_files(tmp_path: Path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    env = EpisodeRecorder(FakeImageEnv(terminate_at=1), tmp_path)
    env.reset()
    with pytest.raises(OSError, match="disk full"):
        env.step(0)
    assert list(tmp_path.iterdir()) == []


def test_unfinished_episode_is_dropped(tmp_path: Path) -> None:
    env = EpisodeRecorder(FakeImageEnv(terminate_at=5), tmp_path)
    env.reset()
    env.step(0)
    with pytest.warns(UserWarning, match="dropping its 1 recorded steps"):
        env.reset()
    with pytest.warns(UserWarning, match="dropping"):
        env.step(0)
        env.close()
    assert list(tmp_path.iterdir()) == []


def test_step_before_reset(tmp_path: Path) -> None:
    with pytest.raises(gym.error.ResetNeeded):
        EpisodeRecorder(FakeImageEnv(), tmp_path).step(0)


def test_rejects_non_image_observations(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PixelObservation"):
        EpisodeRecorder(gym.make("Pendulum-v1"), tmp_path)


def test_rejects_unsupported_action_space(tmp_path: Path) -> None:
    env = FakeImageEnv()
    env.action_space = spaces.Dict({"a": spaces.Discrete(2)})
    with pytest.raises(ValueError, match="cannot record actions"):
        EpisodeRecorder(env, tmp_path)


def test_info_key_problems(tmp_path: Path) -> None:
    env = EpisodeRecorder(FakeImageEnv(), tmp_path, info_keys=["missing"])
    with pytest.raises(ValueError, match="'missing' missing at step 0"):
        env.reset()
    env = EpisodeRecorder(FakeImageEnv(), tmp_path, info_keys=["name"])
    with pytest.raises(ValueError, match="numeric or bool"):
        env.reset()
    with pytest.raises(ValueError, match="info_keys"):
        EpisodeRecorder(FakeImageEnv(), tmp_path, info_keys="t")


@pytest.mark.parametrize(
    ("space", "action", "expected"),
    [
        (spaces.Box(-1, 1, (2, 2)), np.array([[1, 2], [3, 4]]), [1, 2, 3, 4]),
        (spaces.Discrete(3, start=1), 3, [0, 0, 1]),
        (spaces.MultiDiscrete([2, 3]), np.array([1, 0]), [0, 1, 1, 0, 0]),
        (spaces.MultiBinary(3), np.array([1, 0, 1]), [1, 0, 1]),
    ],
)
def test_encode_action(space, action, expected) -> None:
    encoded = encode_action(space, action)
    assert encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded, expected)


def test_encode_action_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        encode_action(spaces.Discrete(3), 3)
    with pytest.raises(ValueError, match="shape"):
        encode_action(spaces.Box(-1, 1, (2,)), np.zeros(3))


def good_episode(length: int = 2) -> dict[str, np.ndarray]:
    n = length + 1
    return {
        "image": np.zeros((n, 4, 4, 1), np.uint8),
        "action": np.zeros((n, 2), np.float32),
        "reward": np.zeros(n, np.float32),
        "is_first": np.arange(n) == 0,
        "is_last": np.arange(n) == length,
        "is_terminal": np.zeros(n, bool),
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda e: e.pop("reward"), "missing key"),
        (lambda e: e.update(extra=np.zeros(3)), "must start with 'log_'"),
        (lambda e: e.update(image=e["image"].astype(np.float32)), "'image' must be uint8"),
        (lambda e: e.update(action=e["action"][:2]), "'action' must have shape"),
        (lambda e: e.update(action=e["action"].astype(np.float64)), "'action' must be stored as float32"),
        (lambda e: e.update(reward=e["reward"].astype(np.float64)), "'reward'"),
        (lambda e: e.update(is_last=np.zeros(3, bool)), "'is_last' must be True"),
        (lambda e: e.update(is_first=np.array([1, 0, 0], np.uint8)), "'is_first' must be stored as bool"),
        (lambda e: e.update(log_x=np.zeros(2)), "'log_x' must have 3 entries"),
    ],
)
def test_validate_episode_errors(change, match) -> None:
    episode = good_episode()
    assert len(validate_episode(episode, exact=True)["image"]) == 3
    change(episode)
    with pytest.raises(ValueError, match=match):
        validate_episode(episode, exact=True)


def test_save_and_load_episode(tmp_path: Path) -> None:
    path = save_next_episode(good_episode(4), tmp_path / "new", prefix="run")
    assert path.name == "run_000000_4.npz"
    episode = load_episode(path)
    for key, value in good_episode(4).items():
        np.testing.assert_array_equal(episode[key], value)
        assert episode[key].dtype == value.dtype
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match="bad.npz: episode is missing key"):
        load_episode(bad)


def test_record_episodes_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="episodes"):
        record_episodes(FakeImageEnv(), "random", 0, tmp_path)
    with pytest.raises(ValueError, match="policy must be"):
        record_episodes(FakeImageEnv(), "greedy", 1, tmp_path)
    with pytest.raises(ValueError, match="no Stable-Baselines3 model file"):
        record_episodes(FakeImageEnv(), f"sb3:{tmp_path / 'absent.zip'}", 1, tmp_path, algo="PPO")
    junk = tmp_path / "junk.zip"
    junk.write_text("not a zip")
    with pytest.raises(ValueError, match="junk.zip'?: not a readable Stable-Baselines3 model zip"):
        make_policy(f"sb3:{junk}", FakeImageEnv(), algo="PPO")
    with pytest.raises(ValueError, match="as any of PPO, SAC, TD3, A2C, DDPG, DQN"):
        make_policy(f"sb3:{junk}", FakeImageEnv(), trust_pickle=True)
    assert not any(p.suffix == ".npz" for p in tmp_path.iterdir())


def test_random_policy_is_seeded(tmp_path: Path) -> None:
    a = record_episodes(FakeImageEnv(), "random", 2, tmp_path / "a", seed=3, progress=False)
    b = record_episodes(FakeImageEnv(), "random", 2, tmp_path / "b", seed=3, progress=False)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(load_episode(pa)["action"], load_episode(pb)["action"])


def test_progress_bar(tmp_path: Path, capsys) -> None:
    record_episodes(FakeImageEnv(), "random", 2, tmp_path, progress=True)
    assert "2/2" in capsys.readouterr().err


def test_sb3_policy(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    train_env = gym.wrappers.TimeLimit(PointTargetEnv(), 16)  # 64x64: CnnPolicy needs >= 36
    model = PPO("CnnPolicy", train_env, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(16)
    model.save(tmp_path / "ppo_cnn.zip")

    env = make_pixel_env(envs.POINT_TARGET_ID, size=64, max_episode_steps=4)
    paths = record_episodes(env, f"sb3:{tmp_path / 'ppo_cnn.zip'}", 2, tmp_path / "episodes", progress=False,
                            algo="PPO")
    for path in paths:
        episode = load_episode(path)
        check_layout(episode, 4, (64, 64, 3), 2)
        for t in range(4):  # deterministic predictions of the saved model
            expected, _ = model.predict(episode["image"][t], deterministic=True)
            np.testing.assert_allclose(episode["action"][t + 1], expected, rtol=1e-5, atol=1e-6)


def test_sb3_policy_on_flattened_observations(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    train_env = gym.wrappers.FlattenObservation(PointTargetEnv(size=16))
    model = PPO(
        "MlpPolicy",
        train_env,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": [16]},
    )
    model.learn(32)
    model.save(tmp_path / "ppo_flat")  # SB3 adds .zip
    env = make_pixel_env(envs.POINT_TARGET_ID, size=16, max_episode_steps=3)
    for trust in (False, True):
        policy = make_policy(f"sb3:{tmp_path / 'ppo_flat'}", env, algo="PPO", trust_pickle=trust)
        obs, _ = env.reset(seed=0)
        expected = model.predict(obs.reshape(-1), deterministic=True)[0]
        np.testing.assert_allclose(policy(obs), expected, rtol=1e-5)
        with pytest.raises(ValueError, match="observes"):
            make_policy(f"sb3:{tmp_path / 'ppo_flat.zip'}", make_pixel_env(envs.POINT_TARGET_ID, size=8),
                        algo="PPO", trust_pickle=trust)
        with pytest.raises(ValueError, match="acts in"):
            make_policy(f"sb3:{tmp_path / 'ppo_flat.zip'}", FakeImageEnv(), algo="PPO", trust_pickle=trust)


def test_no_temporary_files_after_many_writes(tmp_path: Path) -> None:
    record_episodes(FakeImageEnv(terminate_at=1), "random", 5, tmp_path, progress=False)
    names = set(os.listdir(tmp_path)) - {".lock", "recording.json"}  # the folder's lock and settings
    assert len(names) == 5 and all(n.endswith(".npz") and not n.startswith(".") for n in names)


def test_files_load_with_the_training_data_loader(tmp_path: Path) -> None:
    episodes_module = pytest.importorskip("worldmodel.data.episodes")
    env = make_pixel_env(envs.POINT_TARGET_ID, size=32, grayscale=True, max_episode_steps=5)
    paths = record_episodes(env, "random", 1, tmp_path, progress=False, info_keys=["switched"])
    episode = episodes_module.load_episode(paths[0])
    assert episode["image"].shape == (6, 32, 32, 1)
    np.testing.assert_array_equal(episode["is_last"], load_episode(paths[0])["is_last"])


def test_the_recorder_and_the_data_layer_share_one_episode_format():
    """One module defines the file layout (worldmodel.episode_format, light enough for envs to
    import without torch); the recorder and the data layer use it rather than copies."""
    import envs.recorder as recorder
    import worldmodel.data.episodes as data_episodes
    import worldmodel.episode_format as episode_format

    for name in ("EPISODE_KEYS", "SEED_KEY", "load_episode"):
        assert getattr(recorder, name) is getattr(episode_format, name)
    for name in ("EPISODE_KEYS", "SEED_KEY", "load_episode", "save_episode", "validate_episode"):
        assert getattr(data_episodes, name) is getattr(episode_format, name)
    assert recorder.save_episode is episode_format.save_episode  # the folder writer is save_next_episode


def test_a_recording_continued_after_a_stop_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """Issue 27: the random policy was seeded once per call, so episodes recorded by a second
    call had the right seeds but other actions and images."""
    def record(count: int, folder: str) -> list[Path]:
        return record_episodes(FakeImageEnv(terminate_at=5), "random", count, tmp_path / folder, seed=3,
                               progress=False)

    whole = record(4, "whole")
    parts = record(2, "parts") + record(2, "parts")
    assert [p.name for p in whole] == [p.name for p in parts]
    for a, b in zip(whole, parts):
        with np.load(a) as x, np.load(b) as y:
            assert sorted(x.files) == sorted(y.files)
            for key in x.files:
                assert np.array_equal(x[key], y[key]), (a.name, key)
