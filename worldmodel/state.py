"""The hierarchical latent state carried between steps, and the outputs of the API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .arguments import is_int


@dataclass
class HierarchicalState:
    """State of all N levels after a step (B rows).

    Attributes:
        s: per level (B, S), the current sample s^n_t.
        mean, std: per level (B, S), the distribution s^n_t came from (posterior when
            filtering); it is the static prior p(s^n_{t+1} | e=0) of the next step (eq. 2).
        d: per level (B, D), the temporal state. A level that changed at t has already
            advanced to d^n_{t+1} (eq. 12) unless its transition takes the action, in which
            case the advance is owed (`pending`) and happens with the next step's action.
        top_down: per level (B, C), the cached output c^{n-1} = f_dec^n(s^n, c^n); a static
            level reuses it without running any network.
        pending: (B, N) bool, transitions owed by action-taking levels.
        t: (B,) long, steps since the last reset (drives the clockwork schedule; 0 = the
            next step is a sequence's first, where every level updates).
        factor: per level (B, H), the recurrent prior factor's state h^n (H = 0 for level 1
            and for the feed-forward factor); zero right after the level changed.
    """

    s: list[Tensor]
    mean: list[Tensor]
    std: list[Tensor]
    d: list[Tensor]
    top_down: list[Tensor]
    pending: Tensor
    t: Tensor
    factor: list[Tensor]

    @property
    def batch_size(self) -> int:
        return int(self.t.shape[0])

    @property
    def levels(self) -> int:
        return len(self.s)

    def map(self, fn: Callable[[Tensor], Tensor]) -> HierarchicalState:
        """Apply `fn` to every tensor (row-wise operations: index, repeat, detach, to)."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = [fn(v) for v in value] if isinstance(value, list) else fn(value)
        return HierarchicalState(**values)

    def detach(self) -> HierarchicalState:
        return self.map(lambda v: v.detach())

    def to(self, device: torch.device | str) -> HierarchicalState:
        return self.map(lambda v: v.to(device))

    def index(self, rows: Tensor | slice | int) -> HierarchicalState:
        """The rows `rows` of the batch (keeps the batch axis for an int)."""
        if is_int(rows):  # a NumPy integer too (indexing with it would drop the batch axis)
            rows = slice(int(rows), int(rows) + 1)
        return self.map(lambda v: v[rows])

    def repeat_interleave(self, k: int) -> HierarchicalState:
        """Each row repeated k times in place: (B, ...) -> (B·k, ...), e.g. for K samples."""
        return self.map(lambda v: v.repeat_interleave(k, dim=0))

    def where(self, mask: Tensor, other: HierarchicalState) -> HierarchicalState:
        """Rows of `self` where mask (B,) is True, else rows of `other`."""
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            pick = lambda x, y: torch.where(mask.view(-1, *([1] * (x.dim() - 1))), x, y)  # noqa: E731
            out[f.name] = [pick(x, y) for x, y in zip(a, b)] if isinstance(a, list) else pick(a, b)
        return HierarchicalState(**out)

    @staticmethod
    def stack(states: list[HierarchicalState]) -> HierarchicalState:
        """Stack per-step states along a new time axis 1: each tensor becomes (B, T, ...)."""
        out = {}
        for f in fields(HierarchicalState):
            values = [getattr(s, f.name) for s in states]
            if isinstance(values[0], list):
                out[f.name] = [torch.stack(per_level, 1) for per_level in zip(*values)]
            else:
                out[f.name] = torch.stack(values, 1)
        return HierarchicalState(**out)


@dataclass
class ObserveOutput:
    """Result of `DLH.observe` on frames (B, T, C, H, W).

    Attributes:
        state: state after the last frame, to continue filtering or imagining from.
        changed: (B, T, N) bool, e^n_t (column 0 all True).
        kl: (B, T, N) state KL per level and step (eq. 9).
        factor_kl: (B, T, N) KL of q(e^n) against p(e^n | d^n) (eq. 8c); 0 where not inferred.
        recon: (B, T, C, H, W) decoded posterior means, clamped to [0, 1].
        features: (B, T, F) `features` of the state after every step.
        change_prob: (B, T, N) the prior factor p(e^n = 1 | d^n) where level n was inferred,
            NaN elsewhere (column 0 is 1).
        evaluated: (B, T, N) bool, where e^n was inferred (e^{n-1} = 1).
        recon_mean: (B, T, C, H, W) the unclamped Gaussian means (what the likelihood uses).
    """

    state: HierarchicalState
    changed: Tensor
    kl: Tensor
    factor_kl: Tensor
    recon: Tensor
    features: Tensor
    change_prob: Tensor
    evaluated: Tensor
    recon_mean: Tensor


@dataclass
class Trajectory:
    """Open-loop rollout of `DLH.imagine` over `horizon` steps.

    Attributes:
        states: the state after each imagined step (length horizon).
        changed: (B, horizon, N) bool, the sampled e^n (column 0 all True).
        features: (B, horizon, F).
        decoder_input: (B, horizon, C) the context c^0 the image decoder reads.
        actions: (B, horizon, A) the actions used, or None for an unconditional model.
    """

    states: list[HierarchicalState]
    changed: Tensor
    features: Tensor
    decoder_input: Tensor
    actions: Tensor | None

    @property
    def final_state(self) -> HierarchicalState:
        return self.states[-1]


__all__ = ["HierarchicalState", "ObserveOutput", "Trajectory"]
