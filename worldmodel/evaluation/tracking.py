"""Open-loop object tracking: does an imagined rollout keep the object on its path and its colour?

For sources that can read their objects off pixels (`SequenceSource.read_objects`; Moving
Ball), the model filters `context` frames of fresh test windows, imagines `samples` open-loop
rollouts of `horizon` frames per window, and the object is read off the true and the
predicted frames alike:

- centroid error: the distance in pixels between the predicted and the true centroid; a
  predicted frame that shows no object counts as the frame's diagonal (lost, never skipped);
  frames whose truth shows no object are not scored;
- best of K: per sequence the sample with the lowest mean centroid error over the horizon;
- `centroid_px_at{k}`: the median over sequences of that sample's error k frames after the
  context (k = 1 is the first predicted frame); `centroid_px_mean`: the median over sequences
  of its mean over the horizon;
- `colour_kept`: over all sequences, the fraction of the chosen sample's frames before the
  first true colour change in the horizon (a new colour is random, so later frames are not
  scored) on which the predicted colour equals the true one (a lost object is not kept);
- `visible`: the fraction of the chosen sample's frames that show an object.

    scores = tracking_scores(model, source)      # None when the source cannot read objects
    scores["centroid_px_at10"], scores["colour_kept"]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..arguments import check_int
from ..data import ObjectReadout, SequenceSource
from ..model import DLH
from .loading import eval_sequences

DEFAULT_AT = (1, 5, 10, 20, 30)
# Most predicted frames (rollouts x horizon) decoded at once: sequences are split into chunks
# below it (the chunking is fixed by the arguments, so results do not depend on the device).
FRAME_BUDGET = 16384


def centroid_errors(truth: ObjectReadout, pred: ObjectReadout, diagonal: float) -> np.ndarray:
    """Per-frame centroid error in pixels: truth (B, T) readout, pred (B, K, T) or (B, T).

    A predicted frame without a visible object scores `diagonal`; a frame whose truth shows
    none is NaN (not scored). Returns the shape of `pred.visible`.
    """
    extra = pred.visible.ndim - truth.visible.ndim
    true_c = truth.centroid.reshape(truth.centroid.shape[:1] + (1,) * extra + truth.centroid.shape[1:])
    true_v = truth.visible.reshape(truth.visible.shape[:1] + (1,) * extra + truth.visible.shape[1:])
    err = np.linalg.norm(pred.centroid - true_c, axis=-1)
    err = np.where(pred.visible, err, diagonal)
    return np.where(true_v, err, np.nan)


def colour_kept(truth: ObjectReadout, pred: ObjectReadout, last_colour: np.ndarray) -> tuple[int, int]:
    """(kept, scored) frames before the first true colour change; truth and pred (B, T).

    `last_colour` (B,) is the true colour of the last context frame: a change at the first
    predicted frame already ends the scored span.
    """
    same = truth.colour == last_colour[:, None]
    span = np.cumprod(same & truth.visible, axis=1).astype(bool)  # (B, T) before the first change
    kept = span & pred.visible & (pred.colour == truth.colour)
    return int(kept.sum()), int(span.sum())


def reads_objects(source: SequenceSource) -> bool:
    """Whether `source` can read objects off frames (asked with one blank frame, no data drawn)."""
    blank = torch.zeros(1, 1, source.channels, source.image_size, source.image_size)
    return source.read_objects(blank) is not None


def _index(readout: ObjectReadout, rows: np.ndarray | slice, steps: slice = slice(None)) -> ObjectReadout:
    return ObjectReadout(readout.centroid[rows][:, steps], readout.colour[rows][:, steps],
                         readout.visible[rows][:, steps], readout.palette)


def _split(readout: ObjectReadout, k: int) -> ObjectReadout:
    """(B·k, T) rows, sample-major per sequence -> (B, k, T)."""
    def unflat(a: np.ndarray) -> np.ndarray:
        return a.reshape(-1, k, *a.shape[1:])
    return ObjectReadout(unflat(readout.centroid), unflat(readout.colour),
                         unflat(readout.visible), readout.palette)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where every value is NaN (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=-1)


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else math.nan


@torch.no_grad()
def tracking_scores(
    model: DLH,
    source: SequenceSource,
    *,
    context: int = 10,
    horizon: int = 30,
    samples: int = 10,
    sequences: int = 32,
    seed: int = 0,
    at: Sequence[int] = DEFAULT_AT,
) -> dict[str, float] | None:
    """Best-of-K open-loop tracking scores (module docstring), or None if `source` cannot
    read its objects.

    Args:
        model: a DLH; its device is used; no gradients are taken and its mode is kept.
        source: the data (use the test split, as `dlh eval` does: `evaluation_source`);
            `sequences` windows of `context + horizon` frames come from `eval_batch`.
        context: frames filtered before the rollout (>= 1).
        horizon: open-loop frames predicted and scored (>= 1).
        samples: K rollouts per sequence, one `imagine` call for all sequences x samples
            (chunked above FRAME_BUDGET predicted frames).
        sequences: test windows scored.
        seed: the windows (`eval_batch`'s seed) and the sampling noise; torch's global
            generator is forked, so a caller's random stream (the trainer's) is untouched.
        at: offsets after the context (1..horizon) reported as `centroid_px_at{k}`.

    Returns:
        {"centroid_px_at{k}": px, "centroid_px_mean": px, "colour_kept": fraction,
        "visible": fraction} as floats (NaN where nothing could be scored), or None.
    """
    context = check_int(context, "context", 1)
    horizon = check_int(horizon, "horizon", 1)
    samples = check_int(samples, "samples", 1)
    sequences = check_int(sequences, "sequences", 1)
    at = tuple(check_int(k, "at", 1) for k in at)
    if any(k > horizon for k in at):
        raise ValueError(f"at: offsets {at} must lie in 1..horizon={horizon}")
    if not reads_objects(source):
        return None
    batch, _ = eval_sequences(source, sequences, context + horizon, seed, "context + horizon")
    frames = batch.frames
    truth_all = source.read_objects(frames)
    if truth_all is None:
        return None
    truth = _index(truth_all, slice(None), slice(context, context + horizon))
    last_colour = truth_all.colour[:, context - 1]
    diagonal = math.hypot(frames.shape[-2], frames.shape[-1])

    device = model.device
    per_chunk = max(1, FRAME_BUDGET // (samples * horizon))
    errors, colours, visible = [], [], []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for lo in range(0, sequences, per_chunk):
            rows = slice(lo, min(sequences, lo + per_chunk))
            acts = batch.actions[rows].to(device) if batch.actions is not None else None
            first = batch.is_first[rows, :context].to(device) if batch.is_first is not None else None
            state = model.observe(frames[rows, :context].to(device),
                                  None if acts is None else acts[:, :context], first).state
            start = state.repeat_interleave(samples)  # (b·K) rows, sample-major per sequence
            future = None
            if acts is not None:
                future = acts[:, context:context + horizon].repeat_interleave(samples, 0)
            video = model.decode(model.imagine(start, horizon, future))  # (b·K, H, C, h, w)
            pred = source.read_objects(video)
            assert pred is not None  # the source read the truth
            pred = _split(pred, samples)  # (b, K, H)
            chunk_truth = _index(truth, rows)
            err = centroid_errors(chunk_truth, pred, diagonal)  # (b, K, H)
            score = _nanmean(err)  # (b, K) mean error over the horizon
            best = np.argmin(np.where(np.isnan(score), np.inf, score), axis=1)  # ties: first
            take = np.arange(len(best))
            errors.append(err[take, best])
            chosen = ObjectReadout(pred.centroid[take, best], pred.colour[take, best],
                                   pred.visible[take, best], pred.palette)
            colours.append(colour_kept(chunk_truth, chosen, last_colour[rows]))
            visible.append(chosen.visible)

    err = np.concatenate(errors)  # (B, H)
    scores: dict[str, float] = {f"centroid_px_at{k}": _median(err[:, k - 1]) for k in at}
    scores["centroid_px_mean"] = _median(_nanmean(err))
    kept = sum(k for k, _ in colours)
    scored = sum(n for _, n in colours)
    scores["colour_kept"] = kept / scored if scored else math.nan
    scores["visible"] = float(np.concatenate(visible).mean())
    return scores


DEFINITION = (
    "best of K open-loop samples per sequence by mean centroid error over the horizon; "
    "centroid_px_at{k}: median over sequences of that sample's centroid error (px) k frames after "
    "the context, a predicted frame without a visible object counting as the frame diagonal; "
    "colour_kept: fraction of its frames before the first true colour change on which the "
    "predicted colour is the true one; visible: fraction of its frames showing an object; "
    "objects read off the pixels of truth and prediction (SequenceSource.read_objects)"
)


def offsets_within(horizon: int, at: Sequence[int] = DEFAULT_AT) -> tuple[int, ...]:
    """The offsets of `at` that a rollout of `horizon` frames reaches, plus `horizon` itself
    when `at` reaches none."""
    kept = tuple(k for k in at if k <= horizon)
    return kept or (horizon,)


def format_tracking(scores: dict[str, float]) -> str:
    """One line of text: "centroid px +1 0.52  +5 2.70 ...  colour kept 61.0 %  visible 100.0 %"."""
    def num(value: float, scale: float = 1.0, digits: int = 2) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value * scale:.{digits}f}"

    at = [k for k in scores if k.startswith("centroid_px_at")]
    px = "  ".join(f"+{k.removeprefix('centroid_px_at')} {num(scores[k])}" for k in at)
    return (f"centroid px {px}  (mean {num(scores['centroid_px_mean'])})   colour kept "
            f"{num(scores['colour_kept'], 100, 1)} %   visible {num(scores['visible'], 100, 1)} %")


__all__ = ["tracking_scores", "reads_objects", "centroid_errors", "colour_kept", "format_tracking",
           "offsets_within", "DEFAULT_AT", "DEFINITION", "FRAME_BUDGET"]
