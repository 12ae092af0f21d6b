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


# ---------------------------------------------------------------------- issue 18: records that mix
def record_argv(out: Path, *extra: str) -> list[str]:
    return ["record", "--env", envs.POINT_TARGET_ID, "--episodes", "1", "--size", "8", "--max-steps", "3",
            "--out", str(out), "--no-progress", *extra]


def test_a_continuation_with_other_settings_is_refused_naming_each(tmp_path: Path, capsys) -> None:
    assert main(record_argv(tmp_path)) == 0
    stored = json.loads((tmp_path / "recording.json").read_text())
    assert stored["size"] == 8 and stored["image_shape"] == [8, 8, 3] and stored["grayscale"] is False
    capsys.readouterr()
    assert main(record_argv(tmp_path, "--size", "16", "--grayscale", "--action-repeat", "2")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "size 8 (now 16)" in err and "grayscale False (now True)" in err
    assert "action_repeat 1 (now 2)" in err and "image_shape [8, 8, 3] (now [16, 16, 1])" in err
    assert main(record_argv(tmp_path, "--env", "Pendulum-v1")) == 2
    assert "env 'worldmodel/PointTarget-v0' (now 'Pendulum-v1')" in capsys.readouterr().err
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert main(record_argv(tmp_path)) == 0 and len(list(tmp_path.glob("*.npz"))) == 2


def test_continuing_warns_about_a_corrupt_episode_and_removes_stale_temporaries(tmp_path: Path) -> None:
    record_episodes(point_target(), "random", 1, tmp_path, seed=0, progress=False)
    corrupt = tmp_path / "episode_000001_5.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    stale = [tmp_path / ".episode_000002_5.npz.4242.tmp",  # a kill under earlier versions
             tmp_path / ".episode_000002_5.ab12cd34.tmp.npz"]  # a kill inside atomic_write
    for path in stale:
        path.write_bytes(b"half")
    with pytest.warns(UserWarning) as caught:
        record_episodes(point_target(), "random", 1, tmp_path, seed=0, progress=False)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"{corrupt}: not a readable episode file") for m in messages), messages
    assert any("removed 2 temporaries left by interrupted recordings" in m for m in messages), messages
    assert not any(p.exists() for p in stale)


