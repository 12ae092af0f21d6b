"""The ELBO of eq. 8 assembled from the per-step terms of a filtered sequence.

Every term is a (B, T) tensor before reduction; the loss is their mean over batch and
time, in nats per frame:

    loss = recon + β · (state KL + factor KL) + reward NLL + continue NLL
    recon      = −log N(o_t; decoded mean, obs_std²)  summed over pixels        (8a)
    state KL   = Σ_n KL[q(s^n_t) ‖ p(s^n_t | e^n_t)]   (eq. 9)                 (8b)
    factor KL  = Σ_{n≥2} KL[q(e^n_t) ‖ p(e^n_t | d^n_t)] where e^{n-1}_t = 1  (8c)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .distributions import bernoulli_nll, gaussian_nll


def elbo_terms(
    frames: Tensor,
    recon_mean: Tensor,
    obs_std: float,
    kl: Tensor,
    factor_kl: Tensor,
) -> dict[str, Tensor]:
    """Per-step ELBO terms.

    Args:
        frames, recon_mean: (B, T, C, H, W).
        kl, factor_kl: (B, T, N) per level.
    Returns:
        {"recon": (B, T), "kl": (B, T), "factor_kl": (B, T)}.
    """
    if frames.shape != recon_mean.shape:
        raise ValueError(f"elbo_terms: frames {tuple(frames.shape)} vs recon {tuple(recon_mean.shape)}")
    if kl.shape[:2] != frames.shape[:2] or factor_kl.shape != kl.shape:
        raise ValueError(f"elbo_terms: kl {tuple(kl.shape)} does not match frames {tuple(frames.shape)}")
    return {
        "recon": gaussian_nll(frames, recon_mean.float(), obs_std, dims=3),
        "kl": kl.sum(-1),
        "factor_kl": factor_kl.sum(-1),
    }


def reward_nll(pred: Tensor, target: Tensor) -> Tensor:
    """Unit-variance Gaussian NLL of rewards, up to a constant: (B, T), (B, T) -> (B, T)."""
    return 0.5 * (pred.float() - target).pow(2)


def continue_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Bernoulli NLL of the continue flag (1 − is_terminal): (B, T), (B, T) -> (B, T)."""
    return bernoulli_nll(logits.float(), target)




class _Reverse(torch.autograd.Function):
    """Identity forward; the gradient multiplied by −weight backward (DANN's gradient reversal)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: float) -> Tensor:  # type: ignore[override]
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.weight * grad, None


def reverse_gradient(x: Tensor, weight: float) -> Tensor:
    """x unchanged; what flows back through it is −weight × the gradient (an adversary's input)."""
    return _Reverse.apply(x, weight)


__all__ = ["elbo_terms", "reward_nll", "continue_nll", "reverse_gradient"]
