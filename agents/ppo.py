"""The model-free baseline: Stable-Baselines3 PPO from pixels, on the same pixel env as the agent.

    >>> ppo, info = train_ppo_pixels("worldmodel/PointTarget-v0", total_steps=6000, image_size=32)
    >>> evaluate_ppo(ppo, "worldmodel/PointTarget-v0", episodes=20, seed=0, image_size=32)["mean"]

The env is `envs.make_pixel_env` with the planning agent's image size, channels and action
repeat, so both see the same frames and "environment steps" count the same thing (agent
steps, after action repeat). PPO gets the last `frame_stack` frames (SB3's ``VecFrameStack``):
one frame does not show velocity. Images smaller than 36 px do not fit SB3's NatureCNN; they get
`SmallCNN` (three stride-2 convolutions), larger ones NatureCNN. Evaluation runs the
deterministic policy on episode seeds ``seed, seed + 1, ...`` — the seeds `dlh agent-eval` uses.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack
from torch import nn

from worldmodel.arguments import check_int

from .evaluate import _summary
from .loop import make_env

__all__ = ["SmallCNN", "train_ppo_pixels", "evaluate_ppo"]


class SmallCNN(BaseFeaturesExtractor):
    """Three 4×4 stride-2 conv layers (32, 64, 64 channels, ReLU) and a linear layer, for
    channel-first images of side >= 8 (SB3 scales uint8 images to [0, 1] before this)."""

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 256) -> None:
        super().__init__(observation_space, features_dim)
        channels = observation_space.shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.cnn(torch.zeros(1, *observation_space.shape)).shape[1]
        self.linear = nn.Sequential(nn.Linear(flat, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations))


def _vec_env(env_id: str, image_size: int, channels: int, action_repeat: int, frame_stack: int,
             max_episode_steps: int | None, seed: int):
    def build() -> gym.Env:
        return make_env(env_id, image_size, channels, action_repeat=action_repeat, seed=seed,
                        max_episode_steps=max_episode_steps)

    env = build()  # fail here, with make_env's message, rather than inside the vec env
    env.close()
    venv = DummyVecEnv([build])
    return VecFrameStack(venv, frame_stack, channels_order="last") if frame_stack > 1 else venv


def _divisor_near(total: int, target: int) -> int:
    """The divisor of `total` nearest to `target` (ties: the smaller)."""
    divisors = [k for k in range(1, total + 1) if total % k == 0]
    return min(divisors, key=lambda k: (abs(k - target), k))


def _rollout_length(total_steps: int, n_steps: int) -> int:
    """PPO stops after the first rollout that reaches `total_steps`: a rollout length that
    divides it (within a factor 2 of `n_steps`) makes the budget exact."""
    if total_steps <= n_steps:
        return total_steps
    k = _divisor_near(total_steps, n_steps)
    return k if n_steps // 2 <= k <= 2 * n_steps else n_steps


def train_ppo_pixels(
    env_id: str,
    total_steps: int,
    *,
    image_size: int = 32,
    channels: int = 3,
    action_repeat: int = 1,
    frame_stack: int = 3,
    max_episode_steps: int | None = None,
    seed: int = 0,
    n_steps: int = 512,
    batch_size: int = 64,
    learning_rate: float = 3e-4,
    tensorboard_log: str | None = None,
    device: str = "cpu",
    verbose: int = 0,
) -> tuple[PPO, dict[str, Any]]:
    """Train SB3 PPO (``CnnPolicy``) from pixels for `total_steps` agent steps.

    Returns the PPO model and {"env_steps", "wall_time_s", "train_returns"} (returns of the
    training episodes, in order). The rollout length is the divisor of `total_steps` nearest
    `n_steps` (when one lies within a factor 2), so that PPO stops at exactly `total_steps`;
    the minibatch the divisor of that nearest `batch_size` (if not below half of it). Other
    hyper-parameters are SB3's defaults.
    """
    total_steps = check_int(total_steps, "total_steps", 1)
    frame_stack = check_int(frame_stack, "frame_stack", 1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    venv = _vec_env(env_id, image_size, channels, action_repeat, frame_stack, max_episode_steps, seed)
    venv.seed(seed)
    policy_kwargs = {"features_extractor_class": SmallCNN} if image_size < 36 else {}
    n_steps = _rollout_length(total_steps, n_steps)
    near = _divisor_near(n_steps, batch_size)
    batch_size = near if near >= batch_size // 2 else batch_size  # else SB3 drops a remainder
    ppo = PPO("CnnPolicy", venv, n_steps=n_steps, batch_size=batch_size,
                  learning_rate=learning_rate, policy_kwargs=policy_kwargs, seed=seed, device=device,
                  tensorboard_log=tensorboard_log, verbose=verbose)
    returns: list[float] = []
    running = [0.0]

    class Returns(BaseCallback):
        def _on_step(self) -> bool:
            running[0] += float(self.locals["rewards"][0])
            if self.locals["dones"][0]:
                returns.append(running[0])
                running[0] = 0.0
            return True

    started = time.perf_counter()
    ppo.learn(total_steps, callback=Returns())
    venv.close()
    return ppo, {"env_steps": int(ppo.num_timesteps), "wall_time_s": time.perf_counter() - started,
                 "train_returns": returns}


def evaluate_ppo(
    ppo: PPO,
    env_id: str,
    episodes: int,
    seed: int = 0,
    *,
    image_size: int = 32,
    channels: int = 3,
    action_repeat: int = 1,
    frame_stack: int = 3,
    max_episode_steps: int | None = None,
    deterministic: bool = True,
) -> dict[str, Any]:
    """Returns of `ppo`'s policy over `episodes` episodes (episode i reset with seed + i):
    {"returns", "mean", "std"}. The env settings must be the ones it was trained with."""
    episodes = check_int(episodes, "episodes", 1)
    venv = _vec_env(env_id, image_size, channels, action_repeat, frame_stack, max_episode_steps, seed)
    returns = []
    try:
        for i in range(episodes):
            venv.seed(seed + i)
            obs = venv.reset()
            total, done = 0.0, False
            while not done:
                action, _ = ppo.predict(obs, deterministic=deterministic)
                obs, reward, dones, _ = venv.step(action)
                total += float(reward[0])
                done = bool(dones[0])
            returns.append(total)
    finally:
        venv.close()
    return _summary(returns)
