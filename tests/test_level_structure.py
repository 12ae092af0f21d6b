"""Issue 23's structural options: per-level state sizes, VTA's restart of the level below, an
upper change prior without memory, per-level KL weights. Each off by default (the paper)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from worldmodel import DLH, DLHConfig, load
from worldmodel.config import InferenceConfig, LossConfig
from worldmodel.hierarchy import TrainSchedule

SIZE = 16


def _benchmark_script(relative: str):
    """Import a script under benchmarks/ (not a package) as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def tiny(levels: int = 2, **kw) -> DLH:
    torch.manual_seed(0)
    base = dict(levels=levels, image_size=SIZE, channels=1, x_dim=12, c_dim=12, d_dim=10, s_dim=4,
                enc_hidden=(12,), dec_hidden=(12,), state_hidden=(12,), factor_hidden=(8,), conv_depth=4)
    return DLH(DLHConfig(**{**base, **kw}))


def frames(batch: int = 3, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(batch, steps, 1, SIZE, SIZE)


def saved_and_loaded(model: DLH, tmp_path, acts) -> DLH:
    """`model` saved and loaded back, asserted to filter the same frames to the same numbers."""
    model.save(tmp_path / "m.safetensors")
    again = load(tmp_path / "m.safetensors")
    torch.manual_seed(2)
    a = model.observe(frames(), acts).recon
    torch.manual_seed(2)
    assert torch.equal(again.observe(frames(), acts).recon, a)
    return again


@pytest.mark.parametrize("action_dim", [0, 2])
def test_per_level_state_sizes_shape_every_state_and_feature(tmp_path, action_dim: int) -> None:
    model = tiny(3, level_s_dims=(2, 5, 7), action_dim=action_dim)
    acts = torch.randn(3, 5, action_dim) if action_dim else None
    out = model.observe(frames(), acts)
    assert [s.shape[1] for s in out.state.s] == [2, 5, 7] == [m.shape[1] for m in out.state.mean]
    assert model.features(out.state).shape == (3, 2 + 5 + 7 + 3 * 10) == (3, model.config.feature_dim)
    traj = model.imagine(out.state, 4, torch.randn(3, 4, action_dim) if action_dim else None)
    assert model.decode(traj).shape == (3, 4, 1, SIZE, SIZE)
    assert saved_and_loaded(model, tmp_path, acts).config.level_s_dims == (2, 5, 7)


@pytest.mark.parametrize("options", [{}, {"posterior_reads_d": True, "prior_factor": "recurrent"}])
def test_per_level_temporal_widths_shape_every_network_state_and_feature(tmp_path, options: dict) -> None:
    # issue 24: a wide GRU on level 1 only; every network that reads d^n takes its level's width
    model = tiny(3, level_d_dims=(24, 6, 8), action_dim=2, action_levels=(1, 2), **options)
    assert [level.temporal.hidden_size for level in model.hierarchy.levels] == [24, 6, 8]
    acts = torch.randn(3, 5, 2)
    out = model.observe(frames(), acts)
    assert [d.shape[1] for d in out.state.d] == [24, 6, 8]
    assert model.features(out.state).shape == (3, 3 * 4 + 24 + 6 + 8) == (3, model.config.feature_dim)
    traj = model.imagine(out.state, 4, torch.randn(3, 4, 2))
    assert model.decode(traj).shape == (3, 4, 1, SIZE, SIZE)
    loss, _ = model.loss(frames(), acts)
    loss.backward()
    assert all(p.grad is not None for p in model.hierarchy.levels[0].temporal.parameters())
    assert saved_and_loaded(model, tmp_path, acts).config.level_d_dims == (24, 6, 8)
    with pytest.raises(ValueError, match=r"d of level 1: expected shape \(3, 24\)"):
        model.observe_step(tiny(3, action_dim=2, action_levels=(1, 2)).initial_state(3), frames()[:, 0],
                           acts[:, 0])


def test_per_level_sizes_must_match_the_levels() -> None:
    with pytest.raises(ValueError, match="level_s_dims must give one size per level"):
        tiny(2, level_s_dims=(2, 3, 4))
    with pytest.raises(ValueError, match="level_s_dims"):
        tiny(2, level_s_dims=(2, 0))
    with pytest.raises(ValueError, match=r"level_d_dims must give one size per level \(2\), got \[8\]"):
        tiny(2, level_d_dims=(8,))
    with pytest.raises(ValueError, match="level_d_dims must be a list of positive ints"):
        tiny(2, level_d_dims=(8, -1))


def test_a_state_of_other_level_sizes_is_refused() -> None:
    model = tiny(2, level_s_dims=(2, 6))
    other = tiny(2).initial_state(3)
    with pytest.raises(ValueError, match="s of level 1"):
        model.observe_step(other, frames()[:, 0])


@pytest.mark.parametrize("restart", [False, True])
def test_restart_below_starts_level_one_afresh_where_level_two_changes(restart: bool) -> None:
    # every_step: level 2 changes at every step, so with the restart level 1's GRU always
    # advances from zero: d^1_{t+1} = f_tem(s^1_t, 0)
    model = tiny(2, inference=InferenceConfig(timescale="every_step", restart_below=restart))
    level = model.hierarchy.levels[0]
    state = model.initial_state(3)
    for t, frame in enumerate(frames().unbind(1)):
        previous = state.d[0]
        state = model.observe_step(state, frame)
        from_zero = level.transition(state.s[0], torch.zeros_like(previous), None)
        if t > 0:
            assert torch.allclose(state.d[0], from_zero, atol=1e-6) == restart
    traj = model.imagine(state, 3)
    for st in traj.states:
        # in imagination d^1 is advanced from the restarted state as well
        assert st.d[0].shape == (3, 10)
    hierarchy = model.hierarchy
    d = [torch.ones(3, 10), torch.ones(3, 10)]
    changed = [torch.ones(3, dtype=torch.bool), torch.tensor([True, False, True])]
    new = hierarchy.restart_below(d, changed)
    expected = torch.tensor([0.0, 1.0, 0.0]) if restart else torch.ones(3)
    assert torch.equal(new[0][:, 0], expected) and torch.equal(new[1], d[1])


def test_restart_below_is_off_by_default_and_checked() -> None:
    assert InferenceConfig().restart_below is False
    with pytest.raises(ValueError, match="restart_below must be true or false"):
        InferenceConfig(restart_below="yes")


def assert_fused_imagination_matches_eager(model: DLH) -> None:
    """Imagination's fused route agrees with the per-network reference on filtered states."""
    out = model.observe(frames())
    with torch.no_grad():
        torch.manual_seed(3)
        fused = model.imagine(out.state, 4)
        model.hierarchy.step_mode = "eager"
        torch.manual_seed(3)
        eager = model.imagine(out.state, 4)
        model.hierarchy.step_mode = "fused"
    assert torch.allclose(model.decode(fused), model.decode(eager), atol=1e-5)


@pytest.mark.parametrize("upper_prior", ["recurrent", "context"])
def test_an_upper_prior_of_context_alone_ignores_its_temporal_state(upper_prior: str) -> None:
    model = tiny(2, upper_prior=upper_prior)
    context = torch.randn(3, 12)
    upper, lower = model.hierarchy.levels[1], model.hierarchy.levels[0]
    d1, d2 = torch.randn(3, 10), torch.randn(3, 10)
    same = torch.equal(upper.predict(d1, context).mean, upper.predict(d2, context).mean)
    assert same == (upper_prior == "context")
    assert not torch.equal(lower.predict(d1, context).mean, lower.predict(d2, context).mean)  # reads d^1
    assert_fused_imagination_matches_eager(model)
    with pytest.raises(ValueError, match="upper_prior"):
        tiny(2, upper_prior="none")


@pytest.mark.parametrize("lower_prior", ["paper", "memory"])
def test_a_lower_prior_of_memory_alone_ignores_the_context(lower_prior: str) -> None:
    model = tiny(3, lower_prior=lower_prior)
    d = torch.randn(3, 10)
    c1, c2 = torch.randn(3, 12), torch.randn(3, 12)
    for level in model.hierarchy.levels[:-1]:  # levels below the top
        same = torch.equal(level.predict(d, c1).mean, level.predict(d, c2).mean)
        assert same == (lower_prior == "memory")
        assert not torch.equal(level.predict(d, c1).mean, level.predict(torch.randn(3, 10), c1).mean)
        # the posterior and the top-down decoder still read the context
        x = torch.randn(3, 12)
        assert not torch.equal(level.infer(x, c1).mean, level.infer(x, c2).mean)
    top = model.hierarchy.levels[-1]
    assert not torch.equal(top.predict(d, c1).mean, top.predict(d, c2).mean)  # the top reads c^N
    assert_fused_imagination_matches_eager(model)
    loss, _ = model.loss(frames(), beta=1.0)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="lower_prior"):
        tiny(2, lower_prior="none")


