"""Stable-Baselines3 agents trained only in the dream, and acting with them in the real env.

    >>> dream = DreamVecEnv("runs/pendulum", "data/pendulum", num_envs=16, autoreset_mode="SameStep")
    >>> agent, info = train_in_dream(DreamSB3VecEnv(dream), "SAC", steps=50_000, tensorboard_log="out/tb")
    >>> agent.save("out/policy.zip")                                   # SB3's own format
    >>> real = DLHFeatureWrapper(make_pixel_env("Pendulum-v1", size=32), dream.model)
    >>> report = evaluate_policy_real(agent, real, episodes=20, seed=1000)

- :class:`DreamSB3VecEnv`: SB3's ``VecEnv`` over a same-step :class:`~agents.dream.DreamVecEnv`
  (``infos[i]["terminal_observation"]``, ``"TimeLimit.truncated"`` so SB3 bootstraps at the
  horizon, and Monitor-style ``"episode"`` entries so SB3 logs ``rollout/ep_rew_mean``).
- :class:`DreamStatsCallback`: TensorBoard scalars of the dream beside SB3's own
  (``dream/imagined_return``, ``dream/episode_length`` in env steps, ``dream/episode_frames``).
- :func:`evaluate_policy_real`: return (mean ± std) in the real env through
  :class:`~agents.sb3.DLHFeatureWrapper` and the acting time per step.
- :class:`DreamPolicyAgent` and :class:`PolicyWarmStart`: acting with a dream policy inside the
  PlaNet loop (directly, or as the initial mean of a planner).
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from envs.recorder import encode_action
from worldmodel import DLH
from worldmodel.arguments import check_int

from .dream import DreamVecEnv
from .mpc import FilteringAgent
from .planners import Planner
from .sb3 import DLHFeatureWrapper

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"SAC": SAC, "PPO": PPO}


class DreamSB3VecEnv(VecEnv):
    """SB3's ``VecEnv`` over a :class:`DreamVecEnv` made with ``autoreset_mode="SameStep"``.

    ``step`` returns (obs (B, ...), rewards (B,) float32, dones (B,) bool, infos: B dicts with
    "frames"; for a row that ended "terminal_observation", "TimeLimit.truncated" and "episode"
    {"r": imagined return, "l": env steps, "t": seconds since the adapter was made, "frames"}).
    ``seed(s)`` (SB3's) applies at the next ``reset``, which resets the dream with seed s.
    """

    def __init__(self, dream: DreamVecEnv) -> None:
        if not isinstance(dream, DreamVecEnv):
            raise ValueError(f"DreamSB3VecEnv wraps a DreamVecEnv, got {type(dream).__name__}")
        if dream.autoreset_mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"DreamSB3VecEnv needs a DreamVecEnv made with autoreset_mode='SameStep' (SB3 resets "
                f"a row in the step that ends it), got {dream.autoreset_mode.value!r}"
            )
        self.dream = dream
        super().__init__(dream.num_envs, dream.single_observation_space, dream.single_action_space)
        self._actions: Any = None
        self._returns = np.zeros(dream.num_envs)
        self._lengths = np.zeros(dream.num_envs, np.int64)
        self._frames = np.zeros(dream.num_envs, np.int64)
        self._started = time.time()

    def reset(self) -> np.ndarray:
        seed = self._seeds[0]
        obs, _ = self.dream.reset(seed=seed)
        self._reset_seeds()
        self._returns[:], self._lengths[:], self._frames[:] = 0, 0, 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, rewards, terminated, truncated, info = self.dream.step(self._actions)
        frames = info["frames"]
        self._returns += rewards
        self._lengths += 1
        self._frames += frames
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{"frames": int(f)} for f in frames]
        if dones.any():
            final = info["final_obs"]
            elapsed = round(time.time() - self._started, 6)
            for i in np.flatnonzero(dones):
                infos[i]["terminal_observation"] = final[i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                infos[i]["episode"] = {
                    "r": float(self._returns[i]),
                    "l": int(self._lengths[i]),
                    "t": elapsed,
                    "frames": int(self._frames[i]),
                }
            self._returns[dones], self._lengths[dones], self._frames[dones] = 0, 0, 0
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.dream.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.dream, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.dream, attr_name, value)  # one dream holds every row

    def env_method(
        self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any
    ) -> list:
        return [
            getattr(self.dream, method_name)(*method_args, **method_kwargs)
            for _ in self._get_indices(indices)
        ]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> list[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]


class DreamStatsCallback(BaseCallback):
    """Records the dream's finished episodes as SB3 scalars: ``dream/imagined_return``,
    ``dream/episode_length`` (env steps) and ``dream/episode_frames`` (imagined frames), each the
    mean over the episodes since the last dump; also keeps them in `returns`, `lengths`, `frames`."""

    def __init__(self) -> None:
        super().__init__()
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.frames: list[int] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            episode = info.get("episode")
            if episode is None:
                continue
            self.returns.append(float(episode["r"]))
            self.lengths.append(int(episode["l"]))
            self.frames.append(int(episode.get("frames", episode["l"])))
            self.logger.record_mean("dream/imagined_return", self.returns[-1])
            self.logger.record_mean("dream/episode_length", self.lengths[-1])
            self.logger.record_mean("dream/episode_frames", self.frames[-1])
        return True


def make_dream_agent(
    algo: str, venv: VecEnv, seed: int | None = 0, tensorboard_log: str | None = None, **kwargs: Any
) -> BaseAlgorithm:
    """An SB3 SAC or PPO ("MlpPolicy" on features, "CnnPolicy" on pixels) for `venv`.

    Frames under 36 px get the small CNN of :mod:`agents.ppo`. Defaults for a dream of B rows:
    PPO collects ``max(8, 2048 // B)`` steps per row per update;
    SAC takes one gradient step per transition (``gradient_steps=B``). `kwargs` override them.
    """
    name = str(algo).upper()
    if name not in ALGORITHMS:
        raise ValueError(f"algo must be one of {sorted(ALGORITHMS)}, got {algo!r}")
    pixels = len(venv.observation_space.shape or ()) == 3
    defaults: dict[str, Any] = (
        {"n_steps": max(8, 2048 // venv.num_envs)}
        if name == "PPO"
        else {"gradient_steps": venv.num_envs, "learning_starts": 100}
    )
    if pixels and min(venv.observation_space.shape[:2]) < 36:  # SB3's NatureCNN needs >= 36 px
        from .ppo import SmallCNN

        defaults["policy_kwargs"] = {"features_extractor_class": SmallCNN}
    options = {**defaults, **kwargs}
    return ALGORITHMS[name](
        "CnnPolicy" if pixels else "MlpPolicy",
        venv,
        seed=seed,
        tensorboard_log=tensorboard_log,
        verbose=0,
        **options,
    )


def train_in_dream(
    venv: DreamSB3VecEnv,
    algo: str | BaseAlgorithm = "SAC",
    steps: int = 10_000,
    *,
    seed: int | None = 0,
    tensorboard_log: str | None = None,
    progress: bool = False,
    **algo_kwargs: Any,
) -> tuple[BaseAlgorithm, dict[str, Any]]:
    """Train an SB3 agent on imagined experience only, for `steps` transitions (all rows together).

    `algo`: "SAC", "PPO" (built by :func:`make_dream_agent` with `algo_kwargs`) or an agent
    already built on `venv` (trained on: its step count continues).

    Returns the agent and {"steps", "wall_time_s", "cpu_time_s" (this process), "episodes",
    "imagined_return" (mean of the last 100 finished episodes), "episode_length", "episode_frames"}.
    """
    steps = check_int(steps, "steps", 1)
    if isinstance(algo, BaseAlgorithm):
        agent, fresh = algo, False
    else:
        agent, fresh = make_dream_agent(algo, venv, seed, tensorboard_log, **algo_kwargs), True
    callback = DreamStatsCallback()
    wall, cpu = time.perf_counter(), time.process_time()
    agent.learn(
        steps,
        callback=callback,
        reset_num_timesteps=fresh,
        progress_bar=progress,
        tb_log_name=type(agent).__name__,
    )
    last = slice(-100, None)
    mean = lambda values: float(np.mean(values[last])) if values else float("nan")  # noqa: E731
    return agent, {
        "steps": steps,
        "wall_time_s": time.perf_counter() - wall,
        "cpu_time_s": time.process_time() - cpu,
        "episodes": len(callback.returns),
        "imagined_return": mean(callback.returns),
        "episode_length": mean(callback.lengths),
        "episode_frames": mean(callback.frames),
    }


def evaluate_policy_real(
    agent: BaseAlgorithm, env: gym.Env, episodes: int = 20, seed: int = 0, deterministic: bool = True
) -> dict[str, Any]:
    """Run a dream-trained agent in the real env: episode i is reset with seed + i.

    `env`: the real env as the agent saw the dream — a :class:`DLHFeatureWrapper` over the pixel
    env for a features policy, the pixel env itself for a pixels one. Returns {"returns", "mean",
    "std", "act_ms" (mean time of one ``agent.predict``), "act_ms_std", "filter_ms" (mean time
    of the wrapper's filtering of one frame; 0 without the wrapper), "steps"}.
    """
    episodes = check_int(episodes, "episodes", 1)
    if not isinstance(env, gym.Env):
        raise ValueError(
            f"env must be a gymnasium Env (a DLHFeatureWrapper for features), got {type(env).__name__}"
        )
    seen, given = tuple(agent.observation_space.shape or ()), tuple(env.observation_space.shape or ())
    if given not in (seen, seen[1:] + seen[:1]):  # SB3 stores images channels first
        raise ValueError(
            f"the agent observes {agent.observation_space}, the env gives {env.observation_space}: "
            "wrap the pixel env in DLHFeatureWrapper(env, model) for a features policy"
        )
    returns, act, filtering = [], [], [0.0]
    wrapper = env if isinstance(env, DLHFeatureWrapper) else None
    original = wrapper.observation if wrapper is not None else None

    def timed_observation(observation: Any) -> np.ndarray:
        start = time.perf_counter()
        features = original(observation)
        filtering.append(time.perf_counter() - start)
        return features

    if wrapper is not None:
        filtering.clear()
        wrapper.observation = timed_observation  # type: ignore[method-assign]
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                start = time.perf_counter()
                action, _ = agent.predict(obs, deterministic=deterministic)
                act.append(time.perf_counter() - start)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        if wrapper is not None:
            del wrapper.observation
    values = np.asarray(returns, np.float64)
    return {
        "returns": values.tolist(),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "act_ms": 1000 * float(np.mean(act)),
        "act_ms_std": 1000 * float(np.std(act)),
        "filter_ms": 1000 * float(np.mean(filtering)),
        "steps": len(act),
    }


def policy_actions(agent: BaseAlgorithm, features: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
    """The agent's actions (B, A) float32 for features (B, F), encoded for the model (one-hot if discrete)."""
    actions, _ = agent.predict(features.detach().float().cpu().numpy(), deterministic=deterministic)
    space = agent.action_space
    encoded = np.stack([encode_action(space, a) for a in actions])
    return torch.as_tensor(encoded, device=features.device)


class DreamPolicyAgent(FilteringAgent):
    """Acts in a pixel env with a dream-trained SB3 agent on the DLH's filtered features.

    The same interface as :class:`~agents.mpc.LatentMPCAgent` (``reset``, ``act``,
    ``last_plan_time``), so the PlaNet loop collects with it. Filtering is that of
    :class:`~agents.sb3.DLHFeatureWrapper` (the previous action with each frame); the model is
    used as it is (not frozen: a trainer may keep training it).

    Args:
        model: the DLH the agent was trained in.
        agent: an SB3 agent (or a holder with an ``agent`` attribute that may change, e.g.
            the loop's :class:`~agents.dream_loop.DynaRunner`).
        action_space: the env's Box action space.
        exploration_noise: Gaussian noise (in half-widths of the range) added while collecting.
        seed: seed of that noise.
    """

    def __init__(
        self,
        model: DLH,
        agent: Any,
        action_space: gym.spaces.Box,
        exploration_noise: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(action_space, gym.spaces.Box) or action_space.shape != (model.config.action_dim,):
            raise ValueError(
                f"action_space must be a Box of shape ({model.config.action_dim},), got {action_space}"
            )
        super().__init__(model, action_space.low, action_space.high, exploration_noise, seed)
        self.holder, self.action_space = agent, action_space
        self.reset()

    @property
    def agent(self) -> BaseAlgorithm:
        return getattr(self.holder, "agent", self.holder)

    def act(self, obs: Any) -> np.ndarray:
        state = self.observe(obs)
        with torch.inference_mode():
            features = self.model.features(state)[0].float().cpu().numpy()
        start = time.perf_counter()
        action, _ = self.agent.predict(features, deterministic=True)
        self.last_plan_time = time.perf_counter() - start
        return self.take(np.asarray(action, np.float32).reshape(self.action_space.shape))

    __call__ = act


class PolicyWarmStart(Planner):
    """A planner whose initial mean is the dream policy's plan: the actions it takes over the
    planner's horizon, imagined from the filtered state (Dreamer's actor proposing, CEM refining).

    Args:
        planner: the planner to warm-start (its horizon, iterations, bounds and score are used).
        agent: an SB3 agent, or a holder with an ``agent`` attribute (read at every plan).
    """

    def __init__(self, planner: Planner, agent: Any) -> None:
        if not isinstance(planner, Planner):
            raise ValueError(f"planner must be an agents.planners.Planner, got {type(planner).__name__}")
        super().__init__(
            planner.horizon,
            planner.iterations,
            planner.action_low,
            planner.action_high,
            planner.score_fn,
            warm_start=False,
            seed=0,
        )
        self.planner, self.holder = planner, agent

    @property
    def agent(self) -> BaseAlgorithm:
        return getattr(self.holder, "agent", self.holder)

    def reset(self) -> None:
        super().reset()
        self.planner.reset()

    def _optimise(self, model, state, mean, low, high):
        agent = self.agent
        traj = model.imagine(state, self.horizon, lambda s: policy_actions(agent, model.features(s)))
        proposal = traj.actions[0].clamp(low, high)  # (H, A)
        action, mean = self.planner._optimise(model, state, proposal, low, high)
        self.last_stats = self.planner.last_stats
        return action, mean


__all__ = [
    "ALGORITHMS",
    "DreamSB3VecEnv",
    "DreamStatsCallback",
    "DreamPolicyAgent",
    "PolicyWarmStart",
    "evaluate_policy_real",
    "make_dream_agent",
    "policy_actions",
    "train_in_dream",
]
