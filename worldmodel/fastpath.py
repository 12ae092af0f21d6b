"""Imagination's fast paths, kept apart from the reference step in `hierarchy.py`.

Two speed-ups live here, each tested against the reference path (tests/test_fastpath.py):

- `Rows`: on which rows of a batch a level runs this step — none, all, gathered (index the
  active rows, run, scatter back) or masked (run on all rows, keep the active ones).
- `change_step`: one changing level's imagination step — change prior (eq. 14), sample,
  c^{n-1} = f_dec (eq. 11) and d^n_{t+1} = f_tem (eq. 12) — by one of three routes: "eager"
  (the reference: the level's networks one call each), "fused" (`fused_change_step` on
  regrouped weights: fewer, larger matrix products) or "compiled" (the fused step through
  `torch.compile`). `step_route` picks the route once per step.

Nothing here changes what is computed: the fused routes agree with the eager one up to float
rounding (≈1e-7) and draw the same normal noise, so the random stream is consumed alike.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from .level import Level
from .networks import MLP

STEP_MODES = ("fused", "eager", "compiled")



class ChangeStep(NamedTuple):
    """One changing level's imagination step on its active rows (eq. 11, 12, 14)."""

    s: Tensor  # (B, S) the sample s^n ~ p(s^n | d^n, c^n)
    mean: Tensor  # (B, S) the change prior's mean
    std: Tensor  # (B, S) and std
    below: Tensor  # (B, C) c^{n-1} = f_dec^n(s^n, c^n)
    d_next: Tensor | None  # (B, D) d^n_{t+1}; None for a level whose transition takes the action


class FusedWeights(NamedTuple):
    """A level's prior, decoder and GRU regrouped for `fused_change_step` (transposed for addmm)."""

    by_d: Tensor  # d -> first prior layer and GRU hidden side
    bias_d: Tensor
    by_c: Tensor  # c -> first prior layer and first decoder layer
    by_s: Tensor  # s -> first decoder layer and GRU input side
    bias_s: Tensor
    prior_rest: tuple  # ((weight, bias), ...) of the prior's further layers
    decoder_rest: tuple
    prior_width: int  # width of the prior's first layer
    decoder_width: int


# (d, context, noise, weights, min_std) -> the step
Route = Callable[[Tensor, Tensor, Tensor, FusedWeights, float], ChangeStep]


class Rows:
    """The rows of a batch on which a level runs this step.

    kind: "none" (run nothing), "all", "gather" (index the active rows, run, scatter back)
    or "mask" (run on every row, keep the active ones with `torch.where`). Gathering costs
    an index_select/index_copy per tensor, masking costs the wasted rows; `gather_below` is
    the active fraction under which gathering is used (0 disables it).
    """

    def __init__(self, mask: Tensor, gather_below: float = 0.0, all_rows: bool = False) -> None:
        self.mask = mask
        if all_rows:  # known to be all True: skip the count
            self.kind = "all"
            return
        size = mask.numel()
        active = int(mask.item()) if size == 1 else int(mask.sum())  # batch 1: one read, no sum
        if active == 0:
            self.kind = "none"
        elif active == size:
            self.kind = "all"
        elif active < gather_below * size:
            self.kind = "gather"
            self.index = mask.nonzero().squeeze(1)
        else:
            self.kind = "mask"

    def take(self, x: Tensor) -> Tensor:
        """Active rows of x (B, ...) -> (B_active, ...) (all rows unless gathering)."""
        return x.index_select(0, self.index) if self.kind == "gather" else x

    def put(self, new: Tensor, old: Tensor) -> Tensor:
        """`old` (B, ...) with its active rows replaced by `new` (from `take`'d inputs)."""
        if self.kind == "all":
            return new
        if self.kind == "gather":
            return old.index_copy(0, self.index, new.to(old.dtype))
        return torch.where(self.mask.view(-1, *([1] * (old.dim() - 1))), new, old)


def step_route(mode: str, x: Tensor, compiled: Callable[[], Route]) -> Route | None:
    """The fused route for `Hierarchy.step_mode` `mode`, or None for the eager (reference) one.

    With autograd on or under autocast every mode runs eager. `compiled()` gives the
    hierarchy's compiled step (built on first use).
    """
    if mode == "eager" or torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return None
    return compiled() if mode == "compiled" else fused_change_step