def test_level_kl_scale_weights_the_state_kl_of_each_level_in_the_loss() -> None:
    model = tiny(2, loss=LossConfig(obs_std=0.1, level_kl_scale=(1.0, 0.0)))
    torch.manual_seed(4)
    loss, metrics = model.loss(frames(), beta=0.5)
    expected = metrics["recon"] + 0.5 * (metrics["kl/level1"] + metrics["factor_kl"])
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    elbo = -(metrics["recon"] + metrics["kl"] + metrics["factor_kl"])  # unweighted
    assert metrics["elbo"] == pytest.approx(elbo, rel=1e-5)
    with pytest.raises(ValueError, match="one weight per level"):
        tiny(2, loss=LossConfig(level_kl_scale=(1.0,)))
    with pytest.raises(ValueError, match="level_kl_scale"):
        LossConfig(level_kl_scale=(1.0, -1.0))


@pytest.mark.parametrize("reads", [False, True])
def test_a_posterior_that_reads_d_depends_on_it_and_trains(reads: bool) -> None:
    model = tiny(2, posterior_reads_d=reads)
    level = model.hierarchy.levels[0]
    x, context = torch.randn(3, 12), torch.randn(3, 12)
    d1, d2 = torch.randn(3, 10), torch.randn(3, 10)
    differ = not torch.equal(level.infer(x, context, d1).mean, level.infer(x, context, d2).mean)
    assert differ == reads
    if reads:
        with pytest.raises(ValueError, match="posterior_reads_d"):
            level.infer(x, context)
    loss, _ = model.loss(frames(), beta=1.0)
    loss.backward()
    grad = level.posterior._linears[0].weight.grad
    assert grad.shape[1] == 12 + 12 + (10 if reads else 0) and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="posterior_reads_d must be true or false"):
        tiny(2, posterior_reads_d="yes")


