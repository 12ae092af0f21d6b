"""Decision rules for e^n (eq. 4) that drift cannot fool, and the statistics they keep.

The paper's rule (`decision: kl`) calls a change whenever the candidate posterior q'(s^n_t) is
nearer, in KL, to the change prior than to the static prior (the previous posterior). With a
sharp posterior (std ≈ 0.01–0.05) a small drift of q' over a static stretch costs tens of nats
of static KL and the rule fires where nothing changed (docs/results.md, issue 17). The rules
here keep eq. 4's comparison and add what the level has learned about its own drift:

- `tolerant`: the static prior's variance is widened, for the decision only, by
  (`decision_tolerance` × the level's drift scale)² per dimension, where the drift scale is a
  running root-mean-square of q''s distance from the static prior's mean on rows the rule
  called static (how far the posterior wanders over a static stretch).
  The loss still pays the KL to the unwidened static prior (eq. 9).
- `relative`: eq. 4 and a surprise test — log KL_static above its running mean by
  `decision_gamma` running standard deviations (EM-LLM's boundary rule, on the level's KL to
  its static prior). The threshold scales with what the level has learned: when the level
  holds nothing, every static KL is small and the test still lets its largest ones through, so
  the level keeps changing (and learning) — a fixed margin in nats silenced it (docs/results.md).

Both run the paper's rule for their first `decision_warmup` training updates (a schedule: eq. 4
alone while the level has no content yet), then their own. The statistics are a buffer per
level (n ≥ 2), updated only where the caller asks for it — the training objective (`DLH.loss`)
passes `update_stats=True` to `Hierarchy.infer_step` — from the rows where e^n was decided (not a
sequence's first step), with exponential averaging at `decision_rate` per update (one update per
filtering step, from the batch's rows; under torch.distributed the ranks' updates are averaged,
`agree_across_ranks`); they are saved with the model and frozen in evaluation, imagination and
acting — `observe`, `observe_step` and `imagine` never move them, whatever the model's mode.

Layout of a level's buffer (float32, size 3 + |s|):
  [0] updates so far, [1] running mean of log KL_static, [2] running variance of log KL_static,
  [3:] running mean square of the drift of q'(s^n) per dimension.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .distributions import Gaussian, kl_gaussian

RUNNING_RULES = ("tolerant", "relative")  # the rules that keep statistics
_LOG_FLOOR = 1e-6  # nats: log KL of a static prior the posterior sits on


def stats_size(s_dim: int) -> int:
    return 3 + s_dim


def initial_stats(s_dim: int) -> Tensor:
    """A level's statistics before any update: log KL mean 0, variance 1, drift scale 0."""
    stats = torch.zeros(stats_size(s_dim))
    stats[2] = 1.0
    return stats


def warm(stats: Tensor, warmup: int) -> bool:
    """Whether the level's rule is past its warm-up (the paper's rule before)."""
    return float(stats[0]) >= warmup


def surprise(kl_static: Tensor, stats: Tensor) -> Tensor:
    """z-score of log KL_static under the level's running statistics: (B,) -> (B,)."""
    log_kl = torch.log(kl_static.float().clamp_min(_LOG_FLOOR))
    return (log_kl - stats[1]) / stats[2].clamp_min(1e-6).sqrt()


def tolerant_static(static: Gaussian, stats: Tensor, tolerance: float) -> Gaussian:
    """The static prior widened by (tolerance × drift scale)² per dimension (decision only)."""
    extra = (tolerance**2) * stats[3:].to(static.std.dtype)
    return Gaussian(static.mean, torch.sqrt(static.std.pow(2) + extra))


