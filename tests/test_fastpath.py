"""Imagination's fast paths against the reference path: the fused level step, its regrouped
weights (and when they rebuild), gathered vs masked rows."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_frames, tiny_model
from worldmodel.fastpath import Rows, change_step, clear_fused, fused_change_step, fused_weights


def _level_step(level, route, seed=0):
    g = torch.Generator().manual_seed(1)
    d, context = torch.randn(5, 32, generator=g), torch.randn(5, 32, generator=g)
    torch.manual_seed(seed)
    with torch.no_grad():
        return change_step(level, d, context, route)


def _agree(level):
    eager, fused = _level_step(level, None), _level_step(level, fused_change_step)
    return all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(eager, fused))


def test_fused_change_step_is_the_reference_step():
    level = tiny_model(levels=2).hierarchy.levels[0]
    for a, b in zip(_level_step(level, None), _level_step(level, fused_change_step)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_an_action_level_takes_the_reference_step_and_owes_its_advance():
    level = tiny_model(levels=2, action_dim=2).hierarchy.levels[0]
    eager, fused = _level_step(level, None), _level_step(level, fused_change_step)
    assert eager[4] is None and fused[4] is None
    for a, b in zip(eager[:4], fused[:4]):
        assert torch.equal(a, b)


def test_regrouped_weights_are_cached_and_rebuilt_when_stale():
    model = tiny_model(levels=2)
    level = model.hierarchy.levels[0]
    first = fused_weights(level)
    assert fused_weights(level) is first  # cached
    optimizer = torch.optim.SGD(level.parameters(), lr=0.5)  # an optimiser step: in place
    for p in level.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert fused_weights(level) is not first and _agree(level)
    second = fused_weights(level)
    level.load_state_dict(tiny_model(seed=3, levels=2).hierarchy.levels[0].state_dict())  # loaded weights
    assert fused_weights(level) is not second and _agree(level)
    third = fused_weights(level)
    level.prior.load_state_dict(tiny_model(seed=4, levels=2).hierarchy.levels[0].prior.state_dict())
    assert fused_weights(level) is not third and _agree(level)  # into one network of the level
    # a replaced network
    level.decoder = type(level.decoder)(level.decoder.in_dim, (32,), level.decoder.out_dim)
    assert _agree(level)
    # a replaced parameter
    level.temporal.weight_hh = torch.nn.Parameter(torch.randn_like(level.temporal.weight_hh))
    assert _agree(level)
    # moved storage
    level.prior._linears[-1].weight.data = level.prior._linears[-1].weight.data * 2
    assert _agree(level)


def test_in_place_edits_outside_an_optimiser_are_followed_by_clear_fused():
    """No public version counter sees `with torch.no_grad(): p.mul_(...)` or `p.data` edits:
    `clear_fused` is the documented call after them; the weights rebuild on next use."""
    level = tiny_model(levels=2).hierarchy.levels[0]
    first = fused_weights(level)
    level.prior._linears[0].weight.data.mul_(3.0)
    with torch.no_grad():
        level.temporal.weight_hh[0, 0] += 1.0
    clear_fused(level)
    assert fused_weights(level) is not first and _agree(level)
    clear_fused()  # all levels
    assert _agree(level)


def test_the_staleness_check_reads_no_private_attribute():
    import inspect

    import worldmodel.fastpath as fastpath

    assert "_version" not in inspect.getsource(fastpath)


@pytest.mark.parametrize("gather_below", [0.0, 1.0])
def test_rows_take_and_put(gather_below):
    mask = torch.tensor([True, False, True, False])
    rows = Rows(mask, gather_below)
    assert rows.kind == ("gather" if gather_below else "mask")
    x = torch.arange(8.0).view(4, 2)
    new = rows.take(x) * 10
    out = rows.put(new, x)
    assert torch.equal(out[mask], x[mask] * 10) and torch.equal(out[~mask], x[~mask])
    assert Rows(torch.zeros(3, dtype=torch.bool)).kind == "none"
    assert Rows(torch.ones(3, dtype=torch.bool)).kind == "all"


def test_fused_rollout_keeps_following_an_optimiser_step():
    model = tiny_model(levels=3).eval()
    state = model.observe(random_frames(3, 3)).state
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def rollout(mode):
        model.hierarchy.step_mode = mode
        torch.manual_seed(0)
        with torch.no_grad():
            return model.imagine(state, 6).features

    rollout("fused")
    model.loss(random_frames(3, 3))[0].backward()
    optimizer.step()
    torch.testing.assert_close(rollout("fused"), rollout("eager"), rtol=1e-5, atol=1e-5)


def test_a_rollout_checks_each_levels_weights_once(monkeypatch):
    """`imagine` checks the regrouped weights' staleness at a level's first step only (the
    check walks every parameter); the next rollout checks again, so an update between
    rollouts is seen (test above)."""
    import worldmodel.fastpath as fastpath

    model = tiny_model(levels=3).eval()
    calls = []
    fresh = fastpath._Fused.fresh
    monkeypatch.setattr(fastpath._Fused, "fresh",
                        lambda self, level: calls.append(level) or fresh(self, level))
    with torch.no_grad():
        state = model.observe(random_frames(2, 3)).state
        model.imagine(state, 4)  # builds the caches (no check on a build)
        calls.clear()
        model.imagine(state, 12)
    assert calls, "no level was checked at all"
    assert len(calls) == len(set(map(id, calls))) <= model.config.levels  # once per level
