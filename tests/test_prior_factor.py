"""The prior factor p(e^n | ·) (eq. 15) in its two readings.

`feedforward` reads the level's temporal state d^n, which does not move while the level is
static, so its change probability is one number per static stretch: it cannot say *when*
inside a stretch the change comes. `recurrent` (Table 4's "GRU [200]") ticks a GRU of its
own every step e^n is decided and restarts it at each change, so it can. These tests pin
both behaviours, and that only the recurrent one learns a periodic schedule.
"""

from __future__ import annotations

import math

import pytest
import torch

import worldmodel.hierarchy as hierarchy
from tests.conftest import random_frames, tiny_config, tiny_model
from worldmodel import DLH


def _force_period(monkeypatch, period: int) -> list[int]:
    """Level 2 (of a 2-level model) changes at t = 0, period, 2·period, ...; returns the step
    counter to reset before each `observe`."""
    step = [0]

    def forced(q, change_prior, static_prior, logit, assignment, *_):
        t = step[0]
        step[0] += 1
        return torch.full((q.mean.shape[0],), float(t % period == 0), dtype=q.mean.dtype)

    monkeypatch.setattr(hierarchy, "change_posterior", forced)
    return step


def test_feedforward_factor_is_constant_over_a_static_stretch(monkeypatch):
    step = _force_period(monkeypatch, 4)
    model = tiny_model(levels=2)
    step[0] = 0
    out = model.observe(random_frames(3, 13))
    p = out.change_prob[:, :, 1]
    assert out.changed[:, 4, 1].all() and not out.changed[:, 1:4, 1].any()
    # steps 1-4 decide e^2 from the same d^2 (advanced once, after the change at t = 0):
    # the static steps and the change step that ends the stretch get the same probability
    for start in (1, 5, 9):
        stretch = p[:, start:start + 4]
        assert torch.equal(stretch, stretch[:, :1].expand_as(stretch))


def test_recurrent_factor_moves_within_a_stretch_and_restarts_at_a_change(monkeypatch):
    step = _force_period(monkeypatch, 4)
    model = tiny_model(levels=2, prior_factor="recurrent")
    state = model.initial_state(3)
    frames = random_frames(3, 9)
    step[0] = 0
    probs = []
    for t in range(9):
        state = model.observe_step(state, frames[:, t])
        h = state.factor[1]
        if t % 4 == 0:  # level 2 changed: the factor restarts
            assert torch.equal(h, torch.zeros_like(h))
        else:
            assert h.abs().sum() > 0
    step[0] = 0
    out = model.observe(frames)
    probs = out.change_prob[:, 1:5, 1]
    assert (probs[:, 1:] - probs[:, :1]).abs().max() > 1e-4  # not one number per stretch
    assert state.factor[0].shape == (3, 0)  # level 1 has no factor


def test_feedforward_state_carries_an_empty_factor():
    state = tiny_model(levels=3).observe(random_frames(2, 3)).state
    assert [f.shape for f in state.factor] == [(2, 0)] * 3


def _factor_nll_after_training(monkeypatch, prior_factor: str, period: int, steps: int) -> float:
    step = _force_period(monkeypatch, period)
    torch.manual_seed(0)
    model = DLH(tiny_config(levels=2, prior_factor=prior_factor, d_dim=16, s_dim=4, factor_hidden=(16,)))
    frames = random_frames(4, 3 * period + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        step[0] = 0
        out = model.observe(frames)
        # only the factor term: the decisions are forced, so this is the whole question
        nll = out.factor_kl[:, 1:, 1].mean()
        opt.zero_grad()
        nll.backward()
        opt.step()
    return nll.item()


def test_only_the_recurrent_factor_learns_when_a_periodic_change_is_due(monkeypatch):
    period = 4
    # a constant probability per stretch can do no better than the hazard 1/period:
    # (period - 1) static steps and one change per stretch
    bound = -((period - 1) * math.log(1 - 1 / period) + math.log(1 / period)) / period
    feedforward = _factor_nll_after_training(monkeypatch, "feedforward", period, 60)
    recurrent = _factor_nll_after_training(monkeypatch, "recurrent", period, 60)
    assert feedforward > bound - 0.02, (feedforward, bound)
    assert recurrent < 0.25 * bound, (recurrent, bound)


def test_prior_factor_rejects_unknown_readings():
    with pytest.raises(ValueError, match="prior_factor"):
        tiny_config(prior_factor="lstm")


def test_files_saved_before_the_option_load_with_the_feedforward_factor(tmp_path):
    """A model file whose config has no `prior_factor` key (written before the option existed)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from worldmodel import load

    model = tiny_model(levels=2)
    path = tmp_path / "model.safetensors"
    model.save(path)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata["config"])
    del config["prior_factor"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**metadata, "config": json.dumps(config)})
    old = load(tmp_path / "old.safetensors")
    assert old.config.prior_factor == "feedforward" and old.config == model.config
