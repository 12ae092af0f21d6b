"""The paper's analyses of the hierarchy (§4.3-4.4, App. C.3).

- `levels_used`: L̄ = (1/T) Σ_t Σ_n e^n_t per sequence (Table 2).
- `per_level_kl`: the state KL of each level (Table 5).
- `change_prior_by_component`: the mean prior p(e^n = 1 | d^n) where the inferred component
  was "change" vs "static" (Table 3, reported for level 2 in the paper).
- `change_detection`: how inferred e^n matches ground-truth feature changes (Moving Ball's
  colour changes), an extra diagnostic of Table 3's setting.
- `resample_levels` / `level_samples`: decode a filtered state with the samples s^n of some
  levels redrawn from their stored distributions and the others held (Fig. 5a, 10, 11).
- `change_map_figure`: the inferred components e^n_t of a video (Fig. 5c).

Levels are 1-based in names and reports ("level2" is the paper's L2), 0-based in tensors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..arguments import check_int
from ..files import atomic_write
from ..model import DLH
from ..reports import json_safe, json_text  # noqa: F401 - moved to worldmodel.reports; kept importable here
from ..state import HierarchicalState, ObserveOutput


def _stats(per_sequence: Tensor) -> dict[str, float | int | None]:
    """Mean and (population) std over sequences of a (B,) tensor, ignoring NaN rows."""
    values = per_sequence[torch.isfinite(per_sequence)].double()
    if values.numel() == 0:
        return {"mean": None, "std": None, "sequences": 0}
    return {"mean": float(values.mean()), "std": float(values.std(unbiased=False)),
            "sequences": int(values.numel())}


def levels_used(changed: Tensor) -> Tensor:
    """L̄ per sequence (Table 2): changed (B, T, N) bool -> (B,) = (1/T) Σ_t Σ_n e^n_t."""
    return changed.float().sum(-1).mean(-1)


def per_level_kl(kl: Tensor) -> Tensor:
    """Table 5: kl (B, T, N) -> (B, N), the mean over time of each level's state KL (eq. 9).

    A level above the first static one contributes 0 at that step (its posterior is the
    copied static prior), as in the training loss.
    """
    return kl.mean(1)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over time of values (B, T) where mask (B, T); NaN for a row without any."""
    count = mask.sum(1)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def _prior_measures(out: ObserveOutput, level: int) -> dict[str, Tensor]:
    """Per sequence (B,): mean p(e^n = 1 | d^n) and step counts by inferred component."""
    n = level - 1
    if not 1 <= n < out.changed.shape[-1]:
        raise ValueError(f"level: expected 2..{out.changed.shape[-1]}, got {level}")
    prob = out.change_prob[..., n].double()  # (B, T), NaN where e^n was not inferred
    valid = out.evaluated[..., n] & torch.isfinite(prob)
    valid[:, 0] = False  # t = 0: every level updates, the prior is not consulted
    changed = out.changed[..., n]
    measures = {}
    for name, mask in (("change", valid & changed), ("static", valid & ~changed)):
        measures[f"prior_{name}/level{level}"] = _masked_mean(torch.nan_to_num(prob), mask)
        measures[f"count_{name}/level{level}"] = mask.sum(1).double()
    return measures


def sequence_measures(
    out: ObserveOutput, truth_changes: Tensor | np.ndarray | None = None, change_prior: bool = True
) -> dict[str, Tensor]:
    """Every per-sequence quantity of the report, each (B,) float64 (NaN where undefined).

    Keys: "levels_used" (Table 2), "kl_total", "kl/level{n}" (Table 5), "change_rate/level{n}",
    with `change_prior` and N >= 2 "prior_change/level{n}", "prior_static/level{n}",
    "count_change/level{n}", "count_static/level{n}" for n >= 2 (Table 3), and with
    `truth_changes` (B, T) bool the level-2 counts "true_changes", "hits", "no_changes",
    "false_alarms" over t > 0.
    """
    levels = out.changed.shape[-1]
    kl = per_level_kl(out.kl.double())  # (B, N)
    m: dict[str, Tensor] = {"levels_used": levels_used(out.changed).double(), "kl_total": kl.sum(-1)}
    for n in range(levels):
        m[f"kl/level{n + 1}"] = kl[:, n]
        m[f"change_rate/level{n + 1}"] = out.changed[..., n].double().mean(1)
    if change_prior:
        for level in range(2, levels + 1):
            m.update(_prior_measures(out, level))
    if truth_changes is not None and levels >= 2:
        m.update(_detection_counts(out.changed, truth_changes))
    return {k: v.cpu() for k, v in m.items()}