# a 2-level model and run small enough for a few trainer steps in a test
TINY_TRAINER = [
    "model.levels=2", "model.image_size=16", "model.channels=3", "model.x_dim=16", "model.c_dim=16",
    "model.d_dim=16", "model.s_dim=4", "model.enc_hidden=[16]", "model.dec_hidden=[16]",
    "model.state_hidden=[16]", "model.factor_hidden=[8]", "model.conv_depth=4", "data.image_size=16",
    "data.channels=3", "data.seq_len=8", "data.batch_size=4", "threads=1", "steps=4", "logging.log_every=1",
    "logging.media_every=0", "logging.checkpoint_every=100", "probes.event_every=0", "probes.track_every=0",
]


def test_the_bootstrapped_schedule_holds_level_two_for_its_steps_only(tmp_path) -> None:
    from worldmodel.training import Trainer, load_config

    sets = [*TINY_TRAINER, "model.inference.decision_margin=0", "optim.upper_warmup=2", f"out_dir={tmp_path}"]
    trainer = Trainer(load_config(None, sets))
    rates = []
    for _ in range(4):
        metrics = trainer.train_step()
        rates.append(metrics["change_rate/level2"])
        assert trainer.schedule_at(trainer.step - 1).hold_upper == (trainer.step <= 2)
    assert rates[:2] == [1 / 8, 1 / 8]  # only the first step of each window while held
    assert metrics["factor_kl/level2"] >= 0.0
    trainer.finish()
    with pytest.raises(ValueError, match="upper_warmup"):
        load_config(None, ["optim.upper_warmup=-1"])


