"""The hierarchy's step: the owed transition of action-taking levels (level 2 included), the
time index of `features`, the boundary level under `vade` + `copy`, `decode_from`."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_frames, tiny_model
from worldmodel.distributions import Gaussian, kl_bernoulli


def _steps(model, frames, actions):
    """observe_step over the sequence under one seed: the state after every step."""
    torch.manual_seed(0)
    state, states = model.initial_state(frames.shape[0]), []
    for t in range(frames.shape[1]):
        state = model.observe_step(state, frames[:, t], actions[:, t])
        states.append(state)
    return states


def test_still_owed_is_pending_and_not_read_or_changed():
    model = tiny_model(levels=2, action_dim=2, action_levels=(2,))
    hierarchy = model.hierarchy
    state = model.initial_state(4)
    state.pending = torch.tensor([[False, False], [False, True], [False, True], [False, False]])
    read = [torch.ones(4, dtype=torch.bool), torch.tensor([True, True, False, False])]
    changed = [torch.ones(4, dtype=torch.bool), torch.tensor([True, False, False, False])]
    owed = hierarchy.still_owed(state, read, changed)
    # level 1 takes no action: it never owes; level 2: (pending ∧ ¬read) ∨ changed
    assert owed[:, 0].tolist() == [False] * 4
    assert owed[:, 1].tolist() == [True, False, True, False]


def test_level_two_pays_its_owed_transition_with_the_next_steps_action():
    """Dynamic mode: level 2 is read at every step (e^1 = 1), so a change at t is paid at t+1
    with a_{t+1}: d^2 = f_tem(s^2_t, d^2_t, a_{t+1})."""
    model = tiny_model(levels=2, action_dim=2, action_levels=(1, 2))
    frames, actions = random_frames(4, 5), torch.randn(4, 5, 2)
    states = _steps(model, frames, actions)
    level = model.hierarchy.levels[1]
    assert states[0].pending.all()  # every level changed at the first step and owes
    for t in range(1, 5):
        prev, cur = states[t - 1], states[t]
        owed = prev.pending[:, 1]
        with torch.no_grad():
            paid = level.transition(prev.s[1], prev.d[1], actions[:, t])
        torch.testing.assert_close(cur.d[1][owed], paid[owed], rtol=0, atol=0)
        assert torch.equal(cur.d[1][~owed], prev.d[1][~owed])  # nothing owed: d^2 held


def test_an_upper_action_level_sees_only_the_action_of_the_step_it_is_next_read():
    """Clockwork k=2: level 2 is read (and changes) at t = 0, 2, 4. Its advance owed from t = 0
    is paid at t = 2 with a_2; a_1 never reaches it (documented in docs/model.md)."""
    model = tiny_model(levels=2, timescale="clockwork", clockwork_k=2, action_dim=2, action_levels=(1, 2))
    frames, actions = random_frames(3, 5), torch.randn(3, 5, 2)
    other = actions.clone()
    other[:, 1] += 3.0  # a_1 differs
    a, b = _steps(model, frames, actions), _steps(model, frames, other)
    assert a[0].pending[:, 1].all() and a[1].pending[:, 1].all()  # owed through t = 1 (not read)
    assert torch.equal(a[1].d[1], a[0].d[1])
    assert not torch.equal(a[1].d[0], b[1].d[0])  # level 1 did see a_1
    for t in (2, 3):
        assert torch.equal(a[t].d[1], b[t].d[1]) and torch.equal(a[t].s[1], b[t].s[1])
    with torch.no_grad():
        paid = model.hierarchy.levels[1].transition(a[1].s[1], a[1].d[1], actions[:, 2])
    assert torch.equal(a[2].d[1], paid)
    third = actions.clone()
    third[:, 2] += 3.0  # a_2 is the one level 2 uses
    assert not torch.equal(_steps(model, frames, third)[2].d[1], a[2].d[1])


def test_features_hold_the_stored_d_advanced_unless_the_level_takes_the_action():
    """`features` reads d^n as the state stores it: d^n_{t+1} for a level without action
    (advanced right after its change), d^n_t for a level that takes the action (owed)."""
    model = tiny_model(levels=2, action_dim=2, action_levels=(1,))
    state0 = model.initial_state(3)
    frame, action = random_frames(3, 1)[:, 0], torch.randn(3, 2)
    torch.manual_seed(0)
    state = model.observe_step(state0, frame, action)
    cfg = model.config
    feats = model.features(state)
    d1 = feats[:, cfg.s_dim:cfg.s_dim + cfg.d_dim]
    d2 = feats[:, 2 * cfg.s_dim + cfg.d_dim:]
    assert torch.equal(d1, state0.d[0])  # level 1 (action): d^1_0, its advance is owed
    assert state.pending[:, 0].all()
    with torch.no_grad():
        advanced = model.hierarchy.levels[1].transition(state.s[1], state0.d[1], None)
    assert torch.equal(d2, advanced)  # level 2 (no action): d^2_1 = f_tem(s^2_0, d^2_0)


@pytest.mark.parametrize("assignment", ["hard", "vade"])
def test_the_held_boundary_level_has_no_state_kl_under_copy(assignment):
    """boundary "copy": level K keeps q(s_{t-1}), so its state KL is 0 whatever the
    assignment — under `vade` the soft q(e^K = 1) < 0.5 enters only the factor KL (eq. 8c),
    not a change-component KL of a posterior the step never computes."""
    torch.manual_seed(0)
    model = tiny_model(levels=3, boundary="copy", assignment=assignment)
    frames = random_frames(6, 8)
    out = model.observe(frames)
    boundary = out.evaluated & ~out.changed
    boundary[:, 0] = False
    assert boundary.any(), "the test needs static boundary levels"
    assert (out.kl[boundary] == 0).all()
    assert (out.factor_kl[boundary] > 0).all()
    if assignment == "vade":  # factor KL is KL[Ber(q(e)) ‖ Ber(p(e))] with a soft q(e) < 0.5
        p = out.change_prob[boundary]
        assert not torch.allclose(out.factor_kl[boundary], -torch.log1p(-p))


def test_reinfer_vade_boundary_level_mixes_both_kls():
    """boundary "reinfer" + `vade`: K's fresh posterior pays q(e=1)·KL[q ‖ change prior] +
    q(e=0)·KL[q ‖ static prior] (eq. 9), so its KL is positive."""
    torch.manual_seed(0)
    model = tiny_model(levels=3, assignment="vade")
    out = model.observe(random_frames(6, 8))
    boundary = out.evaluated & ~out.changed
    assert boundary.any() and (out.kl[boundary] > 0).all()


def test_decode_from_redoes_the_top_down_pass_below_a_level():
    model = tiny_model(levels=3)
    state = model.observe(random_frames(2, 4)).state
    hierarchy = model.hierarchy
    with torch.no_grad():
        s, top_down = hierarchy.decode_from(3, state.s, state.top_down)
        for a, b in zip(top_down, state.top_down):  # the same samples give the cached pass
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        new = torch.randn_like(state.s[1])
        s, top_down = hierarchy.decode_from(2, state.s, state.top_down,
                                            draw=lambda i, c: new if i == 1 else None)
    assert torch.equal(s[1], new) and torch.equal(s[0], state.s[0])
    assert torch.equal(top_down[2], state.top_down[2])  # above: untouched
    assert not torch.equal(top_down[0], state.top_down[0])  # below: recomputed


def test_a_reassigned_level_is_the_one_the_step_runs():
    """`levels[i] = Level(...)` takes effect (no stale copy of the list)."""
    from worldmodel.level import Level

    model = tiny_model(levels=2).eval()
    state = model.observe(random_frames(2, 3)).state
    torch.manual_seed(5)
    model.hierarchy.levels[0] = Level(model.config, 1)
    calls = []
    model.hierarchy.levels[0].prior.register_forward_hook(lambda *_: calls.append(1))
    model.hierarchy.step_mode = "eager"
    with torch.no_grad():
        model.imagine(state, 2)
    assert len(calls) == 2


def test_gaussian_rsample_is_the_only_draw_of_filtering(monkeypatch):
    """Filtering's samples come from `Gaussian.rsample` alone (what the reset test relies on)."""
    monkeypatch.setattr(Gaussian, "rsample", lambda self, generator=None: self.mean)
    model = tiny_model(levels=3)
    a = model.observe(random_frames(2, 4))
    b = model.observe(random_frames(2, 4))
    assert torch.equal(a.features, b.features)


