"""Frame-level video prediction metrics: SSIM, PSNR, MSE and the best-of-K protocol.

Every function here is pure, batched over arbitrary leading dimensions, and runs on
whatever device its inputs live on (CPU or CUDA). Inputs are float images in
``[0, data_range]`` laid out channels-first, ``(..., C, H, W)``; outputs are one
number per image, shape ``(...)``.

Two SSIM variants
-----------------
Video prediction papers do not agree on how SSIM is computed, and the two common
choices differ by a few hundredths on the same frames -- larger than many of the
improvements being reported -- so both are provided and every result must say
which one it used:

``"gaussian"``
    The original definition of Wang et al. (2004): an 11 x 11 Gaussian window with
    sigma = 1.5 and population (biased) covariances. Identical to scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)``. This is what the
    reference MATLAB code and most stochastic video prediction papers
    (e.g. Denton & Fergus 2018, SVG) report.
``"uniform"``
    scikit-image's *default*: a 7 x 7 uniform (box) window with sample (unbiased,
    N / (N - 1)) covariances, ``structural_similarity(data_range=1)``. Many
    codebases call scikit-image with defaults and so report this variant.

Both use K1 = 0.01, K2 = 0.03, and, like scikit-image, average the SSIM map only
over pixels whose window lies fully inside the image (a strip of
``(win_size - 1) // 2`` pixels is cropped from each side), then over channels.

Statistics are computed in float64 whatever the input precision, because the
variance terms ``E[x^2] - E[x]^2`` cancel badly in float32 on flat image regions;
results are returned in the input's dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PSNR_MSE_FLOOR",
    "SSIM_VARIANTS",
    "best_of_k",
    "mse",
    "per_frame_metrics",
    "psnr",
    "ssim",
    "ssim_window_size",
]

SSIMVariant = Literal["gaussian", "uniform"]
SSIM_VARIANTS: tuple[str, ...] = ("gaussian", "uniform")

# SSIM stabilising constants (Wang et al. 2004, Eq. 13 region): C_i = (K_i * L)^2.
_K1 = 0.01
_K2 = 0.03
# Gaussian window of Wang et al.: sigma 1.5, truncated at 3.5 sigma -> 11 taps.
_GAUSSIAN_SIGMA = 1.5
_GAUSSIAN_TRUNCATE = 3.5
_UNIFORM_WIN = 7
# Single-channel pixels per SSIM chunk. On CPU small chunks keep the float64
# temporaries in cache (several times faster than one big batch); on GPUs larger
# chunks keep the device busy while still bounding memory.
_SSIM_CHUNK_PIXELS = {"cpu": 1 << 14, "other": 1 << 22}

#: PSNR divides by the MSE; identical images would give +inf. The MSE is clamped
#: from below to this value, so identical images in [0, 1] score
#: ``10 * log10(1 / 1e-10) = 100`` dB (scaled by ``data_range**2`` in general).
PSNR_MSE_FLOOR = 1e-10

_HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "mse": False}


# --------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------


def _check_pair(pred: Tensor, target: Tensor, min_dims: int, what: str) -> None:
    """Check that ``pred`` and ``target`` are same-shape finite float tensors.

    Raises:
        ValueError: naming the offending argument and value.
    """
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(
                f"{what}: {name} must be a float tensor with values in [0, data_range], "
                f"got dtype {x.dtype}; convert with x.float() / 255 for uint8 frames"
            )
        if x.dim() < min_dims:
            raise ValueError(f"{what}: {name} must have at least {min_dims} dims, got shape {tuple(x.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: pred and target must have the same shape, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.device != target.device:
        raise ValueError(
            f"{what}: pred and target must be on the same device, got {pred.device} and {target.device}"
        )
    for name, x in (("pred", pred), ("target", target)):
        if torch.isnan(x).any():
            raise ValueError(f"{what}: {name} contains NaN")


def _check_data_range(data_range: float) -> None:
    number = isinstance(data_range, numbers.Real) and not isinstance(data_range, bool)  # NumPy scalars too
    if not (number and data_range > 0 and math.isfinite(data_range)):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")


def _image_batch_shape(x: Tensor) -> tuple[int, ...]:
    """Leading shape of ``x`` viewed as ``(..., C, H, W)``; a 2-D input is one gray image."""
    return tuple(x.shape[:-3]) if x.dim() >= 3 else ()


# --------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------


def _window_1d(variant: str, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, float]:
    """1-D separable SSIM window and the covariance normalisation of ``variant``.

    Returns:
        window: (win,) weights summing to 1.
        cov_norm: factor applied to the (co)variances: 1 for population
            covariance ("gaussian"), ``N / (N - 1)`` with ``N = win**2`` for sample
            covariance ("uniform").
    """
    if variant == "gaussian":
        radius = int(_GAUSSIAN_TRUNCATE * _GAUSSIAN_SIGMA + 0.5)  # = 5, as scipy.ndimage
        x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
        window = torch.exp(-0.5 * (x / _GAUSSIAN_SIGMA) ** 2)
        return window / window.sum(), 1.0
    if variant == "uniform":
        n = _UNIFORM_WIN
        window = torch.full((n,), 1.0 / n, dtype=dtype, device=device)
        return window, n * n / (n * n - 1)
    raise ValueError(f"ssim variant must be one of {SSIM_VARIANTS}, got {variant!r}")


def ssim_window_size(variant: SSIMVariant) -> int:
    """Side length of the SSIM window of ``variant`` (11 for "gaussian", 7 for "uniform")."""
    if variant == "gaussian":
        return 2 * int(_GAUSSIAN_TRUNCATE * _GAUSSIAN_SIGMA + 0.5) + 1
    if variant == "uniform":
        return _UNIFORM_WIN
    raise ValueError(f"ssim variant must be one of {SSIM_VARIANTS}, got {variant!r}")


def ssim(
    pred: Tensor,
    target: Tensor,
    variant: SSIMVariant = "gaussian",
    data_range: float = 1.0,
) -> Tensor:
    """Mean structural similarity of each image (Wang et al. 2004).

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))
    evaluated in a sliding window, averaged over the "valid" pixels (window
    fully inside the image) and then over channels. See the module docstring for
    the two variants; both match scikit-image to float precision.

    Args:
        pred: (..., C, H, W) float in [0, data_range]; a 2-D (H, W) tensor is one
            gray image. H and W must be at least the window size (11 for
            "gaussian", 7 for "uniform").
        target: same shape, dtype kind and device as ``pred``.
        variant: "gaussian" (11x11, sigma 1.5, population covariance) or
            "uniform" (7x7 box, sample covariance).
        data_range: dynamic range L of the images (1.0 for [0, 1] frames).

    Returns:
        (...) SSIM per image, in pred's dtype; () for a single (C, H, W) or (H, W) image.

    Raises:
        ValueError: on shape mismatch, fewer than 2 dims, images smaller than
            the window, non-float input, NaN, an unknown variant or a bad data_range.
        TypeError: if pred or target is not a torch.Tensor.

    Example:
        >>> x = torch.rand(4, 10, 3, 32, 32)
        >>> ssim(x, x).shape
        torch.Size([4, 10])
    """
    _check_pair(pred, target, min_dims=2, what="ssim")
    _check_data_range(data_range)
    win = ssim_window_size(variant)
    height, width = pred.shape[-2:]
    if height < win or width < win:
        raise ValueError(
            f"ssim: images of size {height}x{width} are smaller than the {win}x{win} "
            f"window of variant {variant!r}; use larger images or variant='uniform' (7x7)"
        )
    batch_shape = _image_batch_shape(pred)
    channels = pred.shape[-3] if pred.dim() >= 3 else 1

    window, cov_norm = _window_1d(variant, torch.float64, pred.device)
    x = pred.reshape(-1, 1, height, width)  # (N*C, 1, H, W)
    y = target.reshape(-1, 1, height, width)
    # Work in chunks of single-channel images: bounds the float64 temporaries.
    budget = _SSIM_CHUNK_PIXELS["cpu" if pred.device.type == "cpu" else "other"]
    chunk = max(1, budget // (height * width))
    per_channel = torch.cat(
        [
            _ssim_per_channel(x[i : i + chunk], y[i : i + chunk], window, cov_norm, data_range)
            for i in range(0, x.shape[0], chunk)
        ]
    )  # (N*C,)
    per_image = per_channel.reshape(*batch_shape, channels).mean(dim=-1)  # (...)
    return per_image.to(pred.dtype)


def _ssim_per_channel(x: Tensor, y: Tensor, window: Tensor, cov_norm: float, data_range: float) -> Tensor:
    """Mean SSIM over the valid region of single-channel images.

    Args:
        x, y: (N, 1, H, W) images, any float dtype (computed in float64).
        window: (win,) separable window weights, float64, summing to 1.
        cov_norm: (co)variance normalisation (1 or win^2 / (win^2 - 1)).
        data_range: dynamic range L.

    Returns:
        (N,) float64 mean SSIM of each image.
    """
    win = window.shape[0]
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    n_img = x.shape[0]
    # Filter x, y, x^2, y^2, xy in one pass; "valid" convolution equals
    # scikit-image's filtered map after cropping (win - 1) // 2 from each side.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=0)  # (5N, 1, H, W)
    stack = F.conv2d(stack, window.view(1, 1, win, 1))  # separable: rows ...
    stack = F.conv2d(stack, window.view(1, 1, 1, win))  # ... then columns
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.split(n_img, dim=0)  # each (N, 1, H', W')

    var_x = cov_norm * (e_xx - mu_x * mu_x)
    var_y = cov_norm * (e_yy - mu_y * mu_y)
    cov_xy = cov_norm * (e_xy - mu_x * mu_y)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )  # (N, 1, H', W')
    return ssim_map.mean(dim=(-3, -2, -1))


# --------------------------------------------------------------------------------------
# MSE / PSNR
# --------------------------------------------------------------------------------------


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of each image.

    Args:
        pred: (..., C, H, W) float; a 2-D (H, W) tensor is one gray image.
        target: same shape as ``pred``.

    Returns:
        (...) mean over C, H, W of (pred - target)^2, in pred's dtype.
    """
    _check_pair(pred, target, min_dims=2, what="mse")
    return _mse_unchecked(pred, target)


