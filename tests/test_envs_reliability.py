"""Holes an outside probe found in `dlh record` (issue #10): code run from an SB3 zip,
duplicated episodes on re-runs, unbounded numeric flags."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import stable_baselines3 as sb3  # noqa: E402
from stable_baselines3.common.policies import ActorCriticPolicy  # noqa: E402
from stable_baselines3.common.torch_layers import FlattenExtractor  # noqa: E402
from torch import nn  # noqa: E402

import envs  # noqa: E402
from envs.cli import MAX_SIZE, main  # noqa: E402
from envs.pixels import make_pixel_env  # noqa: E402
from envs.policies import SB3_ALGORITHMS, load_sb3_policy, make_policy  # noqa: E402
from envs.recorder import EpisodeRecorder, load_episode, record_episodes, save_next_episode  # noqa: E402
from worldmodel.data import DataConfig, build_source  # noqa: E402
from worldmodel.data.episodes import split_episode_files  # noqa: E402

OFF_POLICY = ("SAC", "TD3", "DDPG", "DQN")


def save_model(path: Path, algo: str, env_id: str, **kwargs) -> tuple[object, gym.Env]:
    """A small untrained SB3 model (no `learn`), saved to `path`."""
    env = gym.make(env_id)
    extra = {"buffer_size": 10} if algo in OFF_POLICY else {}
    kwargs.setdefault("policy_kwargs", {"net_arch": [8]})
    model = getattr(sb3, algo)("MlpPolicy", env, seed=0, device="cpu", **extra, **kwargs)
    model.save(path)
    return model, env


def assert_same_actions(policy, model, env: gym.Env, steps: int = 5) -> None:
    obs, _ = env.reset(seed=1)
    for _ in range(steps):
        action = policy(obs)
        np.testing.assert_allclose(action, model.predict(obs, deterministic=True)[0], rtol=1e-5, atol=1e-6)
        obs, *_ = env.step(action)


# ---------------------------------------------------------------------- no code from the zip
class Touch:
    """Unpickling this creates `marker` (what a malicious payload would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def craft(source: Path, target: Path, marker: Path) -> int:
    """Copy an SB3 zip, replacing every ':serialized:' field of `data` by a Touch payload."""
    payload = base64.b64encode(pickle.dumps(Touch(marker))).decode()
    with zipfile.ZipFile(source) as zin:
        data = json.loads(zin.read("data"))
        crafted = 0
        for value in data.values():
            if isinstance(value, dict) and ":serialized:" in value:
                value[":serialized:"] = payload
                crafted += 1
        with zipfile.ZipFile(target, "w") as zout:
            for name in zin.namelist():
                zout.writestr(name, json.dumps(data) if name == "data" else zin.read(name))
    return crafted


def point_target() -> gym.Env:
    return make_pixel_env(envs.POINT_TARGET_ID, size=8, max_episode_steps=3)


def save_pixel_model(path: Path):
    """PPO MlpPolicy on 8x8 PointTarget frames (SB3 stores them channel-first)."""
    model = sb3.PPO("MlpPolicy", point_target(), seed=0, device="cpu", policy_kwargs={"net_arch": [8]})
    model.save(path)
    return model


def test_crafted_zip_runs_no_code_by_default(tmp_path: Path) -> None:
    model = save_pixel_model(tmp_path / "ppo.zip")
    marker = tmp_path / "pwned"
    assert craft(tmp_path / "ppo.zip", tmp_path / "evil.zip", marker) >= 3  # spaces, policy_class, ...
    policy = load_sb3_policy(tmp_path / "evil.zip", point_target(), algo="PPO")
    assert not marker.exists()
    assert_same_actions(policy, model, point_target())  # the JSON and weights are all it needs
    paths = record_episodes(point_target(), f"sb3:{tmp_path / 'evil'}", 1, tmp_path / "out", progress=False,
                            algo="ppo")
    assert not marker.exists()
    episode = load_episode(paths[0])
    expected = model.predict(episode["image"][0], deterministic=True)[0]
    np.testing.assert_allclose(episode["action"][1], expected, rtol=1e-5, atol=1e-6)
    # the payload is real: SB3's own loader, opted into for trusted files, runs it
    with pytest.raises(ValueError, match="could not load"):
        load_sb3_policy(tmp_path / "evil.zip", point_target(), algo="PPO", trust_pickle=True)
    assert marker.exists()


def test_cli_record_with_a_crafted_zip_runs_no_code(tmp_path: Path) -> None:
    save_pixel_model(tmp_path / "ppo.zip")
    marker = tmp_path / "pwned"
    craft(tmp_path / "ppo.zip", tmp_path / "evil.zip", marker)
    argv = ["record", "--env", envs.POINT_TARGET_ID, "--policy", f"sb3:{tmp_path / 'evil.zip'}", "--algo",
            "PPO", "--episodes", "1", "--max-steps", "2", "--size", "8", "--out", str(tmp_path / "out"),
            "--no-progress"]
    assert main(argv) == 0
    assert not marker.exists()
    assert len(list((tmp_path / "out").glob("*.npz"))) == 1


@pytest.mark.parametrize(
    ("algo", "env_id", "kwargs"),
    [
        ("PPO", "Pendulum-v1", {}),
        ("PPO", "CartPole-v1", {"policy_kwargs": {"net_arch": [8], "activation_fn": nn.Tanh}}),
        ("PPO", "Pendulum-v1", {"use_sde": True}),
        ("A2C", "CartPole-v1", {}),  # its RMSprop optimizer class is stored pickled: not needed to act
        ("SAC", "Pendulum-v1", {}),
        ("TD3", "Pendulum-v1", {}),
        ("DDPG", "Pendulum-v1", {}),
        ("DQN", "CartPole-v1", {}),
    ],
)
def test_safe_loader_acts_like_sb3(tmp_path: Path, algo: str, env_id: str, kwargs: dict) -> None:
    model, env = save_model(tmp_path / "model.zip", algo, env_id, **kwargs)
    policy = load_sb3_policy(tmp_path / "model.zip", env, algo=algo)
    assert_same_actions(policy, model, env)


def test_algo_is_required_and_checked(tmp_path: Path) -> None:
    _, env = save_model(tmp_path / "sac.zip", "SAC", "Pendulum-v1")
    with pytest.raises(ValueError, match=r"algo.*PPO, SAC, TD3, A2C, DDPG, DQN"):
        load_sb3_policy(tmp_path / "sac.zip", env)
    with pytest.raises(ValueError, match=r"algo must be one of PPO, SAC, TD3, A2C, DDPG, DQN.*'TRPO'"):
        make_policy(f"sb3:{tmp_path / 'sac.zip'}", env, algo="TRPO")
    with pytest.raises(ValueError, match="sac.zip.*policy_class is .*SACPolicy, not one of PPO's"):
        load_sb3_policy(tmp_path / "sac.zip", env, algo="PPO")
    assert load_sb3_policy(tmp_path / "sac.zip", env, trust_pickle=True)  # trusted: tries each algorithm


class TinyExtractor(FlattenExtractor):
    """A feature extractor the safe loader does not know."""


class CustomPolicy(ActorCriticPolicy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"policy_kwargs": {"features_extractor_class": TinyExtractor}},
         r"policy_kwargs\['features_extractor_class'\]"),
        ({"policy_kwargs": {"net_arch": [8], "activation_fn": lambda: nn.ReLU()}},
         r"policy_kwargs\['activation_fn'\]"),
        ({"policy": CustomPolicy}, "policy_class"),
    ],
)
def test_fields_only_pickled_are_refused(tmp_path: Path, kwargs: dict, field: str) -> None:
    env = gym.make("Pendulum-v1")
    model = sb3.PPO(kwargs.pop("policy", "MlpPolicy"), env, device="cpu", **kwargs)
    model.save(tmp_path / "model.zip")
    with pytest.raises(ValueError, match=field + ".*trust_pickle=True"):
        load_sb3_policy(tmp_path / "model.zip", env, algo="PPO")


