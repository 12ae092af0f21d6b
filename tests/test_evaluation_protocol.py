"""The best-of-K open-loop protocol: selection on hand-made samples, chunking, wiring to the
model, and argument checks."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import random_frames, tiny_model
from worldmodel.evaluation import best_of_k_curves, evaluate, ssim_name
from worldmodel.metrics import PSNR_MSE_FLOOR, per_frame_metrics, ssim


def _fixed_samples(truth: torch.Tensor, k: int, seed: int = 10) -> torch.Tensor:
    """(B, K, H, C, h, w): noisy versions of truth with sample-dependent noise levels."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand((truth.shape[0], k, *truth.shape[1:]), generator=g)
    level = 0.2 + 0.8 * torch.rand((truth.shape[0], k, 1, 1, 1, 1), generator=g)
    return (1 - level) * truth.unsqueeze(1) + level * noise


def _rollout_from(samples: torch.Tensor):
    calls = []

    def rollout(rows: torch.Tensor, first: int, count: int) -> torch.Tensor:
        calls.append((len(rows), count))
        return samples[rows, first:first + count]

    return rollout, calls


def test_curve_names_say_which_ssim():
    assert ssim_name("gaussian") == "ssim_gaussian11"
    assert ssim_name("uniform") == "ssim_uniform7"


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_the_sample_equal_to_the_truth_scores_ssim_one(chunk):
    truth = random_frames(3, 5)
    samples = _fixed_samples(truth, 7)
    samples[:, 5] = truth  # sample 5 of every sequence is perfect
    rollout, calls = _rollout_from(samples)
    result = best_of_k_curves(rollout, truth, samples=7, chunk=chunk)
    assert all(rows * count <= chunk for rows, count in calls)
    assert result.chosen.tolist() == [5, 5, 5]
    for name in ("ssim_gaussian11", "ssim_uniform7"):
        assert result.curves[name].shape == (5,)
        torch.testing.assert_close(result.per_sequence[name], torch.ones(3, 5, dtype=torch.float64))
        assert result.averages[name] == pytest.approx(1.0)
    assert result.averages["psnr"] == pytest.approx(-10 * torch.log10(torch.tensor(PSNR_MSE_FLOOR)).item())
    torch.testing.assert_close(result.best, truth)


def test_best_of_k_is_at_least_every_single_sample_and_independent_of_chunking():
    truth = random_frames(4, 6, seed=1)
    samples = _fixed_samples(truth, 6, seed=12)
    per_sample = torch.stack([ssim(samples[:, k], truth).mean(1) for k in range(6)], 1)  # (B, K)
    results = [best_of_k_curves(_rollout_from(samples)[0], truth, 6, chunk=c) for c in (1, 5, 100)]
    for result in results:
        best = result.per_sequence["ssim_gaussian11"].mean(1).float()
        assert (best[:, None] >= per_sample - 1e-6).all()
        torch.testing.assert_close(best, per_sample.max(1).values, rtol=1e-5, atol=1e-6)
        assert result.chosen.tolist() == per_sample.argmax(1).tolist()
        # the reported PSNR is that of the chosen sample
        chosen = samples[torch.arange(4), result.chosen]
        psnr = per_frame_metrics(chosen, truth)["psnr"].double()
        torch.testing.assert_close(result.per_sequence["psnr"], psnr, rtol=1e-5, atol=1e-4)
    for name in results[0].names:
        torch.testing.assert_close(results[0].per_sequence[name], results[2].per_sequence[name])


def test_selection_variant_is_the_first_listed():
    truth = random_frames(2, 4, seed=3)
    samples = _fixed_samples(truth, 5, seed=14)
    result = best_of_k_curves(_rollout_from(samples)[0], truth, 5, variants=("uniform",))
    assert result.selected_by == "ssim_uniform7"
    assert set(result.names) == {"ssim_uniform7", "psnr", "mse"}


def test_evaluate_wires_observe_imagine_decode():
    model = tiny_model()
    frames = random_frames(3, 9)
    torch.manual_seed(5)
    result = evaluate(model, frames, context=4, horizon=5, samples=1, chunk=16)
    torch.manual_seed(5)
    with torch.no_grad():
        state = model.observe(frames[:, :4]).state
        pred = model.decode(model.imagine(state, 5))
    expected = per_frame_metrics(pred, frames[:, 4:9])
    torch.testing.assert_close(result.per_sequence["ssim_gaussian11"], expected["ssim"].double())
    torch.testing.assert_close(result.best, pred)
    assert result.context == 4 and result.horizon == 5 and result.samples == 1
    assert set(result.curves) == {"ssim_gaussian11", "ssim_uniform7", "psnr", "mse"}


def test_evaluate_more_samples_never_scores_lower():
    model = tiny_model()
    frames = random_frames(2, 8)
    torch.manual_seed(0)
    one = evaluate(model, frames, 3, 5, samples=1, chunk=2)
    torch.manual_seed(0)
    many = evaluate(model, frames, 3, 5, samples=6, chunk=2)  # its first draws are `one`'s
    assert (many.per_sequence["ssim_gaussian11"].mean(1) >= one.per_sequence["ssim_gaussian11"].mean(1)).all()


def test_evaluate_with_actions():
    model = tiny_model(action_dim=2)
    frames = random_frames(2, 7)
    actions = torch.randn(2, 7, 2)
    result = evaluate(model, frames, 3, 4, samples=2, actions=actions)
    assert result.best.shape == (2, 4, 1, 16, 16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"context": 0}, "context"),
        ({"horizon": 0}, "horizon"),
        ({"samples": 0}, "samples"),
        ({"context": 5, "horizon": 5}, "only 8"),
        ({"variants": ("box",)}, "variant"),
        ({"chunk": 0}, "chunk"),
    ],
)
def test_evaluate_rejects_bad_arguments(kwargs, match):
    args = {"context": 3, "horizon": 4, "samples": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        evaluate(tiny_model(), random_frames(1, 8), **args)
