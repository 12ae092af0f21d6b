"""Open-loop video prediction under the best-of-K protocol (paper §4.1, Table 1, Fig. 9).

    result = evaluate(model, frames, context=30, horizon=270, samples=100)
    result.curves["ssim_gaussian11"]   # (horizon,) SSIM per open-loop step, mean over sequences
    result.averages["psnr"]            # mean over steps and sequences

The model filters the first `context` frames of every sequence, then rolls out K sampled
continuations per sequence (the filtered state repeated K times, `DLH.imagine`, `DLH.decode`).
For each sequence the sample with the best mean SSIM over the horizon is kept ("we sample 100
conditionally generated sequences and pick the best one", Denton & Fergus 2018) and the
per-frame curves of that sample are reported. Samples are drawn and scored in chunks of at
most `chunk` rollouts, so memory is bounded whatever K is.

SSIM variants are named after their window (see `worldmodel.metrics`): "ssim_gaussian11"
(Wang et al. 2004: 11x11 Gaussian, the stochastic video prediction papers' choice) and
"ssim_uniform7" (scikit-image's defaults: 7x7 box). Every report says which it used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..arguments import check_int
from ..metrics import SSIM_VARIANTS, psnr, ssim, ssim_window_size
from ..model import DLH

# Frames (rollouts x horizon) decoded and scored at once when `chunk` is not given: small on
# a CPU (cache-friendly, bounded memory), large on an accelerator (full batches; 64k frames of
# 64x64x3 float32 are 3.2 GB).
DEFAULT_FRAME_BUDGET = 4096
ACCELERATOR_FRAME_BUDGET = 65536

# rollout(rows, first, count) -> (len(rows), count, horizon, C, H, W) frames in [0, 1]:
# samples number first .. first + count - 1 of the sequences `rows` (a (b,) long tensor).
RolloutFn = Callable[[Tensor, int, int], Tensor]


def ssim_name(variant: str) -> str:
    """The curve name of an SSIM variant: "gaussian" -> "ssim_gaussian11", "uniform" -> "ssim_uniform7"."""
    return f"ssim_{variant}{ssim_window_size(variant)}"  # type: ignore[arg-type]


@dataclass
class EvalResult:
    """Best-of-K scores of an open-loop evaluation.

    Attributes:
        per_sequence: name -> (B, horizon) per-frame scores of each sequence's chosen sample;
            names are `ssim_name(v)` for every variant, "psnr" (dB) and "mse".
        curves: name -> (horizon,) the mean over sequences of `per_sequence[name]`.
        averages: name -> float, the mean over steps and sequences.
        stds: name -> float, the standard deviation over sequences of each sequence's mean.
        best: (B, horizon, C, H, W) the chosen sample of each sequence.
        chosen: (B,) long, the index (0..K-1) of the chosen sample.
        selected_by: the curve whose mean over the horizon picked the sample.
        context, horizon, samples: the protocol's settings.
    """

    per_sequence: dict[str, Tensor]
    curves: dict[str, Tensor]
    averages: dict[str, float]
    stds: dict[str, float]
    best: Tensor
    chosen: Tensor
    selected_by: str
    context: int
    horizon: int
    samples: int
    names: list[str] = field(default_factory=list)


def _positive(name: str, value: object) -> int:
    return check_int(value, name, 1)


def _check_variants(variants: Sequence[str]) -> tuple[str, ...]:
    variants = tuple(variants)
    if not variants:
        raise ValueError(f"variants: need at least one SSIM variant out of {SSIM_VARIANTS}")
    for v in variants:
        if v not in SSIM_VARIANTS:
            raise ValueError(f"variants: unknown SSIM variant {v!r}; choose from {SSIM_VARIANTS}")
    return variants


def _score(pred: Tensor, truth: Tensor, variants: tuple[str, ...]) -> dict[str, Tensor]:
    """Per-frame scores: pred (b, k, H, C, h, w), truth (b, H, C, h, w) -> name -> (b, k, H)."""
    target = truth.unsqueeze(1).expand_as(pred)
    scores = {ssim_name(v): ssim(pred, target, variant=v) for v in variants}  # type: ignore[arg-type]
    err = (pred.double() - target.double()).pow(2).mean(dim=(-3, -2, -1))
    scores["psnr"] = psnr(pred, target).double()
    scores["mse"] = err
    return {k: v.double() for k, v in scores.items()}


def best_of_k_curves(
    rollout: RolloutFn,
    truth: Tensor,
    samples: int,
    variants: Sequence[str] = SSIM_VARIANTS,
    chunk: int | None = None,
    sequences_per_call: int | None = None,
) -> EvalResult:
    """Best-of-K per-frame scores of sampled predictions against `truth`.

    Args:
        rollout: draws samples, see `RolloutFn`; called with at most `chunk` rollouts at once.
        truth: (B, H, C, h, w) ground-truth future frames in [0, 1].
        samples: K >= 1 samples per sequence.
        variants: SSIM variants to report; the first one selects the best sample.
        chunk: most rollouts (sequences x samples) per call; default keeps
            rollouts x horizon <= DEFAULT_FRAME_BUDGET frames.
        sequences_per_call: most sequences per call (default: as many as `chunk` allows).

    Returns:
        An EvalResult; context is reported as 0 (the caller knows it).
    """
    variants = _check_variants(variants)
    samples = _positive("samples", samples)
    if truth.dim() != 5:
        raise ValueError(f"truth: expected (B, H, C, h, w) frames, got shape {tuple(truth.shape)}")
    batch, horizon = truth.shape[:2]
    if chunk is None:
        chunk = max(1, DEFAULT_FRAME_BUDGET // horizon)
    chunk = _positive("chunk", chunk)
    per_call = min(batch, chunk) if sequences_per_call is None else _positive("sequences_per_call",
                                                                             sequences_per_call)
    per_call = min(per_call, chunk, batch)
    k_per_call = max(1, chunk // per_call)
    key = ssim_name(variants[0])

    per_sequence: dict[str, list[Tensor]] = {}
    best_frames, chosen = [], []
    for lo in range(0, batch, per_call):
        rows = torch.arange(lo, min(batch, lo + per_call))
        target = truth[rows]
        best_scores: dict[str, Tensor] = {}
        best_value = best_video = best_index = None
        for first in range(0, samples, k_per_call):
            count = min(k_per_call, samples - first)
            pred = rollout(rows, first, count)
            expected = (len(rows), count, *truth.shape[1:])
            if tuple(pred.shape) != expected:
                raise ValueError(f"rollout returned shape {tuple(pred.shape)}, expected {expected}")
            scores = _score(pred, target, variants)  # name -> (b, k, H)
            value = scores[key].mean(-1)  # (b, k) mean SSIM over the horizon: the criterion
            top_value, top = value.max(1)  # ties keep the earliest sample
            pick = top.view(-1, 1)
            top_scores = {n: s.gather(1, pick.unsqueeze(-1).expand(-1, 1, horizon)).squeeze(1)
                          for n, s in scores.items()}  # (b, H)
            top_video = pred[torch.arange(len(rows), device=pred.device), top]  # (b, H, C, h, w)
            if best_value is None:
                best_value, best_scores = top_value, top_scores
                best_video, best_index = top_video, top + first
                continue
            better = top_value > best_value  # (b,)
            best_value = torch.where(better, top_value, best_value)
            best_index = torch.where(better, top + first, best_index)
            best_video = torch.where(better.view(-1, 1, 1, 1, 1), top_video, best_video)
            best_scores = {n: torch.where(better.view(-1, 1), top_scores[n], best_scores[n])
                           for n in best_scores}
        for name, value in best_scores.items():
            per_sequence.setdefault(name, []).append(value)
        best_frames.append(best_video)
        chosen.append(best_index)

    stacked = {name: torch.cat(parts) for name, parts in per_sequence.items()}  # (B, H)
    names = list(stacked)
    curves = {name: v.mean(0) for name, v in stacked.items()}
    averages = {name: float(v.mean()) for name, v in stacked.items()}
    stds = {name: float(v.mean(1).std(unbiased=False)) for name, v in stacked.items()}
    return EvalResult(
        per_sequence=stacked, curves=curves, averages=averages, stds=stds,
        best=torch.cat(best_frames), chosen=torch.cat(chosen), selected_by=key,
        context=0, horizon=horizon, samples=samples, names=names,
    )


@torch.no_grad()
def evaluate(
    model: DLH,
    frames: Tensor,
    context: int,
    horizon: int,
    samples: int = 100,
    variants: Sequence[str] = SSIM_VARIANTS,
    actions: Tensor | None = None,
    is_first: Tensor | None = None,
    chunk: int | None = None,
    sample_e: bool = True,
) -> EvalResult:
    """Best-of-K open-loop prediction of `frames[:, context:context + horizon]` (paper §4.1).

    Args:
        model: a DLH (its device is used; call with `model.eval()` semantics, no gradients).
        frames: (B, T, C, H, W) float in [0, 1] with T >= context + horizon.
        context: frames filtered before the rollout starts (>= 1).
        horizon: open-loop steps predicted and scored (>= 1).
        samples: K rollouts per sequence (the paper: 100); the best by mean SSIM is kept.
        variants: SSIM variants, "gaussian" and/or "uniform"; the first selects the sample.
        actions: (B, T, A) for an action-conditioned model: actions[:, :context] are
            filtered, actions[:, context:context + horizon] drive the rollouts.
        is_first: (B, T) bool episode starts (only the context part is used).
        chunk: most rollouts per `imagine` call (memory bound); default keeps
            rollouts x horizon <= DEFAULT_FRAME_BUDGET on a CPU, ACCELERATOR_FRAME_BUDGET else.
        sample_e: sample e^n during imagination (default) or take its mode.

    Sampling noise comes from torch's global generator: seed it for reproducible results
    (results also depend on `chunk`, which changes the order of the draws).
    """
    context = _positive("context", context)
    horizon = _positive("horizon", horizon)
    samples = _positive("samples", samples)
    if not isinstance(frames, Tensor) or frames.dim() != 5:
        shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames: expected a (B, T, C, H, W) tensor, got {shape}")
    steps = frames.shape[1]
    if context + horizon > steps:
        raise ValueError(
            f"context + horizon = {context} + {horizon} = {context + horizon} frames, but the "
            f"sequences have only {steps}: lower --context/--horizon or use longer sequences"
        )
    device = model.device
    frames = frames.to(device)
    if actions is not None:
        actions = actions.to(device)
    ctx_actions = actions[:, :context] if actions is not None else None
    ctx_first = is_first[:, :context].to(device) if is_first is not None else None
    state = model.observe(frames[:, :context], ctx_actions, ctx_first).state
    future = actions[:, context:context + horizon] if actions is not None else None
    truth = frames[:, context:context + horizon]

    def rollout(rows: Tensor, first: int, count: int) -> Tensor:
        rows = rows.to(device)
        start = state.index(rows).repeat_interleave(count)  # (b·k) rows, sample-major per sequence
        acts = future[rows].repeat_interleave(count, 0) if future is not None else None
        video = model.decode(model.imagine(start, horizon, acts, sample_e=sample_e))
        return video.unflatten(0, (len(rows), count)).float()

    if chunk is None:
        budget = DEFAULT_FRAME_BUDGET if device.type == "cpu" else ACCELERATOR_FRAME_BUDGET
        chunk = max(1, budget // horizon)
    result = best_of_k_curves(rollout, truth.float(), samples, variants, chunk)
    result.context = context
    return result


def averages_with_std(result: EvalResult) -> dict[str, dict[str, float]]:
    """{name: {"mean": .., "std_over_sequences": ..}} with NaN/inf made JSON-safe (None)."""

    def clean(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return {n: {"mean": clean(result.averages[n]), "std_over_sequences": clean(result.stds[n])}
            for n in result.names}


__all__ = ["EvalResult", "evaluate", "best_of_k_curves", "ssim_name", "averages_with_std",
           "DEFAULT_FRAME_BUDGET", "ACCELERATOR_FRAME_BUDGET"]