def _overshoot_reference(model: DLH, states, depth: int) -> torch.Tensor:
    """Chains one at a time, from each start t, for a flat model without actions."""
    level = model.hierarchy.levels[0]
    steps, batch = len(states), len(states[0].t)
    total, count = torch.zeros(batch, steps), torch.zeros(batch, steps)
    for t in range(steps):
        d = states[t].d[0]
        for k in range(1, depth + 1):
            if t + k >= steps:
                break
            ctx = model.hierarchy.context(0, states[t + k].top_down)
            prior = level.predict(d, ctx)
            if k >= 2:
                q = states[t + k]
                kl = 0.5 * ((q.std[0] / prior.std) ** 2 + ((q.mean[0] - prior.mean) / prior.std) ** 2 - 1
                            - 2 * torch.log(q.std[0] / prior.std)).sum(-1)
                total[:, t + k] += kl
                count[:, t + k] += 1
            d = level.transition(prior.mean, d, None)  # the mean: no noise in the comparison
    return total / count.clamp_min(1)


def test_overshooting_matches_chains_computed_one_at_a_time(monkeypatch) -> None:
    model = tiny(1, loss=LossConfig(overshoot=3))
    with torch.no_grad():
        _, states = model._filter(frames(2, 6), None, None, None)
        from worldmodel import distributions
        monkeypatch.setattr(distributions.Gaussian, "rsample", lambda self, generator=None: self.mean)
        fast = model._overshoot_kl(states, None, None, 3)
        slow = _overshoot_reference(model, states, 3)
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-4)
    assert (fast[:, :2] == 0).all() and (fast[:, 2:] > 0).all()
    is_first = torch.zeros(2, 6)
    is_first[:, 3] = 1  # no chain may cross an episode start
    with torch.no_grad():
        cut = model._overshoot_kl(states, None, is_first, 3)
    assert (cut[:, 3:5] == 0).all() and torch.equal(cut[:, 2], fast[:, 2])


def test_overshooting_trains_the_prior_only_and_is_reported() -> None:
    model = tiny(2, loss=LossConfig(overshoot=4, overshoot_scale=0.5), action_dim=2)
    loss, metrics = model.loss(frames(2, 6), torch.randn(2, 6, 2), beta=1.0)
    assert metrics["overshoot_kl"] > 0
    assert loss.detach() > -(metrics["elbo"])  # the overshooting term adds to the loss
    loss.backward()
    level = model.hierarchy.levels[0]
    assert level.prior._linears[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="overshoot"):
        LossConfig(overshoot=-1)


def test_memory_dropout_restarts_levels_below_the_top_in_training_only() -> None:
    model = tiny(3)
    hierarchy = model.hierarchy
    torch.manual_seed(0)
    d = hierarchy.drop_memory([torch.ones(1000, 2), torch.ones(1000, 2), torch.ones(1000, 2)], 0.3)
    for level in d[:2]:
        assert 0.25 < float((level[:, 0] == 0).float().mean()) < 0.35
        assert torch.equal(level[:, 0], level[:, 1])  # a row's whole state restarts
    assert torch.equal(d[2], torch.ones(1000, 2))  # the top level keeps its memory
    video = frames()

    def loss(schedule: TrainSchedule | None) -> float:
        torch.manual_seed(1)
        return float(model.loss(video, beta=1.0, schedule=schedule)[0])

    dropped = TrainSchedule(memory_dropout=0.999)
    assert loss(dropped) != loss(None) and loss(TrainSchedule()) == loss(None)  # in the loss it was given to
    torch.manual_seed(1)
    recon = model.observe(video).recon  # acting and evaluation never take a schedule, train mode or not
    model.eval()
    torch.manual_seed(1)
    assert torch.equal(model.observe(video).recon, recon)
    with pytest.raises(ValueError, match="TrainSchedule"):
        model.loss(video, schedule={"memory_dropout": 0.5})
    from worldmodel.training import load_config
    with pytest.raises(ValueError, match="memory_dropout"):
        load_config(None, ["optim.memory_dropout=1.0"])


