"""Hierarchy analyses: L̄ and per-level KL under forced e, Table 3 on hand-made outputs and
on a model with a forced prior factor, per-level sampling, change maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import worldmodel.hierarchy
from tests.conftest import random_frames, tiny_model
from worldmodel.data import DataConfig, build_source
from worldmodel.evaluation import (
    change_detection,
    change_map_figure,
    change_prior_by_component,
    hierarchy_report,
    level_samples,
    levels_used,
    per_level_kl,
    resample_levels,
    top_down_from,
)
from worldmodel.evaluation.analysis import sampling_groups
from worldmodel.evaluation.loading import eval_sequences
from worldmodel.state import ObserveOutput


def _force_e(monkeypatch, value):
    """Make the inferred q(e^n = 1) constant (`value` 0 or 1) or a function of the row."""

    def forced(q, change_prior, static_prior, logit, assignment, *_):
        rows = q.mean.shape[0]
        if callable(value):
            return value(rows).to(q.mean.dtype)
        return torch.full((rows,), float(value), dtype=q.mean.dtype)

    monkeypatch.setattr(worldmodel.hierarchy, "change_posterior", forced)


@pytest.mark.parametrize("levels", [2, 3, 4])
def test_levels_used_with_every_level_static_after_the_first_step(monkeypatch, levels):
    _force_e(monkeypatch, 0.0)
    steps = 7
    report, out = hierarchy_report(tiny_model(levels=levels), random_frames(3, steps))
    assert out.changed[:, 1:, 1:].sum() == 0 and out.changed[:, 0].all()
    expected = 1 + (levels - 1) / steps  # Table 2's L̄: level 1 always, the rest only at t = 0
    assert report["levels_used"]["mean"] == pytest.approx(expected)
    assert report["levels_used"]["std"] == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(levels_used(out.changed), torch.full((3,), expected))


def test_levels_used_with_every_level_changing(monkeypatch):
    _force_e(monkeypatch, 1.0)
    report, out = hierarchy_report(tiny_model(levels=3), random_frames(2, 5))
    assert report["levels_used"]["mean"] == pytest.approx(3.0)
    assert report["change_rate_per_level"] == {"level1": 1.0, "level2": 1.0, "level3": 1.0}


def test_per_level_kl_is_the_mean_of_each_levels_kl():
    model = tiny_model()
    report, out = hierarchy_report(model, random_frames(4, 6))
    kl = per_level_kl(out.kl)
    assert kl.shape == (4, 3)
    for n in range(3):
        assert report["kl_per_level"][f"level{n + 1}"]["mean"] == pytest.approx(float(out.kl[..., n].mean()),
                                                                                  rel=1e-5)
    assert report["kl_total"]["mean"] == pytest.approx(float(out.kl.sum(-1).mean()), rel=1e-5)
    assert report["kl_per_level"]["level1"]["sequences"] == 4


def _output(changed, evaluated, prob) -> ObserveOutput:
    return ObserveOutput(state=None, changed=changed, kl=torch.zeros(changed.shape), factor_kl=None,
                         recon=None, features=None, change_prob=prob, evaluated=evaluated,
                         recon_mean=None)  # type: ignore[arg-type]


def test_change_prior_by_component_on_a_hand_made_output():
    # 2 sequences, 4 steps, 2 levels; column 1 is level 2.
    e2 = torch.tensor([[True, True, False, False], [True, False, True, True]])
    changed = torch.stack([torch.ones_like(e2), e2], -1)
    evaluated = torch.ones_like(changed)
    p2 = torch.tensor([[float("nan"), 0.9, 0.2, 0.4], [float("nan"), 0.1, 0.7, 0.5]])
    prob = torch.stack([torch.ones(2, 4), p2], -1)
    report = change_prior_by_component(_output(changed, evaluated, prob), level=2)
    # t = 0 is left out. Sequence 0: change {0.9}, static {0.2, 0.4}; sequence 1: change {0.7, 0.5},
    # static {0.1}. Per-sequence means, then mean ± (population) std over sequences.
    assert report["change"]["mean"] == pytest.approx((0.9 + 0.6) / 2)
    assert report["change"]["std"] == pytest.approx(0.15)
    assert report["static"]["mean"] == pytest.approx((0.3 + 0.1) / 2)
    assert report["static"]["std"] == pytest.approx(0.1)
    assert report["count"] == {"change": 3, "static": 3}


def test_change_prior_skips_levels_not_inferred_and_sequences_without_a_component():
    e2 = torch.tensor([[True, True, True]])
    changed = torch.stack([torch.ones_like(e2), e2], -1)
    evaluated = changed.clone()
    evaluated[0, 2, 1] = False  # not inferred at t = 2 (e.g. a clockwork step)
    prob = torch.stack([torch.ones(1, 3), torch.tensor([[float("nan"), 0.8, float("nan")]])], -1)
    report = change_prior_by_component(_output(changed, evaluated, prob))
    assert report["change"] == {"mean": pytest.approx(0.8), "std": 0.0, "sequences": 1}
    assert report["static"] == {"mean": None, "std": None, "sequences": 0}
    with pytest.raises(ValueError, match="level"):
        change_prior_by_component(_output(changed, evaluated, prob), level=1)


def test_table3_statistic_on_a_model_with_a_forced_factor(monkeypatch):
    model = tiny_model(levels=2)
    factor = model.hierarchy.levels[1].factor  # p(e^2 = 1 | d^2) = sigmoid(last layer)
    with torch.no_grad():
        factor[-1].weight.zero_()
        factor[-1].bias.fill_(math.log(0.3 / 0.7))  # p = 0.3 whatever d^2
    # odd rows infer "change" at level 2, even rows "static"
    _force_e(monkeypatch, lambda rows: (torch.arange(rows) % 2).double())
    report, out = hierarchy_report(model, random_frames(4, 6))
    table3 = report["change_prior"]["level2"]
    assert table3["change"]["mean"] == pytest.approx(0.3, abs=1e-6)
    assert table3["static"]["mean"] == pytest.approx(0.3, abs=1e-6)
    assert table3["change"]["sequences"] == 2 and table3["static"]["sequences"] == 2
    assert table3["count"] == {"change": 10, "static": 10}  # 2 rows x 5 steps each (t > 0)


def test_change_prior_is_absent_for_fixed_schedules():
    report, _ = hierarchy_report(tiny_model(timescale="clockwork", clockwork_k=2), random_frames(2, 5))
    assert "change_prior" not in report


def test_change_detection_rates():
    changed = torch.zeros(1, 5, 2, dtype=torch.bool)
    changed[..., 0] = True
    changed[0, [0, 1, 3], 1] = True
    truth = np.array([[False, True, True, False, False]])
    rates = change_detection(changed, truth)
    assert rates["hit_rate"] == pytest.approx(0.5)  # true changes at t=1 (hit), t=2 (missed)
    assert rates["false_alarm_rate"] == pytest.approx(0.5)  # no change at t=3 (alarm), t=4
    assert rates["true_change_rate"] == pytest.approx(0.5)


def test_report_with_moving_ball_ground_truth():
    source = build_source(DataConfig(image_size=16, channels=1, options={"lam": 0.2}), "test")
    batch, truth = eval_sequences(source, 3, 8, seed=1)
    torch.testing.assert_close(batch.frames, source.eval_batch(3, 8, seed=1).frames)
    assert truth.shape == (3, 8) and truth.dtype == bool
    report, _ = hierarchy_report(tiny_model(), batch.frames, truth_changes=truth)
    assert set(report["change_detection"]["level2"]) == {"hit_rate", "false_alarm_rate", "true_change_rate"}


# ---------------------------------------------------------------------- per-level sampling
def _filtered_state(levels=3, steps=5, batch=2, seed=0, imagine=0):
    torch.manual_seed(seed)
    model = tiny_model(levels=levels)
    with torch.no_grad():
        state = model.observe(random_frames(batch, steps, seed=seed)).state
        if imagine:
            state = model.imagine(state, imagine).final_state
    return model, state


@pytest.mark.parametrize("imagine", [0, 4])
def test_holding_every_level_reproduces_the_decode(imagine):
    model, state = _filtered_state(imagine=imagine)
    with torch.no_grad():
        top_down = top_down_from(model, state, state.s, state.levels)
        for new, old in zip(top_down, state.top_down):
            torch.testing.assert_close(new, old)
        frames, _ = resample_levels(model, state, [], samples=3)
        held = model.decode(state)
    for k in range(3):
        torch.testing.assert_close(frames[:, k], held)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_resampling_a_level_changes_nothing_above_it(level):
    model, state = _filtered_state()
    generator = torch.Generator().manual_seed(0)
    frames, new = resample_levels(model, state, [level], samples=4, generator=generator)
    rep = state.repeat_interleave(4)
    n = level - 1
    for i in range(state.levels):
        if i > n:  # above: sample and cached top-down output untouched
            assert torch.equal(new.s[i], rep.s[i]) and torch.equal(new.top_down[i], rep.top_down[i])
        elif i < n:  # below: same sample, new context
            assert torch.equal(new.s[i], rep.s[i])
            assert not torch.allclose(new.top_down[i], rep.top_down[i])
        else:
            assert not torch.allclose(new.s[i], rep.s[i])
    assert frames.shape == (2, 4, 1, 16, 16)
    assert not torch.allclose(frames[:, 0], frames[:, 1])  # the samples differ


def test_resampled_levels_follow_their_stored_distribution():
    model, state = _filtered_state(batch=1)
    generator = torch.Generator().manual_seed(1)
    _, new = resample_levels(model, state, [2, 3], samples=4000, generator=generator, source="posterior")
    for i in (1, 2):
        draws = new.s[i]
        torch.testing.assert_close(draws.mean(0), state.mean[i][0], atol=4 * float(state.std[i].max()) / 60,
                                   rtol=0)
        torch.testing.assert_close(draws.std(0), state.std[i][0], rtol=0.1, atol=0)
    assert torch.equal(new.s[0], state.repeat_interleave(4000).s[0])


def test_resampled_levels_follow_their_change_prior_by_default():
    """Level 3 (top) is drawn from p(s^3 | d^3, c^3) with the constant top context; level 2
    from its prior given the context recomputed from level 3's new sample."""
    model, state = _filtered_state(batch=1)
    rep = state.repeat_interleave(4000)
    _, new = resample_levels(model, state, [3], samples=4000, generator=torch.Generator().manual_seed(1))
    hierarchy = model.hierarchy
    with torch.no_grad():
        prior = hierarchy.levels[2].predict(rep.d[2], hierarchy.context(2, rep.top_down))
    torch.testing.assert_close(new.s[2].mean(0), prior.mean[0], atol=4 * float(prior.std.max()) / 60, rtol=0)
    torch.testing.assert_close(new.s[2].std(0), prior.std[0], rtol=0.1, atol=0)
    assert torch.equal(new.s[1], rep.s[1]) and torch.equal(new.s[0], rep.s[0])  # held below
    with pytest.raises(ValueError, match="source"):
        resample_levels(model, state, [2], samples=2, source="guess")


