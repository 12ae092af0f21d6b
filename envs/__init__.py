"""Gymnasium environments and tools that feed the world model.

- :mod:`envs.pixels`: :class:`PixelObservation`, :class:`ActionRepeat`, :func:`make_pixel_env`.
- :mod:`envs.point_target`: ``worldmodel/PointTarget-v0``, a pixel env on two timescales.
- :mod:`envs.recorder`: :class:`EpisodeRecorder`, :func:`record_episodes` (docs/design.md §4 ``.npz``).
- :mod:`envs.policies`: :func:`make_policy` (callable, ``"random"``, ``"sb3:PATH"``).
- :mod:`envs.cli`: the ``dlh record`` sub-command.

Importing this package registers ``worldmodel/PointTarget-v0`` (idempotent).
"""

from __future__ import annotations

import gymnasium as gym

from envs.pixels import ActionRepeat, PixelObservation, make_pixel_env
from envs.point_target import POINT_TARGET_ID, PointTargetEnv
from envs.policies import make_policy
from envs.recorder import EpisodeRecorder, load_episode, record_episodes

__all__ = [
    "POINT_TARGET_ID",
    "ActionRepeat",
    "EpisodeRecorder",
    "PixelObservation",
    "PointTargetEnv",
    "load_episode",
    "make_pixel_env",
    "make_policy",
    "record_episodes",
    "register_envs",
]


def register_envs() -> None:
    """Register this package's environments with Gymnasium; calling it again is a no-op."""
    if POINT_TARGET_ID not in gym.registry:
        gym.register(
            id=POINT_TARGET_ID,
            entry_point="envs.point_target:PointTargetEnv",
            max_episode_steps=200,
        )


register_envs()