def test_the_margin_schedule_scales_eq4s_margin_in_training_only(tmp_path) -> None:
    from worldmodel.training import OptimConfig, Trainer, load_config

    video = frames(4, 12)

    def changes(model: DLH, schedule: TrainSchedule | None = None) -> torch.Tensor:
        torch.manual_seed(5)
        return model.loss_and_output(video, beta=1.0, schedule=schedule)[2].changed[..., 1]

    huge = tiny(2, inference=InferenceConfig(decision_margin=1e9))
    paper = tiny(2)
    paper.load_state_dict(huge.state_dict())
    no_margin = TrainSchedule(margin_scale=0.0)
    assert torch.equal(changes(huge, no_margin), changes(paper))  # training: no margin in the warm-up
    assert int(changes(huge)[:, 1:].sum()) == 0  # without a schedule: the model's own margin
    torch.manual_seed(5)
    assert int(huge.observe(video).changed[:, 1:, 1].sum()) == 0  # observing: always the model's margin
    schedule = OptimConfig(margin_warmup=3, margin_ramp=4)
    assert [schedule.margin_scale(k) for k in range(9)] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    short = OptimConfig(margin_warmup=2)
    assert short.margin_scale(1) == 0.0 and short.margin_scale(2) == 1.0
    assert OptimConfig().margin_scale(0) == 1.0  # off: the model's margin from the first step
    sets = [*TINY_TRAINER, "model.inference.decision_margin=5", "optim.margin_warmup=2",
            "optim.margin_ramp=2", f"out_dir={tmp_path}"]
    trainer = Trainer(load_config(None, sets))
    assert [trainer.schedule_at(k).margin_scale for k in range(5)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    seen = []
    forward = trainer.model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["schedule"])
        return forward(*args, **kwargs)

    trainer.model.forward = spy
    for _ in range(4):
        trainer.train_step()
    assert [schedule.margin_scale for schedule in seen] == [0.0, 0.0, 0.5, 1.0]  # each step's own
    trainer.finish()
    with pytest.raises(ValueError, match="margin_ramp"):
        load_config(None, ["optim.margin_ramp=-1"])


