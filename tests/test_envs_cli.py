"""The ``record`` sub-command, called directly and as ``python -m envs.cli``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.cli import add_record_parser, main, run_record
from envs.recorder import load_episode

REPO = Path(__file__).resolve().parents[1]


def test_module_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "pt"
    cmd = [
        sys.executable,
        "-m",
        "envs.cli",
        "record",
        "--env",
        "worldmodel/PointTarget-v0",
        "--policy",
        "random",
        "--episodes",
        "2",
        "--out",
        str(out),
        "--size",
        "32",
        "--max-steps",
        "5",
        "--seed",
        "3",
        "--log-info",
        "switched",
    ]
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 episodes (10 steps)" in result.stdout
    files = sorted(out.glob("*.npz"))
    assert [f.name for f in files] == ["episode_000000_5.npz", "episode_000001_5.npz"]
    episode = load_episode(files[0])
    assert episode["image"].shape == (6, 32, 32, 3)
    assert episode["log_switched"].shape == (6,)


def test_direct_call_pendulum_grayscale(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "record",
            "--env",
            "Pendulum-v1",
            "--episodes",
            "1",
            "--out",
            str(tmp_path),
            "--size",
            "32",
            "--grayscale",
            "--action-repeat",
            "2",
            "--max-steps",
            "6",
            "--no-progress",
        ]
    )
    assert code == 0
    (path,) = tmp_path.glob("*.npz")
    episode = load_episode(path)
    assert episode["image"].shape == (7, 32, 32, 1)
    assert episode["action"].shape == (7, 1)
    assert not episode["is_terminal"].any() and episode["is_last"][-1]
    assert "wrote 1 episodes" in capsys.readouterr().out


def test_same_seed_same_files(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert (
            main(
                [
                    "record",
                    "--env",
                    "worldmodel/PointTarget-v0",
                    "--episodes",
                    "1",
                    "--size",
                    "16",
                    "--out",
                    str(tmp_path / name),
                    "--max-steps",
                    "8",
                    "--seed",
                    "5",
                    "--no-progress",
                ]
            )
            == 0
        )
    a, b = (load_episode(next((tmp_path / n).glob("*.npz"))) for n in ("a", "b"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--env", "NoSuchEnv-v0"], "cannot make env 'NoSuchEnv-v0'"),
        (["--env", "Pendulum-v1", "--policy", "greedy"], "policy must be"),
        (["--env", "Pendulum-v1", "--policy", "sb3:/nonexistent/model.zip", "--algo", "PPO"],
         "no Stable-Baselines3"),
    ],
)
def test_errors_return_2(tmp_path: Path, capsys, extra, message) -> None:
    code = main(["record", "--episodes", "1", "--out", str(tmp_path), "--no-progress", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--episodes", "0"], ["--episodes", "x"], ["--size", "-3"]])
def test_argument_errors(tmp_path: Path, bad) -> None:
    argv = ["record", "--env", "Pendulum-v1", "--episodes", "1", "--out", str(tmp_path), *bad]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_add_record_parser_wires_into_any_cli(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="dlh")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_record_parser(subparsers)
    args = parser.parse_args(["record", "--env", "Pendulum-v1", "--episodes", "3", "--out", "d"])
    assert args.func is run_record
    assert (args.size, args.grayscale, args.action_repeat, args.seed, args.max_steps) == (
        64,
        False,
        1,
        0,
        None,
    )
    assert args.policy == "random" and args.episodes == 3


def test_import_is_light() -> None:
    """Stable-Baselines3 (and torch) load only when an ``sb3:`` policy is used."""
    code = (
        "import sys, envs, envs.cli, envs.recorder; "
        "heavy = [m for m in ('stable_baselines3', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
