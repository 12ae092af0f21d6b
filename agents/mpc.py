"""Model-predictive control in latent space: filter each observation, plan, act.

    >>> agent = LatentMPCAgent(model, CEMPlanner(), env.action_space, exploration_noise=0.3)
    >>> obs, _ = env.reset(seed=0)
    >>> agent.reset()
    >>> while True:
    ...     obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
    ...     if terminated or truncated:
    ...         break

Each `act` runs ``model.observe_step(state, frame, previous action, is_first)`` (the
Dreamer convention: the action passed with a frame is the one that led to it; zeros and
``is_first`` at an episode's first frame), then ``planner.plan(model, state)``, adds the
exploration noise, clips to the action space and remembers the action for the next frame.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from worldmodel import DLH, HierarchicalState

from .planners import Planner


def obs_to_frame(obs: Any, model: DLH) -> torch.Tensor:
    """uint8 observation (H, W, C) (or (H, W)) -> float (1, C, H, W) in [0, 1] on the model's device."""
    array = np.asarray(obs)
    if array.ndim == 2:
        array = array[..., None]
    cfg = model.config
    expected = (cfg.image_size, cfg.image_size, cfg.channels)
    if array.dtype != np.uint8 or array.shape != expected:
        raise ValueError(
            f"observation: expected uint8 {expected} (H, W, C) for this model, got {array.dtype} "
            f"{array.shape}; make the env with envs.make_pixel_env(env_id, size={cfg.image_size}, "
            f"grayscale={cfg.channels == 1})"
        )
    frame = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]  # (1, C, H, W)
    return frame.to(model.device, torch.float32) / 255.0


class FilteringAgent:
    """What an agent acting through a DLH does around its choice: filter each observation and
    turn the chosen action into the one it takes.

    ``observe`` runs ``model.observe_step(state, frame, previous action, is_first)`` under
    ``torch.inference_mode`` (the model's training mode is not changed); ``take`` adds the
    exploration noise (std in half-widths of [low, high]), clips to [low, high] and remembers the
    action for the next frame. Subclasses choose the action: ``act(obs)``.

    Attributes:
        state: the filtered HierarchicalState (batch 1) after the last observation.
        last_plan_time: seconds the last `act` spent choosing its action.
    """

    def __init__(self, model: DLH, low: np.ndarray, high: np.ndarray, exploration_noise: float,
                 seed: int | None) -> None:
        if isinstance(exploration_noise, bool) or not isinstance(exploration_noise, (int, float)) \
                or not exploration_noise >= 0:
            raise ValueError(f"exploration_noise must be a number >= 0, got {exploration_noise!r}")
        self.model = model
        self.exploration_noise = float(exploration_noise)
        self.rng = np.random.default_rng(seed)
        self._low, self._high = low.astype(np.float32), high.astype(np.float32)
        self.state: HierarchicalState | None = None
        self.last_plan_time = 0.0

    def reset(self) -> None:
        """Start a new episode: the next observation is a first one."""
        self.state = None
        self._previous = torch.zeros(1, self.model.config.action_dim, device=self.model.device)

    def observe(self, obs: Any) -> HierarchicalState:
        """Filter `obs` into the state (with the previous action); returns the new state."""
        frame = obs_to_frame(obs, self.model)
        with torch.inference_mode():
            first = self.state is None
            state = self.model.initial_state(1) if first else self.state
            is_first = torch.full((1,), first, dtype=torch.bool, device=self.model.device)
            self.state = self.model.observe_step(state, frame, self._previous, is_first)
        return self.state

    def take(self, action: np.ndarray) -> np.ndarray:
        """The chosen action (A,) with exploration noise, clipped; remembered for the next frame."""
        action = np.asarray(action, np.float32)
        if self.exploration_noise > 0:
            scale = (self._high - self._low) / 2
            action = action + self.exploration_noise * scale * self.rng.standard_normal(action.shape)
        action = np.clip(action, self._low, self._high).astype(np.float32)
        self._previous = torch.as_tensor(action, device=self.model.device)[None]  # (1, A)
        return action


class LatentMPCAgent(FilteringAgent):
    """Acts in a pixel env by planning with a DLH world model from its filtered state.

    The model is used as is (its training mode is not changed, so a trainer can keep
    training it between episodes); filtering and planning run under ``torch.inference_mode``.

    Args:
        model: a DLH with ``action_dim`` equal to the action space's size (and a reward head
            for the default planning score).
        planner: a :class:`~agents.planners.Planner`; its bounds must lie inside the space's.
        action_space: the env's Box action space of shape (A,).
        exploration_noise: std of Gaussian noise added to each planned action (then clipped),
            in units of the action range's half-width (PlaNet: 0.3 while collecting).
        seed: seed of the exploration noise.

    Attributes:
        state: the filtered HierarchicalState (batch 1) after the last observation.
        last_plan_time: seconds the last `act` spent planning.
    """

    def __init__(
        self,
        model: DLH,
        planner: Planner,
        action_space: spaces.Space,
        exploration_noise: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(planner, Planner):
            raise ValueError(f"planner must be an agents.planners.Planner, got {type(planner).__name__}")
        planner.check_model(model)
        adim = model.config.action_dim
        if not isinstance(action_space, spaces.Box) or action_space.shape != (adim,):
            raise ValueError(f"action_space must be a Box of shape ({adim},) to match the model's "
                             f"action_dim, got {action_space}")
        low = np.broadcast_to(planner.action_low.numpy(), (adim,))
        high = np.broadcast_to(planner.action_high.numpy(), (adim,))
        if (low < action_space.low - 1e-6).any() or (high > action_space.high + 1e-6).any():
            raise ValueError(
                f"the planner's bounds [{low}, {high}] exceed the action space's "
                f"[{action_space.low}, {action_space.high}]; build the planner with "
                "action_low=space.low, action_high=space.high"
            )
        super().__init__(model, low, high, exploration_noise, seed)
        self.planner = planner
        self.action_space = action_space
        self.reset()

    def reset(self) -> None:
        """Start a new episode: the next observation is a first one."""
        super().reset()
        self.planner.reset()

    def act(self, obs: Any) -> np.ndarray:
        """Filter `obs`, plan, add exploration noise; returns a float32 action (A,)."""
        state = self.observe(obs)
        start = time.perf_counter()
        with torch.inference_mode():
            planned = self.planner.plan(self.model, state)
        self.last_plan_time = time.perf_counter() - start
        return self.take(planned.detach().cpu().numpy())

    __call__ = act


__all__ = ["FilteringAgent", "LatentMPCAgent", "obs_to_frame"]