def test_held_twice_trains_the_probe_and_reverses_the_lower_posteriors_gradient() -> None:
    from worldmodel.losses import reverse_gradient

    x = torch.randn(4, requires_grad=True)
    (reverse_gradient(x, 3.0) * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((4,), -6.0))
    model = tiny(2, loss=LossConfig(obs_std=0.1, held_twice=5.0))
    plain = tiny(2, loss=LossConfig(obs_std=0.1))
    assert plain.held_twice_probes is None and len(model.held_twice_probes) == 1
    missing = set(model.state_dict()) - set(plain.state_dict())
    assert missing and all(k.startswith("held_twice_probes.") for k in missing)
    torch.manual_seed(4)
    loss, metrics = model.loss(frames(), beta=1.0)
    assert metrics["held_twice"] > 0
    elbo = -(metrics["recon"] + metrics["kl"] + metrics["factor_kl"])
    assert metrics["elbo"] == pytest.approx(elbo, rel=1e-5)  # not part of the ELBO
    # the probe's own gradient descends its error; level 1's posterior gets −weight × that gradient
    probe, posterior = model.held_twice_probes[0], model.hierarchy.levels[0].posterior
    grads = torch.autograd.grad(loss, list(probe.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # the reversed term reaches level 1's posterior only: not the level above, not the encoder
    _, _, out = model.loss_and_output(frames(3, 1), beta=1.0)
    term = model._held_twice(model._bottom_up(frames(3, 1)), [out.state], 5.0).sum()
    upper = list(model.hierarchy.levels[1].parameters()) + list(model.encoder.parameters())
    assert all(g is None for g in torch.autograd.grad(term, upper, allow_unused=True))
    lower = torch.autograd.grad(term, list(posterior.parameters()), allow_unused=True)
    assert all(g is not None for g in lower)
    with pytest.raises(ValueError, match="held_twice"):
        tiny(1, loss=LossConfig(held_twice=1.0))
    with pytest.raises(ValueError, match="held_twice"):
        LossConfig(held_twice=-1.0)


def test_the_loss_draws_from_a_given_generator_and_leaves_the_global_rng_alone() -> None:
    model = tiny(2, loss=LossConfig(obs_std=0.1, overshoot=3))
    video = frames()
    torch.manual_seed(11)
    reference = float(model.loss(video, beta=1.0)[0])  # global RNG seeded 11
    state = torch.get_rng_state()
    ours = float(model.loss(video, beta=1.0, generator=torch.Generator().manual_seed(11))[0])
    assert ours == reference  # the same stream, drawn in the same order
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched
    with pytest.raises(ValueError, match="generator"):
        model.loss(video, generator=11)


def test_the_map_rule_under_soft_assignment_is_refused_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="decision='map' applies to assignment='hard'"):
        InferenceConfig(decision="map", assignment="vade")
    assert InferenceConfig(decision="map").assignment == "hard"


def test_window_free_nats_floor_each_levels_window_total_without_gradient_below_it() -> None:
    kl = torch.tensor([[[1.0, 0.5], [1.0, 0.0], [1.0, 1.0], [1.0, 0.5]],   # level 2 totals 2 < 3
                       [[1.0, 2.0], [1.0, 2.0], [1.0, 0.0], [1.0, 0.0]]],  # level 2 totals 4 > 3
                      requires_grad=True)
    extra = DLH._window_free_extra(kl, (0.0, 3.0))
    total = kl.sum(-1) + extra
    assert torch.allclose(total.sum(1), torch.tensor([4.0 + 3.0, 4.0 + 4.0]))
    total.sum().backward()
    assert torch.equal(kl.grad[0, :, 1], torch.zeros(4)) and torch.equal(kl.grad[1, :, 1], torch.ones(4))
    assert torch.equal(kl.grad[..., 0], torch.ones(2, 4))  # level 1 has no floor
    model = tiny(2, loss=LossConfig(window_free_nats=(0.0, 50.0)))
    loss, metrics = model.loss(frames(), beta=1.0)
    assert float(loss.detach()) >= metrics["recon"] + metrics["kl/level1"]
    with pytest.raises(ValueError, match="one floor per level"):
        tiny(2, loss=LossConfig(window_free_nats=(1.0,)))


def test_transition_hidden_embeds_s_before_the_gru_in_filtering_and_imagination() -> None:
    model = tiny(2, transition_hidden=(6, 5), action_dim=2)
    level = model.hierarchy.levels[0]
    assert [m.out_features for m in level.temporal_in if isinstance(m, torch.nn.Linear)] == [6, 5]
    assert level.temporal_in[0].in_features == 4 + 2  # s^1 and the action
    assert level.temporal.input_size == 5 and tiny(2).hierarchy.levels[0].temporal_in is None
    s, d, a = torch.randn(3, 4), torch.randn(3, 10), torch.randn(3, 2)
    expected = level.temporal(level.temporal_in(torch.cat([s, a], -1)), d)
    assert torch.equal(level.transition(s, d, a), expected)
    # training and imagination run through it; the fused route falls back to the per-network one
    flat = tiny(2, transition_hidden=(6,))
    loss, _ = flat.loss(frames(), beta=1.0)
    loss.backward()
    assert flat.hierarchy.levels[0].temporal_in[0].weight.grad.abs().sum() > 0
    flat.eval()
    state = flat.observe(frames()).state
    runs = {}
    for mode in ("fused", "eager"):
        flat.hierarchy.step_mode = mode
        torch.manual_seed(7)
        runs[mode] = flat.imagine(state, 4).features
    assert torch.equal(runs["fused"], runs["eager"])
    with pytest.raises(ValueError, match="transition_hidden"):
        tiny(2, transition_hidden=(0,))


def test_finetune_usage_changes_the_loss_of_a_trained_run_and_reports_the_swap_test(tmp_path, capsys,
                                                                                    monkeypatch):
    import sys

    from worldmodel.training import load_config, train

    train(load_config(None, [*TINY_TRAINER, "steps=2", f"out_dir={tmp_path}"]), progress=False)
    script = _benchmark_script("reproduce/finetune_usage.py")
    config = DLHConfig(levels=2)
    changed = script.changed_config(config, ["loss.held_twice=3", "inference.decision_margin=2.5"])
    assert changed.loss.held_twice == 3.0 and changed.inference.decision_margin == 2.5
    assert changed.loss.obs_std == config.loss.obs_std
    with pytest.raises(SystemExit, match="loss.FIELD=VALUE"):
        script.changed_config(config, ["model.d_dim=3"])
    argv = ["finetune_usage.py", str(tmp_path), "--set", "loss.held_twice=3", "--steps", "2", "--every", "2",
            "--pairs", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            script.main()  # sets one thread and seeds torch: both restored for the tests after it
        finally:
            torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "new parameters" in out and out.count("colour -> L2") == 2  # before the first step and at step 2


def test_track_checkpoints_prints_a_learning_curve_row_per_checkpoint(tmp_path, capsys, monkeypatch):
    """benchmarks/reproduce/track_checkpoints.py (issue 24's read-out): the averaged row over the
    last checkpoints, and with --each one row per checkpoint with its wall time."""
    import sys

    from worldmodel.training import load_config, train

    train(load_config(None, [*TINY_TRAINER, "steps=2", "checkpoint_every=1", f"out_dir={tmp_path}"]),
          progress=False)
    capsys.readouterr()
    script = _benchmark_script("reproduce/track_checkpoints.py")
    threads = torch.get_num_threads()
    for extra in ([], ["--each", "--last", "0"]):
        monkeypatch.setattr(sys, "argv", ["track_checkpoints.py", str(tmp_path), "--sequences", "2", *extra])
        try:
            script.main()
        finally:
            torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"| {tmp_path.name} | 1, 2 | ") and out[0].count("|") == 7
    rows = [line for line in out if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all(row.count("|") == 6 for row in rows)
    assert float(rows[1].split("|")[2]) >= 0  # wall minutes from the run's start


def test_transition_norm_runs_a_layer_normalised_gru_in_filtering_and_imagination() -> None:
    """transition_norm (issue 24): eq. 12's cell is NormGRUCell, its arithmetic as documented;
    such a level imagines on the per-network route, whose numbers the fused mode reproduces."""
    from worldmodel.networks import NormGRUCell

    model = tiny(2, transition_norm=True)
    cell = model.hierarchy.levels[0].temporal
    assert isinstance(cell, NormGRUCell) and cell.hidden_size == 10
    x, h = torch.randn(3, 4), torch.randn(3, 10)
    g = torch.nn.functional.layer_norm(torch.cat([x, h], -1) @ cell.gates.weight.t(), (30,),
                                       cell.norm.weight, cell.norm.bias)
    r, c, u = g[:, :10].sigmoid(), g[:, 10:20], (g[:, 20:] - 1).sigmoid()
    assert torch.allclose(cell(x, h), u * torch.tanh(r * c) + (1 - u) * h, atol=1e-6)
    out = model.observe(frames())
    loss, _ = model.loss(frames())
    loss.backward()
    assert cell.gates.weight.grad is not None and cell.norm.weight.grad.abs().sum() > 0
    runs = {}
    for mode in ("eager", "fused"):
        model.hierarchy.step_mode = mode
        torch.manual_seed(5)
        with torch.no_grad():
            runs[mode] = model.imagine(out.state, 4).features
    assert torch.equal(runs["fused"], runs["eager"])
    with pytest.raises(ValueError, match="transition_norm must be true or false"):
        tiny(2, transition_norm="yes")


def test_imagine_speed_floors_for_levels_of_different_widths():
    """benchmarks/imagine_speed.py times each level's bare networks at that level's own width
    (`level_d_dims`: the quick start's level 1 is 4× wider than level 2); it used the model-wide
    d_dim and failed with a shape error on such models."""
    script = _benchmark_script("imagine_speed.py")
    model = DLH(DLHConfig(levels=2, image_size=16, channels=1, x_dim=16, c_dim=16, d_dim=8,
                          level_d_dims=[32, 8], s_dim=4, enc_hidden=[16], dec_hidden=[16],
                          state_hidden=[16], factor_hidden=[8], conv_depth=4)).eval()
    steps, factors = script.bare_costs(model, rows=3, repeats=1)
    assert len(steps) == len(factors) == 2 and all(t > 0 for t in steps)
    assert factors[0] == 0.0 and factors[1] > 0  # level 1 has no prior factor