def test_a_second_recording_into_a_folder_is_refused_naming_the_first(tmp_path: Path) -> None:
    import subprocess
    import sys

    from worldmodel.files import FolderInUse

    hold = ("import sys, time; from worldmodel.files import FolderLock; FolderLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse, match=rf"in use by another process \(PID {holder.pid}\)"):
            record_episodes(point_target(), "random", 1, tmp_path, seed=0, progress=False)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert len(record_episodes(point_target(), "random", 1, tmp_path, seed=0, progress=False)) == 1


@pytest.mark.parametrize("command", ["record", "eval", "train"])
def test_out_naming_a_file_is_one_message_and_exit_code_everywhere(tmp_path: Path, capsys, command) -> None:
    from worldmodel.cli import main as dlh

    target = tmp_path / "a_file"
    target.write_text("x")
    argv = {"record": record_argv(target),
            "eval": ["eval", "--checkpoint", str(tmp_path / "nothing"), "--context", "1", "--horizon", "1",
                     "--out", str(target)],
            "train": ["train", "--out", str(target), "--no-progress"]}[command]
    if command == "eval":  # a model to evaluate
        from tests.conftest import tiny_model

        tiny_model().save(tmp_path / "model.safetensors")
        argv[2] = str(tmp_path / "model.safetensors")
    assert dlh(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"dlh {command}: error: output folder {target} is a file, not a folder: choose another " \
                   "--out (a folder, created if missing)"


def test_record_takes_numpy_integers(tmp_path: Path) -> None:
    env = make_pixel_env(envs.POINT_TARGET_ID, size=np.int64(8), action_repeat=np.int64(1),
                         max_episode_steps=np.int64(3))
    paths = record_episodes(env, "random", np.int64(2), tmp_path, seed=np.uint32(5), progress=False)
    assert [seed_of(p) for p in paths] == [5, 6]


# ---------------------------------------------------------------------- issue 18: SB3 files that allocate
def rewrite_zip(source: Path, target: Path, *, data=None, entries: dict | None = None) -> Path:
    """A copy of an SB3 zip with its JSON `data` changed by `data(dict)` and entries replaced."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        stored = json.loads(zin.read("data"))
        if data is not None:
            data(stored)
        for name in zin.namelist():
            content = json.dumps(stored) if name == "data" else zin.read(name)
            zout.writestr(name, (entries or {}).get(name, content))
    return target


def test_a_policy_pth_zip_bomb_is_refused_by_its_size(tmp_path: Path, monkeypatch) -> None:
    import envs.policies as policies

    save_model(tmp_path / "ppo.zip", "PPO", "Pendulum-v1")
    monkeypatch.setattr(policies, "_WEIGHTS_LIMIT", 2**20)  # 1 MiB here, 256 MiB for real
    bomb = rewrite_zip(tmp_path / "ppo.zip", tmp_path / "bomb.zip", entries={"policy.pth": bytes(8 * 2**20)})
    assert bomb.stat().st_size < 100_000  # 8 MiB of zeros packs into a few kB
    with pytest.raises(ValueError, match=r"bomb\.zip'?: its 'policy\.pth' entry unpacks to over 1 MiB"):
        load_sb3_policy(bomb, gym.make("Pendulum-v1"), algo="PPO")

    # a directory that understates the entry's size: zipfile stops reading at the stated size, so
    # the entry fails its CRC instead of unpacking to 8 MiB (the actual-size cap is the backstop)
    def understate(archive_path: Path) -> None:
        raw = bytearray(archive_path.read_bytes())
        index = raw.rfind(b"policy.pth")  # the central directory's record of the entry
        header = index - 46
        raw[header + 24:header + 28] = (1000).to_bytes(4, "little")  # uncompressed size
        archive_path.write_bytes(bytes(raw))

    understate(bomb)
    with pytest.raises(ValueError, match=r"entry unpacks to over 1 MiB|Bad CRC-32 for file 'policy\.pth'"):
        load_sb3_policy(bomb, gym.make("Pendulum-v1"), algo="PPO")


@pytest.mark.parametrize("net_arch, match", [
    ([60000, 60000], r"policy_kwargs\['net_arch'\] asks for 60000 units, but no tensor"),
    ({"pi": [1e6, 1e6], "vf": [4]}, r"policy_kwargs\['net_arch'\] asks for 1000000\.0 units"),
    ([4] * 28, r"policy_kwargs\['net_arch'\] .* needs 432 weights, more than the \d+ stored"),
])
def test_policy_sizes_beyond_the_stored_weights_are_refused_before_building(tmp_path, monkeypatch, net_arch,
                                                                          match) -> None:
    from stable_baselines3.common.policies import ActorCriticPolicy

    save_model(tmp_path / "ppo.zip", "PPO", "Pendulum-v1", policy_kwargs={"net_arch": [4]})
    crafted = rewrite_zip(tmp_path / "ppo.zip", tmp_path / "big.zip",
                          data=lambda d: d["policy_kwargs"].update(net_arch=net_arch))

    def never(self, *args, **kwargs):
        raise AssertionError("the network was built")

    monkeypatch.setattr(ActorCriticPolicy, "__init__", never)
    with pytest.raises(ValueError, match=match):
        load_sb3_policy(crafted, gym.make("Pendulum-v1"), algo="PPO")


def test_a_policy_class_stored_only_as_a_pickle_is_refused(tmp_path: Path, capsys) -> None:
    save_pixel_model(tmp_path / "ppo.zip")
    only_pickled = rewrite_zip(
        tmp_path / "ppo.zip", tmp_path / "pickled_class.zip",
        data=lambda d: d.update(policy_class={k: v for k, v in d["policy_class"].items()
                                              if k in (":type:", ":serialized:")}))
    with pytest.raises(ValueError, match="the policy class is stored only as a pickle; pass --trust-pickle"):
        load_sb3_policy(only_pickled, point_target(), algo="PPO")


def test_torch_refusals_of_pickled_weights_are_one_line(tmp_path: Path, capsys) -> None:
    save_pixel_model(tmp_path / "ppo.zip")
    pickled = rewrite_zip(tmp_path / "ppo.zip", tmp_path / "pickled.zip",
                          entries={"policy.pth": pickle.dumps(Touch(tmp_path / "pwned"))})
    argv = ["record", "--env", envs.POINT_TARGET_ID, "--policy", f"sb3:{pickled}", "--algo", "PPO",
            "--episodes", "1", "--size", "8", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'policy.pth' is not a plain state dict" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()