def _detection_counts(changed: Tensor, truth: Tensor | np.ndarray) -> dict[str, Tensor]:
    """Per sequence (B,), over t > 0: true changes, hits (e^2 = 1 there), steps without a
    change and false alarms (e^2 = 1 there); changed (B, T, N), truth (B, T) bool."""
    e = changed[:, 1:, 1].bool().cpu()
    true = torch.as_tensor(np.asarray(truth)).bool()[:, 1:]
    if true.shape != e.shape:
        raise ValueError(f"truth_changes: expected shape {tuple(changed.shape[:2])}, "
                         f"got {tuple(np.asarray(truth).shape)}")
    return {"true_changes": true.double().sum(1), "hits": (true & e).double().sum(1),
            "no_changes": (~true).double().sum(1), "false_alarms": (~true & e).double().sum(1)}


def _detection_rates(m: dict[str, Tensor]) -> dict[str, float | None]:
    true, hits = float(m["true_changes"].sum()), float(m["hits"].sum())
    none, alarms = float(m["no_changes"].sum()), float(m["false_alarms"].sum())
    return {
        "hit_rate": hits / true if true else None,
        "false_alarm_rate": alarms / none if none else None,
        "true_change_rate": true / (true + none) if true + none else None,
    }


def summarize(measures: dict[str, Tensor]) -> dict[str, Any]:
    """The report of `sequence_measures` (concatenated over batches): mean ± std over sequences.

    Returns {"sequences", "levels_used", "kl_total", "kl_per_level", "change_rate_per_level"}
    and, when measured, "change_prior" {"level{n}": {"change", "static", "count"}} (Table 3)
    and "change_detection" {"level2": {"hit_rate", "false_alarm_rate", "true_change_rate"}}.
    Stats are {"mean", "std", "sequences"}; "mean"/"std" are None where nothing was measured.
    """
    levels = sum(1 for k in measures if k.startswith("kl/level"))
    report: dict[str, Any] = {
        "sequences": int(measures["levels_used"].numel()),
        "levels_used": _stats(measures["levels_used"]),
        "kl_total": _stats(measures["kl_total"]),
        "kl_per_level": {f"level{n}": _stats(measures[f"kl/level{n}"]) for n in range(1, levels + 1)},
        "change_rate_per_level": {f"level{n}": float(measures[f"change_rate/level{n}"].mean())
                                  for n in range(1, levels + 1)},
    }
    prior = {}
    for n in range(2, levels + 1):
        if f"prior_change/level{n}" in measures:
            prior[f"level{n}"] = {
                "change": _stats(measures[f"prior_change/level{n}"]),
                "static": _stats(measures[f"prior_static/level{n}"]),
                "count": {c: int(measures[f"count_{c}/level{n}"].sum()) for c in ("change", "static")},
            }
    if prior:
        report["change_prior"] = prior
    if "hits" in measures:
        report["change_detection"] = {"level2": _detection_rates(measures)}
    return report


def change_prior_by_component(out: ObserveOutput, level: int = 2) -> dict[str, Any]:
    """Table 3: mean p(e^n = 1 | d^n) split by the inferred component of q(e^n) (level n >= 2).

    Uses `out.change_prob[..., n-1]` where level n was inferred (`out.evaluated`) after the
    first step. Each sequence gives one mean per component (NaN for a sequence without such
    steps, left out); the report is mean ± std over sequences:
    {"change": stats, "static": stats, "count": {"change": steps, "static": steps}}.
    """
    m = _prior_measures(out, level)
    return {
        "change": _stats(m[f"prior_change/level{level}"]),
        "static": _stats(m[f"prior_static/level{level}"]),
        "count": {c: int(m[f"count_{c}/level{level}"].sum()) for c in ("change", "static")},
    }


def change_detection(changed: Tensor, truth: Tensor | np.ndarray) -> dict[str, float | None]:
    """Agreement of inferred e^2 (changed (B, T, N)) with ground-truth changes (B, T) bool, t > 0:
    "hit_rate" = P(e^2 = 1 | true change), "false_alarm_rate" = P(e^2 = 1 | no change)."""
    return _detection_rates(_detection_counts(changed, truth))