def decide(
    rule: str, q: Gaussian, change_prior: Gaussian, static: Gaussian, stats: Tensor,
    tolerance: float, gamma: float, warmup: int, margin: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The hard e^n (as 0./1. float) of a running rule, eq. 4 during the warm-up, and
    KL[q' ‖ static prior] (for `update`): (B,), (B,)."""
    kl_change, kl_static = kl_gaussian(q, change_prior), kl_gaussian(q, static)
    if not warm(stats, warmup):
        return (kl_static - kl_change - margin > 0).float(), kl_static
    if rule == "tolerant":
        wide = kl_gaussian(q, tolerant_static(static, stats, tolerance))
        return (wide - kl_change - margin > 0).float(), kl_static
    if rule == "relative":
        e = (kl_static - kl_change - margin > 0) & (surprise(kl_static, stats) > gamma)
        return e.float(), kl_static
    raise ValueError(f"decide: unknown running rule {rule!r}; expected one of {RUNNING_RULES}")


@torch.no_grad()
def update(stats: Tensor, q: Gaussian, static: Gaussian, kl_static: Tensor, rows: Tensor,
           changed: Tensor, rate: float) -> Tensor:
    """A level's statistics with one filtering step folded in: a new tensor (`stats` is not
    modified; the same tensor back where no row was decided).

    kl_static: (B,) KL[q' ‖ static prior], as `decide` returned it; rows: (B,) bool, where
    e^n was decided; changed: (B,) bool, the decision. The log static
    KL of every decided row enters the mean and variance, each deviation clipped at 3 running
    standard deviations (true changes are rare outliers that would otherwise set the scale);
    the drift of q' enters the drift scale only on rows decided static (the drift a static
    stretch shows), each dimension clipped at 3× its running scale once one exists.
    """
    if not bool(rows.any()):
        return stats
    stats = stats.clone()
    log_kl = torch.log(kl_static[rows].float().clamp_min(_LOG_FLOOR))
    first = float(stats[0]) == 0
    mean, var = stats[1], stats[2]
    if first:
        new_mean = log_kl.median()
        new_var = ((log_kl - new_mean).abs().median() * 1.4826).pow(2).clamp_min(1e-4)
    else:
        limit = 3.0 * var.sqrt()
        dev = (log_kl - mean).clamp(-limit, limit)
        new_mean = mean + rate * dev.mean()
        new_var = (1 - rate) * var + rate * (dev.pow(2).mean())
    stats[1], stats[2] = new_mean, new_var.clamp_min(1e-4)
    static_rows = rows & ~changed
    if bool(static_rows.any()):
        drift2 = (q.mean[static_rows] - static.mean[static_rows]).float().pow(2)
        scale2 = stats[3:]
        if bool((scale2 > 0).all()):
            drift2 = torch.minimum(drift2, 9.0 * scale2)
            stats[3:] = (1 - rate) * scale2 + rate * drift2.mean(0)
        else:
            stats[3:] = drift2.mean(0)
    stats[0] += 1
    return stats


@torch.no_grad()
def agree_across_ranks(old: Tensor, new: Tensor) -> Tensor:
    """The statistics every rank keeps after an update: `new` in a single process; under
    torch.distributed, `old` plus the mean of the ranks' updates (new − old) over the ranks
    that updated (a rank whose rows decided nothing contributes no update and is not counted,
    so the update counter [0] advances by 1 when any rank updated).

    Every rank starts from the same `old` (they all apply the same reduced update), so the
    buffers stay equal on every rank; without it each rank's buffer would drift apart and DDP's
    buffer broadcast would keep rank 0's alone. All ranks must call it at the same points
    (once per level with statistics and filtering step of the training loss), whatever their rows.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_world_size() == 1:
        return new
    delta = new - old  # `update` returns `old` itself where this rank decided no row
    packed = torch.cat([delta, delta.new_ones(1) if new is not old else delta.new_zeros(1)])
    torch.distributed.all_reduce(packed)  # sum over ranks
    ranks = float(packed[-1])
    return old if ranks == 0 else old + packed[:-1] / ranks


def describe(stats: Tensor) -> dict[str, float]:
    """Readable statistics of one level (for logs and the decision bench)."""
    return {"updates": float(stats[0]), "log_kl_mean": float(stats[1]),
            "log_kl_std": math.sqrt(max(float(stats[2]), 0.0)),
            "kl_median": math.exp(float(stats[1])), "drift_rms": float(stats[3:].mean().sqrt())}


__all__ = ["RUNNING_RULES", "decide", "update", "agree_across_ranks", "initial_stats", "stats_size",
           "surprise", "tolerant_static", "warm", "describe"]
