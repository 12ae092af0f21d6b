"""Behaviour of the DLH model: shapes, the nested constraint, static reuse, schedules,
determinism, gradients, save/load, filtering step by step, actions and heads."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_frames, tiny_config, tiny_model
from worldmodel import DLH, DLHConfig, HierarchicalState, load


def _nested(changed: torch.Tensor) -> bool:
    """e^n <= e^{n-1} everywhere and column 0 all True."""
    c = changed.int()
    return bool(c[..., 0].eq(1).all()) and bool((c[..., 1:] <= c[..., :-1]).all())


def test_paper_sized_model_has_about_seven_million_parameters():
    model = DLH(DLHConfig(levels=3, image_size=64, channels=1))
    count = sum(p.numel() for p in model.parameters())
    print(f"3-level 64x64 DLH with the paper's sizes: {count:,} parameters")
    assert 5_000_000 <= count <= 9_000_000


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("batch,steps", [(1, 1), (3, 7)])
@pytest.mark.parametrize("timescale", ["dynamic", "clockwork", "every_step"])
def test_observe_and_imagine_shapes(levels, batch, steps, timescale):
    model = tiny_model(levels=levels, timescale=timescale, clockwork_k=2)
    cfg = model.config
    frames = random_frames(batch, steps)
    out = model.observe(frames)
    assert out.changed.shape == (batch, steps, levels) and out.changed.dtype == torch.bool
    assert out.kl.shape == (batch, steps, levels) and out.kl.dtype == torch.float32
    assert out.recon.shape == frames.shape and out.recon.min() >= 0 and out.recon.max() <= 1
    assert out.features.shape == (batch, steps, cfg.feature_dim)
    assert _nested(out.changed)
    assert (out.kl >= 0).all()
    traj = model.imagine(out.state, 5)
    assert traj.changed.shape == (batch, 5, levels)
    assert traj.features.shape == (batch, 5, cfg.feature_dim)
    assert len(traj.states) == 5 and _nested(traj.changed)
    video = model.decode(traj)
    assert video.shape == (batch, 5, 1, 16, 16) and video.min() >= 0 and video.max() <= 1
    assert model.features(out.state).shape == (batch, cfg.feature_dim)
    assert model.decode(out.state).shape == (batch, 1, 16, 16)


def test_every_level_updates_at_the_first_step():
    out = tiny_model(levels=4).observe(random_frames(3, 4))
    assert out.changed[:, 0].all()


@pytest.mark.parametrize("prior_factor", ["feedforward", "recurrent"])
def test_static_levels_keep_their_exact_state_in_imagine(prior_factor):
    torch.manual_seed(1)
    model = tiny_model(levels=3, prior_factor=prior_factor)
    state = model.observe(random_frames(8, 5)).state
    traj = model.imagine(state, 30)
    prev = state
    seen_static = seen_untouched = 0
    for k, cur in enumerate(traj.states):
        for n in range(3):
            static = ~traj.changed[:, k, n]
            seen_static += int(static.sum())
            for field in ("s", "mean", "std", "top_down", "d"):
                a, b = getattr(cur, field)[n][static], getattr(prev, field)[n][static]
                assert torch.equal(a, b), f"{field} of static level {n + 1} changed at step {k}"
            # the prior factor ticks where e^n is decided (level below changed); above that
            # level nothing runs
            untouched = static & ~traj.changed[:, k, n - 1] if n else static
            seen_untouched += int(untouched.sum()) if n else 0
            assert torch.equal(cur.factor[n][untouched], prev.factor[n][untouched])
        prev = cur
    assert seen_static > 0 and seen_untouched > 0


def test_levels_above_the_boundary_keep_their_exact_state_in_observe():
    """In observe, levels above K (not evaluated) are copied; level K itself is re-inferred."""
    model = tiny_model(levels=4)
    frames = random_frames(6, 8)
    states = []
    torch.manual_seed(0)
    state = model.initial_state(6)
    for t in range(8):
        state = model.observe_step(state, frames[:, t])
        states.append(state)
    torch.manual_seed(0)
    out = model.observe(frames)
    for t in range(1, 8):
        for n in range(4):
            frozen = ~out.evaluated[:, t, n]
            for field in ("s", "mean", "std", "top_down", "d"):
                a = getattr(states[t], field)[n][frozen]
                b = getattr(states[t - 1], field)[n][frozen]
                assert torch.equal(a, b)
            assert (out.kl[:, t, n][frozen] == 0).all()
    assert (~out.evaluated[:, 1:]).any(), "the test needs some frozen levels"


@pytest.mark.parametrize("boundary", ["reinfer", "copy", "anchor"])
def test_the_boundary_level_is_reinferred_or_copied(boundary):
    """boundary="reinfer": level K gets a fresh state and KL at a static step; "copy": every
    static level, K included, keeps its state exactly and has zero KL; "anchor": K keeps its
    state as under "copy" but pays the static KL of a fresh posterior (eq. 9)."""
    model = tiny_model(levels=3, boundary=boundary)
    frames = random_frames(6, 8)
    torch.manual_seed(0)
    state, states = model.initial_state(6), []
    for t in range(8):
        state = model.observe_step(state, frames[:, t])
        states.append(state)
    torch.manual_seed(0)
    out = model.observe(frames)
    seen = 0
    for t in range(1, 8):
        for n in range(3):
            static = ~out.changed[:, t, n]
            boundary_rows = static & out.evaluated[:, t, n]
            seen += int(boundary_rows.sum())
            same = torch.equal(states[t].s[n][boundary_rows], states[t - 1].s[n][boundary_rows])
            zero_kl = bool((out.kl[:, t, n][boundary_rows] == 0).all())
            if boundary in ("copy", "anchor"):
                assert same and zero_kl == (boundary == "copy" or not boundary_rows.any())
                assert torch.equal(states[t].top_down[n][static], states[t - 1].top_down[n][static])
            elif boundary_rows.any():
                assert not same and not zero_kl
    assert seen, "the test needs static boundary levels"


def test_clockwork_follows_its_schedule():
    k = 3
    model = tiny_model(levels=3, timescale="clockwork", clockwork_k=k)
    steps = 20
    out = model.observe(random_frames(2, steps))
    t = torch.arange(steps)
    for n in range(3):
        expected = (t % k**n == 0).expand(2, steps)
        assert torch.equal(out.changed[:, :, n], expected)
    # imagination continues the clock where filtering stopped
    traj = model.imagine(out.state, 12)
    t = torch.arange(steps, steps + 12)
    for n in range(3):
        assert torch.equal(traj.changed[:, :, n], (t % k**n == 0).expand(2, 12))


def test_every_step_updates_every_level():
    model = tiny_model(levels=3, timescale="every_step")
    out = model.observe(random_frames(2, 6))
    assert out.changed.all()
    assert model.imagine(out.state, 4).changed.all()


def test_one_level_is_a_flat_sequential_vae():
    model = tiny_model(levels=1)
    assert all(lvl.factor is None and lvl.encoder is None for lvl in model.hierarchy.levels)
    loss, metrics = model.loss(random_frames(2, 5))
    assert torch.isfinite(loss) and metrics["levels_used"] == 1.0


def test_determinism_under_a_seed():
    model = tiny_model()
    frames = random_frames(3, 6)

    def run():
        torch.manual_seed(123)
        out = model.observe(frames)
        traj = model.imagine(out.state, 8)
        return out.recon, out.kl, traj.features, traj.changed

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("prior_factor", ["feedforward", "recurrent"])
def test_observe_step_matches_observe_under_the_same_seed(prior_factor):
    model = tiny_model(levels=3, prior_factor=prior_factor)
    frames = random_frames(4, 9)
    torch.manual_seed(7)
    out = model.observe(frames)
    torch.manual_seed(7)
    state = model.initial_state(4)
    for t in range(9):
        state = model.observe_step(state, frames[:, t])
    for a, b in zip(out.state.s + out.state.d + out.state.top_down + out.state.factor,
                    state.s + state.d + state.top_down + state.factor):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(model.features(state), out.features[:, -1])


@pytest.mark.parametrize("timescale", ["dynamic", "clockwork", "every_step"])
@pytest.mark.parametrize("assignment", ["hard", "vade"])
@pytest.mark.parametrize("prior_factor", ["feedforward", "recurrent"])
def test_gradients_reach_every_parameter_the_loss_uses(timescale, assignment, prior_factor, monkeypatch):
    model = tiny_model(levels=3, timescale=timescale, assignment=assignment, clockwork_k=2,
                       prior_factor=prior_factor)
    if timescale == "dynamic":
        # Which networks a dynamic step uses depends on e; make every level change so that
        # every network (the factor included) is on the loss's path.
        import worldmodel.hierarchy as hierarchy

        forced = lambda q, *a: torch.ones(q.mean.shape[0])  # noqa: E731
        if prior_factor == "recurrent":
            # the factor's recurrent weights act only across static steps: mostly changes,
            # some static steps (fixed draws)
            g = torch.Generator().manual_seed(0)
            forced = lambda q, *a: (torch.rand(q.mean.shape[0], generator=g) < 0.7).float()  # noqa: E731
        monkeypatch.setattr(hierarchy, "change_posterior", forced)
    # long enough that every level advances its GRU at least twice in every mode
    loss, _ = model.loss(random_frames(4, 10), beta=1.0)
    loss.backward()
    missing = []
    for name, p in model.named_parameters():
        if timescale != "dynamic" and ".factor" in name:
            assert p.grad is None, f"{name}: the factor is not part of the {timescale} loss"
            continue
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0:
            missing.append(name)
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("assignment", ["hard", "vade"])
def test_the_change_decision_carries_no_gradient(assignment, monkeypatch):
    """Replaying the recorded decisions as constants gives exactly the same gradients."""
    import worldmodel.hierarchy as hierarchy

    model = tiny_model(levels=3, assignment=assignment)
    frames = random_frames(3, 6)
    recorded = []
    real = hierarchy.change_posterior

    def record(*args):
        q1 = real(*args)
        recorded.append(q1.detach().clone())
        return q1

    def grads(fn):
        monkeypatch.setattr(hierarchy, "change_posterior", fn)
        model.zero_grad()
        torch.manual_seed(0)
        model.loss(frames)[0].backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    first = grads(record)
    replay = iter(list(recorded))
    second = grads(lambda *args: next(replay))
    assert first.keys() == second.keys()
    for k in first:
        torch.testing.assert_close(first[k], second[k], rtol=0, atol=0)


@pytest.mark.parametrize("prior_factor", ["feedforward", "recurrent"])
def test_save_load_gives_identical_outputs(tmp_path, prior_factor):
    model = tiny_model(levels=2, reward_head=True, prior_factor=prior_factor)
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = load(path)
    assert loaded.config == model.config
    frames = random_frames(2, 5)
    torch.manual_seed(3)
    a = model.observe(frames)
    ta = model.imagine(a.state, 6)
    torch.manual_seed(3)
    b = loaded.observe(frames)
    tb = loaded.imagine(b.state, 6)
    assert torch.equal(a.recon, b.recon) and torch.equal(ta.features, tb.features)
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left a temporary file"


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load(bad)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")


def test_actions_enter_the_transition_and_is_first_resets(monkeypatch):
    model = tiny_model(levels=2, action_dim=3)
    frames = random_frames(2, 6)
    a0 = torch.zeros(2, 6, 3)
    a1 = torch.randn(2, 6, 3)
    torch.manual_seed(0)
    out0 = model.observe(frames, a0)
    torch.manual_seed(0)
    out1 = model.observe(frames, a1)
    assert not torch.allclose(out0.state.d[0], out1.state.d[0])
    # the first action (into frame 0) is never used: there is no transition into a first step
    a2 = a0.clone()
    a2[:, 0] = 5.0
    torch.manual_seed(0)
    out2 = model.observe(frames, a2)
    assert torch.equal(out0.state.d[0], out2.state.d[0])
    # is_first at t=3 makes rows restart: every level updates there, like at t=0
    is_first = torch.zeros(2, 6, dtype=torch.bool)
    is_first[0, 3] = True
    out3 = model.observe(frames, a1, is_first=is_first)
    assert out3.changed[0, 3].all()
    # a reset row depends only on frames (and actions) from the reset on: with the samples
    # replaced by their means (the batch's draws cannot line up), row 0 from t = 3 is the
    # filtering of frames[0, 3:] alone
    from worldmodel.distributions import Gaussian

    monkeypatch.setattr(Gaussian, "rsample", lambda self, generator=None: self.mean)
    whole = model.observe(frames, a1, is_first=is_first)
    tail = model.observe(frames[:1, 3:], a1[:1, 3:])
    assert tail.changed.shape == (1, 3, 2)
    assert torch.equal(whole.changed[:1, 3:], tail.changed)
    for name in ("kl", "factor_kl", "recon", "features"):
        torch.testing.assert_close(getattr(whole, name)[:1, 3:], getattr(tail, name), rtol=1e-5, atol=1e-5)
    monkeypatch.undo()
    # imagine under an action tensor and under a policy
    traj = model.imagine(out1.state, 4, torch.zeros(2, 4, 3))
    assert traj.actions.shape == (2, 4, 3)
    calls = []

    def policy(state: HierarchicalState) -> torch.Tensor:
        calls.append(state.batch_size)
        return torch.ones(state.batch_size, 3)

    traj = model.imagine(out1.state, 4, policy)
    assert calls == [2, 2, 2, 2] and torch.equal(traj.actions, torch.ones(2, 4, 3))


def test_reward_and_continue_heads_train_with_the_loss():
    model = tiny_model(levels=2, action_dim=2, reward_head=True, continue_head=True)
    frames = random_frames(2, 5)
    actions = torch.randn(2, 5, 2)
    rewards = torch.randn(2, 5)
    continues = torch.ones(2, 5)
    loss, metrics = model.loss(frames, actions, rewards=rewards, continues=continues)
    assert "reward_nll" in metrics and "continue_nll" in metrics
    loss.backward()
    assert model.reward_head[0].weight.grad.abs().sum() > 0
    assert model.continue_head[0].weight.grad.abs().sum() > 0
    feats = model.imagine(model.observe(frames, actions).state, 3, torch.zeros(2, 3, 2)).features
    assert model.predict_reward(feats).shape == (2, 3)
    p = model.predict_continue(feats)
    assert p.shape == (2, 3) and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(ValueError, match="reward head"):
        tiny_model().predict_reward(torch.zeros(1, tiny_config().feature_dim))


def test_loss_metrics_cover_every_term_and_level():
    model = tiny_model(levels=3)
    loss, metrics = model.loss(random_frames(2, 6), beta=0.3)
    for key in ("loss", "elbo", "recon", "kl", "factor_kl", "levels_used", "beta",
                "kl/level1", "kl/level2", "kl/level3", "change_rate/level1",
                "change_rate/level3", "factor_kl/level2", "factor_kl/level3"):
        assert key in metrics and isinstance(metrics[key], float)
    assert metrics["beta"] == 0.3
    assert abs(metrics["loss"] - (metrics["recon"] + 0.3 * (metrics["kl"] + metrics["factor_kl"]))) < 1e-2
    assert 1.0 <= metrics["levels_used"] <= 3.0


def test_a_tiny_model_learns_bouncing_balls():
    """~200 Adam steps on a few generated Moving Ball sequences: the negative ELBO falls."""
    import numpy as np

    from worldmodel.data.moving_ball import MovingBallOptions, generate_moving_ball

    videos, _ = generate_moving_ball(np.random.default_rng(0), 4, 12, 16, 3, MovingBallOptions())
    frames = torch.from_numpy(videos).permute(0, 1, 4, 2, 3).float() / 255  # (B, T, C, H, W)
    model = tiny_model(levels=2, channels=3, obs_std=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, eps=1e-4)
    history = []
    for step in range(200):
        torch.manual_seed(step)
        loss, metrics = model.loss(frames, beta=min(1.0, step / 100))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(metrics["recon"] + metrics["kl"] + metrics["factor_kl"])  # −ELBO, β = 1
    first, last = np.mean(history[:10]), np.mean(history[-10:])
    assert last < first - 0.5 * abs(first), (first, last)


def test_head_loss_scales_weight_the_head_terms():
    frames, rewards = random_frames(2, 4), torch.randn(2, 4)
    losses = {}
    for scale in (0.0, 1.0, 10.0):
        model = tiny_model(levels=2, reward_head=True, reward_scale=scale)
        torch.manual_seed(0)
        loss, metrics = model.loss(frames, rewards=rewards)
        losses[scale] = loss.detach()
    nll = metrics["reward_nll"]
    assert float(losses[10.0] - losses[0.0]) == pytest.approx(10 * nll, rel=1e-4)
    assert float(losses[1.0] - losses[0.0]) == pytest.approx(nll, rel=1e-4)
    with pytest.raises(ValueError, match="reward_scale"):
        tiny_config(reward_scale=-1.0)
