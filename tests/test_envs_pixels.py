"""PixelObservation, ActionRepeat and make_pixel_env, tested on a tiny fake env."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import envs
from envs.pixels import ActionRepeat, PixelObservation, make_pixel_env


class FakeRenderEnv(gym.Env):
    """Vector observations; ``render()`` returns a constant-colour frame whose value is
    the step count, so resized frames are easy to predict. Terminates after
    ``terminate_at`` steps; reward 1 per step."""

    metadata = {"render_modes": ["rgb_array", "human"]}

    def __init__(
        self,
        render_mode: str | None = "rgb_array",
        frame_shape: tuple[int, ...] = (40, 60, 3),
        frame_dtype: Any = np.uint8,
        terminate_at: int = 1000,
    ) -> None:
        self.render_mode = render_mode
        self.frame_shape = frame_shape
        self.frame_dtype = frame_dtype
        self.terminate_at = terminate_at
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.t >= self.terminate_at
        return np.zeros(2, np.float32), 1.0, terminated, False, {"t": self.t}

    def render(self):
        return np.full(self.frame_shape, self.t * 10, dtype=self.frame_dtype)


@pytest.mark.parametrize("size", [64, 32, 17])
@pytest.mark.parametrize("grayscale", [False, True])
def test_pixel_observation_shapes(size: int, grayscale: bool) -> None:
    env = PixelObservation(FakeRenderEnv(), size=size, grayscale=grayscale)
    channels = 1 if grayscale else 3
    assert env.observation_space == spaces.Box(0, 255, (size, size, channels), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (size, size, channels) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    for t in range(1, 4):
        obs, *_ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert (obs == t * 10).all()  # constant frame survives resizing and graying


@pytest.mark.parametrize("frame_shape", [(40, 60), (40, 60, 1), (40, 60, 3), (40, 60, 4), (64, 64, 3)])
@pytest.mark.parametrize("grayscale", [False, True])
def test_pixel_observation_accepts_frame_layouts(frame_shape, grayscale) -> None:
    env = PixelObservation(FakeRenderEnv(frame_shape=frame_shape), size=64, grayscale=grayscale)
    env.reset()
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 1 if grayscale else 3)
    assert (obs == 10).all()


def test_pixel_observation_resizes_with_area_interpolation() -> None:
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:2, :2] = 200  # top-left 2x2 block
    env = PixelObservation(FakeRenderEnv(frame_shape=(4, 4, 3)), size=2)
    out = env.process_frame(frame)
    assert out[0, 0].tolist() == [200, 200, 200]
    assert out[1, 1].tolist() == [0, 0, 0]


def test_pixel_observation_grayscale_weights() -> None:
    env = PixelObservation(FakeRenderEnv(), size=8, grayscale=True)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    assert env.process_frame(red)[0, 0, 0] == 76  # 0.299 * 255, RGB order


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "64", None])
def test_pixel_observation_bad_size(size) -> None:
    with pytest.raises(ValueError, match="size"):
        PixelObservation(FakeRenderEnv(), size=size)


def test_pixel_observation_bad_grayscale() -> None:
    with pytest.raises(ValueError, match="grayscale"):
        PixelObservation(FakeRenderEnv(), grayscale="yes")


@pytest.mark.parametrize("render_mode", [None, "human"])
def test_pixel_observation_needs_rgb_array(render_mode) -> None:
    with pytest.raises(ValueError, match=f"render_mode={render_mode!r}"):
        PixelObservation(FakeRenderEnv(render_mode=render_mode))


@pytest.mark.parametrize(
    ("frame_shape", "frame_dtype", "match"),
    [((40, 60, 3), np.float32, "uint8"), ((40, 60, 2), np.uint8, "shape"), ((5,), np.uint8, "shape")],
)
def test_pixel_observation_bad_frames(frame_shape, frame_dtype, match) -> None:
    env = PixelObservation(FakeRenderEnv(frame_shape=frame_shape, frame_dtype=frame_dtype))
    with pytest.raises(ValueError, match=match):
        env.reset()


def test_action_repeat_sums_rewards() -> None:
    env = ActionRepeat(FakeRenderEnv(), repeat=3)
    env.reset()
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert reward == 3.0 and info["t"] == 3 and not terminated and not truncated


def test_action_repeat_stops_early() -> None:
    env = ActionRepeat(FakeRenderEnv(terminate_at=5), repeat=4)
    env.reset()
    assert env.step(env.action_space.sample())[1] == 4.0
    _, reward, terminated, _, info = env.step(env.action_space.sample())
    assert terminated and reward == 1.0 and info["t"] == 5


def test_action_repeat_stops_on_truncation() -> None:
    env = ActionRepeat(gym.wrappers.TimeLimit(FakeRenderEnv(), 2), repeat=5)
    env.reset()
    _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
    assert truncated and not terminated and reward == 2.0


def test_action_repeat_one_is_identity() -> None:
    env = ActionRepeat(FakeRenderEnv(), repeat=1)
    env.reset()
    assert env.step(env.action_space.sample())[1] == 1.0


@pytest.mark.parametrize("repeat", [0, -2, 1.5, False, "2"])
def test_action_repeat_bad_repeat(repeat) -> None:
    with pytest.raises(ValueError, match="repeat"):
        ActionRepeat(FakeRenderEnv(), repeat=repeat)


def test_wrappers_compose_and_render_once_per_agent_step() -> None:
    base = FakeRenderEnv()
    env = PixelObservation(ActionRepeat(base, 2), size=16)
    env.reset()
    obs, reward, *_ = env.step(env.action_space.sample())
    assert reward == 2.0 and (obs == 20).all()


def test_make_pixel_env_pendulum() -> None:
    env = make_pixel_env("Pendulum-v1", size=32, grayscale=True, action_repeat=2, seed=0)
    assert env.observation_space.shape == (32, 32, 1)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs.min() < obs.max()  # the pendulum is visible
    obs2, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs2)
    env.close()


def test_make_pixel_env_point_target_draws_at_size() -> None:
    env = make_pixel_env(envs.POINT_TARGET_ID, size=32)
    obs, _ = env.reset(seed=1)
    assert env.unwrapped.size == 32
    np.testing.assert_array_equal(obs, env.unwrapped.render())


def test_make_pixel_env_max_episode_steps() -> None:
    env = make_pixel_env(envs.POINT_TARGET_ID, size=16, action_repeat=3, max_episode_steps=4)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[3] for _ in range(4)]
    assert flags == [False, False, False, True]


def test_make_pixel_env_bad_arguments() -> None:
    with pytest.raises(ValueError, match="render_mode='human'"):
        make_pixel_env("Pendulum-v1", render_mode="human")
    with pytest.raises(ValueError, match="action_repeat"):
        make_pixel_env("Pendulum-v1", action_repeat=0)
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_pixel_env("Pendulum-v1", max_episode_steps=0)
