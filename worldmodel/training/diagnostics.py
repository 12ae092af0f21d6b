"""Training diagnostics: is every level learning, has the posterior collapsed, do levels fire at events?

- `ParameterGroups`: the model's parameters by network — the conv towers and, per level, its
  posterior, change prior, GRU (temporal), prior factor, top-down decoder and bottom-up
  encoder. `grad_norms` (before clipping) and `relative_updates` (‖Δθ‖/‖θ‖ of one optimiser
  step) report them per level ("level2") and per network ("level2/temporal").
- `HealthCheck`: warns (once per episode) when the posterior has collapsed — every level's
  state KL below `collapse_kl` nats per step after the β warm-up — or when a level's networks
  are frozen: a relative update below `frozen_ratio` × that of level 1.
- `EventProbe`: F1 of each level's change flags against a source's known events (Moving
  Ball's colour changes) on fixed held-out windows, logged periodically during training.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..data import SequenceSource
from ..evaluation.context import evaluating
from ..evaluation.events import level_event_scores

NETWORKS = ("posterior", "prior", "temporal", "factor", "factor_cell", "decoder", "encoder")


class ParameterGroups:
    """Named groups of a DLH's parameters: "conv_encoder", "conv_decoder", "level{n}" and
    "level{n}/{network}" for each network of `NETWORKS` the level has."""

    def __init__(self, model: nn.Module) -> None:
        groups: dict[str, list[nn.Parameter]] = {
            "conv_encoder": list(model.encoder.parameters()),
            "conv_decoder": list(model.decoder.parameters()),
        }
        for n, level in enumerate(model.hierarchy.levels, start=1):
            groups[f"level{n}"] = list(level.parameters())
            for name in NETWORKS:
                module = getattr(level, name, None)
                if isinstance(module, nn.Module):
                    groups[f"level{n}/{name}"] = list(module.parameters())
        self.groups = {k: v for k, v in groups.items() if v}
        self.levels = len(model.hierarchy.levels)

    def grad_norms(self) -> dict[str, float]:
        """L2 norm of the current gradients per group (missing gradients count as zero)."""
        out = {}
        for name, params in self.groups.items():
            sq = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
            out[f"grad_norm/{name}"] = math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0
        return out

    def snapshot(self) -> dict[str, list[Tensor]]:
        """Copies of every group's parameters (before an optimiser step)."""
        return {name: [p.detach().clone() for p in params] for name, params in self.groups.items()}

    def relative_updates(self, before: dict[str, list[Tensor]]) -> dict[str, float]:
        """‖θ_after − θ_before‖ / ‖θ_before‖ per group."""
        out = {}
        for name, params in self.groups.items():
            delta = sum(float((p.detach() - b).float().pow(2).sum()) for p, b in zip(params, before[name]))
            norm = sum(float(b.float().pow(2).sum()) for b in before[name])
            out[f"update/{name}"] = math.sqrt(delta) / max(math.sqrt(norm), 1e-12)
        return out


class HealthCheck:
    """Warnings for a collapsed posterior and for frozen levels, from logged metrics.

    Args:
        levels: N.
        warmup: steps of the β warm-up (no collapse warning before it ends).
        collapse_kl: a level "carries nothing" below this state KL (nats per step).
        frozen_ratio: a level n >= 2 is frozen when its relative update is below this
            fraction of level 1's.
    """

    def __init__(
        self, levels: int, warmup: int, collapse_kl: float = 0.5, frozen_ratio: float = 0.05
    ) -> None:
        self.levels, self.warmup = levels, warmup
        self.collapse_kl, self.frozen_ratio = collapse_kl, frozen_ratio
        self.warned: set[str] = set()

    def collapsed(self, metrics: dict[str, float]) -> bool:
        kls = [metrics.get(f"kl/level{n}") for n in range(1, self.levels + 1)]
        return all(k is not None and k < self.collapse_kl for k in kls)

    def frozen_levels(self, metrics: dict[str, float]) -> list[int]:
        base = metrics.get("update/level1")
        if not base:
            return []
        return [n for n in range(2, self.levels + 1)
                if metrics.get(f"update/level{n}", base) < self.frozen_ratio * base]

    def check(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Flags to log ({"diag/collapsed": 0/1, "diag/frozen_levels": count}); warns on entry."""
        collapsed = self.collapsed(metrics)
        frozen = self.frozen_levels(metrics)
        if collapsed and step > self.warmup and "collapse" not in self.warned:
            self.warned.add("collapse")
            kl = ", ".join(f"L{n} {metrics[f'kl/level{n}']:.3f}" for n in range(1, self.levels + 1))
            warnings.warn(
                f"step {step}: posterior collapse — every level's state KL is below "
                f"{self.collapse_kl} nats/step after the β warm-up ({kl}); the reconstructions "
                "ignore the latents. Keep optim.grad_clip below the gradient norm (grad_norm in the "
                "logs: the clip normalises the huge early gradients, which shortens collapse), or "
                "try a longer optim.beta_warmup or model.loss.free_nats", stacklevel=2)
        elif not collapsed:
            self.warned.discard("collapse")
        for n in frozen:
            key = f"frozen{n}"
            if key not in self.warned:
                self.warned.add(key)
                warnings.warn(
                    f"step {step}: level {n}'s networks are nearly frozen (relative update "
                    f"{metrics[f'update/level{n}']:.2e} vs level 1's {metrics['update/level1']:.2e}); "
                    "check optim.grad_clip and optim.eps against the gradient scale "
                    "(grad_norm/* in the logs)", stacklevel=2)
        for n in range(2, self.levels + 1):
            if n not in frozen:
                self.warned.discard(f"frozen{n}")
        return {"diag/collapsed": float(collapsed), "diag/frozen_levels": float(len(frozen))}


class EventProbe:
    """Event precision/recall/F1 of each level on fixed windows of a source with known events.

    `EventProbe.build` returns None when the source supplies no change flags.
    """

    def __init__(self, frames: Tensor, truth: Any, batch_size: int = 16) -> None:
        self.frames, self.truth, self.batch_size = frames, truth, batch_size

    @classmethod
    def build(cls, source: SequenceSource, sequences: int, length: int, seed: int) -> EventProbe | None:
        try:
            batch, truth = source.eval_batch_with_events(sequences, length, seed)
        except ValueError:
            return None
        if truth is None or batch.actions is not None:
            return None
        return cls(batch.frames, truth)

    @torch.no_grad()
    def __call__(self, model: nn.Module, seed: int | None = None) -> dict[str, float]:
        """The scores of `model`'s current weights; `seed`: the filtering noise's own stream
        (None: torch's global stream as it stands)."""
        changed = []
        with evaluating(model, seed):
            for lo in range(0, self.frames.shape[0], self.batch_size):
                out = model.observe(self.frames[lo:lo + self.batch_size].to(model.device))
                changed.append(out.changed.cpu())
        report = level_event_scores(torch.cat(changed), self.truth, tolerances=(0, 1))
        metrics = {}
        for level, entry in report.items():
            metrics[f"events/{level}_f1"] = entry["exact"]["f1"]
            metrics[f"events/{level}_precision"] = entry["exact"]["precision"]
            metrics[f"events/{level}_recall"] = entry["exact"]["recall"]
            metrics[f"events/{level}_f1_tol1"] = entry["tol1"]["f1"]
        return metrics


__all__ = ["ParameterGroups", "HealthCheck", "EventProbe", "NETWORKS"]
