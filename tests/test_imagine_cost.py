"""Imagination reuses static levels: a level above the highest changing one runs no
network; work per step follows the active levels, not N."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.conftest import random_frames, tiny_model
from worldmodel import fastpath

NETWORKS = ("decoder", "temporal", "posterior", "prior", "factor", "factor_cell")


def _count_calls(model) -> Counter:
    counts: Counter = Counter()
    for n, level in enumerate(model.hierarchy.levels, start=1):
        for name in NETWORKS:
            net = getattr(level, name)
            if net is not None:
                net.register_forward_hook(lambda *_, key=(n, name): counts.update([key]))
    return counts


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("prior_factor", ["feedforward", "recurrent"])
def test_levels_above_the_highest_changing_level_run_no_network(batch, prior_factor):
    model = tiny_model(levels=4, prior_factor=prior_factor)
    cell = int(prior_factor == "recurrent")
    torch.manual_seed(0)
    state = model.observe(random_frames(batch, 4)).state
    counts = _count_calls(model)
    horizon = 60
    carry = model.hierarchy.carry(state)
    for _ in range(horizon):
        before = Counter(counts)
        carry, levels = model.hierarchy.imagine_step(carry, None, sample_e=True)
        step = counts - before
        active = torch.stack([level.changed for level in levels], 1).any(0)  # levels changing in some row
        top = int(active.nonzero().max())  # 0-based highest changing level
        for n in range(1, 5):
            calls = {name: step[(n, name)] for name in NETWORKS}
            if n - 1 <= top:  # a changing level: prior, decoder, temporal once each
                assert calls["prior"] == 1 and calls["decoder"] == 1 and calls["temporal"] == 1
            elif n - 1 == top + 1:  # the boundary level only evaluates its prior factor
                assert calls == {"decoder": 0, "temporal": 0, "posterior": 0, "prior": 0, "factor": 1,
                                 "factor_cell": cell}
            else:  # above: nothing at all
                assert sum(calls.values()) == 0, f"level {n} ran {calls}"
            assert calls["posterior"] == 0  # imagination never runs the posterior


def test_mean_network_calls_follow_the_active_levels():
    """Total level-network calls per step = 3·L̄ + (factor evaluations), far below 3·N."""
    model = tiny_model(levels=4)
    # bias the prior factors towards "static" so that upper levels rarely change
    for level in model.hierarchy.levels[1:]:
        torch.nn.init.constant_(level.factor[-1].bias, -4.0)
    torch.manual_seed(0)
    state = model.observe(random_frames(1, 3)).state
    counts = _count_calls(model)
    traj = model.imagine(state, 200)
    levels_used = traj.changed.float().sum(-1).mean().item()
    heavy = sum(v for (n, name), v in counts.items() if name in ("prior", "decoder", "temporal"))
    assert heavy / 200 == pytest.approx(3 * levels_used)
    assert levels_used < 1.5  # upper levels rarely active ...
    assert heavy / 200 < 3 * 4 / 2  # ... so much less work than running all four levels


def test_every_step_runs_every_level():
    model = tiny_model(levels=3, timescale="every_step")
    state = model.observe(random_frames(1, 2)).state
    counts = _count_calls(model)
    model.imagine(state, 10)
    for n in (1, 2, 3):
        assert counts[(n, "prior")] == 10 and counts[(n, "decoder")] == 10


def test_gather_and_mask_paths_agree():
    """Running a level on gathered rows or masked rows gives the same rollout."""
    model = tiny_model(levels=3)
    state = model.observe(random_frames(16, 4)).state
    # take the mode of e so that both runs make the same decisions
    torch.manual_seed(5)
    e_gather = model.imagine(state, 10, sample_e=False, gather_below=1.0)
    torch.manual_seed(5)
    e_mask = model.imagine(state, 10, sample_e=False, gather_below=0.0)
    assert torch.equal(e_gather.changed, e_mask.changed)
    # samples differ in draw order only on partially active levels; level 1 is always full
    torch.testing.assert_close(e_gather.states[0].d[0], e_mask.states[0].d[0])


# --------------------------------------------------------------------- the fused level step
def _rollout(model, state, mode, actions=None, gather_below=1.0, horizon=25):
    model.hierarchy.step_mode = mode
    torch.manual_seed(3)
    with torch.no_grad():
        return model.imagine(state, horizon, actions, gather_below=gather_below)


@pytest.mark.parametrize("overrides", [
    {"levels": 3},
    {"levels": 3, "prior_factor": "recurrent"},
    {"levels": 2, "action_dim": 2},
    {"levels": 3, "action_dim": 2, "action_levels": (1, 2)},
])
@pytest.mark.parametrize("gather_below", [1.0, 0.0])
def test_fused_step_gives_the_per_network_rollout(overrides, gather_below):
    """Same e, states and features as the per-network path on the same seed (float rounding)."""
    model = tiny_model(**overrides).eval()
    actions = torch.randn(6, 25, 2) if overrides.get("action_dim") else None
    state = model.observe(random_frames(6, 3), None if actions is None else actions[:, :3]).state
    eager = _rollout(model, state, "eager", actions, gather_below)
    fused = _rollout(model, state, "fused", actions, gather_below)
    assert torch.equal(eager.changed, fused.changed)
    torch.testing.assert_close(fused.features, eager.features, rtol=1e-5, atol=1e-5)
    for a, b in zip(eager.final_state.d + eager.final_state.s, fused.final_state.d + fused.final_state.s):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_fused_weights_follow_parameter_updates():
    """load_state_dict invalidates the regrouped weights; an in-place edit outside an optimiser is
    followed by `clear_fused` (an optimiser step: test_fastpath.py)."""
    model = tiny_model(levels=2).eval()
    state = model.observe(random_frames(2, 3)).state
    _rollout(model, state, "fused")  # builds the cache
    with torch.no_grad():  # edited in place outside an optimiser: clear_fused (fastpath._Fused)
        for p in model.hierarchy.levels[0].parameters():
            p.mul_(1.5)
    fastpath.clear_fused()
    eager = _rollout(model, state, "eager")
    torch.testing.assert_close(_rollout(model, state, "fused").features, eager.features, rtol=1e-5, atol=1e-5)
    other = tiny_model(seed=7, levels=2)
    model.load_state_dict(other.state_dict())
    eager = _rollout(model, state, "eager")
    torch.testing.assert_close(_rollout(model, state, "fused").features, eager.features, rtol=1e-5, atol=1e-5)


def test_fused_step_runs_no_network_above_the_highest_changing_level(monkeypatch):
    """The cost proof for the fused path: one fused step per changing level, one prior factor
    for the first static level, nothing above."""
    import worldmodel.fastpath as fastpath

    model = tiny_model(levels=4).eval()
    state = model.observe(random_frames(3, 4)).state
    counts = _count_calls(model)
    original = fastpath.fused_weights

    def counted(level):
        counts.update([(level.index, "fused")])
        return original(level)

    monkeypatch.setattr(fastpath, "fused_weights", counted)
    torch.manual_seed(0)
    carry = model.hierarchy.carry(state)
    with torch.no_grad():
        for _ in range(40):
            before = Counter(counts)
            carry, levels = model.hierarchy.imagine_step(carry, None, sample_e=True)
            step = counts - before
            top = int(torch.stack([level.changed for level in levels], 1).any(0).nonzero().max())
            for n in range(1, 5):
                heavy = step[(n, "fused")] + step[(n, "prior")] + step[(n, "decoder")] + step[(n, "temporal")]
                if n - 1 <= top:
                    assert step[(n, "fused")] == 1 and heavy == 1  # the fused step only
                else:
                    assert heavy == 0
                    assert step[(n, "factor")] == int(n - 1 == top + 1)


def test_step_mode_is_checked():
    model = tiny_model(levels=2)
    with pytest.raises(ValueError, match="step_mode"):
        model.hierarchy.step_mode = "fast"


@pytest.mark.slow
def test_compiled_step_gives_the_per_network_rollout():
    """torch.compile of the fused step (random draws outside the compiled region)."""
    model = tiny_model(levels=3).eval()
    state = model.observe(random_frames(4, 3)).state
    eager = _rollout(model, state, "eager", horizon=10)
    compiled = _rollout(model, state, "compiled", horizon=10)
    assert torch.equal(eager.changed, compiled.changed)
    torch.testing.assert_close(compiled.features, eager.features, rtol=1e-5, atol=1e-5)
