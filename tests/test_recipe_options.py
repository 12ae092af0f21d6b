"""The recipe's options beyond the paper (docs/model.md): decision rule variants, KL balancing,
the static prior's stop-gradient, free nats, per-level std floors, the Gaussian heads' start,
and fp32 decisions under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_frames, tiny_config, tiny_model
from worldmodel.distributions import Gaussian, kl_gaussian
from worldmodel.hierarchy import balanced_kl, change_posterior


def _three(mean_q, mean_change, mean_static, std=1.0):
    g = lambda m: Gaussian(torch.tensor([[m]]), torch.tensor([[std]]))  # noqa: E731
    return g(mean_q), g(mean_change), g(mean_static)


def test_margin_and_prior_odds_shift_the_hard_rule():
    q, change, static = _three(0.0, 1.0, 2.0)  # KL_change = 0.5, KL_static = 2.0: gap 1.5 nats
    zero = torch.zeros(1)
    assert change_posterior(q, change, static, zero, "hard").item() == 1.0
    assert change_posterior(q, change, static, zero, "hard", margin=1.4).item() == 1.0
    assert change_posterior(q, change, static, zero, "hard", margin=1.6).item() == 0.0
    # "map": the log prior odds join the gap; "kl" ignores them
    odds = torch.tensor([-2.0])  # p(e=1) = 0.12
    assert change_posterior(q, change, static, odds, "hard", "kl").item() == 1.0
    assert change_posterior(q, change, static, odds, "hard", "map").item() == 0.0
    assert change_posterior(q, change, static, torch.tensor([-1.0]), "hard", "map").item() == 1.0
    # vade: the margin shifts the logit
    soft = change_posterior(q, change, static, zero, "vade", margin=1.5).item()
    assert soft == pytest.approx(0.5)


def test_balanced_kl_keeps_the_value_and_splits_the_gradient():
    def grads(alpha, prior_grad=True):
        qm, pm = torch.tensor([[0.3]], requires_grad=True), torch.tensor([[-0.4]], requires_grad=True)
        kl = balanced_kl(Gaussian(qm, torch.ones(1, 1)), Gaussian(pm, torch.ones(1, 1)), alpha, prior_grad)
        kl.sum().backward()
        return float(kl.detach()), float(qm.grad), 0.0 if pm.grad is None else float(pm.grad)

    value, gq, gp = grads(0.5)
    assert value == pytest.approx(0.5 * 0.7**2) and gq == pytest.approx(0.7) and gp == pytest.approx(-0.7)
    value8, gq8, gp8 = grads(0.8)
    assert value8 == pytest.approx(value)
    assert gq8 == pytest.approx(2 * 0.2 * 0.7) and gp8 == pytest.approx(-2 * 0.8 * 0.7)
    _, gq_sg, gp_sg = grads(0.5, prior_grad=False)
    assert gq_sg == pytest.approx(0.7) and gp_sg == 0.0


def test_static_prior_stop_gradient_and_free_nats_change_only_the_gradients():
    frames = random_frames(2, 6)
    losses = {}
    for name, extra in {"paper": {}, "sg": {"static_prior_grad": False}, "free": {"free_nats": 1e6}}.items():
        model = tiny_model(levels=2, **extra)
        torch.manual_seed(0)
        loss, metrics = model.loss(frames)
        losses[name] = (loss, metrics)
    assert losses["sg"][1]["elbo"] == pytest.approx(losses["paper"][1]["elbo"], rel=1e-6)
    # free nats above every KL: no gradient reaches the change priors through the KL
    model = tiny_model(levels=2, free_nats=1e6)
    torch.manual_seed(0)
    model.loss(frames, beta=1.0)[0].backward()
    prior = model.hierarchy.levels[0].prior
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in prior.parameters())


def test_upper_min_std_floors_levels_above_the_first_only():
    model = tiny_model(levels=3, upper_min_std=0.3)
    x, c = torch.randn(5, 32) * 100, torch.randn(5, 32) * 100
    assert model.hierarchy.levels[0].infer(x, c).std.min() < 0.3
    for level in model.hierarchy.levels[1:]:
        assert level.infer(x, c).std.min() >= 0.3 and level.predict(x, c).std.min() >= 0.3


def test_init_std_sets_the_heads_start():
    model = tiny_model(levels=2, init_std=0.1)
    x, c = torch.randn(5, 32), torch.randn(5, 32)
    for level in model.hierarchy.levels:
        for dist in (level.infer(x, c), level.predict(x, c)):
            assert dist.std.mean().item() == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("bad", [
    {"decision": "soft"}, {"decision_margin": -1.0}, {"kl_balance": 1.5}, {"upper_min_std": 0.0},
    {"free_nats": -1.0}, {"static_prior_grad": 1}, {"init_std": 0.005},
])
def test_bad_recipe_options_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        tiny_config(**bad)


def test_gaussian_heads_and_kls_stay_fp32_under_bf16_autocast():
    """Rounding a mean to bf16 (8 bits) moves it by up to 2^-8 of its size: with std 0.01 that is
    a spurious KL of several nats, enough to flip eq. 4. The heads run in fp32 under autocast."""
    model = tiny_model(levels=2)
    level = model.hierarchy.levels[1]
    x, c = torch.randn(4, 32), torch.randn(4, 32)
    reference = level.infer(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = level.infer(x, c)
        p = level.predict(x, c)
        kl = kl_gaussian(q, p)
    assert q.mean.dtype == q.std.dtype == p.mean.dtype == kl.dtype == torch.float32
    torch.testing.assert_close(q.mean, reference.mean)
    # and kl_gaussian upcasts bf16 inputs itself
    half = Gaussian(reference.mean.bfloat16(), reference.std.bfloat16())
    assert kl_gaussian(half, half).dtype == torch.float32


def test_decisions_under_bf16_autocast_match_fp32_on_sharp_posteriors():
    """Level 2's posterior sharp (std at the 0.01 floor) with means near 30, where bf16's spacing
    is 0.125 = 12 std (without fp32 heads, 6 of 44 decisions flipped to "change" here); the
    change prior broad (std 1) at 30: KL_change ≈ 35 nats. On a nearly
    static video fp32 sees KL_static ≈ 0 (static), while a mean rounded across a bf16 step
    would cost ≈ 78 nats per dimension and flip eq. 4 to "change". Decisions must agree."""
    model = tiny_model(levels=2)
    level = model.hierarchy.levels[1]
    with torch.no_grad():
        post, prior = level.posterior._linears[-1], level.prior._linears[-1]
        post.weight[:8] *= 30.0  # fp32 drift on the still video ≈ 1e-3: rounding flips some means
        post.bias[:8] += 30.0
        post.weight[8:] = 0.0
        post.bias[8:] = -20.0  # softplus(-20) ≈ 0: std = min_std
        prior.weight.zero_()
        prior.bias[:8] = 30.0
        prior.bias[8:] = 0.5413  # softplus = 1 - min_std
    g = torch.Generator().manual_seed(3)
    still = torch.rand(4, 1, 1, 16, 16, generator=g)
    frames = (still + 1e-3 * torch.randn(4, 12, 1, 16, 16, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    fp32 = model.observe(frames).changed
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.observe(frames).changed
    assert not fp32[:, 1:, 1].any(), "fp32 should see a static level 2 on a still video"
    assert torch.equal(fp32, bf16)


def test_xavier_init_keeps_the_signal_through_the_deep_path():
    """`model.init: xavier` (docs/results.md, learning early): under PyTorch's default init the
    frame's content reaches the decoder's input scaled down by every layer; Glorot-uniform
    weights keep it. Measured here as the spread over frames of the posterior means of level 1
    and of the decoded frames; "torch" stays the default and is unchanged."""
    from worldmodel import DLH

    frames = random_frames(8, 1, seed=3)[:, 0]

    def spreads(init):
        torch.manual_seed(0)
        model = DLH(tiny_config().replace(init=init, levels=2))
        with torch.no_grad():
            x1 = model.encoder(frames)
            level = model.hierarchy.levels[0]
            q = level.infer(x1, torch.zeros(len(frames), model.config.c_dim))
            recon = model.decoder(torch.zeros(len(frames), model.config.c_dim).normal_())
        return float(q.mean.std(0).mean()), float(recon.std(0).mean()), model

    q_torch, recon_torch, default = spreads("torch")
    q_xavier, recon_xavier, xavier = spreads("xavier")
    assert q_xavier > 3 * q_torch and recon_xavier > 3 * recon_torch
    assert all(float(b.detach().abs().max()) == 0 for n, b in xavier.named_parameters()
               if n.endswith(".bias") and "temporal" not in n and "factor_cell" not in n)
    assert tiny_config().init == "torch"
    with pytest.raises(ValueError, match="init"):
        tiny_config().replace(init="he")