def test_vade_factor_kl_is_the_bernoulli_kl():
    torch.manual_seed(0)
    w, logit = torch.rand(5), torch.randn(5)
    p = torch.sigmoid(logit)
    ref = w * torch.log(w / p) + (1 - w) * torch.log((1 - w) / (1 - p))
    torch.testing.assert_close(kl_bernoulli(w, logit), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- the carry (issue 26)
def test_the_steps_take_a_carry_and_return_typed_per_level_results():
    from worldmodel.hierarchy import Carry, Filtered, Imagined

    model = tiny_model(levels=3).eval()
    hierarchy, frames = model.hierarchy, random_frames(4, 2)
    carry = hierarchy.carry(model.initial_state(4))
    assert isinstance(carry, Carry) and carry.generator is None and len(carry.stats) == 3
    with torch.no_grad():
        xs = hierarchy.bottom_up(model.encoder(frames[:, 0]))
        carry, levels = hierarchy.infer_step(carry, xs, None)
        assert isinstance(carry, Carry) and len(levels) == 3
        for level in levels:
            assert isinstance(level, Filtered)
            assert level.changed.dtype == torch.bool and level.changed.shape == (4,)
            assert level.kl.shape == level.factor_kl.shape == level.change_prob.shape == (4,)
        assert levels[0].changed.all() and levels[0].evaluated.all()
        carry, imagined = hierarchy.imagine_step(carry, None)
    assert all(isinstance(level, Imagined) and level.changed.shape == (4,) for level in imagined)
    assert carry.state.t.tolist() == [2] * 4


def test_is_first_resets_rows_inside_the_step():
    model = tiny_model(levels=2).eval()
    hierarchy, frames = model.hierarchy, random_frames(3, 3)
    with torch.no_grad():
        state = model.observe(frames[:, :2]).state
        xs = hierarchy.bottom_up(model.encoder(frames[:, 2]))
        reset = torch.tensor([True, False, True])
        torch.manual_seed(0)
        inside = hierarchy.infer_step(hierarchy.carry(state), xs, None, reset)[0].state
        torch.manual_seed(0)
        restarted = model.initial_state(3).where(reset, state)
        outside = hierarchy.infer_step(hierarchy.carry(restarted), xs, None)[0].state
    for a, b in zip(inside.s + inside.d + [inside.t], outside.s + outside.d + [outside.t]):
        assert torch.equal(a, b)
    assert inside.t.tolist() == [1, 3, 1]


@pytest.mark.parametrize("step_mode", ["fused", "eager"])
def test_a_generator_in_the_carry_gives_reproducible_draws_whatever_the_global_rng(step_mode):
    model = tiny_model(levels=3).eval()
    model.hierarchy.step_mode = step_mode
    frames = random_frames(5, 4)

    def run(global_seed: int):
        torch.manual_seed(global_seed)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            out = model.observe(frames, generator=g)
            traj = model.imagine(out.state, 6, generator=g)
        return out.features, traj.features, traj.changed

    a, b = run(0), run(1)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    torch.manual_seed(0)
    with torch.no_grad():
        default = model.observe(frames).features
    assert not torch.equal(default, a[0])  # the generator, not the global RNG, drew them
    state = torch.manual_seed(3).get_state()
    with torch.no_grad():
        start = model.observe(frames, generator=torch.Generator()).state
        model.imagine(start, 2, generator=torch.Generator())
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    with pytest.raises(ValueError, match="generator"):
        model.imagine(model.initial_state(1), 2, generator=7)


def test_memory_dropout_draws_from_the_carrys_generator():
    hierarchy = tiny_model(levels=3).hierarchy
    d = [torch.ones(200, 2) for _ in range(3)]
    a = hierarchy.drop_memory(d, 0.5, torch.Generator().manual_seed(1))
    torch.manual_seed(9)
    b = hierarchy.drop_memory(d, 0.5, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
