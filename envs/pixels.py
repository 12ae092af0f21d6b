"""Pixel observations and action repeat for any Gymnasium environment.

The world model learns from images, so every environment it sees goes through
:class:`PixelObservation` (rendered frame -> small uint8 image) and, optionally,
:class:`ActionRepeat` (the usual frame skip of pixel-based RL).

Example:
    >>> from envs.pixels import make_pixel_env
    >>> env = make_pixel_env("Pendulum-v1", size=32, grayscale=True, action_repeat=2, seed=0)
    >>> env.observation_space
    Box(0, 255, (32, 32, 1), uint8)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype
    ((32, 32, 1), dtype('uint8'))
"""

from __future__ import annotations

import os
from typing import Any, SupportsFloat

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldmodel.arguments import check_int

__all__ = ["PixelObservation", "ActionRepeat", "make_pixel_env"]


def _use_headless_sdl() -> None:
    """Let pygame-based renderers (classic control) run without a display or sound card.

    Uses ``setdefault``: a value the user set explicitly is kept.
    """
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


class PixelObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Replace the observation with the rendered frame, resized to ``size`` x ``size``.

    The wrapped environment must have been made with ``render_mode="rgb_array"``.
    Each observation is ``env.render()`` resized with ``cv2.INTER_AREA`` (a
    non-square frame is squashed to a square, not cropped), optionally converted to
    grayscale. An RGBA frame loses its alpha channel.

    Observation: uint8 ``(size, size, 3)``, or ``(size, size, 1)`` when ``grayscale``
    (the channel axis is kept so that images are always ``(H, W, C)``).

    Example:
        >>> import gymnasium as gym
        >>> env = PixelObservation(gym.make("CartPole-v1", render_mode="rgb_array"), size=32)
        >>> env.observation_space
        Box(0, 255, (32, 32, 3), uint8)
        >>> obs, _ = env.reset(seed=0)
        >>> env.observation_space.contains(obs)
        True

    Args:
        env: environment with ``render_mode == "rgb_array"``.
        size: side of the square output image in pixels (any positive int; 64 or 32
            are the model's usual sizes).
        grayscale: convert to one channel (ITU-R 601 luma, as ``cv2.COLOR_RGB2GRAY``).
    """

    def __init__(self, env: gym.Env, size: int = 64, grayscale: bool = False) -> None:
        size = check_int(size, "size", 1)
        if not isinstance(grayscale, (bool, np.bool_)):
            raise ValueError(f"grayscale must be a bool, got {grayscale!r}")
        if env.render_mode != "rgb_array":
            raise ValueError(
                f"PixelObservation needs an environment made with render_mode='rgb_array', "
                f"got render_mode={env.render_mode!r}; "
                f"use gym.make(env_id, render_mode='rgb_array')"
            )
        gym.utils.RecordConstructorArgs.__init__(self, size=size, grayscale=bool(grayscale))
        gym.ObservationWrapper.__init__(self, env)
        _use_headless_sdl()
        self.size = size
        self.grayscale = bool(grayscale)
        channels = 1 if self.grayscale else 3
        self.observation_space = spaces.Box(low=0, high=255, shape=(size, size, channels), dtype=np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        """Render the current frame and return it as uint8 ``(size, size, C)``."""
        frame = self.env.render()
        return self.process_frame(frame)

    def process_frame(self, frame: Any) -> np.ndarray:
        """Resize (and maybe gray) one frame: ``(H, W)``/``(H, W, 1|3|4)`` uint8 -> ``(size, size, C)``."""
        if not isinstance(frame, np.ndarray):
            raise ValueError(
                f"PixelObservation expected env.render() to return a numpy array, got {type(frame).__name__}"
            )
        if frame.dtype != np.uint8:
            raise ValueError(f"PixelObservation expected a uint8 frame, got dtype {frame.dtype}")
        if frame.ndim == 3 and frame.shape[-1] == 4:
            frame = frame[..., :3]  # drop alpha
        if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[-1] == 1):
            gray_in = True
            frame = frame.reshape(frame.shape[:2])
        elif frame.ndim == 3 and frame.shape[-1] == 3:
            gray_in = False
        else:
            raise ValueError(
                f"PixelObservation expected a frame of shape (H, W), (H, W, 1), (H, W, 3) or "
                f"(H, W, 4), got {frame.shape}"
            )
        if frame.shape[:2] != (self.size, self.size):
            frame = cv2.resize(
                np.ascontiguousarray(frame), (self.size, self.size), interpolation=cv2.INTER_AREA
            )
        if self.grayscale:
            if not gray_in:
                frame = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
            out = frame[..., None]  # (size, size, 1)
        elif gray_in:
            out = np.repeat(frame[..., None], 3, axis=-1)  # (size, size, 3)
        else:
            out = frame
        return np.ascontiguousarray(out, dtype=np.uint8)


class ActionRepeat(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Repeat every action ``repeat`` times and sum the rewards.

    Stops early when the environment terminates or truncates; the observation and
    info are those of the last inner step. ``repeat=1`` is the identity.

    Example:
        >>> import gymnasium as gym
        >>> env = ActionRepeat(gym.make("Pendulum-v1"), repeat=4)
        >>> _ = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

    Args:
        env: any environment.
        repeat: number of inner steps per outer step, a positive int.
    """

    def __init__(self, env: gym.Env, repeat: int = 1) -> None:
        repeat = check_int(repeat, "repeat", 1)
        gym.utils.RecordConstructorArgs.__init__(self, repeat=repeat)
        gym.Wrapper.__init__(self, env)
        self.repeat = repeat

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def make_pixel_env(
    env_id: str,
    size: int = 64,
    grayscale: bool = False,
    action_repeat: int = 1,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    **kwargs: Any,
) -> gym.Env:
    """Make a Gymnasium environment that returns uint8 ``(size, size, C)`` images.

    Wrapper order: ``gym.make(env_id, render_mode="rgb_array", **kwargs)`` ->
    :class:`ActionRepeat` -> :class:`PixelObservation` -> optional
    :class:`gymnasium.wrappers.TimeLimit`. Rendering therefore happens once per
    agent step, not once per repeated step.

    Args:
        env_id: a registered id (``"Pendulum-v1"``, ``"worldmodel/PointTarget-v0"``,
            or ``"module:Id"`` to import the registering module first).
        size: image side in pixels.
        grayscale: one channel instead of three.
        action_repeat: inner steps per agent step.
        seed: if given, seeds the action and observation spaces (the environment
            itself is seeded by ``reset(seed=...)``, as in Gymnasium).
        max_episode_steps: if given, cap on agent steps (after action repeat) per
            episode; the environment's own time limit still applies.
        **kwargs: passed to ``gym.make`` (e.g. environment constructor arguments).

    Returns:
        The wrapped environment.
    """
    size = check_int(size, "size", 1)
    action_repeat = check_int(action_repeat, "action_repeat", 1)
    if max_episode_steps is not None:
        max_episode_steps = check_int(max_episode_steps, "max_episode_steps", 1)
    if "render_mode" in kwargs and kwargs["render_mode"] != "rgb_array":
        raise ValueError(
            f"make_pixel_env renders with render_mode='rgb_array', got render_mode={kwargs['render_mode']!r}"
        )
    kwargs["render_mode"] = "rgb_array"
    _use_headless_sdl()
    from envs.point_target import POINT_TARGET_ID

    if env_id.split(":")[-1] == POINT_TARGET_ID:
        kwargs.setdefault("size", size)  # draw at the final size: no resize needed
    env = gym.make(env_id, **kwargs)
    if action_repeat > 1:
        env = ActionRepeat(env, action_repeat)
    env = PixelObservation(env, size=size, grayscale=grayscale)
    if max_episode_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    if seed is not None:
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
    return env
