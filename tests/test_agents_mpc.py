"""LatentMPCAgent: observation conversion, the Dreamer action convention, noise, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs
from agents.mpc import LatentMPCAgent, obs_to_frame
from agents.planners import CEMPlanner
from tests.conftest import SpyModel, tiny_config
from worldmodel import DLH

SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


def make_agent(noise: float = 0.0, **planner_kwargs) -> tuple[LatentMPCAgent, SpyModel]:
    torch.manual_seed(0)
    model = SpyModel(tiny_config(levels=2, channels=3, action_dim=2, reward_head=True),
                     require_inference_mode=True)
    kwargs = dict(horizon=3, candidates=32, iterations=2, top_k=4, seed=0)
    kwargs.update(planner_kwargs)
    return LatentMPCAgent(model, CEMPlanner(**kwargs), SPACE, exploration_noise=noise, seed=0), model


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(n)]


def test_obs_to_frame_layout_and_range():
    model = DLH(tiny_config(channels=3))
    obs = np.zeros((16, 16, 3), np.uint8)
    obs[2, 5, 1] = 255
    frame = obs_to_frame(obs, model)
    assert frame.shape == (1, 3, 16, 16) and frame.dtype == torch.float32
    assert frame[0, 1, 2, 5] == 1.0 and frame.sum() == 1.0
    gray = DLH(tiny_config(channels=1))
    assert obs_to_frame(np.zeros((16, 16), np.uint8), gray).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("bad", [np.zeros((16, 16, 3), np.float32), np.zeros((32, 32, 3), np.uint8),
                                 np.zeros((16, 16, 1), np.uint8)])
def test_obs_of_wrong_shape_or_dtype(bad):
    agent, _ = make_agent()
    with pytest.raises(ValueError, match="make_pixel_env"):
        agent.act(bad)


def test_previous_action_and_is_first_are_fed_to_the_filter():
    agent, model = make_agent()
    obs = frames(4)
    actions = [agent.act(o) for o in obs[:3]]
    assert [first for _, first in model.seen] == [True, False, False]
    assert torch.equal(model.seen[0][0], torch.zeros(1, 2))
    for (fed, _), previous in zip(model.seen[1:], actions[:2]):
        assert np.allclose(fed.numpy()[0], previous)
    agent.reset()
    agent.act(obs[3])
    assert model.seen[-1][1] is True and torch.equal(model.seen[-1][0], torch.zeros(1, 2))


def test_actions_are_float32_in_bounds_and_timed():
    agent, _ = make_agent(noise=5.0)
    for o in frames(3):
        action = agent.act(o)
        assert action.dtype == np.float32 and action.shape == (2,)
        assert SPACE.contains(action)
    assert agent.last_plan_time > 0


def test_exploration_noise_changes_the_action():
    quiet, _ = make_agent(noise=0.0)
    noisy, _ = make_agent(noise=0.5)
    obs = frames(1)[0]
    assert not np.allclose(quiet.act(obs), noisy.act(obs))


def test_reset_clears_the_planner_warm_start():
    agent, _ = make_agent()
    agent.act(frames(1)[0])
    assert agent.planner._previous is not None
    agent.reset()
    assert agent.planner._previous is None and agent.state is None


def test_acts_in_point_target():
    env = envs.make_pixel_env(envs.POINT_TARGET_ID, size=16, max_episode_steps=5)
    agent, _ = make_agent()
    obs, _ = env.reset(seed=0)
    done, steps = False, 0
    while not done:
        obs, _, terminated, truncated, _ = env.step(agent.act(obs))
        done, steps = terminated or truncated, steps + 1
    assert steps == 5 and agent.state.batch_size == 1


@pytest.mark.parametrize(
    ("space", "kwargs", "match"),
    [
        (spaces.Box(-1, 1, (3,), np.float32), {}, "shape \\(2,\\)"),
        (spaces.Discrete(2), {}, "Box"),
        (spaces.Box(-0.5, 0.5, (2,), np.float32), {}, "bounds"),
        (SPACE, {"exploration_noise": -0.1}, "exploration_noise"),
    ],
)
def test_bad_agent_arguments(space, kwargs, match):
    model = DLH(tiny_config(levels=2, channels=3, action_dim=2, reward_head=True))
    with pytest.raises(ValueError, match=match):
        LatentMPCAgent(model, CEMPlanner(horizon=2, candidates=8, top_k=2), space, **kwargs)


def test_agent_needs_a_planner_and_a_reward_head():
    model = DLH(tiny_config(levels=2, channels=3, action_dim=2))
    with pytest.raises(ValueError, match="reward_head"):
        LatentMPCAgent(model, CEMPlanner(), SPACE)
    with pytest.raises(ValueError, match="Planner"):
        LatentMPCAgent(model, "cem", SPACE)
