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


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"action_dim": True}, r"DLHConfig\.action_dim: expected a non-negative int, got True"),
        ({"clockwork_k": 2.0}, r"DLHConfig\.inference\.clockwork_k: expected an int >= 2, got 2\.0"),
        ({"action_levels": (True,)}, r"DLHConfig\.action_levels must be a list of 1-based levels in 1\.\.3"),
        ({"action_levels": 1}, r"DLHConfig\.action_levels must be a list"),
        ({"enc_hidden": (32, False)}, r"DLHConfig\.enc_hidden must be a list of positive ints"),
        ({"head_hidden": "16"}, r"DLHConfig\.head_hidden must be a list of positive ints"),
        ({"min_std": float("inf")}, r"DLHConfig\.min_std must be a finite number > 0, got inf"),
        ({"min_std": "0.1"}, r"DLHConfig\.min_std must be a finite number > 0, got '0\.1'"),
        ({"obs_std": True}, r"DLHConfig\.loss\.obs_std must be a finite number > 0, got True"),
        ({"decision_margin": float("inf")},
         r"DLHConfig\.inference\.decision_margin must be a finite number >= 0"),
        ({"free_nats": float("inf")}, r"DLHConfig\.loss\.free_nats must be a finite number >= 0, got inf"),
        ({"reward_scale": float("inf")},
         r"DLHConfig\.loss\.reward_scale must be a finite number >= 0, got inf"),
        ({"continue_scale": True}, r"DLHConfig\.loss\.continue_scale must be a finite number >= 0, got True"),
        ({"kl_balance": True},
         r"DLHConfig\.loss\.kl_balance must be a finite number >= 0 and <= 1, got True"),
        ({"upper_min_std": float("inf")}, r"DLHConfig\.upper_min_std must be a finite number > 0 or null"),
        ({"init_std": float("nan")}, r"DLHConfig\.init_std must be a finite number > 0 or null, got nan"),
        ({"reward_head": 1}, r"DLHConfig\.reward_head must be true or false, got 1"),
        ({"continue_head": "no"}, r"DLHConfig\.continue_head must be true or false, got 'no'"),
    ],
)
def test_config_rejects_bools_non_finite_and_wrong_types(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_config_keeps_accepting_good_values():
    cfg = tiny_config(action_dim=2, action_levels=[1, 2], obs_std=1, upper_min_std=0.05, init_std=0.3,
                      reward_head=True, kl_balance=0.8, free_nats=1.0)
    assert cfg.action_levels == (1, 2) and cfg.enc_hidden == (32,) and cfg.loss.obs_std == 1


@pytest.mark.parametrize("odd", [2, 0.5, -1])
def test_is_first_must_hold_booleans(odd):
    model = tiny_model()
    is_first = torch.zeros(2, 4, dtype=torch.float if isinstance(odd, float) else torch.long)
    is_first[0, 2] = odd
    match = f"is_first: expected booleans .*got the value {odd}"
    with pytest.raises(ValueError, match=match):
        model.observe(random_frames(2, 4), is_first=is_first)
    with pytest.raises(ValueError, match=match):
        model.observe_step(model.initial_state(2), random_frames(2, 1)[:, 0], is_first=is_first[:, 2])


def test_continues_must_hold_booleans():
    model = tiny_model(continue_head=True)
    with pytest.raises(ValueError, match="continues: expected booleans .*got the value 5"):
        model.loss(random_frames(2, 3), continues=torch.full((2, 3), 5.0))
    model.loss(random_frames(2, 3), continues=torch.tensor([[1, 1, 0], [1, 1, 1]]))  # 0/1 ints are fine


@pytest.mark.parametrize("beta", [float("inf"), float("nan"), True, -0.5, "1", None])
def test_beta_must_be_a_finite_number_at_least_zero(beta):
    with pytest.raises(ValueError, match=f"beta: expected a finite number >= 0, got {beta!r}"):
        tiny_model().loss(random_frames(1, 2), beta=beta)


def test_heads_must_exist_for_their_targets():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"rewards given but the model has no reward head.*reward_head=True"):
        model.loss(random_frames(1, 2), rewards=torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"continues given .*continue_head=True"):
        model.loss(random_frames(1, 2), continues=torch.ones(1, 2))


def test_model_requires_a_config():
    with pytest.raises(ValueError, match="DLHConfig"):
        DLH({"levels": 3})
    assert isinstance(DLH(DLHConfig(image_size=32, channels=3)).config, DLHConfig)


def test_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        tiny_model().loss(random_frames(1, 2), beta=-1.0)
