"""Stable-Baselines3 agents on the latent features of a trained, frozen DLH.

:class:`DLHFeatureWrapper` filters the env's pixel observations with the world model
(keeping its hierarchical state across steps) and hands ``model.features(state)`` (F,) to
any SB3 algorithm as a flat Box observation:

    >>> from stable_baselines3 import PPO
    >>> pixels = make_pixel_env("worldmodel/PointTarget-v0", size=64)
    >>> env = DLHFeatureWrapper(pixels, "runs/pt/model.safetensors")
    >>> PPO("MlpPolicy", env).learn(100_000)

:class:`DLHFeaturesExtractor` is the single-frame variant: a features extractor for image
observations that filters each frame from the initial state (no memory across steps).

The world model stays frozen in both: its parameters get ``requires_grad=False``, it is put
in eval mode and runs without autograd; it is never a submodule of an SB3 policy, so no SB3
optimiser sees its parameters and SB3's orthogonal initialisation never touches its weights.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from envs.recorder import action_size, encode_action
from worldmodel import DLH, HierarchicalState, load

from .mpc import obs_to_frame

ModelLike = DLH | str | os.PathLike


def freeze(model: DLH) -> DLH:
    """Put `model` in eval mode with ``requires_grad=False`` on every parameter; returns it."""
    if not isinstance(model, DLH):
        raise ValueError(
            f"model must be a worldmodel.DLH or the path of a saved one, got {type(model).__name__}")
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _frozen(model: ModelLike, device: str | torch.device | None = None) -> DLH:
    if isinstance(model, (str, os.PathLike)):
        model = load(model)
    model = freeze(model)
    return model.to(device) if device is not None else model


class DLHFeatureWrapper(gym.ObservationWrapper):
    """Observation = features of the DLH filter state after the current frame.

    On ``reset`` the filter restarts (the first frame is filtered with ``is_first`` and a zero
    action); each ``step(action)`` filters the new frame with that action (the Dreamer
    convention: the action that led to the frame). Discrete actions are one-hot encoded.

    Observation space: ``Box(-inf, inf, (F,), float32)``, F = ``model.config.feature_dim``.

    Args:
        env: env with uint8 image observations (H, W, C) or (H, W) at the model's image size
            and channels (``envs.make_pixel_env(env_id, size=..., grayscale=...)``).
        model: a DLH, or the path of a saved one (``worldmodel.load``); it is frozen in place.
        device: move the model there (default: leave it where it is).

    Attributes:
        state: the HierarchicalState (batch 1) after the last observation.
        model: the frozen DLH.
    """

    def __init__(self, env: gym.Env, model: ModelLike, device: str | torch.device | None = None) -> None:
        super().__init__(env)
        self.model = _frozen(model, device)
        cfg = self.model.config
        obs_space = env.observation_space
        want = (cfg.image_size, cfg.image_size, cfg.channels)
        shape = tuple(obs_space.shape or ())
        if not (isinstance(obs_space, spaces.Box) and obs_space.dtype == np.uint8
                and (shape == want or (cfg.channels == 1 and shape == want[:2]))):
            raise ValueError(f"DLHFeatureWrapper needs uint8 image observations {want} for this model, got "
                             f"{obs_space}; make the env with envs.make_pixel_env(env_id, "
                             f"size={cfg.image_size}, grayscale={cfg.channels == 1})")
        if cfg.action_dim and action_size(env.action_space) != cfg.action_dim:
            raise ValueError(f"the model takes actions of size {cfg.action_dim}, the env's action space "
                             f"{env.action_space} encodes to size {action_size(env.action_space)}")
        self.observation_space = spaces.Box(-np.inf, np.inf, (cfg.feature_dim,), np.float32)
        self.state: HierarchicalState | None = None
        self._action: torch.Tensor | None = None

    def _encode(self, action: Any) -> torch.Tensor | None:
        if not self.model.config.action_dim:
            return None
        vec = encode_action(self.env.action_space, action)
        return torch.as_tensor(vec, device=self.model.device)[None]  # (1, A)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self.state = None
        adim = self.model.config.action_dim
        self._action = torch.zeros(1, adim, device=self.model.device) if adim else None
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict]:
        self._action = self._encode(action)
        return super().step(action)

    def observation(self, observation: Any) -> np.ndarray:
        """Filter one uint8 frame into the state; returns features (F,) float32."""
        model = self.model
        frame = obs_to_frame(observation, model)  # (1, C, H, W)
        with torch.inference_mode():
            first = self.state is None
            state = model.initial_state(1) if first else self.state
            is_first = torch.full((1,), first, dtype=torch.bool, device=model.device)
            self.state = model.observe_step(state, frame, self._action, is_first)
            features = model.features(self.state)[0]  # (F,)
        return features.cpu().numpy().astype(np.float32)


class DLHFeaturesExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: each image filtered on its own by a frozen DLH -> features (F,).

    Use with image observations and SB3's default ``normalize_images=True`` (frames reach
    `forward` as float in [0, 1], channels first after SB3's transpose):

        PPO("MlpPolicy", pixel_env, policy_kwargs={
            "features_extractor_class": DLHFeaturesExtractor,
            "features_extractor_kwargs": {"model": "runs/pt/model.safetensors"}})

    Passing the model as a path keeps the saved SB3 zip small (it stores the kwargs). Every
    frame starts from the initial state with a zero action (no memory: use
    :class:`DLHFeatureWrapper` for the filtered, temporal features).

    Args:
        observation_space: the (C, H, W) or (H, W, C) image space.
        model: a DLH or the path of a saved one; frozen in place and kept outside the
            module tree (not in the policy's parameters or state dict).
    """

    def __init__(self, observation_space: spaces.Box, model: ModelLike) -> None:
        dlh = _frozen(model)
        super().__init__(observation_space, features_dim=dlh.config.feature_dim)
        self._models = (dlh,)  # a tuple: not registered as a submodule
        cfg = dlh.config
        first = (cfg.channels, cfg.image_size, cfg.image_size)
        last = (cfg.image_size, cfg.image_size, cfg.channels)
        shape = tuple(observation_space.shape or ())
        if shape not in (first, last):
            raise ValueError(f"DLHFeaturesExtractor: the model reads {first} (C, H, W) or {last} images, "
                             f"got an observation space of shape {shape}")
        self.channels_last = shape == last and shape != first

    @property
    def model(self) -> DLH:
        return self._models[0]

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """observations (B, C, H, W) (or (B, H, W, C)) float in [0, 1] -> features (B, F)."""
        model = self.model
        if model.device != observations.device:
            model.to(observations.device)
        frames = observations.permute(0, 3, 1, 2) if self.channels_last else observations
        batch = frames.shape[0]
        with torch.no_grad():
            state = model.initial_state(batch)
            is_first = torch.ones(batch, dtype=torch.bool, device=frames.device)
            action = torch.zeros(batch, model.config.action_dim, device=frames.device) \
                if model.config.action_dim else None
            state = model.observe_step(state, frames.float(), action, is_first)
            return model.features(state)


__all__ = ["DLHFeatureWrapper", "DLHFeaturesExtractor", "freeze"]
