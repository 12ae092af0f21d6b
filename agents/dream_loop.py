"""Dyna in the PlaNet loop: between model updates, train an SB3 policy in the dream and act with it.

    >>> run_planet_loop("configs/pendulum_cpu.yaml", "Pendulum-v1", iterations=30,
    ...                 dyna=DynaOptions(algo="SAC", steps=5000, act="policy"))

After each round of world-model training the loop calls :meth:`DynaRunner.update`: the dream's
start states are filtered again with the new weights from the current replay, and the one SB3
agent of the run trains on `steps` more imagined transitions (its replay buffer and step count
carry over). The episode is then collected by the dream policy (``act="policy"``, Dreamer's
recipe) or by the planner warm-started from the policy's imagined plan (``act="warm_start"``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from gymnasium import spaces

from worldmodel import DLH
from worldmodel.arguments import check_int
from worldmodel.data.episodes import EpisodeSource

from .dream import DreamVecEnv
from .dream_sb3 import ALGORITHMS, DreamPolicyAgent, DreamSB3VecEnv, PolicyWarmStart, train_in_dream
from .mpc import LatentMPCAgent
from .planners import Planner

ACT_MODES = ("policy", "warm_start")


@dataclasses.dataclass(frozen=True)
class DynaOptions:
    """Dream training inside `run_planet_loop`.

    Attributes:
        algo: "SAC" or "PPO".
        steps: imagined transitions (all rows together) per loop iteration.
        num_envs: B, rows of the dream.
        horizon, context, jump_level, max_jump: see :class:`~agents.dream.DreamVecEnv`.
        act: "policy" (collect with the dream policy) or "warm_start" (the planner, its initial
            mean the policy's plan).
        algo_kwargs: passed to the SB3 constructor.
    """

    algo: str = "SAC"
    steps: int = 5000
    num_envs: int = 16
    horizon: int = 15
    context: int = 10
    jump_level: int | None = None
    max_jump: int = 8
    act: str = "policy"
    algo_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if str(self.algo).upper() not in ALGORITHMS:
            raise ValueError(f"dyna algo must be one of {sorted(ALGORITHMS)}, got {self.algo!r}")
        for name in ("steps", "num_envs", "horizon", "context", "max_jump"):
            check_int(getattr(self, name), name, 1)
        if self.act not in ACT_MODES:
            raise ValueError(f"dyna act must be one of {ACT_MODES}, got {self.act!r}")
        if self.algo_kwargs is not None and not isinstance(self.algo_kwargs, dict):
            raise ValueError(f"algo_kwargs must be a dict, got {type(self.algo_kwargs).__name__}")


class DynaRunner:
    """Holds the loop's dream and SB3 agent; :meth:`update` trains it after each model update."""

    def __init__(
        self,
        options: DynaOptions,
        model: DLH,
        source: EpisodeSource,
        action_space: spaces.Space,
        seed: int = 0,
        tensorboard_log: str | None = None,
    ) -> None:
        if not isinstance(options, DynaOptions):
            raise ValueError(f"dyna must be a DynaOptions, got {type(options).__name__}")
        self.options, self.model, self.seed = options, model, seed
        self.dream = DreamVecEnv(
            model,
            source,
            options.num_envs,
            horizon=options.horizon,
            context=options.context,
            action_space=action_space,
            autoreset_mode="SameStep",
            jump_level=options.jump_level,
            max_jump=options.max_jump,
            seed=seed,
        )
        self.venv = DreamSB3VecEnv(self.dream)
        self.venv.seed(seed)
        self.tensorboard_log = tensorboard_log
        self.agent: Any = None
        self.history: list[dict[str, Any]] = []

    def update(self) -> dict[str, float]:
        """Refilter the start pool with the current weights and train the agent `steps` more."""
        self.dream.refresh_starts()
        opts = self.options
        algo = self.agent if self.agent is not None else opts.algo
        kwargs = (opts.algo_kwargs or {}) if self.agent is None else {}
        self.agent, info = train_in_dream(
            self.venv, algo, opts.steps, seed=self.seed, tensorboard_log=self.tensorboard_log, **kwargs
        )
        self.history.append(info)
        return {
            "dream/imagined_return": info["imagined_return"],
            "dream/episode_length": info["episode_length"],
            "dream/train_s": info["wall_time_s"],
            "dream/episodes": float(info["episodes"]),
        }

    def actor(
        self, planner: Planner, action_space: spaces.Box, exploration_noise: float, seed: int
    ) -> DreamPolicyAgent | LatentMPCAgent:
        """The collecting agent: the dream policy itself, or the planner warm-started by it."""
        if self.options.act == "policy":
            return DreamPolicyAgent(self.model, self, action_space, exploration_noise, seed=seed)
        return LatentMPCAgent(
            self.model, PolicyWarmStart(planner, self), action_space, exploration_noise, seed=seed
        )

    def summary(self) -> dict[str, Any]:
        returns = [h["imagined_return"] for h in self.history]
        return {
            "algo": self.options.algo,
            "act": self.options.act,
            "steps_per_iteration": self.options.steps,
            "imagined_returns": returns,
            "cpu_time_s": float(np.sum([h["cpu_time_s"] for h in self.history])),
        }


__all__ = ["ACT_MODES", "DynaOptions", "DynaRunner"]
