"""Diagonal Gaussians, Bernoullis and the closed-form divergences of the ELBO (eq. 8, 9).

Pure functions on tensors; every function states the shapes it takes. Sums run over the
last (latent) axis, so a (B, S) pair of Gaussians gives a (B,) KL.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


class Gaussian(NamedTuple):
    """Diagonal Gaussian N(mean, diag(std^2)); mean and std (..., S)."""

    mean: Tensor
    std: Tensor

    def rsample(self, generator: torch.Generator | None = None) -> Tensor:
        """A reparametrised sample (..., S), its noise from `generator` (None: torch's global RNG)."""
        if generator is None:
            noise = torch.randn_like(self.mean)
        else:
            noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                                device=self.mean.device)
        return torch.addcmul(self.mean, self.std, noise)


def gaussian_from_params(params: Tensor, min_std: float) -> Gaussian:
    """Split network output (..., 2S) into a Gaussian with std = softplus(raw) + min_std."""
    mean, raw_std = params.chunk(2, dim=-1)
    # softplus of the strided half runs ~10× slower on CPU than of a contiguous copy
    return Gaussian(mean, F.softplus(raw_std.contiguous()) + min_std)


def kl_gaussian(q: Gaussian, p: Gaussian) -> Tensor:
    """KL[q || p] between diagonal Gaussians, summed over the last axis: (..., S) -> (...).

    Always computed in fp32 (or fp64 when given): under bf16 autocast, rounding means whose
    std is ≲ 0.05 would create spurious KL — and flip eq. 4's decisions.
    """
    if q.mean.shape[-1] != p.mean.shape[-1]:
        raise ValueError(f"kl_gaussian: latent sizes differ, {q.mean.shape} vs {p.mean.shape}")
    if q.mean.dtype in (torch.bfloat16, torch.float16) or p.mean.dtype in (torch.bfloat16, torch.float16):
        q = Gaussian(q.mean.float(), q.std.float())
        p = Gaussian(p.mean.float(), p.std.float())
    var_ratio = (q.std / p.std).pow(2)
    mean_term = ((q.mean - p.mean) / p.std).pow(2)
    return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


def gaussian_nll(x: Tensor, mean: Tensor, std: float | Tensor, dims: int) -> Tensor:
    """-log N(x; mean, std^2), summed over the last `dims` axes.

    x, mean: same shape (..., *event) with `dims` event axes; returns (...).
    """
    if x.shape != mean.shape:
        raise ValueError(f"gaussian_nll: x {tuple(x.shape)} and mean {tuple(mean.shape)} differ")
    std_t = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
    nll = 0.5 * ((x - mean) / std_t).pow(2) + std_t.log() + 0.5 * LOG_2PI
    return nll.flatten(start_dim=nll.dim() - dims).sum(-1) if dims else nll


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """-log Ber(target; sigmoid(logits)), elementwise; logits, target (...)."""
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")


def kl_bernoulli(q1: Tensor, logits_p: Tensor) -> Tensor:
    """KL[Ber(q1) || Ber(sigmoid(logits_p))] elementwise; q1 probabilities, logits (...)."""
    log_p1 = F.logsigmoid(logits_p)
    log_p0 = F.logsigmoid(-logits_p)
    q0 = 1.0 - q1
    eps = torch.finfo(q1.dtype).tiny
    return q1 * (q1.clamp_min(eps).log() - log_p1) + q0 * (q0.clamp_min(eps).log() - log_p0)


__all__ = [
    "Gaussian",
    "gaussian_from_params",
    "kl_gaussian",
    "gaussian_nll",
    "bernoulli_nll",
    "kl_bernoulli",
]
