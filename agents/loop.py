"""The PlaNet-style training loop: seed episodes, then alternate model training and planning.

    summary = run_planet_loop("configs/point_target.yaml", "worldmodel/PointTarget-v0",
                              iterations=100, seed_episodes=5, train_steps=100)

1. `seed_episodes` episodes of a uniformly random policy are recorded (Dreamer-layout
   ``.npz`` files through :class:`envs.recorder.EpisodeRecorder`) and added to an in-memory
   :class:`~worldmodel.data.episodes.EpisodeSource` replay.
2. Each iteration trains the world model for `train_steps` optimiser steps on windows of the
   replay (the one :class:`~worldmodel.training.Trainer`: TensorBoard, metrics.jsonl,
   checkpoints under ``out_dir``), then collects one episode with a
   :class:`~agents.mpc.LatentMPCAgent` planning on the model plus exploration noise, and adds
   it to the replay. Agent scalars (``agent/return``, ``agent/plan_ms``, ...) go to the same
   TensorBoard run.
3. The trainer's `finish` writes the final model, media and ``summary.json``; the loop adds
   ``agent.json`` with the return of every episode.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import envs  # noqa: F401 - registers worldmodel/PointTarget-v0
from envs.pixels import make_pixel_env
from envs.recorder import EpisodeRecorder, load_episode
from worldmodel.arguments import check_int
from worldmodel.data.episodes import EpisodeSource
from worldmodel.files import atomic_write_text
from worldmodel.reports import json_text
from worldmodel.training import TrainConfig, Trainer, load_config

from .mpc import LatentMPCAgent
from .planners import Planner, make_planner


def run_episode(env: gym.Env, policy: Callable[[Any], Any], seed: int | None = None,
                reset: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run one episode of `policy` (obs -> action) in `env`.

    Returns {"return", "steps", "observations" (list of obs, first included), "actions"
    (list), "rewards" (list, rewards[t] after actions[t]), "info" (the last step's info;
    holds "episode_path" under an EpisodeRecorder)}.
    `reset` (e.g. ``agent.reset``) is called after ``env.reset``.
    """
    obs, info = env.reset(seed=seed)
    if reset is not None:
        reset()
    observations, actions, rewards, done = [obs], [], [], False
    while not done:
        action = policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(np.asarray(action, dtype=np.float32))
        rewards.append(float(reward))
        done = terminated or truncated
    return {"return": float(sum(rewards)), "steps": len(actions), "observations": observations,
            "actions": actions, "rewards": rewards, "info": info}


def make_env(env_id: str, image_size: int, channels: int, **kwargs: Any) -> gym.Env:
    """``envs.make_pixel_env`` at the model's size and channels; ValueError for an unknown id."""
    try:
        return make_pixel_env(env_id, size=image_size, grayscale=channels == 1, **kwargs)
    except (gym.error.Error, ModuleNotFoundError) as err:
        raise ValueError(f"cannot make env {env_id!r}: {err}") from err


def _as_config(config: str | os.PathLike | TrainConfig, overrides: list[str] | None) -> TrainConfig:
    if isinstance(config, TrainConfig):
        if overrides:
            raise ValueError("overrides apply to a config file; pass a TrainConfig already changed")
        return config
    return load_config(config, overrides)


def _check_config(cfg: TrainConfig) -> None:
    if cfg.model.action_dim < 1:
        raise ValueError("the agent loop needs a model that takes actions: set model.action_dim "
                         "to the env's action size")
    if not cfg.model.reward_head:
        raise ValueError("planning needs predicted rewards: set model.reward_head=true")


