"""Closed-form divergences against torch.distributions and basic math properties."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from worldmodel.distributions import (
    Gaussian,
    bernoulli_nll,
    gaussian_from_params,
    gaussian_nll,
    kl_bernoulli,
    kl_gaussian,
)
from worldmodel.hierarchy import change_posterior


def _gaussians(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return Gaussian(torch.randn(*shape, generator=g), torch.rand(*shape, generator=g) * 2 + 0.05)


@pytest.mark.parametrize("shape", [(5,), (4, 20), (2, 3, 7)])
def test_kl_gaussian_matches_torch(shape):
    q, p = _gaussians(shape, 0), _gaussians(shape, 1)
    ref = kl_divergence(Independent(Normal(q.mean, q.std), 1), Independent(Normal(p.mean, p.std), 1))
    torch.testing.assert_close(kl_gaussian(q, p), ref, rtol=1e-5, atol=1e-5)


def test_kl_of_a_distribution_with_itself_is_zero_and_kl_is_nonnegative():
    q, p = _gaussians((100, 8), 2), _gaussians((100, 8), 3)
    assert torch.allclose(kl_gaussian(q, q), torch.zeros(100), atol=1e-6)
    assert (kl_gaussian(q, p) >= 0).all()


def test_kl_gaussian_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="latent sizes"):
        kl_gaussian(_gaussians((2, 3), 0), _gaussians((2, 4), 0))


def test_gaussian_nll_matches_torch():
    x, mean = torch.rand(3, 2, 4, 4), torch.rand(3, 2, 4, 4)
    ref = -Normal(mean, 0.3).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(gaussian_nll(x, mean, 0.3, dims=3), ref)


def test_bernoulli_terms_match_torch():
    logits = torch.randn(50)
    target = (torch.rand(50) > 0.5).float()
    torch.testing.assert_close(bernoulli_nll(logits, target), -Bernoulli(logits=logits).log_prob(target))
    q1 = torch.rand(50)
    ref = kl_divergence(Bernoulli(probs=q1), Bernoulli(logits=logits))
    torch.testing.assert_close(kl_bernoulli(q1, logits), ref, rtol=1e-5, atol=1e-5)
    # one-hot q(e): the KL is −log p(e = inferred value) (eq. 8c with the hard assignment)
    torch.testing.assert_close(kl_bernoulli(target, logits), bernoulli_nll(logits, target), atol=1e-5, rtol=0)


def test_gaussian_from_params_respects_min_std():
    g = gaussian_from_params(torch.full((2, 6), -50.0), min_std=0.1)
    assert g.mean.shape == (2, 3) and torch.allclose(g.std, torch.full((2, 3), 0.1))


def test_rsample_is_reparametrised():
    mean = torch.zeros(1000, 4, requires_grad=True)
    sample = Gaussian(mean, torch.ones(1000, 4)).rsample()
    sample.sum().backward()
    assert torch.allclose(mean.grad, torch.ones_like(mean))
    assert abs(float(sample.detach().std()) - 1.0) < 0.05


def test_change_rule_picks_the_nearer_component():
    """eq. 4 on hand-built distributions: the component with the smaller KL wins."""
    q = Gaussian(torch.tensor([[0.0, 0.0], [3.0, 3.0], [1.0, -1.0]]), torch.full((3, 2), 0.5))
    static = Gaussian(torch.tensor([[0.1, 0.0], [0.0, 0.0], [1.0, -1.0]]), torch.full((3, 2), 0.5))
    change = Gaussian(torch.tensor([[3.0, 3.0], [3.1, 2.9], [1.0, -1.0]]), torch.full((3, 2), 0.6))
    q1 = change_posterior(q, change, static, torch.zeros(3), "hard")
    # row 0 near static -> 0; row 1 near change -> 1; row 2 equal means, static has the same
    # std as q so KL = 0 < KL(change) -> static
    assert q1.tolist() == [0.0, 1.0, 0.0]


def test_vade_assignment_is_the_softmax_of_kl_difference():
    """eq. 34: with equal prior odds q(e=1) = σ(KL_static − KL_change); hard = its argmax."""
    q, a, b = _gaussians((64, 5), 4), _gaussians((64, 5), 5), _gaussians((64, 5), 6)
    soft = change_posterior(q, a, b, torch.zeros(64), "vade")
    expected = torch.sigmoid(kl_gaussian(q, b) - kl_gaussian(q, a))
    torch.testing.assert_close(soft, expected)
    hard = change_posterior(q, a, b, torch.zeros(64), "hard")
    assert torch.equal(hard, (soft > 0.5).float())
    # prior odds shift the soft assignment: log p(e=1)/p(e=0) = +inf pushes it to 1
    assert torch.allclose(change_posterior(q, a, b, torch.full((64,), 1e4), "vade"), torch.ones(64))
    assert math.isclose(float(change_posterior(q, q, q, torch.zeros(64), "vade").mean()), 0.5)
