"""Unit tests for worldmodel.metrics against scikit-image and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from worldmodel.metrics import (
    PSNR_MSE_FLOOR,
    best_of_k,
    mse,
    per_frame_metrics,
    psnr,
    ssim,
    ssim_window_size,
)

VARIANTS = ("gaussian", "uniform")


def skimage_ssim(x: torch.Tensor, y: torch.Tensor, variant: str, data_range: float = 1.0) -> float:
    """Reference SSIM of one (C, H, W) image pair via scikit-image."""
    a = x.permute(1, 2, 0).double().numpy()  # (H, W, C)
    b = y.permute(1, 2, 0).double().numpy()
    kwargs: dict = {"data_range": data_range}
    if a.shape[-1] == 1:
        a, b = a[..., 0], b[..., 0]
    else:
        kwargs["channel_axis"] = -1
    if variant == "gaussian":
        kwargs.update(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return float(structural_similarity(a, b, **kwargs))


def noisy_pair(gen: torch.Generator, shape: tuple[int, ...], noise: float = 0.2):
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (x + noise * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return x, y


def structured_image(size: int, channels: int, shift: float) -> torch.Tensor:
    """Smooth gradient + sinusoid + a flat square: exercises flat and textured regions."""
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, size, dtype=torch.float64),
        torch.linspace(0, 1, size, dtype=torch.float64),
        indexing="ij",
    )
    img = 0.4 * xx + 0.3 * torch.sin(2 * math.pi * (3 * yy + shift)) ** 2
    img[size // 4 : size // 2, size // 4 : size // 2] = 0.8  # flat patch
    return torch.stack([img.roll(c, dims=1) for c in range(channels)]).clamp(0, 1)


# --------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 64])
def test_ssim_matches_skimage_on_random_images(variant, channels, size):
    gen = torch.Generator().manual_seed(size * 10 + channels)
    for noise in (0.05, 0.3, 1.0):
        x, y = noisy_pair(gen, (channels, size, size), noise)
        ours = ssim(x, y, variant=variant).item()
        assert ours == pytest.approx(skimage_ssim(x, y, variant), abs=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage_on_structured_images(variant, channels):
    x = structured_image(48, channels, shift=0.0)
    for y in (structured_image(48, channels, shift=0.05), 0.5 * x + 0.2, x.flip(-1)):
        ours = ssim(x, y, variant=variant).item()
        assert ours == pytest.approx(skimage_ssim(x, y, variant), abs=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ssim_float32_input_matches_skimage(variant):
    gen = torch.Generator().manual_seed(1)
    x, y = noisy_pair(gen, (3, 32, 32))
    ours = ssim(x.float(), y.float(), variant=variant)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(skimage_ssim(x, y, variant), abs=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ssim_data_range_matches_skimage(variant):
    gen = torch.Generator().manual_seed(2)
    x, y = noisy_pair(gen, (1, 32, 32))
    ours = ssim(255 * x, 255 * y, variant=variant, data_range=255.0).item()
    assert ours == pytest.approx(skimage_ssim(255 * x, 255 * y, variant, 255.0), abs=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ssim_of_identical_images_is_one(variant):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 3, 32, 32, generator=gen)
    assert torch.allclose(ssim(x, x, variant=variant), torch.ones(2, 3), atol=1e-6)
    flat = torch.full((1, 16, 16), 0.3)
    assert ssim(flat, flat, variant=variant).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ssim_batched_equals_per_image_and_is_symmetric(variant):
    gen = torch.Generator().manual_seed(4)
    x, y = noisy_pair(gen, (2, 3, 3, 32, 32))
    batched = ssim(x, y, variant=variant)
    assert batched.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            assert batched[b, t].item() == pytest.approx(ssim(x[b, t], y[b, t], variant).item())
    assert torch.allclose(batched, ssim(y, x, variant=variant))
    assert (batched <= 1).all()


def test_ssim_output_shapes():
    x = torch.rand(32, 32)
    assert ssim(x, x).shape == ()  # one gray (H, W) image
    assert ssim(x[None], x[None]).shape == ()  # one (C, H, W) image
    assert ssim(torch.rand(5, 3, 16, 16), torch.rand(5, 3, 16, 16)).shape == (5,)


def test_ssim_window_sizes():
    assert ssim_window_size("gaussian") == 11
    assert ssim_window_size("uniform") == 7


def test_variants_differ():
    # The windows differ in size, so on structured content the two scores differ
    # by about 0.01 -- the reason a result must say which variant it used.
    x = structured_image(48, 1, shift=0.0)
    y = x.flip(-1)
    assert abs(ssim(x, y, "gaussian").item() - ssim(x, y, "uniform").item()) > 5e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", VARIANTS)
def test_ssim_psnr_on_cuda_match_cpu(variant):
    gen = torch.Generator().manual_seed(6)
    x, y = noisy_pair(gen, (2, 4, 3, 32, 32))
    x32, y32 = x.float(), y.float()
    on_gpu = ssim(x32.cuda(), y32.cuda(), variant=variant)
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), ssim(x32, y32, variant=variant), atol=1e-6)
    assert torch.allclose(psnr(x32.cuda(), y32.cuda()).cpu(), psnr(x32, y32), atol=1e-4)
    best, scores = best_of_k(torch.stack([x32, y32]).cuda(), x32.cuda(), variant=variant)
    assert best.device.type == "cuda" and scores["ssim"].device.type == "cuda"


# --------------------------------------------------------------------------------------
# PSNR / MSE
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_matches_skimage(channels):
    gen = torch.Generator().manual_seed(7)
    x, y = noisy_pair(gen, (4, channels, 32, 32))
    ours = psnr(x, y)
    assert ours.shape == (4,)
    for i in range(4):
        ref = peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-6)
    ref255 = peak_signal_noise_ratio(255 * x[0].numpy(), 255 * y[0].numpy(), data_range=255.0)
    assert psnr(255 * x[0], 255 * y[0], data_range=255.0).item() == pytest.approx(ref255)


def test_psnr_hand_computed_and_identical():
    x = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    # Constant offset 0.1 -> MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB.
    assert torch.allclose(psnr(x + 0.1, x), torch.full((2,), 20.0, dtype=torch.float64))
    assert torch.allclose(mse(x + 0.1, x), torch.full((2,), 0.01, dtype=torch.float64))
    # Identical images are clamped by the MSE floor instead of giving +inf.
    expected = 10 * math.log10(1.0 / PSNR_MSE_FLOOR)
    assert psnr(x, x).tolist() == pytest.approx([expected, expected])
    assert expected == pytest.approx(100.0)


# --------------------------------------------------------------------------------------
# Per-frame metrics and best-of-K
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,steps", [(1, 1), (2, 5)])
def test_per_frame_metrics_shapes_and_values(batch, steps):
    gen = torch.Generator().manual_seed(8)
    pred = torch.rand(batch, steps, 3, 16, 16, generator=gen)
    target = torch.rand(batch, steps, 3, 16, 16, generator=gen)
    out = per_frame_metrics(pred, target, variant="uniform")
    assert set(out) == {"ssim", "psnr", "mse"}
    for value in out.values():
        assert value.shape == (batch, steps) and value.dtype == torch.float32
    assert torch.allclose(out["ssim"], ssim(pred, target, variant="uniform"))
    assert torch.allclose(out["psnr"], psnr(pred, target))
    assert torch.allclose(out["mse"], ((pred - target) ** 2).mean(dim=(2, 3, 4)))


def make_samples(gen: torch.Generator, k: int = 4, exact_index: int = 2):
    """K noisy samples of a target, sample ``exact_index`` equal to it for sequence 0."""
    target = torch.rand(2, 3, 1, 16, 16, generator=gen)
    noise = torch.linspace(0.3, 0.1, k)  # later samples are less noisy
    samples = torch.stack(
        [(target + s * torch.randn(target.shape, generator=gen)).clamp(0, 1) for s in noise]
    )
    samples[exact_index, 0] = target[0]
    return samples, target


@pytest.mark.parametrize("metric", ["ssim", "psnr", "mse"])
def test_best_of_k_picks_the_best_sample(metric):
    samples, target = make_samples(torch.Generator().manual_seed(9))
    best, scores = best_of_k(samples, target, metric=metric)
    assert best.shape == target.shape
    assert set(scores) == {"ssim", "psnr", "mse"}
    # Sequence 0: sample 2 is the target itself.
    assert torch.equal(best[0], target[0])
    assert torch.allclose(scores["ssim"][0], torch.ones(3), atol=1e-6)
    assert torch.allclose(scores["mse"][0], torch.zeros(3))
    # Sequence 1: the least noisy (last) sample wins; scores are its curves.
    assert torch.equal(best[1], samples[-1, 1])
    expected = per_frame_metrics(samples[-1], target)
    for name in scores:
        assert torch.allclose(scores[name][1], expected[name][1])


def test_best_of_k_accepts_a_sequence_and_keeps_first_on_ties():
    samples, target = make_samples(torch.Generator().manual_seed(10))
    from_tensor = best_of_k(samples, target)
    from_list = best_of_k(list(samples), target)
    assert torch.equal(from_tensor[0], from_list[0])
    tied = torch.stack([samples[0], samples[0].clone()])
    tied[1, 1] = target[1]  # only sequence 1 improves in the second sample
    best, _ = best_of_k(tied, target)
    assert best[0].data_ptr() != samples[0, 0].data_ptr()  # a copy, not a view
    assert torch.equal(best[0], samples[0, 0]) and torch.equal(best[1], target[1])


def test_best_of_k_single_sample_is_that_sample():
    samples, target = make_samples(torch.Generator().manual_seed(11), k=1, exact_index=0)
    best, scores = best_of_k(samples, target)
    assert torch.equal(best, samples[0])
    assert torch.allclose(scores["psnr"], per_frame_metrics(samples[0], target)["psnr"])


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred,target,match",
    [
        (torch.rand(3, 32, 32), torch.rand(3, 32, 31), "same shape"),
        (torch.rand(32), torch.rand(32), "at least 2 dims"),
        (torch.rand(1, 8, 8), torch.rand(1, 8, 8), "smaller than the 11x11"),
        (torch.zeros(1, 16, 16, dtype=torch.uint8), torch.zeros(1, 16, 16), "float tensor"),
        (torch.full((1, 16, 16), float("nan")), torch.rand(1, 16, 16), "pred contains NaN"),
        (torch.rand(1, 16, 16), torch.full((1, 16, 16), float("nan")), "target contains NaN"),
    ],
)
def test_ssim_rejects_bad_input(pred, target, match):
    with pytest.raises(ValueError, match=match):
        ssim(pred, target)


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        ssim(torch.rand(16, 16), np.zeros((16, 16)))
    with pytest.raises(TypeError, match="sample 0 must be a Tensor"):
        best_of_k([np.zeros((1, 1, 1, 8, 8))], torch.rand(1, 1, 1, 8, 8))


def test_other_bad_arguments():
    x = torch.rand(1, 16, 16)
    with pytest.raises(ValueError, match="variant"):
        ssim(x, x, variant="box")
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, x, data_range=0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        psnr(x, x * float("nan"))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        per_frame_metrics(torch.rand(1, 1, 1, 1, 16, 16), torch.rand(1, 1, 1, 1, 16, 16))
    with pytest.raises(ValueError, match="at least 5 dims"):
        per_frame_metrics(x, x)
    video = torch.rand(1, 2, 1, 16, 16)
    with pytest.raises(ValueError, match="metric"):
        best_of_k(video[None], video, metric="lpips")
    with pytest.raises(ValueError, match=r"\(K, B, T, C, H, W\)"):
        best_of_k(video, video)
    with pytest.raises(ValueError, match="K = 0"):
        best_of_k([], video)
    with pytest.raises(ValueError, match="sample 1 must match"):
        best_of_k([video, video[:, :1]], video)
