"""PointTarget: a pixel environment with features on two timescales.

A point mass (white disc) moves in the square ``[-1, 1]^2`` under a continuous
force; a coloured square (the target) jumps to a new position and a new colour
every ``switch_every`` steps. The agent's position changes every step, the
target's only at switches: a small, cheap test bed for a hierarchical world model,
whose upper levels should change at the switches and stay static in between.

Registered with Gymnasium as ``worldmodel/PointTarget-v0`` when :mod:`envs` is
imported (time limit 200 steps, as ``max_episode_steps`` of the registration).

Example:
    >>> import gymnasium as gym
    >>> import envs  # registers worldmodel/PointTarget-v0
    >>> env = gym.make("worldmodel/PointTarget-v0", size=32)
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype
    ((32, 32, 3), dtype('uint8'))
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldmodel.arguments import check_int

__all__ = ["POINT_TARGET_ID", "PointTargetEnv"]

POINT_TARGET_ID = "worldmodel/PointTarget-v0"

# Target colours (RGB): saturated and distinct, so a switch is visible even in grayscale
# for most pairs; consecutive targets never share a colour.
TARGET_COLOURS = np.array(
    [
        [230, 40, 40],  # red
        [40, 200, 60],  # green
        [50, 90, 240],  # blue
        [240, 220, 40],  # yellow
        [220, 60, 220],  # magenta
        [40, 220, 230],  # cyan
    ],
    dtype=np.uint8,
)
AGENT_COLOUR = np.array([255, 255, 255], dtype=np.uint8)
BACKGROUND = np.array([24, 24, 24], dtype=np.uint8)


class PointTargetEnv(gym.Env[np.ndarray, np.ndarray]):
    """Point mass chasing a target that switches position and colour on a slow clock.

    Dynamics per step (arena units, the box is ``[-1, 1]^2``)::

        a = clip(action, -1, 1)
        v <- damping * v + accel * a        # top speed accel / (1 - damping) = 0.2 per step
        p <- p + v, clipped to |p| <= 1 - agent_radius (the disc stays inside the box);
             the velocity component into a wall is zeroed

    The target is redrawn (uniform position in ``[-0.75, 0.75]^2``, a colour different
    from the previous one) at steps ``switch_every, 2 * switch_every, ...``; with
    ``switch_jitter = j`` each interval is ``switch_every + U{-j..j}`` instead.

    Reward: ``-||p - target|| / (2 sqrt 2)``, in ``[-1, 0]``. The task never
    terminates; episodes end by truncation (``max_episode_steps`` of the Gymnasium
    registration, 200 by default: ``gym.make(POINT_TARGET_ID, max_episode_steps=N)``).

    Observation: the scene drawn with numpy, uint8 ``(size, size, 3)``: dark
    background, target as a coloured square, agent as a white disc on top. Sizes
    are in arena units, so the scene looks the same at every resolution.
    ``render()`` (``render_mode="rgb_array"``) returns the same frame.

    Info: ``agent_pos`` (2,), ``target_pos`` (2,), ``target_colour`` (index into
    :data:`TARGET_COLOURS`), ``switched`` (True on the step whose frame shows a new
    target; False at reset), ``distance``.

    Args:
        render_mode: ``None`` or ``"rgb_array"``.
        size: image side in pixels (>= 8).
        switch_every: mean number of steps between target switches (>= 1).
        switch_jitter: half-width of the uniform jitter of each interval, ``0 <=
            switch_jitter < switch_every``.
        damping: velocity kept per step, in ``[0, 1)``.
        accel: velocity added per unit of action, > 0.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    agent_radius = 0.12
    target_half_side = 0.15
    spawn_limit = 0.75

    def __init__(
        self,
        render_mode: str | None = None,
        size: int = 64,
        switch_every: int = 40,
        switch_jitter: int = 0,
        damping: float = 0.85,
        accel: float = 0.03,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.size = check_int(size, "size", 8)
        self.switch_every = check_int(switch_every, "switch_every", 1)
        self.switch_jitter = check_int(switch_jitter, "switch_jitter", 0)
        if self.switch_jitter >= self.switch_every:
            raise ValueError(
                f"switch_jitter must be smaller than switch_every={self.switch_every}, got {switch_jitter!r}"
            )
        if not 0.0 <= float(damping) < 1.0:
            raise ValueError(f"damping must be in [0, 1), got {damping!r}")
        if not float(accel) > 0.0:
            raise ValueError(f"accel must be > 0, got {accel!r}")
        self.render_mode = render_mode
        self.damping = float(damping)
        self.accel = float(accel)

        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(0, 255, shape=(self.size, self.size, 3), dtype=np.uint8)

        # Pixel-centre coordinates in arena units; row 0 is the top (y = +1).
        centres = (np.arange(self.size) + 0.5) / self.size * 2.0 - 1.0
        self._xs = centres  # (size,) columns, left to right
        self._ys = -centres  # (size,) rows, top to bottom
        # Never thinner than a pixel, so both shapes stay visible at small sizes.
        pixel = 2.0 / self.size
        self._agent_r2 = max(self.agent_radius, 0.75 * pixel) ** 2
        self._target_h = max(self.target_half_side, 0.5 * pixel)

        self._agent_pos = np.zeros(2)
        self._agent_vel = np.zeros(2)
        self._target_pos = np.zeros(2)
        self._target_colour = 0
        self._t = 0
        self._next_switch = self.switch_every
        self._frame: np.ndarray | None = None

    # ------------------------------------------------------------------ Gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        self._agent_pos = rng.uniform(-self.spawn_limit, self.spawn_limit, size=2)
        self._agent_vel = np.zeros(2)
        self._target_colour = int(rng.integers(len(TARGET_COLOURS)))
        self._target_pos = rng.uniform(-self.spawn_limit, self.spawn_limit, size=2)
        self._t = 0
        self._next_switch = self._interval()
        self._frame = self._draw()
        return self._frame.copy(), self._info(switched=False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._frame is None:
            raise gym.error.ResetNeeded("Call reset() before step()")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        vel = self.damping * self._agent_vel + self.accel * a
        pos = self._agent_pos + vel
        limit = 1.0 - self.agent_radius  # the disc stays inside the box
        hit = np.abs(pos) > limit
        pos = np.clip(pos, -limit, limit)
        vel[hit] = 0.0
        self._agent_pos, self._agent_vel = pos, vel

        self._t += 1
        switched = self._t == self._next_switch
        if switched:
            self._switch_target()
            self._next_switch += self._interval()

        self._frame = self._draw()
        info = self._info(switched=switched)
        reward = -info["distance"] / (2.0 * np.sqrt(2.0))
        return self._frame.copy(), float(reward), False, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() called on PointTargetEnv made without render_mode; "
                "make it with render_mode='rgb_array'"
            )
            return None
        if self._frame is None:
            raise gym.error.ResetNeeded("Call reset() before render()")
        return self._frame.copy()

    # ------------------------------------------------------------------ internals
    def _interval(self) -> int:
        """Steps until the next switch, ``switch_every`` +- jitter (>= 1)."""
        if self.switch_jitter == 0:
            return self.switch_every
        j = self.switch_jitter
        return self.switch_every + int(self.np_random.integers(-j, j + 1))

    def _switch_target(self) -> None:
        rng = self.np_random
        n = len(TARGET_COLOURS)
        self._target_colour = (self._target_colour + int(rng.integers(1, n))) % n
        self._target_pos = rng.uniform(-self.spawn_limit, self.spawn_limit, size=2)

    def _info(self, switched: bool) -> dict[str, Any]:
        return {
            "agent_pos": self._agent_pos.astype(np.float32),
            "target_pos": self._target_pos.astype(np.float32),
            "target_colour": self._target_colour,
            "switched": bool(switched),
            "distance": float(np.linalg.norm(self._agent_pos - self._target_pos)),
        }

    def _draw(self) -> np.ndarray:
        """The scene as uint8 ``(size, size, 3)``."""
        frame = np.empty((self.size, self.size, 3), dtype=np.uint8)
        frame[:] = BACKGROUND
        tx, ty = self._target_pos
        h = self._target_h
        cols = np.abs(self._xs - tx) <= h  # (size,)
        rows = np.abs(self._ys - ty) <= h  # (size,)
        frame[np.ix_(rows, cols)] = TARGET_COLOURS[self._target_colour]
        ax, ay = self._agent_pos
        disc = (self._ys[:, None] - ay) ** 2 + (self._xs[None, :] - ax) ** 2  # (size, size)
        frame[disc <= self._agent_r2] = AGENT_COLOUR
        return frame