def test_refuses_zips_that_are_not_sb3_models(tmp_path: Path) -> None:
    env = gym.make("Pendulum-v1")
    with zipfile.ZipFile(tmp_path / "nodata.zip", "w") as archive:
        archive.writestr("policy.pth", b"")
    with pytest.raises(ValueError, match="nodata.zip.*no 'data' entry"):
        load_sb3_policy(tmp_path / "nodata.zip", env, algo="PPO")
    save_model(tmp_path / "ppo.zip", "PPO", "Pendulum-v1")
    with zipfile.ZipFile(tmp_path / "ppo.zip") as zin, zipfile.ZipFile(tmp_path / "pickled.zip", "w") as zout:
        zout.writestr("data", zin.read("data"))
        zout.writestr("policy.pth", pickle.dumps(Touch(tmp_path / "pwned")))
    with pytest.raises(ValueError, match="'policy.pth' is not a plain state dict"):
        load_sb3_policy(tmp_path / "pickled.zip", env, algo="PPO")
    assert not (tmp_path / "pwned").exists()


def test_cli_needs_algo_for_sb3(tmp_path: Path, capsys) -> None:
    base = ["record", "--env", "Pendulum-v1", "--episodes", "1", "--out", str(tmp_path), "--no-progress",
            "--policy", "sb3:model.zip"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--algo" in err and ", ".join(SB3_ALGORITHMS) in err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--algo", "TRPO"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--algo" in err and "'TRPO'" in err


# ---------------------------------------------------------------------- re-running record
def seed_of(path: Path) -> int:
    seeds = load_episode(path)["log_seed"]
    assert (seeds == seeds[0]).all()
    return int(seeds[0])


def test_recording_twice_continues(tmp_path: Path) -> None:
    first = record_episodes(point_target(), "random", 3, tmp_path, seed=0, progress=False)
    again = record_episodes(point_target(), "random", 3, tmp_path, seed=0, progress=False)
    assert [p.name[:14] for p in first + again] == [f"episode_{i:06d}" for i in range(6)]
    assert [seed_of(p) for p in first + again] == [0, 1, 2, 3, 4, 5]
    images = [load_episode(p)["image"].tobytes() for p in first + again]
    assert len(set(images)) == 6
    # an explicit seed picks the first seeds from there that are still free
    later = record_episodes(point_target(), "random", 3, tmp_path, seed=4, progress=False)
    assert [seed_of(p) for p in later] == [6, 7, 8]
    files = sorted(tmp_path.glob("*.npz"))
    train = split_episode_files(files, "train", 0.3)
    test = split_episode_files(files, "test", 0.3)
    assert len(train) + len(test) == 9 and not set(train) & set(test)
    assert not {seed_of(p) for p in train} & {seed_of(p) for p in test}


def test_cli_recording_twice_continues(tmp_path: Path, capsys) -> None:
    argv = ["record", "--env", envs.POINT_TARGET_ID, "--episodes", "2", "--size", "8", "--max-steps", "3",
            "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0 and main(argv) == 0
    files = sorted(tmp_path.glob("*.npz"))
    assert [f.name for f in files] == [f"episode_{i:06d}_3.npz" for i in range(4)]
    assert [seed_of(f) for f in files] == [0, 1, 2, 3]
    cfg = DataConfig(name="episodes", path=str(tmp_path), image_size=8, channels=3, seq_len=4,
                     options={"test_fraction": 0.5})
    assert build_source(cfg, "train").num_episodes == 2 and build_source(cfg, "test").num_episodes == 2


def test_folder_without_stored_seeds_is_refused(tmp_path: Path) -> None:
    paths = record_episodes(point_target(), "random", 1, tmp_path, seed=0, progress=False)
    legacy = {k: v for k, v in load_episode(paths[0]).items() if k != "log_seed"}
    paths[0].unlink()
    save_next_episode(legacy, tmp_path)  # as recorded before seeds were stored
    with pytest.raises(ValueError, match="1 episode file.*without a stored seed.*new directory"):
        record_episodes(point_target(), "random", 1, tmp_path, seed=0, progress=False)
    assert len(record_episodes(point_target(), "random", 1, tmp_path, seed=None, progress=False)) == 1


def test_recorder_stores_the_reset_seed(tmp_path: Path) -> None:
    env = EpisodeRecorder(point_target(), tmp_path)
    for seed in (7, None):
        env.reset(seed=seed)
        done = False
        while not done:
            *_, terminated, truncated, info = env.step(env.action_space.sample())
            done = terminated or truncated
        assert seed_of(Path(info["episode_path"])) == (-1 if seed is None else seed)
    with pytest.raises(ValueError, match="info_keys may not contain 'seed'"):
        EpisodeRecorder(point_target(), tmp_path, info_keys=["seed"])


# ---------------------------------------------------------------------- numeric flags
@pytest.mark.parametrize(
    ("flag", "value", "bound"),
    [
        ("--size", "100000", f"1 to {MAX_SIZE}"),
        ("--size", "0", f"1 to {MAX_SIZE}"),
        ("--episodes", "0", "1 to "),
        ("--episodes", "-4", "1 to "),
        ("--episodes", "100000000", "1 to "),
        ("--action-repeat", "0", "1 to "),
        ("--action-repeat", "1000000", "1 to "),
        ("--max-steps", "0", "1 to "),
        ("--max-steps", "1000000000", "1 to "),
        ("--seed", "-1", "0 to "),
        ("--seed", "99999999999", "0 to "),
        ("--seed", "x", "0 to "),
    ],
)
def test_numeric_flags_are_bounded(tmp_path: Path, capsys, flag: str, value: str, bound: str) -> None:
    argv = ["record", "--env", "Pendulum-v1", "--episodes", "1", "--out", str(tmp_path), flag, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and bound in err and repr(value) in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("seed", [-1, 2**40, 1.5, True])
def test_record_episodes_checks_seed(tmp_path: Path, seed) -> None:
    with pytest.raises(ValueError, match=r"seed: expected an int in \[0, 4294967295\] \(or None\)"):
        record_episodes(point_target(), "random", 1, tmp_path, seed=seed, progress=False)