def test_level_samples_grid_and_groups():
    model, state = _filtered_state()
    groups = sampling_groups(3)
    assert groups["per_level"] == [[1], [2], [3]]
    assert groups["split"] == [[2, 3], [1], [3], [1, 2]]  # Fig. 10 / 11 rows for m = 2, 3
    truth = random_frames(1, 1)[0, 0]
    grid = level_samples(model, state, groups["split"], samples=5, truth=truth)
    assert grid.shape == (4, 7, 1, 16, 16)
    torch.testing.assert_close(grid[:, 0], truth.expand(4, -1, -1, -1))
    torch.testing.assert_close(grid[:, 1], model.decode(state.index(0)).expand(4, -1, -1, -1))
    with pytest.raises(ValueError, match="level"):
        resample_levels(model, state, [4], samples=2)


def test_change_map_figure_writes_a_png(tmp_path):
    from PIL import Image

    model = tiny_model()
    frames = random_frames(1, 12)
    out = model.observe(frames)
    path = change_map_figure(tmp_path / "map.png", frames[0], out.changed[0], out.evaluated[0],
                             truth_changes=np.arange(12) % 5 == 0, title="test")
    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] > 100
    with pytest.raises(ValueError, match="steps"):
        change_map_figure(tmp_path / "bad.png", frames[0, :5], out.changed[0])