def change_step(level: Level, d: Tensor, context: Tensor, route: Route | None,
                generator: torch.Generator | None = None) -> ChangeStep:
    """One changing level's imagination step on its active rows: d (B, D), context (B, C).

    d_next is None for a level whose transition takes the action (its advance is owed, see
    `hierarchy.Hierarchy.pay_owed`). `route` None is the reference path; a level that takes
    the action always runs it. The noise comes from `generator` (None: torch's global RNG).
    """
    # the fused step knows a plain GRUCell reading s^n alone
    plain = level.temporal_in is None and isinstance(level.temporal, torch.nn.GRUCell)
    if route is None or level.takes_action or not plain or not (level.prior_reads_d and level.prior_reads_c):
        dist = level.predict(d, context)  # eq. 14
        s = dist.rsample(generator)
        below = level.top_down(s, context)  # eq. 11
        d_next = None if level.takes_action else level.transition(s, d, None)  # eq. 12
        return ChangeStep(s, dist.mean, dist.std, below, d_next)
    noise = torch.randn(d.shape[0], level.s_dim, device=d.device, dtype=torch.float32, generator=generator)
    return route(d, context, noise, fused_weights(level), level.min_std)


def compile_route() -> Route:
    """`fused_change_step` through torch.compile, the row count as the one dynamic size.

    Weight shapes stay static (a fully dynamic compile measured slower than eager); one
    graph serves every row count above 1 and one batch 1 (docs/results.md, "A level's step").
    """
    step = torch.compile(fused_change_step)

    def compiled(d: Tensor, context: Tensor, noise: Tensor, weights: FusedWeights,
                 min_std: float) -> ChangeStep:
        if d.shape[0] > 1:
            for t in (d, context, noise):
                torch._dynamo.mark_dynamic(t, 0)
        return step(d, context, noise, weights, min_std)

    return compiled


# ---------------------------------------------------------------------- regrouped weights
# Staleness. The regrouped weights are a copy, so they go stale when the level's weights
# change. Comparing every value at every rollout is exact but cost ≈ 3 % of a batch-1 rollout
# (a pass over 2 × 1 MB per paper-sized level, and the caches it evicts), and PyTorch's version
# counter is private. So the key is: the networks' and parameters' identities; each
# parameter's storage address (`.to`, `p.data = ...`, a replaced parameter; the old storages
# are held, so an address cannot come back); and a generation counter that every optimiser
# step (a global post-step hook) and every `load_state_dict` into a fused network (a post-load
# hook) bump. Any other in-place edit (`with torch.no_grad(): p.mul_(…)`, `p.data.copy_(…)`,
# EMA, a DDP broadcast) must be followed by `clear_fused()` — the rule for code that changes
# weights outside an optimiser.
_GENERATION = [0]


def _bump(*_: object) -> None:
    _GENERATION[0] += 1


register_optimizer_step_post_hook(_bump)
_HOOKED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # modules with the post-load hook


class _Fused:
    """The regrouped weights of one level and the key they were built under (see above)."""

    def __init__(self, level: Level) -> None:
        self.nets = (level.prior, level.decoder, level.temporal)  # held: identities stay unique
        for module in (m for net in self.nets for m in net.modules()):
            if module not in _HOOKED:
                module.register_load_state_dict_post_hook(_bump)
                _HOOKED.add(module)
        # the parameter tables of every module involved, found once (a few µs per check)
        self.tables = [m._parameters for net in self.nets for m in net.modules()]
        # held, so that neither a parameter's id nor its storage's address can be reused
        self.params = [(p, p.detach()) for p in self._params()]
        self.key = self._key()
        with torch.no_grad():
            self.weights = _regroup(*self.nets)

    def _params(self) -> list[Tensor]:
        return [p for table in self.tables for p in table.values() if p is not None]

    def _key(self) -> tuple[int, list[tuple[int, int]]]:
        return _GENERATION[0], [(id(p), p.data_ptr()) for p in self._params()]

    def fresh(self, level: Level) -> bool:
        nets = (level.prior, level.decoder, level.temporal)
        return all(a is b for a, b in zip(self.nets, nets)) and self._key() == self.key


# level -> its regrouped weights; weak, so that a dropped model frees its copies
_FUSED: weakref.WeakKeyDictionary[Level, _Fused] = weakref.WeakKeyDictionary()


# the levels whose regrouped weights were checked in the current rollout (per thread)
_ROLLOUT = threading.local()


@contextlib.contextmanager
def one_rollout() -> Iterator[None]:
    """Within one open-loop rollout the weights do not change: each level's regrouped weights
    are checked for staleness once, at its first step, instead of at every step (the check
    walks every parameter of the level)."""
    outer = getattr(_ROLLOUT, "checked", None)
    _ROLLOUT.checked = set()
    try:
        yield
    finally:
        _ROLLOUT.checked = outer


