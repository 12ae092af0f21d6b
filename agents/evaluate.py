"""Evaluate a planning agent against a random policy on the same episode seeds.

    >>> report = evaluate_agent(model, env, CEMPlanner(), episodes=20, seed=0)
    >>> report["agent"]["mean"], report["random"]["mean"], report["plan_ms"]

Reported: the return of every episode (mean ± std) for the agent and for a uniformly random
policy started from the same seeds; the planning time per action; and the per-level change
rates of the hierarchy — while filtering the episodes the agent saw (``observe`` over each
episode's frames and actions: the fraction of steps where e^n = 1) and inside the planner's
imagined rollouts.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from worldmodel import DLH

from .loop import run_episode
from .mpc import LatentMPCAgent, obs_to_frame
from .planners import Planner


def _summary(returns: list[float]) -> dict[str, Any]:
    values = np.asarray(returns, dtype=np.float64)
    return {"returns": [float(r) for r in values], "mean": float(values.mean()), "std": float(values.std())}


def filtered_change_rates(model: DLH, observations: list[Any], actions: list[np.ndarray]) -> list[float]:
    """Per-level fraction of steps (N,) where e^n = 1 when `model` filters one episode.

    observations: T + 1 uint8 frames (H, W, C), the first after reset; actions: T actions
    (A,), actions[t] taken after observations[t] (so it led to observations[t + 1]).
    """
    frames = torch.cat([obs_to_frame(o, model) for o in observations])[None]  # (1, T+1, C, H, W)
    acts = None
    if model.config.action_dim:
        zero = np.zeros(model.config.action_dim, dtype=np.float32)
        stacked = np.stack([zero, *[np.asarray(a, np.float32).reshape(-1) for a in actions]])
        acts = torch.as_tensor(stacked, device=model.device)[None]  # (1, T+1, A)
    with torch.inference_mode():
        changed = model.observe(frames, acts).changed  # (1, T+1, N)
    return changed.float().mean((0, 1)).tolist()


def evaluate_random(env: gym.Env, episodes: int, seed: int = 0) -> dict[str, Any]:
    """Returns of a uniformly random policy: {"returns", "mean", "std"}; episode i uses seed + i."""
    env.action_space.seed(seed)
    returns = [run_episode(env, lambda obs: env.action_space.sample(), seed=seed + i)["return"]
               for i in range(episodes)]
    return _summary(returns)


def evaluate_agent(
    model: DLH,
    env: gym.Env,
    planner: Planner,
    episodes: int = 20,
    seed: int = 0,
    exploration_noise: float = 0.0,
    compare_random: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run `episodes` episodes of a :class:`LatentMPCAgent`; episode i is reset with seed + i.

    Returns {"agent": {"returns", "mean", "std"}, "random": same (if `compare_random`),
    "plan_ms": mean planning time per action, "plan_ms_std", "filtered_change_rate" (N,)
    and "imagined_change_rate" (N,) averaged over episodes, "episodes", "steps"}.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    agent = LatentMPCAgent(model, planner, env.action_space, exploration_noise, seed=seed)
    returns, plan_times, filtered, imagined, steps = [], [], [], [], 0

    def policy(obs: Any) -> np.ndarray:
        action = agent.act(obs)
        plan_times.append(agent.last_plan_time)
        rates = planner.last_stats.get("imagined_change_rate")
        if rates is not None:
            imagined.append(rates)
        return action

    for i in tqdm(range(episodes), desc="evaluate", unit="ep", disable=not progress):
        result = run_episode(env, policy, seed=seed + i, reset=agent.reset)
        returns.append(result["return"])
        steps += result["steps"]
        filtered.append(filtered_change_rates(model, result["observations"], result["actions"]))
    report: dict[str, Any] = {
        "agent": _summary(returns),
        "plan_ms": 1000 * float(np.mean(plan_times)),
        "plan_ms_std": 1000 * float(np.std(plan_times)),
        "filtered_change_rate": np.mean(filtered, 0).tolist(),
        "imagined_change_rate": np.mean(imagined, 0).tolist() if imagined else [],
        "episodes": episodes,
        "steps": steps,
    }
    if compare_random:
        report["random"] = evaluate_random(env, episodes, seed)
    return report


__all__ = ["evaluate_agent", "evaluate_random", "filtered_change_rates"]
