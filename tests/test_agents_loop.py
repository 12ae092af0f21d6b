"""The PlaNet-style loop end to end, evaluation, and the agent-train / agent-eval commands."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import yaml

import envs
from agents.cli import _upper_change_rates, add_agent_parsers
from agents.evaluate import evaluate_agent, filtered_change_rates, r_squared, reward_predictions
from agents.loop import run_planet_loop
from agents.planners import CEMPlanner
from envs.recorder import load_episode
from tests.conftest import tiny_config
from worldmodel import load
from worldmodel.data import DataConfig
from worldmodel.training import LoggingConfig, TrainConfig
from worldmodel.training.checkpoints import latest_checkpoint

PLANNER = {"horizon": 3, "candidates": 16, "iterations": 2, "top_k": 4}


def train_config(out_dir, **model) -> TrainConfig:
    m = tiny_config(**{"levels": 2, "channels": 3, "action_dim": 2, "reward_head": True, **model})
    return TrainConfig(
        model=m, data=DataConfig(name="episodes", path=str(out_dir / "episodes"), image_size=16, channels=3,
                                 seq_len=6, batch_size=3),
        steps=1, out_dir=str(out_dir), device="cpu", threads=1,
        logging=LoggingConfig(log_every=1, media_every=0, checkpoint_every=100, rollout_context=3,
                              rollout_horizon=3, media_sequences=2),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlh")
    add_agent_parsers(p.add_subparsers(dest="command", required=True))
    return p


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planet")
    summary = run_planet_loop(train_config(out), envs.POINT_TARGET_ID, iterations=2, seed_episodes=2,
                              train_steps=2, planner="cem", planner_kwargs=PLANNER, max_episode_steps=8,
                              progress=False, seed=0)
    return out, summary


def test_loop_writes_episodes_model_logs(trained_run):
    out, summary = trained_run
    agent = summary["agent"]
    assert summary["steps"] == 4  # 2 iterations x 2 train steps
    assert len(agent["returns"]) == 2 and len(agent["seed_returns"]) == 2
    assert agent["env_steps"] == 4 * 8 and agent["planner"] == "CEMPlanner"
    files = sorted((out / "episodes").glob("*.npz"))
    assert len(files) == 4
    episode = load_episode(files[-1])
    assert episode["image"].shape == (9, 16, 16, 3) and episode["action"].shape == (9, 2)
    assert abs(episode["action"][1:]).max() <= 1.0
    assert load(out / "model.safetensors").config.reward_head
    saved = json.loads((out / "agent.json").read_text())
    assert saved["returns"] == agent["returns"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("agent/return" in m for m in metrics) and any("loss" in m for m in metrics)
    assert any("agent/imagined_change_rate/level2" in m for m in metrics)
    assert latest_checkpoint(out).name == "step_00000004"  # one checkpoint per iteration
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["name"] == "episodes" and config["data"]["path"].endswith("episodes")


def test_evaluate_agent_against_random(trained_run):
    out, _ = trained_run
    model = load(out / "model.safetensors").eval()
    env = envs.make_pixel_env(envs.POINT_TARGET_ID, size=16, max_episode_steps=5)
    report = evaluate_agent(model, env, CEMPlanner(seed=0, **PLANNER), episodes=2, seed=3)
    assert len(report["agent"]["returns"]) == 2 and len(report["random"]["returns"]) == 2
    assert report["steps"] == 10 and report["plan_ms"] > 0
    assert len(report["filtered_change_rate"]) == 2 and report["filtered_change_rate"][0] == 1.0
    assert len(report["imagined_change_rate"]) == 2
    assert report["reward_r2_filtered"] <= 1 and report["reward_mae_filtered"] >= 0  # untrained: any R² <= 1
    assert report["reward_r2_imagined"] != report["reward_r2_imagined"]  # NaN: episodes shorter than a plan


def test_r_squared_by_hand():
    assert r_squared([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert r_squared([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0  # the mean predicts nothing
    assert r_squared([3.0, 2.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(1 - 8 / 2)
    assert r_squared([1.0], [1.0]) != r_squared([1.0], [1.0])  # NaN for fewer than 2 points


def test_reward_predictions_pair_each_prediction_with_its_reward(trained_run, monkeypatch):
    out, _ = trained_run
    model = load(out / "model.safetensors")
    episode = load_episode(sorted((out / "episodes").glob("*.npz"))[0])  # 9 frames, 8 rewards
    rewards = [float(r) for r in episode["reward"][1:]]
    seen = []
    real = model.predict_reward
    monkeypatch.setattr(model, "predict_reward", lambda f: seen.append(f.shape) or real(f))
    pairs = reward_predictions(model, list(episode["image"]), list(episode["action"][1:]), rewards,
                               horizon=3, context=1, stride=2)
    assert pairs["filtered"].shape == (2, 8)
    assert pairs["filtered"][1].tolist() == rewards
    # open loop from the states after frames 1, 3, 5 (t0 + 3 <= 8), 3 steps each
    expected = rewards[1:4] + rewards[3:6] + rewards[5:8]
    assert pairs["imagined"].shape == (2, 9) and pairs["imagined"][1].tolist() == expected
    assert seen.count((1, 3, seen[0][-1])) == 3  # one batched prediction per imagined rollout


def test_filtered_change_rates_shape(trained_run):
    out, _ = trained_run
    model = load(out / "model.safetensors")
    episode = load_episode(sorted((out / "episodes").glob("*.npz"))[0])
    rates = filtered_change_rates(model, list(episode["image"]), list(episode["action"][1:]))
    assert len(rates) == 2 and rates[0] == 1.0 and 0 <= rates[1] <= 1


def test_agent_eval_command(trained_run, tmp_path, capsys):
    out, _ = trained_run
    report_path = tmp_path / "report.json"
    args = parser().parse_args([
        "agent-eval", "--checkpoint", str(out), "--env", envs.POINT_TARGET_ID, "--episodes", "1",
        "--planner", "mppi", "--horizon", "3", "--candidates", "16", "--elites", "4",
        "--plan-iterations", "2",
        "--max-episode-steps", "4", "--json", str(report_path), "--no-progress"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "agent (mppi): return" in text and "random policy: return" in text
    assert "ms per action" in text and "change rate while filtering: level1 1.000" in text
    report = json.loads(report_path.read_text())
    assert report["planner"] == "mppi" and report["steps"] == 4


def test_agent_train_command(tmp_path, capsys):
    cfg = train_config(tmp_path / "run")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    args = parser().parse_args([
        "agent-train", "--env", envs.POINT_TARGET_ID, "--config", str(config_file),
        "--set", "optim.lr=1e-3", "--out", str(tmp_path / "cli_run"), "--iterations", "1",
        "--seed-episodes", "1", "--train-steps", "1", "--planner", "mppi", "--horizon", "2",
        "--candidates", "8", "--elites", "2", "--plan-iterations", "1", "--max-episode-steps", "7",
        "--no-progress"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "done: 1 iterations, 14 env steps, 1 train steps" in text
    # the upper levels' change rate in training, the line that tells a good Pendulum draw (issue 25)
    assert re.search(r"change rate in training \(last log\): level2 \d\.\d{3}", text)
    assert (tmp_path / "cli_run" / "model.safetensors").is_file()
    assert len(list((tmp_path / "cli_run" / "episodes").glob("*.npz"))) == 2


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        ({"reward_head": False}, {}, "reward_head"),
        ({}, {"iterations": -1}, "iterations"),
        ({}, {"seed_episodes": 0}, "seed_episodes"),
        ({}, {"max_episode_steps": 3}, "seq_len"),
        ({"action_dim": 3}, {}, "Box action space of shape \\(3,\\)"),
        ({}, {"env_id": "NoSuchEnv-v9"}, "cannot make env 'NoSuchEnv-v9'"),
    ],
)
def test_loop_rejects_bad_setups(tmp_path, model, kwargs, match):
    cfg = train_config(tmp_path, **model)
    args = dict(env_id=envs.POINT_TARGET_ID, iterations=1, seed_episodes=1, train_steps=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        run_planet_loop(cfg, **args)


def test_upper_change_rates_reads_levels_two_and_up_in_order():
    metrics = {"change_rate/level3": 0.05, "change_rate/level1": 1.0, "change_rate/level2": 0.25,
               "change_rate/levelx": 0.5, "kl/level2": 3.0}
    assert _upper_change_rates(metrics) == "level2 0.250  level3 0.050"
    assert _upper_change_rates({"change_rate/level1": 1.0}) == ""