def fused_weights(level: Level) -> FusedWeights:
    """The regrouped weights of `fused_change_step` for `level`, rebuilt whenever stale.

    Stale means: a network or parameter of the level was replaced or moved, an optimiser
    stepped or a state dict was loaded since they were built; after any other in-place edit of
    the weights call `clear_fused` (see `_Fused`). Inside `one_rollout` the check runs once per
    level.
    """
    cached = _FUSED.get(level)
    checked = getattr(_ROLLOUT, "checked", None)
    if cached is not None and checked is not None and id(level) in checked:
        return cached.weights
    if cached is None or not cached.fresh(level):
        cached = _FUSED[level] = _Fused(level)
    if checked is not None:
        checked.add(id(level))
    return cached.weights


def clear_fused(level: Level | None = None) -> None:
    """Drop the regrouped weights of `level` (all levels if None); they rebuild on next use.
    Call it after editing a level's weights in place outside an optimiser step or
    `load_state_dict` (e.g. `with torch.no_grad(): p.mul_(2)`, `p.data.copy_(...)`)."""
    if level is None:
        _FUSED.clear()
    else:
        _FUSED.pop(level, None)


def _regroup(prior: MLP, decoder: MLP, gru: torch.nn.GRUCell) -> FusedWeights:
    """Weights of `fused_change_step`, transposed for `addmm`, inputs shared across networks."""
    d_dim, s_dim = gru.hidden_size, gru.input_size
    p0, d0 = prior._linears[0], decoder._linears[0]
    by_d = torch.cat([p0.weight[:, :d_dim], gru.weight_hh], 0).t().contiguous()  # d -> prior, GRU
    bias_d = torch.cat([p0.bias, gru.bias_hh])
    by_c = torch.cat([p0.weight[:, d_dim:], d0.weight[:, s_dim:]], 0).t().contiguous()  # c -> prior, decoder
    by_s = torch.cat([d0.weight[:, :s_dim], gru.weight_ih], 0).t().contiguous()  # s -> decoder, GRU
    bias_s = torch.cat([d0.bias, gru.bias_ih])
    prior_rest = tuple((m.weight.t().contiguous(), m.bias.detach()) for m in prior._linears[1:])
    decoder_rest = tuple((m.weight.t().contiguous(), m.bias.detach()) for m in decoder._linears[1:])
    return FusedWeights(by_d, bias_d, by_c, by_s, bias_s, prior_rest, decoder_rest, p0.out_features,
                        d0.out_features)


def _mlp_rest(h: Tensor, layers: tuple) -> Tensor:
    for weight, bias in layers:  # MLP: first linear, then (ELU, linear) per further layer
        h = torch.addmm(bias, F.elu(h), weight)
    return h


def fused_change_step(d: Tensor, context: Tensor, noise: Tensor, weights: FusedWeights,
                      min_std: float) -> ChangeStep:
    """A changing level's whole imagination step on its regrouped weights (no autograd).

    The same arithmetic as `Level.predict` → sample (mean + std·noise) → `Level.top_down` →
    `Level.transition`, regrouped so that inputs shared by several networks go through one
    matrix product: d^n feeds the change prior and the GRU's hidden side, c^n the change
    prior and the decoder, s^n the decoder and the GRU's input side. Results match the
    per-network path up to float rounding (≈1e-7); the random draw is `noise` (B, S), so both
    paths consume the random stream identically. `weights` = `fused_weights(level)`. Only for
    levels that take no action (their GRU runs in the same step), outside autograd and
    autocast. A pure function of tensors (no host synchronisation).
    """
    by_d, bias_d, by_c, by_s, bias_s, prior_rest, decoder_rest, prior_width, decoder_width = weights
    from_d = torch.addmm(bias_d, d, by_d)  # (B, Hp + 3D)
    from_c = context @ by_c  # (B, Hp + Hdec)
    params = _mlp_rest(from_d[:, :prior_width] + from_c[:, :prior_width], prior_rest)
    mean, raw_std = params.chunk(2, dim=-1)
    std = F.softplus(raw_std.contiguous()) + min_std  # softplus on a strided view: ~10× slower
    s = torch.addcmul(mean, std, noise)
    from_s = torch.addmm(bias_s, s, by_s)  # (B, Hdec + 3D)
    below = _mlp_rest(from_s[:, :decoder_width] + from_c[:, prior_width:], decoder_rest)
    i_r, i_z, i_n = from_s[:, decoder_width:].chunk(3, 1)  # GRU cell, PyTorch's gate order
    h_r, h_z, h_n = from_d[:, prior_width:].chunk(3, 1)
    reset = torch.sigmoid(i_r + h_r)
    update = torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(torch.addcmul(i_n, reset, h_n))
    return ChangeStep(s, mean, std, below, torch.lerp(candidate, d, update))  # (1 − z)·n + z·d


__all__ = ["Rows", "STEP_MODES", "ChangeStep", "FusedWeights", "change_step", "step_route", "compile_route",
           "fused_change_step",
           "fused_weights", "clear_fused", "one_rollout"]
