"""SB3 in the dream (issue 25): the VecEnv adapter's conventions, training only on imagined
experience, a dream policy saved and loaded, acting in the real env, `dlh dream-train`, and
the Dyna option of the PlaNet loop."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO, SAC  # noqa: E402
from stable_baselines3.common.vec_env import VecCheckNan  # noqa: E402

import envs  # noqa: E402
from agents.cli import add_agent_parsers  # noqa: E402
from agents.dream import DreamVecEnv  # noqa: E402
from agents.dream_loop import DynaOptions  # noqa: E402
from agents.dream_sb3 import (  # noqa: E402
    DreamPolicyAgent,
    DreamSB3VecEnv,
    PolicyWarmStart,
    evaluate_policy_real,
    train_in_dream,
)
from agents.loop import run_episode, run_planet_loop  # noqa: E402
from agents.planners import CEMPlanner  # noqa: E402
from agents.sb3 import DLHFeatureWrapper  # noqa: E402
from tests.test_agents_loop import PLANNER, train_config  # noqa: E402
from tests.test_dream_env import BOX, recorded, synthetic_source, world_model  # noqa: E402, F401

PPO_SMALL = {"n_steps": 16, "batch_size": 32, "n_epochs": 1}


def adapter(num_envs: int = 4, horizon: int = 3, model=None, **kwargs) -> DreamSB3VecEnv:
    model = model if model is not None else world_model()
    dream = DreamVecEnv(
        model,
        synthetic_source(),
        num_envs,
        horizon=horizon,
        context=4,
        action_space=BOX,
        autoreset_mode="SameStep",
        starts=16,
        **kwargs,
    )
    return DreamSB3VecEnv(dream)


def point_target(steps: int = 6):
    return envs.make_pixel_env(envs.POINT_TARGET_ID, size=16, max_episode_steps=steps)


def test_adapter_follows_sb3_vec_env_conventions():
    venv = VecCheckNan(adapter(3, horizon=2), raise_exception=True)
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (3, venv.observation_space.shape[0]) and obs.dtype == np.float32
    assert venv.num_envs == 3 and venv.action_space == BOX
    actions = np.stack([BOX.sample() for _ in range(3)])
    obs, rewards, dones, infos = venv.step(actions)
    assert rewards.dtype == np.float32 and rewards.shape == (3,) and not dones.any()
    assert isinstance(infos, list) and len(infos) == 3 and infos[0] == {"frames": 1}
    obs, rewards, dones, infos = venv.step(actions)
    assert dones.all()  # the horizon: truncated, so SB3 bootstraps from terminal_observation
    for info, row in zip(infos, obs):
        assert info["TimeLimit.truncated"] is True
        assert info["terminal_observation"].shape == row.shape and not np.array_equal(
            info["terminal_observation"], row
        )
        assert info["episode"]["l"] == 2 and info["episode"]["frames"] == 2
    assert venv.get_attr("horizon") == [2, 2, 2] and venv.env_is_wrapped(object) == [False] * 3


def test_adapter_reset_applies_sb3_seed():
    a, b = adapter(), adapter()
    a.seed(5)
    b.seed(5)
    assert np.array_equal(a.reset(), b.reset())


def test_adapter_needs_same_step_autoreset():
    dream = DreamVecEnv(world_model(), synthetic_source(), 2, context=4, action_space=BOX, starts=8)
    with pytest.raises(ValueError, match="SameStep"):
        DreamSB3VecEnv(dream)
    with pytest.raises(ValueError, match="wraps a DreamVecEnv"):
        DreamSB3VecEnv(object())


def test_ppo_trains_in_the_dream_saves_and_loads(tmp_path):
    venv = adapter(4)
    agent, info = train_in_dream(venv, "PPO", 128, seed=0, tensorboard_log=str(tmp_path / "tb"), **PPO_SMALL)
    assert isinstance(agent, PPO) and agent.num_timesteps >= 128
    assert info["episodes"] > 0 and np.isfinite(info["imagined_return"]) and info["episode_length"] == 3
    agent.save(tmp_path / "policy.zip")
    loaded = PPO.load(tmp_path / "policy.zip")
    obs = venv.reset()
    assert np.array_equal(
        agent.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0]
    )
    events = list((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"dream/imagined_return", "dream/episode_length", "rollout/ep_rew_mean"} <= set(tags)


def test_pixel_policy_trains_on_decoded_frames():
    venv = adapter(2, observation="pixels")
    obs = venv.reset()
    assert obs.shape == (2, 16, 16, 3) and obs.dtype == np.uint8
    agent, info = train_in_dream(venv, "PPO", 32, **PPO_SMALL)
    assert agent.policy.features_extractor.__class__.__name__ == "SmallCNN" and info["episodes"] > 0


def test_sac_trains_on_and_continues():
    venv = adapter(2)
    agent, _ = train_in_dream(venv, "SAC", 120, seed=0, learning_starts=20, gradient_steps=1, batch_size=16)
    assert isinstance(agent, SAC)
    agent, info = train_in_dream(venv, agent, 40)  # the same agent goes on: its step count continues
    assert agent.num_timesteps >= 160 and info["steps"] == 40


def test_model_weights_untouched_by_dream_training():
    model = world_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_in_dream(adapter(2, model=model), "PPO", 64, **PPO_SMALL)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # nor frozen: a trainer may keep training it


def test_bad_algo():
    with pytest.raises(ValueError, match="algo must be one of"):
        train_in_dream(adapter(2), "DQN", 10)


def test_dream_policy_acts_in_the_real_env_unchanged():
    model = world_model()
    agent, _ = train_in_dream(adapter(2, model=model), "PPO", 64, **PPO_SMALL)
    real = DLHFeatureWrapper(point_target(), model)
    torch.manual_seed(0)  # the filter samples posteriors from torch's global generator
    report = evaluate_policy_real(agent, real, episodes=2, seed=3)
    assert len(report["returns"]) == 2 and report["steps"] == 12
    assert report["act_ms"] > 0 and report["filter_ms"] > 0
    torch.manual_seed(0)
    again = evaluate_policy_real(agent, real, episodes=2, seed=3)
    assert again["returns"] == report["returns"]
    with pytest.raises(ValueError, match="DLHFeatureWrapper"):
        evaluate_policy_real(agent, point_target(), episodes=1)


def test_policy_agent_and_warm_start_act():
    model = world_model()
    agent, _ = train_in_dream(adapter(2, model=model), "PPO", 64, **PPO_SMALL)
    env = point_target()
    actor = DreamPolicyAgent(model, agent, env.action_space, exploration_noise=0.1, seed=0)
    result = run_episode(env, actor, seed=0, reset=actor.reset)
    assert result["steps"] == 6 and all(np.abs(a).max() <= 1 for a in result["actions"])
    planner = PolicyWarmStart(CEMPlanner(**PLANNER), agent)
    with torch.inference_mode():
        state = model.observe(torch.rand(1, 3, 3, 16, 16), torch.zeros(1, 3, 2)).state
        action = planner.plan(model, state)
    assert action.shape == (2,) and planner.last_stats["score_max"] >= planner.last_stats["score_mean"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlh")
    add_agent_parsers(p.add_subparsers(dest="command", required=True))
    return p


def test_dream_train_command(tmp_path, recorded, capsys):  # noqa: F811
    model = world_model()
    model.save(tmp_path / "model.safetensors")
    out = tmp_path / "dream"
    args = parser().parse_args(
        [
            "dream-train",
            "--checkpoint",
            str(tmp_path),
            "--episodes",
            str(recorded),
            "--algo",
            "ppo",
            "--steps",
            "64",
            "--out",
            str(out),
            "--envs",
            "4",
            "--dream-horizon",
            "4",
            "--context",
            "4",
            "--eval-episodes",
            "2",
            "--max-episode-steps",
            "5",
            "--candidates",
            "8",
            "--elites",
            "2",
            "--plan-iterations",
            "1",
            "--plan-horizon",
            "3",
        ]
    )
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "dream policy: return" in text and "random policy" in text and "CEM" in text
    assert PPO.load(out / "policy.zip").observation_space.shape == (model.config.feature_dim,)
    report = json.loads((out / "dream.json").read_text())
    assert report["env"] == envs.POINT_TARGET_ID and report["eval_seeds"] == [1000, 1001]
    for key in ("dream_policy", "random", "cem"):
        assert len(report[key]["returns"]) == 2
    assert report["act_speedup_vs_cem"] > 0 and report["dream"]["cpu_time_s"] > 0
    assert list((out / "tb").rglob("events.out.tfevents*"))


def test_dream_train_refuses_another_env(tmp_path, recorded):  # noqa: F811
    world_model().save(tmp_path / "model.safetensors")
    args = parser().parse_args(
        [
            "dream-train",
            "--checkpoint",
            str(tmp_path),
            "--episodes",
            str(recorded),
            "--steps",
            "8",
            "--out",
            str(tmp_path / "o"),
            "--env",
            "Pendulum-v1",
        ]
    )
    with pytest.raises(ValueError, match="episodes of another env"):
        args.func(args)


@pytest.mark.parametrize("act", ["policy", "warm_start"])
def test_dyna_loop(tmp_path, act):
    dyna = DynaOptions(algo="PPO", steps=32, num_envs=2, horizon=3, context=3, act=act, algo_kwargs=PPO_SMALL)
    summary = run_planet_loop(
        train_config(tmp_path),
        envs.POINT_TARGET_ID,
        iterations=2,
        seed_episodes=2,
        train_steps=1,
        planner="cem",
        planner_kwargs=PLANNER,
        max_episode_steps=6,
        progress=False,
        seed=0,
        dyna=dyna,
    )
    agent = summary["agent"]
    assert len(agent["returns"]) == 2 and len(agent["dyna"]["imagined_returns"]) == 2
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("dream/imagined_return" in m for m in metrics)


def test_dyna_options_checked():
    with pytest.raises(ValueError, match="algo"):
        DynaOptions(algo="DQN")
    with pytest.raises(ValueError, match="act"):
        DynaOptions(act="sometimes")
    with pytest.raises(ValueError, match="steps"):
        DynaOptions(steps=0)
