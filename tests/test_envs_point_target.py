"""worldmodel/PointTarget-v0: API checkers, determinism, the two timescales."""

from __future__ import annotations

import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import envs
from envs.point_target import AGENT_COLOUR, TARGET_COLOURS, PointTargetEnv


def rollout(env: gym.Env, seed: int, steps: int, action_seed: int = 0):
    """Observations, rewards and infos of ``steps`` steps with seeded random actions."""
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    for _ in range(steps):
        obs, reward, _, _, info = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
    return np.stack(observations), np.array(rewards), infos


def test_registered_and_idempotent() -> None:
    assert envs.POINT_TARGET_ID in gym.registry
    envs.register_envs()  # second registration is a no-op, no warning
    env = gym.make(envs.POINT_TARGET_ID)
    assert isinstance(env.unwrapped, PointTargetEnv)
    assert env.spec.max_episode_steps == 200


def test_gymnasium_env_checker() -> None:
    env = gym.make(envs.POINT_TARGET_ID, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker's warnings fail the test
        gym_check_env(env)


def test_sb3_env_checker() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(PointTargetEnv(), warn=True)
        sb3_check_env(PointTargetEnv(render_mode="rgb_array", switch_jitter=3), warn=True)
    # 32x32 passes too; SB3 only warns that its default CnnPolicy wants >= 36x36
    with pytest.warns(UserWarning, match="36x36"):
        sb3_check_env(PointTargetEnv(size=32), warn=True)


@pytest.mark.parametrize("size", [64, 32])
def test_observation_is_image(size: int) -> None:
    env = PointTargetEnv(render_mode="rgb_array", size=size)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (size, size, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs, env.render())
    pixels = obs.reshape(-1, 3)
    assert (pixels == AGENT_COLOUR).all(axis=1).any()  # agent visible
    colour = TARGET_COLOURS[env._target_colour]
    assert (pixels == colour).all(axis=1).any()  # target visible


def test_render_without_mode_returns_none() -> None:
    env = PointTargetEnv()
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None


def test_determinism_under_seed() -> None:
    obs_a, rew_a, _ = rollout(PointTargetEnv(switch_jitter=5), seed=7, steps=120)
    obs_b, rew_b, _ = rollout(PointTargetEnv(switch_jitter=5), seed=7, steps=120)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    obs_c, _, _ = rollout(PointTargetEnv(switch_jitter=5), seed=8, steps=120)
    assert not np.array_equal(obs_a, obs_c)


def test_reset_with_seed_restarts_same_episode() -> None:
    env = PointTargetEnv()
    first, _, _ = rollout(env, seed=3, steps=50)
    again, _, _ = rollout(env, seed=3, steps=50)
    np.testing.assert_array_equal(first, again)


def test_target_switches_on_schedule() -> None:
    env = PointTargetEnv(switch_every=5)
    _, _, infos = rollout(env, seed=0, steps=23)
    switched = [t for t, info in enumerate(infos) if info["switched"]]
    assert switched == [5, 10, 15, 20]
    for t in range(1, len(infos)):
        moved = not np.array_equal(infos[t]["target_pos"], infos[t - 1]["target_pos"])
        recoloured = infos[t]["target_colour"] != infos[t - 1]["target_colour"]
        assert moved == (t in switched)
        assert recoloured == (t in switched)  # consecutive targets never share a colour


def test_target_switch_default_every_40() -> None:
    _, _, infos = rollout(PointTargetEnv(), seed=1, steps=130)
    assert [t for t, info in enumerate(infos) if info["switched"]] == [40, 80, 120]


def test_target_switch_jitter() -> None:
    _, _, infos = rollout(PointTargetEnv(switch_every=10, switch_jitter=3), seed=2, steps=300)
    times = [0] + [t for t, info in enumerate(infos) if info["switched"]]
    gaps = np.diff(times)
    assert gaps.min() >= 7 and gaps.max() <= 13
    assert len(set(gaps.tolist())) > 1  # the jitter is used


def test_agent_moves_every_step_with_force() -> None:
    env = PointTargetEnv()
    _, info = env.reset(seed=0)
    x0 = info["agent_pos"][0]
    for _ in range(3):
        _, _, _, _, info = env.step(np.array([1.0, 0.0], np.float32))
        assert info["agent_pos"][0] > x0
        x0 = info["agent_pos"][0]


def test_agent_stays_in_box() -> None:
    env = PointTargetEnv()
    env.reset(seed=0)
    for _ in range(60):
        _, _, _, _, info = env.step(np.array([1.0, -1.0], np.float32))
    limit = 1.0 - PointTargetEnv.agent_radius
    np.testing.assert_allclose(info["agent_pos"], [limit, -limit], atol=1e-6)
    # an action outside the space is clipped, not an error
    env.step(np.array([50.0, -50.0], np.float32))


def test_reward_is_scaled_negative_distance() -> None:
    _, rewards, infos = rollout(PointTargetEnv(), seed=4, steps=100)
    distances = np.array([info["distance"] for info in infos[1:]])
    np.testing.assert_allclose(rewards, -distances / (2 * np.sqrt(2)), rtol=1e-6)
    assert rewards.min() >= -1.0 and rewards.max() <= 0.0


def test_moving_to_target_improves_reward() -> None:
    env = PointTargetEnv(switch_every=1000)
    _, info = env.reset(seed=5)
    rewards = []
    for _ in range(40):
        direction = info["target_pos"] - info["agent_pos"]
        action = np.clip(direction * 5, -1, 1).astype(np.float32)
        _, reward, _, _, info = env.step(action)
        rewards.append(reward)
    assert rewards[-1] > -0.05 and rewards[-1] > rewards[0]


def test_time_limit() -> None:
    env = gym.make(envs.POINT_TARGET_ID, size=16)
    env.reset(seed=0)
    for t in range(1, 201):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == 200)
    short = gym.make(envs.POINT_TARGET_ID, size=16, max_episode_steps=7)
    short.reset(seed=0)
    assert [short.step(short.action_space.sample())[3] for _ in range(7)][-1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 4}, "size"),
        ({"size": 32.0}, "size"),
        ({"switch_every": 0}, "switch_every"),
        ({"switch_every": 5, "switch_jitter": 5}, "switch_jitter"),
        ({"switch_jitter": -1}, "switch_jitter"),
        ({"render_mode": "human"}, "render_mode"),
        ({"damping": 1.0}, "damping"),
        ({"accel": 0.0}, "accel"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        PointTargetEnv(**kwargs)


def test_step_before_reset() -> None:
    with pytest.raises(gym.error.ResetNeeded):
        PointTargetEnv().step(np.zeros(2, np.float32))


def test_small_sizes_still_show_both_objects() -> None:
    env = PointTargetEnv(size=8)
    obs, _ = env.reset(seed=0)
    pixels = obs.reshape(-1, 3)
    assert (pixels == AGENT_COLOUR).all(axis=1).any()
    assert (pixels == TARGET_COLOURS[env._target_colour]).all(axis=1).any()


def test_step_is_cheap() -> None:
    env = PointTargetEnv()
    env.reset(seed=0)
    action = np.zeros(2, np.float32)
    start = time.perf_counter()
    for _ in range(500):
        env.step(action)
    per_step = (time.perf_counter() - start) / 500
    assert per_step < 2e-3  # ~0.1 ms on 2 CPU cores; generous bound