def run_planet_loop(
    config: str | os.PathLike | TrainConfig,
    env_id: str,
    iterations: int,
    seed_episodes: int = 5,
    train_steps: int = 100,
    *,
    overrides: list[str] | None = None,
    planner: str | Planner = "cem",
    planner_kwargs: dict[str, Any] | None = None,
    exploration_noise: float = 0.3,
    action_repeat: int = 1,
    max_episode_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    episodes_dir: str | os.PathLike | None = None,
    replay_capacity: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    dyna: Any = None,
) -> dict[str, Any]:
    """Train a DLH world model and a planning agent together (PlaNet's loop); see the module doc.

    Args:
        config: a YAML file (with `overrides` as ``section.key=value``) or a TrainConfig. The
            model must take actions (``model.action_dim`` = env action size) and have a
            reward head; ``data`` is switched to ``episodes`` at `episodes_dir`, keeping its
            ``seq_len`` and ``batch_size``; ``steps`` is ignored.
        env_id: a Gymnasium id with a Box action space, rendered to pixels at the model's
            image size (``envs.make_pixel_env``).
        iterations: train-then-collect rounds.
        seed_episodes: random episodes recorded first (episodes already in `episodes_dir`
            count toward them).
        train_steps: optimiser steps per iteration.
        planner: "cem", "mppi" or a Planner instance; `planner_kwargs` go to its constructor
            (the action bounds come from the env).
        exploration_noise: Gaussian noise added to planned actions while collecting.
        action_repeat, max_episode_steps, env_kwargs: passed to ``make_pixel_env``.
        episodes_dir: where episode files go (default ``{out_dir}/episodes``).
        replay_capacity: keep at most this many steps in the replay (None: all).
        seed: seeds env resets and noise (default ``cfg.seed``).
        progress: show the trainer's progress bar.
        dyna: an ``agents.dream_loop.DynaOptions``: after each round of model training, train an
            SB3 policy in the dream and collect with it (or warm-start the planner with it).

    Returns:
        The trainer's summary plus "agent": {"returns", "seed_returns", "env_steps", ...}.
    """
    cfg = _as_config(config, overrides)
    _check_config(cfg)
    iterations = check_int(iterations, "iterations", 0)
    seed_episodes = check_int(seed_episodes, "seed_episodes", 1)
    train_steps = check_int(train_steps, "train_steps", 1)
    seed = cfg.seed if seed is None else check_int(seed, "seed", 0)
    episodes_dir = Path(episodes_dir if episodes_dir is not None else Path(cfg.out_dir) / "episodes")
    data = dataclasses.replace(cfg.data, name="episodes", path=str(episodes_dir))
    cfg = dataclasses.replace(cfg, data=data)
    m = cfg.model

    env = make_env(env_id, m.image_size, m.channels, action_repeat=action_repeat, seed=seed,
                   max_episode_steps=max_episode_steps, **(env_kwargs or {}))
    space = env.action_space
    if not isinstance(space, spaces.Box) or space.shape != (m.action_dim,):
        env.close()
        raise ValueError(f"{env_id}: the agent loop needs a Box action space of shape ({m.action_dim},) "
                         f"(model.action_dim), got {space}")
    if isinstance(planner, str):
        kwargs = {"action_low": space.low, "action_high": space.high, "seed": seed, **(planner_kwargs or {})}
        planner = make_planner(planner, **kwargs)
    recorder = EpisodeRecorder(env, episodes_dir)
    source = EpisodeSource(m.image_size, m.channels, m.action_dim, capacity=replay_capacity)
    existing = sorted(episodes_dir.glob("*.npz")) if episodes_dir.is_dir() else []
    for path in existing:
        source.add_episode(load_episode(path))

    random_policy = lambda obs: space.sample()  # noqa: E731
    space.seed(seed)
    seed_returns = []
    for i in range(max(0, seed_episodes - len(existing))):
        result = run_episode(recorder, random_policy, seed=seed + len(existing) + i)
        source.add_episode(load_episode(result["info"]["episode_path"]))
        seed_returns.append(result["return"])
    shortest = min(source.lengths)
    if shortest < cfg.data.seq_len:
        env.close()
        raise ValueError(f"data.seq_len={cfg.data.seq_len} is longer than the shortest episode "
                         f"({shortest} frames): lower data.seq_len or raise max_episode_steps")

    media_length = min(cfg.logging.rollout_context + cfg.logging.rollout_horizon, shortest)
    media_batch = source.eval_batch(cfg.logging.media_sequences, media_length, seed=seed)
    trainer = Trainer(cfg, progress=progress, source=source, media_batch=media_batch)
    runner = None
    if dyna is not None:  # Dyna: a policy trained in the dream acts (agents/dream_loop.py)
        from .dream_loop import DynaRunner

        runner = DynaRunner(dyna, trainer.model, source, space, seed, str(Path(cfg.out_dir) / "dream"))
        agent = runner.actor(planner, space, exploration_noise, seed)
    else:
        agent = LatentMPCAgent(trainer.model, planner, space, exploration_noise, seed=seed)
    returns, lengths, plan_ms = [], [], []
    env_steps = int(sum(source.lengths) - source.num_episodes)
    plan_times: list[float] = []

    def policy(obs: Any) -> np.ndarray:
        action = agent.act(obs)
        plan_times.append(agent.last_plan_time)
        return action

    try:
        for it in range(iterations):
            trainer.train_steps(train_steps)
            if runner is not None:
                trainer.monitor.scalars(trainer.step, runner.update())
            plan_times.clear()
            started = time.perf_counter()
            result = run_episode(recorder, policy, seed=seed + 10_000 + it, reset=agent.reset)
            source.add_episode(load_episode(result["info"]["episode_path"]))
            env_steps += result["steps"]
            returns.append(result["return"])
            lengths.append(result["steps"])
            plan_ms.append(1000 * float(np.mean(plan_times)))
            stats = {"agent/return": result["return"], "agent/episode_steps": result["steps"],
                     "agent/plan_ms": plan_ms[-1], "agent/env_steps": env_steps,
                     "agent/episodes": source.num_episodes,
                     "agent/collect_s": time.perf_counter() - started}
            for n, rate in enumerate(planner.last_stats.get("imagined_change_rate", [])):
                stats[f"agent/imagined_change_rate/level{n + 1}"] = rate
            trainer.monitor.scalars(trainer.step, stats)
        summary = trainer.finish()
    finally:
        env.close()
    agent_summary = {
        "env": env_id, "iterations": iterations, "train_steps": train_steps, "returns": returns,
        "episode_steps": lengths, "plan_ms": plan_ms, "seed_returns": seed_returns,
        "env_steps": env_steps, "episodes_dir": str(episodes_dir),
        "planner": type(planner).__name__, "exploration_noise": float(exploration_noise),
    }
    if runner is not None:
        agent_summary["dyna"] = runner.summary()
    if summary:
        atomic_write_text(Path(cfg.out_dir) / "agent.json", json_text(agent_summary))
    return {**summary, "agent": agent_summary}


__all__ = ["run_planet_loop", "run_episode", "make_env"]