# ---------------------------------------------------------------------- per-level sampling
def top_down_from(model: DLH, state: HierarchicalState, s: Sequence[Tensor], start: int) -> list[Tensor]:
    """Recompute the top-down pass c^{n-1} = f_dec^n(s^n, c^n) (eq. 11) from level `start` down.

    Levels above `start` (1-based) keep their cached top-down outputs; levels start..1 use
    the samples `s` (per level (B, S)) and the context recomputed from above.
    Returns the new per-level top-down list; element 0 is c^0, what the image decoder reads.
    """
    return model.hierarchy.decode_from(start, list(s), list(state.top_down))[1]


@torch.no_grad()
def resample_levels(
    model: DLH,
    state: HierarchicalState,
    levels: Iterable[int],
    samples: int,
    generator: torch.Generator | None = None,
    source: str = "prior",
) -> tuple[Tensor, HierarchicalState]:
    """Decode `state` with s^n redrawn for the chosen `levels` and every other level held.

    For each listed level n (1-based), s^n is drawn `samples` times, top-down from the
    highest listed level: from the level's change prior p(s^n | d^n, c^n) given the context
    from above (`source="prior"`, the default: what the level could hold — Fig. 5a, 10, 11),
    or from the distribution the filtered sample came from, N(state.mean[n], state.std[n])
    (`source="posterior"`: how certain the filter is). Other levels keep their samples s^m;
    the top-down pass is recomputed from the highest resampled level down to level 1 (held
    levels below it read the new context); levels above it are untouched.

    Args:
        model: the DLH; state: a filtered state (B rows); levels: 1-based level numbers
            (empty: decode the held state); samples: K >= 1; generator: for the noise;
            source: "prior" or "posterior".
    Returns:
        frames (B, K, C, H, W) in [0, 1], and the (B·K)-row state with the new s and top_down
        (rows sample-major within each sequence, as `repeat_interleave`).
    """
    chosen = sorted(set(levels))
    for n in chosen:
        if not 1 <= n <= state.levels:
            raise ValueError(f"levels: expected level numbers in 1..{state.levels}, got {n}")
    samples = check_int(samples, "samples", 1)
    if source not in ("prior", "posterior"):
        raise ValueError(f"source: expected 'prior' or 'posterior', got {source!r}")
    rep = state.repeat_interleave(samples)
    hierarchy = model.hierarchy

    def draw(i: int, context: Tensor) -> Tensor | None:
        if i + 1 not in chosen:
            return None  # held
        if source == "prior":
            mean, std = hierarchy.levels[i].predict(rep.d[i], context)
        else:
            mean, std = rep.mean[i], rep.std[i]
        noise = torch.randn(mean.shape, generator=generator, device="cpu").to(mean.device, mean.dtype)
        return mean + std * noise

    s, top_down = hierarchy.decode_from(max(chosen) if chosen else 0, rep.s, rep.top_down, draw)
    new = dataclasses.replace(rep, s=s, top_down=top_down)
    frames = model.decoder(top_down[0]).clamp(0, 1)  # (B·K, C, H, W)
    return frames.unflatten(0, (state.batch_size, samples)), new


