"""Policies that drive :func:`envs.recorder.record_episodes`: callables, random, SB3 models.

A policy is any callable ``obs -> action``. :func:`make_policy` also accepts the
strings ``"random"`` and ``"sb3:PATH"`` used by ``dlh record --policy``.
Stable-Baselines3 is imported only when an ``sb3:`` policy is loaded.

Example:
    >>> import gymnasium as gym
    >>> env = gym.make("Pendulum-v1")
    >>> policy = make_policy("random", env, seed=0)
    >>> obs, _ = env.reset(seed=0)
    >>> env.action_space.contains(policy(obs))
    True
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["SB3_ALGORITHMS", "Policy", "load_sb3_policy", "make_policy"]

SB3_ALGORITHMS = ("PPO", "SAC", "TD3", "A2C", "DDPG", "DQN")

Policy = Callable[[Any], Any]
"""``obs -> action`` for a single (non-vectorised) environment."""


def load_sb3_policy(path: str | os.PathLike[str], env: gym.Env) -> Policy:
    """Load a saved Stable-Baselines3 model and return ``obs -> action`` (deterministic).

    Tries PPO, SAC, TD3, A2C, DDPG and DQN in turn. Note that an SB3 ``.zip``
    contains cloudpickled objects: load only files you trust.

    If the model was trained on a flattened (or otherwise reshaped) version of the
    env's observation with the same number of elements, observations are reshaped
    to the model's shape before ``predict``; channel-first image models are handled
    by SB3 itself.

    Raises:
        ValueError: the file is missing, no algorithm can load it, or its spaces do
            not fit ``env``.
    """
    try:
        import stable_baselines3 as sb3
    except ImportError as err:  # pragma: no cover - sb3 is a test dependency
        raise ValueError("policy 'sb3:PATH' needs stable-baselines3: pip install 'worldmodel[sb3]'") from err
    file = Path(path)
    if not file.is_file() and not file.with_name(file.name + ".zip").is_file():
        raise ValueError(f"no Stable-Baselines3 model file at {str(path)!r}")
    errors = []
    model = None
    for name in SB3_ALGORITHMS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = getattr(sb3, name).load(file, device="cpu")
                break
            except Exception as err:  # noqa: BLE001 - try the next algorithm
                errors.append(f"{name}: {type(err).__name__}: {err}"[:200])
    if model is None:
        raise ValueError(
            f"could not load {str(path)!r} as any of {', '.join(SB3_ALGORITHMS)}:\n  " + "\n  ".join(errors)
        )

    env_obs, model_obs = env.observation_space, model.observation_space
    env_act, model_act = env.action_space, model.action_space
    if type(env_act) is not type(model_act) or env_act.shape != model_act.shape:
        raise ValueError(f"model {str(path)!r} acts in {model_act}, the env expects {env_act}")
    reshape: tuple[int, ...] | None = None
    if env_obs.shape != model_obs.shape:
        transposed = (
            env_obs.shape is not None
            and len(env_obs.shape) == 3
            and (model_obs.shape == (env_obs.shape[2], env_obs.shape[0], env_obs.shape[1]))
        )
        if not transposed:
            if np.prod(env_obs.shape or ()) != np.prod(model_obs.shape or ()):
                raise ValueError(f"model {str(path)!r} observes {model_obs}, the env gives {env_obs}")
            reshape = model_obs.shape

    def policy(obs: Any) -> Any:
        if reshape is not None:
            obs = np.asarray(obs).reshape(reshape)
        action, _ = model.predict(obs, deterministic=True)
        return action

    policy.model = model  # type: ignore[attr-defined]  # for inspection
    return policy


def make_policy(policy: Policy | str, env: gym.Env, seed: int | None = 0) -> Policy:
    """Turn ``policy`` into ``obs -> action``.

    Args:
        policy: a callable, ``"random"`` (``env.action_space.sample()``, seeded with
            ``seed``) or ``"sb3:PATH"`` (:func:`load_sb3_policy`).
        env: the environment the policy acts in.
        seed: seed of the random policy.
    """
    if callable(policy):
        return policy
    if policy == "random":
        env.action_space.seed(seed)
        return lambda obs: env.action_space.sample()
    if isinstance(policy, str) and policy.startswith("sb3:"):
        return load_sb3_policy(policy[len("sb3:") :], env)
    raise ValueError(f"policy must be a callable, 'random' or 'sb3:PATH', got {policy!r}")
