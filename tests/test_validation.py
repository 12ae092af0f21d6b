"""Bad input raises ValueError naming what was expected and what came."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_frames, tiny_config, tiny_model
from worldmodel import DLH, DLHConfig


@pytest.mark.parametrize(
    "frames,match",
    [
        (torch.rand(2, 3, 16, 16), "rank-5"),
        (torch.rand(2, 3, 1, 16), "rank-5"),
        (torch.rand(2, 3, 3, 16, 16), "C=1"),
        (torch.rand(2, 3, 1, 32, 32), "H=W=16"),
        (torch.rand(2, 3, 16, 16, 1), "channels first"),
        ((torch.rand(2, 3, 1, 16, 16) * 255).to(torch.uint8), "uint8"),
        (torch.rand(2, 3, 1, 16, 16) * 2, "max"),
        (torch.rand(2, 3, 1, 16, 16) - 0.5, "min"),
        (torch.full((2, 3, 1, 16, 16), float("nan")), "NaN"),
        (torch.full((2, 3, 1, 16, 16), float("inf")), "inf"),
        (torch.rand(2, 3, 1, 16, 16).numpy(), "torch.Tensor"),
    ],
)
def test_bad_frames(frames, match):
    model = tiny_model()
    with pytest.raises(ValueError, match=match):
        model.observe(frames)
    with pytest.raises(ValueError, match=match):
        model.loss(frames)


def test_bad_single_frame():
    model = tiny_model()
    state = model.initial_state(2)
    with pytest.raises(ValueError, match=r"rank-4.*got shape \(2, 1, 1, 16, 16\)"):
        model.observe_step(state, torch.rand(2, 1, 1, 16, 16))
    with pytest.raises(ValueError, match="batch 3"):
        model.observe_step(state, torch.rand(3, 1, 16, 16))


def test_actions_errors():
    plain = tiny_model()
    frames = random_frames(2, 4)
    with pytest.raises(ValueError, match="takes no actions"):
        plain.observe(frames, torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="takes no actions"):
        plain.imagine(plain.observe(frames).state, 3, torch.zeros(2, 3, 2))
    acting = tiny_model(action_dim=2)
    with pytest.raises(ValueError, match=r"expected shape \(2, 4, 2\).*got \(2, 4, 3\)"):
        acting.observe(frames, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="got None"):
        acting.observe(frames)
    state = acting.observe(frames, torch.zeros(2, 4, 2)).state
    with pytest.raises(ValueError, match=r"expected shape \(2, 5, 2\)"):
        acting.imagine(state, 5, torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match="policy"):
        acting.imagine(state, 2, lambda s: torch.zeros(2, 7))
    with pytest.raises(ValueError, match="NaN"):
        acting.observe(frames, torch.full((2, 4, 2), float("nan")))


@pytest.mark.parametrize("horizon", [0, -3, 2.5, True])
def test_bad_horizon(horizon):
    model = tiny_model()
    state = model.observe(random_frames(1, 2)).state
    with pytest.raises(ValueError, match="horizon"):
        model.imagine(state, horizon)


def test_bad_is_first_and_state():
    model = tiny_model()
    frames = random_frames(2, 4)
    with pytest.raises(ValueError, match=r"is_first: expected shape \(2, 4\)"):
        model.observe(frames, is_first=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="HierarchicalState"):
        model.imagine("state", 3)
    other = tiny_model(levels=2).initial_state(2)
    with pytest.raises(ValueError, match="3 levels"):
        model.observe(frames, state=other)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"levels": 0}, "levels"),
        ({"image_size": 30}, "multiple of 16"),
        ({"channels": 2}, "channels"),
        ({"timescale": "sometimes"}, "timescale"),
        ({"assignment": "soft"}, "assignment"),
        ({"action_levels": (4,)}, "action_levels"),
        ({"clockwork_k": 1}, "clockwork_k"),
        ({"obs_std": 0.0}, "obs_std"),
    ],
)
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_model_requires_a_config():
    with pytest.raises(ValueError, match="DLHConfig"):
        DLH({"levels": 3})
    assert isinstance(DLH(DLHConfig(image_size=32, channels=3)).config, DLHConfig)


def test_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        tiny_model().loss(random_frames(1, 2), beta=-1.0)