@torch.no_grad()
def level_samples(
    model: DLH,
    state: HierarchicalState,
    groups: Sequence[Sequence[int]],
    samples: int,
    truth: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """An image grid for Fig. 5a / 10 / 11 from the first row of `state`.

    Row r resamples the levels `groups[r]` (e.g. [[1], [2], [3]] for Fig. 5a, [[3]] and
    [[1, 2]] for Fig. 10 / 11 of a 3-level model). Columns: the ground-truth frame (when
    `truth` (C, H, W) is given), the decoded held state, then K samples.
    Returns (R, columns, C, H, W) in [0, 1], for `worldmodel.video.image_grid`.
    """
    first = state.index(0)
    held = model.decode(first)[0]  # (C, H, W)
    rows = []
    for group in groups:
        frames, _ = resample_levels(model, first, group, samples, generator)
        tiles = [held.unsqueeze(0), frames[0]]
        if truth is not None:
            tiles.insert(0, truth.to(held.device, held.dtype).unsqueeze(0))
        rows.append(torch.cat(tiles))
    return torch.stack(rows).cpu()


def sampling_groups(levels: int) -> dict[str, list[list[int]]]:
    """The row groups drawn by `dlh analyze`: one level at a time (Fig. 5a) and, for each
    m = 2..N, levels >= m vs levels < m (Fig. 10 / Fig. 11)."""
    per_level = [[n] for n in range(1, levels + 1)]
    split = []
    for m in range(2, levels + 1):
        split += [list(range(m, levels + 1)), list(range(1, m))]
    return {"per_level": per_level, "split": split}


# ---------------------------------------------------------------------- change maps
def change_map_figure(
    path: str | os.PathLike[str],
    frames: Tensor,
    changed: Tensor,
    evaluated: Tensor | None = None,
    truth_changes: Tensor | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """Fig. 5c: the frames of one video above the inferred e^n_t of every level, as a PNG.

    Rows are levels L1 (bottom) .. LN (top); columns are time steps. A filled black dot marks
    e^n_t = 1 (change component), a hollow circle a level whose e^n_t was inferred as 0
    (static component), nothing a level above a static one (not evaluated, eq. 5). Ground
    truth changes, when given, are marked by red ticks under the map.

    Args:
        frames: (T, C, H, W) in [0, 1]; changed, evaluated: (T, N) bool;
        truth_changes: (T,) bool or None.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..video import image_grid

    steps, levels = changed.shape
    if frames.shape[0] != steps:
        raise ValueError(f"frames has {frames.shape[0]} steps but changed has {steps}")
    strip = image_grid(frames.detach().cpu().unsqueeze(0), border=1)  # (h, w, 3) one row
    e = changed.bool().cpu().numpy()
    ev = evaluated.bool().cpu().numpy() if evaluated is not None else np.ones_like(e)
    width = min(40.0, max(6.0, 0.25 * steps))
    figure = Figure(figsize=(width, 1.2 + 0.35 * levels + width * strip.shape[0] / strip.shape[1]), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={
        "height_ratios": [max(0.2, width * strip.shape[0] / strip.shape[1]), 0.35 * levels + 0.3]})
    top.imshow(strip, extent=(-0.5, steps - 0.5, 0, 1), aspect="auto", interpolation="nearest")
    top.set_yticks([])
    t_idx, n_idx = np.nonzero(e)
    bottom.scatter(t_idx, n_idx + 1, s=30, c="black", marker="o", label="e=1 (change)")
    t_idx, n_idx = np.nonzero(ev & ~e)
    bottom.scatter(t_idx, n_idx + 1, s=30, facecolors="none", edgecolors="gray", marker="o",
                   label="e=0 (static)")
    if truth_changes is not None:
        truth = np.asarray(torch.as_tensor(np.asarray(truth_changes)).bool())
        bottom.scatter(np.nonzero(truth)[0], np.full(int(truth.sum()), 0.4), s=40, c="red", marker="|",
                       label="true change")
    bottom.set_yticks(range(1, levels + 1), [f"L{n}" for n in range(1, levels + 1)])
    bottom.set_ylim(0.1 if truth_changes is not None else 0.5, levels + 0.5)
    bottom.set_xlim(-0.5, steps - 0.5)
    bottom.set_xlabel("time step")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    if title:
        top.set_title(title)
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


# ---------------------------------------------------------------------- the whole report
@torch.no_grad()
def hierarchy_report(
    model: DLH,
    frames: Tensor,
    actions: Tensor | None = None,
    is_first: Tensor | None = None,
    truth_changes: np.ndarray | Tensor | None = None,
) -> tuple[dict[str, Any], ObserveOutput]:
    """Filter `frames` (B, T, C, H, W) and `summarize` its `sequence_measures` (L̄, per-level
    KL, and Table 3 for a dynamic model with 2+ levels). Returns (report, observe output)."""
    device = model.device
    out = model.observe(frames.to(device), None if actions is None else actions.to(device),
                        None if is_first is None else is_first.to(device))
    dynamic = model.config.inference.timescale == "dynamic"
    report = summarize(sequence_measures(out, truth_changes, change_prior=dynamic))
    report["steps"] = int(frames.shape[1])
    return report, out


__all__ = [
    "levels_used", "per_level_kl", "sequence_measures", "summarize", "change_prior_by_component",
    "change_detection",
    "top_down_from", "resample_levels", "level_samples", "sampling_groups",
    "change_map_figure", "hierarchy_report", "json_safe", "json_text",
]
