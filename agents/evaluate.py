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
from worldmodel.arguments import check_int

from .loop import run_episode
from .mpc import LatentMPCAgent, obs_to_frame
from .planners import Planner


def _summary(returns: list[float]) -> dict[str, Any]:
    values = np.asarray(returns, dtype=np.float64)
    return {"returns": [float(r) for r in values], "mean": float(values.mean()), "std": float(values.std())}


def _episode_tensors(model: DLH, observations: list[Any], actions: list[np.ndarray]):
    """Frames (1, T+1, C, H, W) and actions (1, T+1, A) (zeros first; None without actions)."""
    frames = torch.cat([obs_to_frame(o, model) for o in observations])[None]
    acts = None
    if model.config.action_dim:
        zero = np.zeros(model.config.action_dim, dtype=np.float32)
        stacked = np.stack([zero, *[np.asarray(a, np.float32).reshape(-1) for a in actions]])
        acts = torch.as_tensor(stacked, device=model.device)[None]
    return frames, acts


def filtered_change_rates(model: DLH, observations: list[Any], actions: list[np.ndarray]) -> list[float]:
    """Per-level fraction of steps (N,) where e^n = 1 when `model` filters one episode.

    observations: T + 1 uint8 frames (H, W, C), the first after reset; actions: T actions
    (A,), actions[t] taken after observations[t] (so it led to observations[t + 1]).
    """
    frames, acts = _episode_tensors(model, observations, actions)
    with torch.inference_mode():
        changed = model.observe(frames, acts).changed  # (1, T+1, N)
    return changed.float().mean((0, 1)).tolist()


def r_squared(predicted: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination 1 − Σ(y − ŷ)² / Σ(y − ȳ)² (NaN when y is constant)."""
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    if target.size < 2:
        return float("nan")
    total = float(((target - target.mean()) ** 2).sum())
    return float("nan") if total == 0 else 1.0 - float(((target - predicted) ** 2).sum()) / total


def reward_predictions(
    model: DLH, observations: list[Any], actions: list[np.ndarray], rewards: list[float],
    horizon: int, context: int = 5, stride: int | None = None,
) -> dict[str, np.ndarray]:
    """The reward head's predictions on one episode, paired with the true rewards.

    "filtered": predicted from the filtered state after each frame t >= 1 (the posterior,
    what the head is trained on) vs rewards[t - 1]. "imagined": open loop from the filtered
    state at t0 = context, context + stride, ... (stride defaults to `horizon`), imagining
    `horizon` steps with the actions actually taken — what the planner relies on. Returns
    {"filtered": (2, T), "imagined": (2, M)}, rows (predicted, true).
    """
    frames, acts = _episode_tensors(model, observations, actions)
    true = np.asarray(rewards, np.float64)
    stride = stride or horizon
    starts = set(range(context, len(rewards) - horizon + 1, stride))
    pred_filtered, pred_imagined, true_imagined = [], [], []
    with torch.inference_mode():
        state = model.initial_state(1)
        for t in range(len(observations)):
            action = acts[:, t] if acts is not None else None
            state = model.observe_step(state, frames[:, t], action)
            if t >= 1:
                pred_filtered.append(float(model.predict_reward(model.features(state))))
            if t in starts:
                future = acts[:, t + 1:t + 1 + horizon] if acts is not None else None
                traj = model.imagine(state, horizon, future)
                pred_imagined += model.predict_reward(traj.features)[0].tolist()
                true_imagined += true[t:t + horizon].tolist()
    return {"filtered": np.stack([np.asarray(pred_filtered), true]),
            "imagined": np.asarray([pred_imagined, true_imagined]).reshape(2, -1)}


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
    and "imagined_change_rate" (N,) averaged over episodes, "episodes", "steps", and with a
    reward head "reward_r2_filtered" / "reward_r2_imagined" and the matching "reward_mae_*"
    (:func:`reward_predictions` over the agent's episodes, imagined over the planner's horizon)}.
    """
    episodes = check_int(episodes, "episodes", 1)
    agent = LatentMPCAgent(model, planner, env.action_space, exploration_noise, seed=seed)
    returns, plan_times, filtered, imagined, steps = [], [], [], [], 0
    rewards: dict[str, list[np.ndarray]] = {"filtered": [], "imagined": []}

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
        if model.reward_head is not None:
            pairs = reward_predictions(model, result["observations"], result["actions"], result["rewards"],
                                       planner.horizon)
            for key in rewards:
                rewards[key].append(pairs[key])
    report: dict[str, Any] = {
        "agent": _summary(returns),
        "plan_ms": 1000 * float(np.mean(plan_times)),
        "plan_ms_std": 1000 * float(np.std(plan_times)),
        "filtered_change_rate": np.mean(filtered, 0).tolist(),
        "imagined_change_rate": np.mean(imagined, 0).tolist() if imagined else [],
        "episodes": episodes,
        "steps": steps,
    }
    for key, pairs in rewards.items():
        joined = np.concatenate(pairs, 1)
        report[f"reward_r2_{key}"] = r_squared(joined[0], joined[1])
        error = np.abs(joined[0] - joined[1])
        report[f"reward_mae_{key}"] = float(error.mean()) if error.size else float("nan")
    if compare_random:
        report["random"] = evaluate_random(env, episodes, seed)
    return report


__all__ = ["evaluate_agent", "evaluate_random", "filtered_change_rates", "reward_predictions", "r_squared"]