def _mse_unchecked(pred: Tensor, target: Tensor) -> Tensor:
    dims = (-3, -2, -1) if pred.dim() >= 3 else (-2, -1)
    diff = pred.to(torch.float64) - target.to(torch.float64)
    return (diff * diff).mean(dim=dims).to(pred.dtype)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio of each image, in dB.

    PSNR = 10 log10(L^2 / max(MSE, PSNR_MSE_FLOOR)), with L = ``data_range`` and the
    MSE taken over all channels and pixels (as scikit-image's
    ``peak_signal_noise_ratio``). The floor keeps identical images finite:
    they score 100 dB for L = 1 instead of +inf.

    Args:
        pred: (..., C, H, W) float in [0, data_range]; a 2-D (H, W) tensor is one gray image.
        target: same shape as ``pred``.
        data_range: dynamic range L of the images.

    Returns:
        (...) PSNR per image in dB, in pred's dtype.

    Example:
        >>> x = torch.zeros(3, 8, 8)
        >>> round(psnr(x + 0.1, x).item(), 4)  # MSE = 0.01 -> 20 dB
        20.0
    """
    _check_pair(pred, target, min_dims=2, what="psnr")
    _check_data_range(data_range)
    return _psnr_from_mse(_mse_unchecked(pred, target).to(torch.float64), data_range).to(pred.dtype)


def _psnr_from_mse(err: Tensor, data_range: float) -> Tensor:
    return 10.0 * torch.log10(data_range**2 / err.clamp_min(PSNR_MSE_FLOOR))


# --------------------------------------------------------------------------------------
# Per-frame curves and best-of-K
# --------------------------------------------------------------------------------------


def per_frame_metrics(
    pred: Tensor,
    target: Tensor,
    variant: SSIMVariant = "gaussian",
    data_range: float = 1.0,
) -> dict[str, Tensor]:
    """SSIM, PSNR and MSE of every frame of a batch of videos.

    Args:
        pred: (B, T, C, H, W) float in [0, data_range], predicted frames.
        target: (B, T, C, H, W) ground-truth frames.
        variant: SSIM variant, "gaussian" or "uniform" (see module docstring).
        data_range: dynamic range of the frames.

    Returns:
        {"ssim": (B, T), "psnr": (B, T), "mse": (B, T)}, in pred's dtype.
    """
    _check_pair(pred, target, min_dims=5, what="per_frame_metrics")
    if pred.dim() != 5:
        raise ValueError(f"per_frame_metrics: expected (B, T, C, H, W) videos, got shape {tuple(pred.shape)}")
    err = _mse_unchecked(pred, target)  # (B, T)
    return {
        "ssim": ssim(pred, target, variant=variant, data_range=data_range),
        "psnr": _psnr_from_mse(err.to(torch.float64), data_range).to(pred.dtype),
        "mse": err,
    }


def best_of_k(
    samples: Tensor | Sequence[Tensor],
    target: Tensor,
    metric: Literal["ssim", "psnr", "mse"] = "ssim",
    variant: SSIMVariant = "gaussian",
    data_range: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Best-of-K evaluation of a stochastic video model (Denton & Fergus 2018).

    For every sequence, the sample whose *mean over time* of ``metric`` is best
    (highest SSIM or PSNR, lowest MSE) is selected; the per-frame curves of all
    three metrics are then reported for that chosen sample. Ties keep the
    earliest sample. Samples are scored one at a time with a running best, so
    memory stays at two videos' worth regardless of K; ``samples`` may also be a
    sequence (e.g. a generator's list) of K separate (B, T, C, H, W) tensors.

    Args:
        samples: (K, B, T, C, H, W) float in [0, data_range], or a sequence of K
            (B, T, C, H, W) tensors.
        target: (B, T, C, H, W) ground-truth frames.
        metric: selection criterion, "ssim", "psnr" or "mse".
        variant: SSIM variant used for the "ssim" curves and selection.
        data_range: dynamic range of the frames.

    Returns:
        best: (B, T, C, H, W) the chosen sample of each sequence.
        scores: {"ssim": (B, T), "psnr": (B, T), "mse": (B, T)} per-frame metrics
            of the chosen samples.

    Raises:
        ValueError: on an unknown metric, no samples, or shapes that do not match.
    """
    if metric not in _HIGHER_IS_BETTER:
        raise ValueError(f"best_of_k: metric must be one of {tuple(_HIGHER_IS_BETTER)}, got {metric!r}")
    if isinstance(samples, Tensor) and samples.dim() != 6:
        raise ValueError(f"best_of_k: samples must be (K, B, T, C, H, W), got shape {tuple(samples.shape)}")
    if len(samples) == 0:
        raise ValueError("best_of_k: need at least one sample, got K = 0")
    higher_is_better = _HIGHER_IS_BETTER[metric]

    best: Tensor | None = None
    best_scores: dict[str, Tensor] = {}
    best_value: Tensor | None = None  # (B,) mean-over-time criterion of the current best
    for k, sample in enumerate(samples):
        if not isinstance(sample, Tensor):
            raise TypeError(f"best_of_k: sample {k} must be a Tensor, got {type(sample).__name__}")
        if sample.shape != target.shape:
            shape = tuple(sample.shape)
            raise ValueError(
                f"best_of_k: sample {k} must match target shape {tuple(target.shape)}, got {shape}"
            )
        scores = per_frame_metrics(sample, target, variant=variant, data_range=data_range)
        value = scores[metric].to(torch.float64).mean(dim=1)  # (B,)
        if best is None or best_value is None:
            best, best_scores, best_value = sample.clone(), scores, value
            continue
        better = value > best_value if higher_is_better else value < best_value  # (B,)
        best = torch.where(better.view(-1, 1, 1, 1, 1), sample, best)
        best_scores = {
            name: torch.where(better.view(-1, 1), scores[name], best_scores[name]) for name in scores
        }
        best_value = torch.where(better, value, best_value)
    assert best is not None
    return best, best_scores
