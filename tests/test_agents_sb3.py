"""SB3 on a frozen DLH's features: the wrapper's filtering, PPO runs, weights left intact."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO  # noqa: E402

import envs  # noqa: E402
from agents.sb3 import DLHFeaturesExtractor, DLHFeatureWrapper, freeze  # noqa: E402
from tests.conftest import SpyModel, tiny_config  # noqa: E402
from worldmodel import DLH  # noqa: E402


def world_model(seed: int = 0, **overrides) -> DLH:
    torch.manual_seed(seed)
    base = {"levels": 2, "channels": 3, "action_dim": 2, "reward_head": True, **overrides}
    return DLH(tiny_config(**base))


def point_target(steps: int = 40) -> gym.Env:
    return envs.make_pixel_env(envs.POINT_TARGET_ID, size=16, max_episode_steps=steps)


def snapshot(model: DLH) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(model: DLH, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed"


def assert_frozen(model: DLH, sb3_model: PPO) -> None:
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    dlh_params = {id(p) for p in model.parameters()}
    optimised = {id(p) for group in sb3_model.policy.optimizer.param_groups for p in group["params"]}
    assert not dlh_params & optimised
    assert not dlh_params & {id(p) for p in sb3_model.policy.parameters()}


def test_wrapper_space_and_features():
    model = world_model()
    env = DLHFeatureWrapper(point_target(), model)
    assert env.observation_space == spaces.Box(-np.inf, np.inf, (model.config.feature_dim,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (model.config.feature_dim,) and obs.dtype == np.float32
    assert env.observation_space.contains(obs)
    with torch.inference_mode():
        assert np.allclose(obs, model.features(env.state)[0].numpy())
    obs2, *_ = env.step(np.array([0.5, -0.5], np.float32))
    assert obs2.shape == obs.shape and int(env.state.t) == 2


def test_wrapper_feeds_previous_action_and_resets():
    torch.manual_seed(0)
    model = SpyModel(tiny_config(levels=2, channels=3, action_dim=2, reward_head=True))
    env = DLHFeatureWrapper(point_target(steps=3), model)
    env.reset(seed=0)
    actions = [np.array([0.1 * i, -0.2], np.float32) for i in range(1, 4)]
    for a in actions:
        *_, terminated, truncated, _ = env.step(a)
    assert truncated
    assert [first for _, first in model.seen] == [True, False, False, False]
    assert torch.equal(model.seen[0][0], torch.zeros(1, 2))
    for (fed, _), a in zip(model.seen[1:], actions):
        assert np.allclose(fed[0].numpy(), a)
    env.reset(seed=1)
    assert model.seen[-1][1] is True and torch.equal(model.seen[-1][0], torch.zeros(1, 2))


def test_wrapper_one_hot_encodes_discrete_actions():
    class DiscreteImage(gym.Env):
        observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)
        action_space = spaces.Discrete(3)

        def reset(self, *, seed=None, options=None):
            return np.zeros((16, 16, 3), np.uint8), {}

        def step(self, action):
            return np.zeros((16, 16, 3), np.uint8), 0.0, False, False, {}

    torch.manual_seed(0)
    model = SpyModel(tiny_config(levels=2, channels=3, action_dim=3))
    env = DLHFeatureWrapper(DiscreteImage(), model)
    env.reset()
    env.step(2)
    assert torch.equal(model.seen[-1][0], torch.tensor([[0.0, 0.0, 1.0]]))


@pytest.mark.parametrize(
    ("env", "overrides", "match"),
    [
        (lambda: envs.make_pixel_env(envs.POINT_TARGET_ID, size=32), {}, "uint8 image observations"),
        (lambda: envs.make_pixel_env(envs.POINT_TARGET_ID, size=16, grayscale=True), {}, "grayscale=False"),
        (point_target, {"action_dim": 3}, "actions of size 3"),
    ],
)
def test_wrapper_rejects_mismatched_env(env, overrides, match):
    with pytest.raises(ValueError, match=match):
        DLHFeatureWrapper(env(), world_model(**overrides))


def test_wrapper_rejects_non_model():
    with pytest.raises(ValueError, match="worldmodel.DLH"):
        DLHFeatureWrapper(point_target(), object())


def test_wrapper_loads_model_from_path(tmp_path):
    model = world_model()
    model.save(tmp_path / "m.safetensors")
    env = DLHFeatureWrapper(point_target(), tmp_path / "m.safetensors")
    assert_identical(env.model, snapshot(model))
    assert not any(p.requires_grad for p in env.model.parameters())


def test_ppo_learns_on_frozen_features_and_leaves_weights_intact():
    model = world_model()
    before = snapshot(model)
    env = DLHFeatureWrapper(point_target(steps=50), model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3's CPU/GPU advice
        agent = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu",
                    policy_kwargs={"net_arch": [32]})
        agent.learn(256)
    assert agent.num_timesteps == 256
    assert_frozen(model, agent)
    assert_identical(model, before)
    obs, _ = env.reset(seed=0)
    action, _ = agent.predict(obs, deterministic=True)
    assert env.action_space.contains(action.astype(np.float32))


def test_ppo_with_single_frame_extractor_leaves_weights_intact():
    model = world_model()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = PPO("MlpPolicy", point_target(steps=30), n_steps=32, batch_size=16, n_epochs=1, seed=0,
                    device="cpu", policy_kwargs={"features_extractor_class": DLHFeaturesExtractor,
                                                 "features_extractor_kwargs": {"model": model},
                                                 "net_arch": [16]})
        agent.learn(64)
    extractor = agent.policy.features_extractor
    assert isinstance(extractor, DLHFeaturesExtractor) and extractor.model is model
    assert extractor.features_dim == model.config.feature_dim
    assert not any(k.startswith("features_extractor") for k in agent.policy.state_dict())
    assert_frozen(model, agent)
    assert_identical(model, before)


def test_extractor_accepts_channels_last_and_checks_shape():
    model = world_model()
    extractor = DLHFeaturesExtractor(spaces.Box(0, 255, (16, 16, 3), np.uint8), model)
    features = extractor(torch.rand(4, 16, 16, 3))
    assert features.shape == (4, model.config.feature_dim) and not features.requires_grad
    with pytest.raises(ValueError, match="observation space of shape"):
        DLHFeaturesExtractor(spaces.Box(0, 255, (32, 32, 3), np.uint8), model)


def test_freeze():
    model = world_model().train()
    assert freeze(model) is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
