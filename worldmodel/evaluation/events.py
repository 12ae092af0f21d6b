"""Event detection scores: do a level's change flags e^n_t fire where the data's features change?

For data with known events (Moving Ball's colour changes, or any source that supplies (B, T)
change flags), a level's inferred e^n is scored as an event detector:

- exact: a predicted change at step t is a true positive iff the data changed at t;
- tolerant (``tolerance=k``): a predicted change may match a true change at most k steps
  away. Matching is one-to-one (a true change is matched by at most one prediction and vice
  versa), found per sequence by the greedy earliest-feasible rule, which is a maximum matching
  for points on a line with symmetric windows.

Step 0 is left out (every level is forced to change there). Counts are summed over sequences
(micro average) before precision, recall and F1 are formed. Conventions for empty cases:
nothing true and nothing predicted scores 1.0 everywhere (perfect agreement); otherwise an
empty denominator scores 0.0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor


def _as_bool_array(flags: Tensor | np.ndarray, name: str) -> np.ndarray:
    array = flags.detach().cpu().numpy() if isinstance(flags, Tensor) else np.asarray(flags)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected (B, T) change flags, got shape {tuple(array.shape)}")
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name}: expected booleans or 0/1 values")
        array = array.astype(bool)
    return array


def match_events(predicted: np.ndarray, truth: np.ndarray, tolerance: int = 0) -> int:
    """Size of a maximum one-to-one matching between two sorted 1-D arrays of step indices,
    where a pair matches when |p − t| <= tolerance."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    matched, j = 0, 0
    for t in truth:  # greedy: each true event takes the earliest unused prediction in its window
        while j < len(predicted) and predicted[j] < t - tolerance:
            j += 1
        if j < len(predicted) and predicted[j] <= t + tolerance:
            matched += 1
            j += 1
    return matched


def event_counts(predicted: Tensor | np.ndarray, truth: Tensor | np.ndarray,
                 tolerance: int = 0) -> dict[str, int]:
    """True positives, false positives and false negatives over steps t >= 1.

    predicted, truth: (B, T) bool. Returns {"tp", "fp", "fn"} summed over sequences.
    """
    pred = _as_bool_array(predicted, "predicted")
    true = _as_bool_array(truth, "truth")
    if pred.shape != true.shape:
        raise ValueError(f"event_counts: predicted {pred.shape} and truth {true.shape} differ in shape")
    tp = fp = fn = 0
    for p_row, t_row in zip(pred[:, 1:], true[:, 1:]):
        p_idx, t_idx = np.flatnonzero(p_row), np.flatnonzero(t_row)
        m = match_events(p_idx, t_idx, tolerance) if tolerance else int((p_row & t_row).sum())
        tp += m
        fp += len(p_idx) - m
        fn += len(t_idx) - m
    return {"tp": tp, "fp": fp, "fn": fn}


def scores_from_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 from counts (empty cases as in the module docstring)."""
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "f1": f1}


def event_scores(predicted: Tensor | np.ndarray, truth: Tensor | np.ndarray,
                 tolerance: int = 0) -> dict[str, float | int]:
    """{"precision", "recall", "f1", "tp", "fp", "fn"} of (B, T) predicted vs true changes."""
    counts = event_counts(predicted, truth, tolerance)
    return {**scores_from_counts(**counts), **counts}


def level_event_scores(changed: Tensor, truth: Tensor | np.ndarray,
                       tolerances: tuple[int, ...] = (0, 1)) -> dict[str, dict[str, Any]]:
    """Scores of every level n >= 2: changed (B, T, N) bool, truth (B, T) bool.

    Returns {"level{n}": {"exact": scores, "tol{k}": scores, "change_rate": float}}, with
    "exact" for tolerance 0 and "tol{k}" for each k > 0 in `tolerances`.
    """
    if changed.dim() != 3:
        raise ValueError(f"changed: expected (B, T, N), got {tuple(changed.shape)}")
    report: dict[str, dict[str, Any]] = {}
    for n in range(1, changed.shape[-1]):
        flags = changed[..., n]
        entry: dict[str, Any] = {}
        for k in tolerances:
            entry["exact" if k == 0 else f"tol{k}"] = event_scores(flags, truth, k)
        entry["change_rate"] = float(flags[:, 1:].float().mean()) if flags.shape[1] > 1 else 0.0
        report[f"level{n + 1}"] = entry
    return report


def true_change_rate(truth: Tensor | np.ndarray) -> float:
    """Fraction of steps t >= 1 with a true change."""
    true = _as_bool_array(truth, "truth")
    return float(true[:, 1:].mean()) if true.shape[1] > 1 else 0.0


__all__ = ["event_counts", "event_scores", "scores_from_counts", "match_events",
           "level_event_scores", "true_change_rate"]
