"""The hierarchy's step: Algorithm 1 of the paper (filtering) and its open-loop twin.

Both steps read top to bottom in the same stages:

1. decide e^n_t bottom-up, level n only where level n-1 changed (eq. 5): by eq. 4 against
   the context of the levels above at their previous states (eq. 25) when filtering, by a
   draw from the prior factor p(e^n | d^n) (eq. 15) when imagining;
2. top-down from the highest level that runs to level 1: s^n from the posterior (eq. 13)
   or the change prior (eq. 14), then c^{n-1} = f_dec^n(s^n, c^n) (eq. 11);
3. filtering: the KL terms of the loss (eq. 8b/9, 8c) — the state KL of a level is computed
   as its posterior is formed, before its sample (autograd sums gradients in the order the
   graph was built: a later KL would round the gradients differently);
4. the temporal advance d^n_{t+1} = f_tem^n(s^n_t, d^n_t) of the levels that changed (eq. 12).

Each step is a pure function `step(carry, inputs) -> (carry, per-level results)`: the `Carry`
holds the state, the decision rules' running statistics and an optional torch.Generator (None:
the global RNG, the default numbers); resets (`is_first`) are applied inside `infer_step`; the
statistics advance only when the caller passes `update_stats=True` (the training loss), and
the caller stores them (`keep_stats`). Results are small dataclasses (`Filtered`, `Imagined`).

A level that does not run keeps its state and cached c^{n-1} exactly and runs no network,
so the work of a step grows with the number of active levels, not with N.

The owed transition. A level whose transition takes the action cannot advance right after
it changes at t: d^n_{t+1} = f_tem^n(s^n_t, d^n_t, a_{t+1}) needs the action into the next
frame (`actions[:, t+1]`, Dreamer's convention). It owes the advance (`state.pending`) and
pays it, with the action of that step, at the next step where it is read — where e^n is
decided (e^{n-1} = 1) or, under a schedule, where it changes. A level above 1 therefore sees
only the action of the step where it is next read, not the actions in between (level 1 is
read at every step). `pay_owed` (called at one point of each step's bottom-up loop, once per
level, where its read mask is known) and `still_owed` are the whole rule.

The fast routes of imagination live in `fastpath.py`: `Rows` decides whether a level runs on
gathered rows or on all rows masked, `change_step` whether a changing level runs its networks
one by one or fused. With `gather_below=0` and `step_mode="eager"` the step here is the
dense-mask reference the fast routes are tested against (tests/test_fastpath.py,
tests/test_imagine_cost.py). Levels are 0-based in code (level n of the paper is `levels[n - 1]`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import decisions
from .config import DLHConfig
from .distributions import Gaussian, bernoulli_nll, kl_bernoulli, kl_gaussian
from .fastpath import STEP_MODES, ChangeStep, Route, Rows, change_step, compile_route, step_route
from .level import Level
from .state import HierarchicalState


def change_posterior(
    q: Gaussian, change_prior: Gaussian, static_prior: Gaussian, logit: Tensor, assignment: str,
    decision: str = "kl", margin: float = 0.0,
) -> Tensor:
    """q(e^n = 1) from the candidate posterior q'(s^n) and the two mixture components.

    "hard" (eq. 4): 1 where KL[q' ‖ change prior] + margin < KL[q' ‖ static prior], else 0 —
    the nearer component wins (`decision="map"` adds the learned prior odds, logit p(e=1),
    to the static side: the MAP assignment). "vade" (eq. 34): σ(KL_static − KL_change −
    margin + logit p(e=1)), the VaDE estimate with the learned prior odds. Computed in fp32
    whatever the autocast dtype. Shapes: Gaussians (B, S), logit (B,) -> (B,).
    """
    kl_change = kl_gaussian(q, change_prior)
    kl_static = kl_gaussian(q, static_prior)
    gap = kl_static - kl_change - margin  # > 0: the change component explains q' better
    logit = logit.float()
    if assignment == "hard":
        if decision == "map":
            gap = gap + logit
        return (gap > 0).to(kl_change.dtype)
    if assignment == "vade":
        return torch.sigmoid(gap + logit)
    raise ValueError(f"assignment must be 'hard' or 'vade', got {assignment!r}")


def balanced_kl(q: Gaussian, p: Gaussian, alpha: float, prior_grad: bool = True) -> Tensor:
    """KL[q ‖ p] whose gradient reaches p with weight 2α and q with 2(1 − α) (KL balancing).

    The value is the plain KL for every α; α = 0.5 is the plain KL's gradient as well.
    `prior_grad=False` stops every gradient into p. (B, S) -> (B,).
    """
    if not prior_grad:
        p = Gaussian(p.mean.detach(), p.std.detach())
    if alpha == 0.5 or not prior_grad:
        return kl_gaussian(q, p)
    q_sg = Gaussian(q.mean.detach(), q.std.detach())
    p_sg = Gaussian(p.mean.detach(), p.std.detach())
    to_prior, to_posterior = kl_gaussian(q_sg, p), kl_gaussian(q, p_sg)
    return 2.0 * alpha * to_prior + 2.0 * (1.0 - alpha) * to_posterior - to_prior.detach()




@dataclass(frozen=True, slots=True)
class TrainSchedule:
    """What the training loop changes about a filtering step, at its step count (`optim.*`).

    Only the caller that trains passes one (`DLH.loss(..., schedule=...)`, the trainer); acting,
    evaluation and imagination never see these settings, in train mode or not.

    hold_upper: levels >= 2 change only at a sequence's first step (`optim.upper_warmup`).
    memory_dropout: each level below the top restarts d^n at zero with this probability per
        row and step (`optim.memory_dropout`).
    margin_scale: the fraction of `inference.decision_margin` eq. 4 uses (`optim.margin_warmup`,
        `optim.margin_ramp`).
    silence_lower: every level below the top contributes a zero sample and no KL, so the top
        level and the decoders learn the frame alone (`optim.upper_first`).
    """

    hold_upper: bool = False
    memory_dropout: float = 0.0
    margin_scale: float = 1.0
    silence_lower: bool = False


NO_SCHEDULE = TrainSchedule()


@dataclass(slots=True)
class Carry:
    """What a step carries to the next besides its inputs (Dreamer's `step(carry, inputs)`).

    state: the hierarchical state after the previous step.
    stats: per level, the decision rule's running statistics (`decisions.py`; None for a level
        without them). Only `infer_step(..., update_stats=True)` returns them advanced.
    generator: the source of every random draw of a step (None: torch's global RNG).
    """

    state: HierarchicalState
    stats: tuple[Tensor | None, ...]
    generator: torch.Generator | None = None


@dataclass(slots=True)
class Decision:
    """Stage 1 of a filtering step for one level, each (B,) unless said.

    changed: e^n_t (bool). read: where the level was read — e^n_t decided (e^{n-1}_t = 1) or,
    under a schedule, where it changes. weight: q(e^n_t = 1), eq. 9's weight of the change
    component. factor_kl: eq. 8c where e^n_t was inferred, else 0. change_prob: p(e^n = 1 | ·)
    where inferred, else NaN. factor: (B, H) the prior factor's next state h^n. stats: the
    decision rule's statistics after the step (None: no rule with statistics). anchor_kl:
    boundary "anchor" only, the static KL of level K's fresh posterior.
    """

    changed: Tensor
    read: Tensor
    weight: Tensor
    factor_kl: Tensor
    change_prob: Tensor
    factor: Tensor
    stats: Tensor | None = None
    anchor_kl: Tensor | None = None


@dataclass(slots=True)
class Filtered:
    """One level's outcome of a filtering step, each (B,): e^n_t (bool `changed`), whether it
    was inferred (bool `evaluated`), the state KL (eq. 9), the factor KL (eq. 8c) and
    p(e^n = 1 | ·) (NaN where not inferred)."""

    changed: Tensor
    evaluated: Tensor
    kl: Tensor
    factor_kl: Tensor
    change_prob: Tensor


@dataclass(slots=True)
class Imagined:
    """One level's outcome of an imagination step: e^n (B,) bool, sampled (eq. 15)."""

    changed: Tensor


@dataclass(slots=True)
class Sampled:
    """Stage 1 of an imagination step for one level: where it changes (`rows`), where it was
    read (`read` (B,) bool: e^{n-1} = 1; under a schedule, where it changes), the prior
    factor's next state h^n (B, H)."""

    rows: Rows
    read: Tensor
    factor: Tensor


@dataclass(slots=True)
class Posterior:
    """Stage 2 of filtering for one level, on its rows: the sample of q(s^n | x^n, c^n) (eq. 13)
    with its mean and std (B, S), c^{n-1} (B, C) (eq. 11) and the state KL of q (eq. 8b, 9)."""

    s: Tensor
    mean: Tensor
    std: Tensor
    below: Tensor
    kl: Tensor


@dataclass(slots=True)
class TopDown:
    """The top-down pass: per level s^n, its distribution and c^{n-1} (all rows), and what each
    level's step returned on its rows (None where it ran on no row)."""

    s: list[Tensor]
    mean: list[Tensor]
    std: list[Tensor]
    top_down: list[Tensor]
    runs: list[Any]


def _restart(d: list[Tensor], masks: list[Tensor | None]) -> list[Tensor]:
    """`d` with d^n <- 0 on the rows where masks[n - 1] (B,) is True (None: none), for the
    levels that have a mask (the levels above them unchanged)."""
    d = list(d)
    for i, mask in enumerate(masks):
        if mask is not None:
            d[i] = torch.where(mask.unsqueeze(1), torch.zeros_like(d[i]), d[i])
    return d


# run_level(i, rows, context) -> the level's step on its rows (Posterior or fastpath.ChangeStep)
LevelFn = Callable[[int, Rows, Tensor], Any]


class Hierarchy(nn.Module):
    """N latent levels, the learned top context c^N, and the step logic."""

    def __init__(self, cfg: DLHConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.levels = nn.ModuleList(Level(cfg, n) for n in range(1, cfg.levels + 1))
        self.top_context = nn.Parameter(torch.zeros(cfg.c_dim))
        self.step_mode = "fused"
        self._compiled: Route | None = None

    @property
    def step_mode(self) -> str:
        """How `imagine_step` runs a changing level outside autograd (see `fastpath.py`).

        "fused" (default): `fused_change_step`, the level's networks on regrouped weights
        (fewer, larger matrix products); "eager": one call per network (the reference);
        "compiled": the fused step through `torch.compile` (a one-off compile per shape
        class; the random draw stays outside the compiled region, so results match the
        other modes). With autograd on, or under autocast, every mode runs "eager".
        """
        return self._step_mode

    @step_mode.setter
    def step_mode(self, mode: str) -> None:
        if mode not in STEP_MODES:
            raise ValueError(f"step_mode must be 'fused', 'eager' or 'compiled', got {mode!r}")
        self._step_mode = mode

    def route(self, x: Tensor) -> Route | None:
        """The fused route `imagine_step` takes now (None: the eager reference path)."""
        return step_route(self._step_mode, x, self._compiled_route)

    def _compiled_route(self) -> Route:
        if self._compiled is None:
            self._compiled = compile_route()
        return self._compiled

    # ----------------------------------------------------------------- state helpers
    def initial_state(self, batch_size: int, device: torch.device | None = None) -> HierarchicalState:
        cfg, n = self.cfg, self.cfg.levels
        device = device or self.top_context.device

        def zeros(size: int) -> list[Tensor]:
            return [torch.zeros(batch_size, size, device=device) for _ in range(n)]

        s_dims = [level.s_dim for level in self.levels]
        return HierarchicalState(
            s=[torch.zeros(batch_size, size, device=device) for size in s_dims],
            mean=[torch.zeros(batch_size, size, device=device) for size in s_dims],
            std=[torch.ones(batch_size, size, device=device) for size in s_dims],
            d=[torch.zeros(batch_size, level.d_dim, device=device) for level in self.levels],
            top_down=zeros(cfg.c_dim),
            pending=torch.zeros(batch_size, n, dtype=torch.bool, device=device),
            t=torch.zeros(batch_size, dtype=torch.long, device=device),
            factor=[torch.zeros(batch_size, level.factor_size, device=device) for level in self.levels],
        )

    def carry(self, state: HierarchicalState, generator: torch.Generator | None = None) -> Carry:
        """The carry of a step from `state`: the levels' decision statistics as they are now."""
        return Carry(state, tuple(level.decision_stats for level in self.levels), generator)

    @torch.no_grad()
    def keep_stats(self, stats: tuple[Tensor | None, ...]) -> None:
        """Store statistics a training step advanced (`Carry.stats`) in the levels' buffers."""
        for level, new in zip(self.levels, stats):
            if new is not None and new is not level.decision_stats:
                level.decision_stats.copy_(new)

    def reset(self, state: HierarchicalState, is_first: Tensor | None) -> HierarchicalState:
        """`state` with the rows where is_first (B,) bool is True back at the initial state."""
        if is_first is None or not bool(is_first.any()):
            return state
        return self.initial_state(state.batch_size).where(is_first, state)

    def bottom_up(self, x1: Tensor) -> list[Tensor]:
        """x^1 (..., X) -> [x^1, ..., x^N] via x^{n+1} = f_enc^n(x^n) (eq. 10)."""
        xs = [x1]
        for level in self.levels[:-1]:
            xs.append(level.encoder(xs[-1]))
        return xs

    def context(self, i: int, top_down: list[Tensor]) -> Tensor:
        """c^{n} for level n = i + 1 (0-based i): what it reads from above, (B, C).

        The cached top-down output of the level above, or the learned constant c^N for the
        top level. `top_down` is per level (B, C), as in `HierarchicalState.top_down`.
        """
        if i + 1 < len(top_down):
            return top_down[i + 1]
        return self.top_context.expand(top_down[i].shape[0], -1)

    def decode_from(
        self,
        level: int,
        s: list[Tensor],
        top_down: list[Tensor],
        draw: Callable[[int, Tensor], Tensor | None] | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The top-down pass (eq. 11) from level `level` (1-based) down to level 1.

        Levels above `level` keep their cached outputs `top_down`; level n = `level`..1 reads
        the context recomputed from above and computes c^{n-1} = f_dec^n(s^n, c^n) from its
        sample s^n. `draw(i, context)` (0-based i) may return a new sample for level i given
        its context (None: keep s^n). Lists are per level, (B, S) and (B, C).
        Returns the new (s, top_down) lists; top_down[0] is c^0, what the image decoder reads.
        """
        s, top_down = list(s), list(top_down)
        for i in reversed(range(level)):
            context = self.context(i, top_down)
            if draw is not None:
                new = draw(i, context)
                if new is not None:
                    s[i] = new
            top_down[i] = self.levels[i].top_down(s[i], context)
        return s, top_down

    def _clockwork(self, i: int, t: Tensor) -> Tensor:
        """CW-VAE's schedule: level i (0-based) updates when t mod k^i = 0; (B,) bool."""
        return t % (self.cfg.inference.clockwork_k**i) == 0

    def restart_below(self, d: list[Tensor], changed: list[Tensor | None]) -> list[Tensor]:
        """`inference.restart_below`: d^{n-1} <- 0 where level n >= 2 changed (VTA's boundary).

        `changed[n-1]` is e^n (B,) bool (None: no row changed). Applied after the decisions and
        before any d is read by a change prior or advanced, so level n−1's change prior at the
        change reads only c^{n−1}, and its GRU restarts from there. Level n−1's own decision
        (for n−1 ≥ 2) was taken with the old d^{n−1}. Off: `d` unchanged.
        """
        if not self.cfg.inference.restart_below:
            return d
        return _restart(d, changed[1:])

    def drop_memory(self, d: list[Tensor], rate: float,
                    generator: torch.Generator | None = None) -> list[Tensor]:
        """Memory dropout: d^n <- 0 for n < N on each row with probability `rate` (training only).

        Where a level's memory is dropped, its change prior reads only c^n from above, so what
        persists is cheapest to keep in the levels above (issue 23); the top level keeps its d^N.
        """
        drop = [torch.rand(x.shape[0], device=x.device, generator=generator) < rate for x in d[:-1]]
        return _restart(d, drop)

    # ----------------------------------------------------------------- the owed transition
    def pay_owed(
        self, i: int, level: Level, state: HierarchicalState, d: Tensor, read: Tensor, action: Tensor | None,
        gather_below: float = 0.0,
    ) -> Tensor:
        """d^n of `level` = levels[i] (0-based i) once it has paid, where it is `read` (B,) bool,
        the advance it owes: d^n <- f_tem^n(s^n, d^n, a_t) with this step's action (eq. 12).

        Levels that take no action owe nothing (they advance right after a change). Each step
        calls it once per level, where the level's `read` mask is known and before its d^n is read.
        """
        if not level.takes_action:  # the level object, not self.levels[i]: indexing a ModuleList is slow
            return d
        return self._advance(level, Rows(state.pending[:, i] & read, gather_below), state.s[i], d, action)

    def still_owed(self, state: HierarchicalState, read: list[Tensor], changed: list[Tensor]) -> Tensor:
        """`pending` (B, N) after a step: a level that takes the action owes its advance where
        it changed, and keeps owing where it was not read (so did not pay); (pending ∧ ¬read) ∨ e."""
        if not self.cfg.action_dim:
            return state.pending
        owed = [(state.pending[:, i] & ~read[i]) | changed[i] if level.takes_action else state.pending[:, i]
                for i, level in enumerate(self.levels)]
        return torch.stack(owed, 1)

    @staticmethod
    def _advance(level: Level, sel: Rows, s: Tensor, d: Tensor, action: Tensor | None) -> Tensor:
        """d^n <- f_tem^n(s^n, d^n[, a]) of `level` on the rows `sel` (eq. 12)."""
        if sel.kind == "none":
            return d
        act = sel.take(action) if action is not None else None
        return sel.put(level.transition(sel.take(s), sel.take(d), act), d)

    def _read(self, i: int, below: Tensor, t: Tensor) -> Tensor:
        """Where level i ≥ 1 (0-based) is read, given e^{n-1} (B,) bool: where the level below
        changed (eq. 5) and, under the clockwork schedule, its turn comes."""
        if self.cfg.inference.timescale == "clockwork":
            return below & self._clockwork(i, t)
        return below

    # ----------------------------------------------------------------- shared top-down pass
    def _top_down(self, state: HierarchicalState, rows: list[Rows], run_level: LevelFn) -> TopDown:
        """From the highest level that runs down to level 1: s^n, its distribution and c^{n-1}.

        `rows[i]` selects where level i runs; `run_level(i, rows[i], context)` returns its step
        on those rows (with `s`, `mean`, `std` and c^{n-1} `below`). Rows where a level does
        not run keep their sample, distribution and cached top-down output exactly.
        """
        s, mean, std, top_down = list(state.s), list(state.mean), list(state.std), list(state.top_down)
        runs: list[Any] = [None] * len(s)
        for i in reversed(range(len(s))):
            sel = rows[i]
            if sel.kind == "none":
                continue
            context = sel.take(self.context(i, top_down))
            run = runs[i] = run_level(i, sel, context)
            s[i] = sel.put(run.s, s[i])
            mean[i] = sel.put(run.mean, mean[i])
            std[i] = sel.put(run.std, std[i])
            top_down[i] = sel.put(run.below, top_down[i])
        return TopDown(s, mean, std, top_down, runs)

    # ----------------------------------------------------------------- filtering
    def infer_step(
        self, carry: Carry, xs: list[Tensor], action: Tensor | None, is_first: Tensor | None = None,
        *, update_stats: bool = False, schedule: TrainSchedule = NO_SCHEDULE,
    ) -> tuple[Carry, list[Filtered]]:
        """Filter one observation given its bottom-up features (Algorithm 1): a pure function of
        the carry and the inputs.

        Args:
            carry: state, decision statistics and generator after the previous step.
            xs: per level (B, X), the bottom-up features x^n_t of the frame.
            action: (B, A) the action that led to this frame, or None.
            is_first: (B,) bool, rows that start an episode here (reset first), or None.
            update_stats: advance the decision rules' statistics (the training objective only).
            schedule: the training loop's settings for this step (`TrainSchedule`; training only).
        Returns:
            the new carry and, per level, what the step decided and the KL terms it pays.
        """
        levels, cfg, g = list(self.levels), self.cfg.inference, carry.generator
        state = self.reset(carry.state, is_first)  # Dreamer's convention: resets inside the step
        # 1. e^n_t bottom-up (eq. 4, 5, 25); owed advances paid where a level is read (eq. 12)
        d, decided = self._decide(state, carry.stats, xs, action, update_stats, schedule)
        changed = [x.changed for x in decided]
        d = self.restart_below(d, changed)  # option: VTA's restart (no-op by default)
        if schedule.memory_dropout > 0:  # the trainer's memory dropout (off by default)
            d = self.drop_memory(d, schedule.memory_dropout, g)
        # 2. top-down (eq. 11, 13): the levels that changed and, under boundary "reinfer",
        #    level K (the first static one, docs/model.md); levels above K are held
        rows = [Rows(x.read if cfg.boundary == "reinfer" else x.changed) for x in decided]  # dense

        def posterior(i: int, sel: Rows, context: Tensor) -> Posterior:
            q = levels[i].infer(sel.take(xs[i]), context, sel.take(d[i]))  # eq. 13
            # 3. the state KL (eq. 8b, 9), computed here, before the sample: autograd sums
            #    gradients in the order the graph was built, so a later KL rounds them differently
            kl = self._state_kl(i, q, sel.take(d[i]), context, state, decided[i].weight)
            sample = q.rsample(g)
            if schedule.silence_lower and i < len(levels) - 1:  # the trainer's upper-first schedule
                sample, kl = torch.zeros_like(sample), torch.zeros_like(kl)
                q = Gaussian(torch.zeros_like(q.mean), torch.ones_like(q.std))
            return Posterior(sample, q.mean, q.std, levels[i].top_down(sample, context), kl)  # eq. 11

        td = self._top_down(state, rows, posterior)
        kl = [self._paid_kl(run, sel, x) for run, sel, x in zip(td.runs, rows, decided)]
        # 4. d^n_{t+1} where e^n_t = 1 (eq. 12); levels taking the action owe it instead
        d = [d[i] if level.takes_action else self._advance(level, Rows(e), td.s[i], d[i], None)
             for i, (level, e) in enumerate(zip(levels, changed))]
        new_state = HierarchicalState(
            s=td.s, mean=td.mean, std=td.std, d=d, top_down=td.top_down, t=state.t + 1,
            factor=[x.factor for x in decided],
            pending=self.still_owed(state, [x.read for x in decided], changed),
        )
        stats = tuple(x.stats for x in decided)
        results = [Filtered(x.changed, x.read, k, x.factor_kl, x.change_prob) for x, k in zip(decided, kl)]
        return Carry(new_state, stats, g), results

    @staticmethod
    def _paid_kl(run: Posterior | None, rows: Rows, decided: Decision) -> Tensor:
        """The state KL (B,) of a level where it ran, 0 elsewhere, plus boundary "anchor"'s
        static KL at level K."""
        if run is None:
            kl = torch.zeros_like(decided.weight)
        else:
            kl = torch.where(rows.mask, run.kl, torch.zeros_like(run.kl))
        return kl if decided.anchor_kl is None else kl + decided.anchor_kl

    def _decide(
        self, state: HierarchicalState, stats: tuple[Tensor | None, ...], xs: list[Tensor],
        action: Tensor | None, update_stats: bool, schedule: TrainSchedule,
    ) -> tuple[list[Tensor], list[Decision]]:
        """Stage 1 of filtering: e^n_t for every level, bottom-up (eq. 4, 5; schedules).

        Returns d^n per level once the owed advances are paid, and each level's decision.
        """
        timescale, batch, first = self.cfg.inference.timescale, state.batch_size, state.t == 0
        ones = torch.ones(batch, dtype=torch.bool, device=first.device)
        nan = torch.full((batch,), float("nan"), device=first.device)
        d, decided = list(state.d), []
        for i, level in enumerate(self.levels):
            read = ones if i == 0 else self._read(i, decided[-1].changed, state.t)
            d[i] = self.pay_owed(i, level, state, d[i], read, action)  # eq. 12: the one point of payment
            if i == 0:  # e^1 = 1
                one = torch.ones(batch, device=first.device)
                decided.append(Decision(ones, ones, one, torch.zeros(batch, device=first.device), one.clone(),
                                        state.factor[0]))
            elif timescale != "dynamic":  # a schedule: no decision; a held level runs nothing
                zero = torch.zeros(batch, device=first.device)
                decided.append(Decision(read, read, read.float(), zero, nan, state.factor[i]))
            else:
                decided.append(self._infer_e(i, state, stats[i], xs[i], d[i], read, first, update_stats,
                                             schedule))
        return d, decided

    def _infer_e(
        self, i: int, state: HierarchicalState, stats: Tensor | None, x: Tensor, d: Tensor,
        candidate: Tensor, first: Tensor, update_stats: bool, schedule: TrainSchedule,
    ) -> Decision:
        """e^n_t of level i (0-based) on the rows `candidate` (e^{n-1}_t = 1), by eq. 4.

        The candidate posterior q'(s^n) reads the context of the levels above at their
        previous states (eq. 25); the decision carries no gradient; every level changes at a
        sequence's first step.
        """
        rule, recipe, level = self.cfg.inference, self.cfg.loss, self.levels[i]
        margin = rule.decision_margin * schedule.margin_scale
        logit, h_next = level.change_logit(d, state.factor[i])
        context = self.context(i, state.top_down)  # eq. 25: c^n cached from t-1
        static = Gaussian(state.mean[i], state.std[i])  # eq. 2: p(s^n_t | e = 0) = q(s^n_{t-1})
        # boundary "anchor" trains this candidate posterior: compute it once, with grad
        fresh = level.infer(x, context, d) if rule.boundary == "anchor" else None
        with torch.no_grad():
            q = level.infer(x, context, d) if fresh is None else Gaussian(fresh.mean.detach(),
                                                                       fresh.std.detach())
            change_prior = level.predict(d, context)
            if stats is None:
                weight = change_posterior(q, change_prior, static, logit, rule.assignment,
                                          rule.decision, margin)
            else:  # a rule that reads the level's running statistics (decisions.py)
                weight, kl_static = decisions.decide(
                    rule.decision, q, change_prior, static, stats, rule.decision_tolerance,
                    rule.decision_gamma, rule.decision_warmup, margin)
            weight = torch.where(first, torch.ones_like(weight), weight)
            held = schedule.hold_upper  # bootstrapped schedule: static after t = 0
            if held:
                weight = first.to(weight.dtype)
        e = candidate & (weight > 0.5)
        if stats is not None and update_stats:  # the caller's say: the training objective only
            new = decisions.update(stats, q, static, kl_static, candidate & ~first, e, rule.decision_rate)
            stats = decisions.agree_across_ranks(stats, new)
        boundary = candidate & ~e  # level K: the first static level
        anchor = None
        if fresh is not None and bool(boundary.any()):
            # K keeps its sample; its fresh posterior (no path to the frame) is pulled toward
            # the static prior by eq. 9's KL: invariance without a leak
            static_kl = balanced_kl(fresh, static, recipe.kl_balance, recipe.static_prior_grad)
            anchor = torch.where(boundary, static_kl, torch.zeros_like(static_kl))
        if level.factor_cell is not None:  # ticks where e^n was decided, restarts on a change
            h_next = torch.where(candidate.unsqueeze(1), h_next, state.factor[i])
            h_next = torch.where(e.unsqueeze(1), torch.zeros_like(h_next), h_next)
        # eq. 8c: KL[q(e) ‖ p(e)]; for a one-hot q(e) it is −log p(e = the inferred value)
        fkl = bernoulli_nll(logit, e.float()) if rule.assignment == "hard" else kl_bernoulli(weight, logit)
        fkl = torch.where(candidate & ~first & (not held), fkl, torch.zeros_like(fkl))
        prob = torch.sigmoid(logit.detach())  # p(e = 1 | ·) where inferred, else NaN
        prob = torch.where(candidate & ~first, prob, torch.full_like(prob, float("nan")))
        return Decision(e, candidate, weight, fkl, prob, h_next, stats, anchor)

    def _state_kl(
        self, i: int, q: Gaussian, d: Tensor, context: Tensor, state: HierarchicalState, weight: Tensor,
    ) -> Tensor:
        """The state KL of level i (0-based) for its posterior q (eq. 8b, 9), (B,).

        KL[q ‖ change prior] weighted by q(e = 1) plus KL[q ‖ static prior] weighted by
        q(e = 0) (dynamic levels ≥ 2); KL[q ‖ change prior] alone on level 1 and under a
        schedule.
        """
        recipe, level = self.cfg.loss, self.levels[i]
        kl = balanced_kl(q, level.predict(d, context), recipe.kl_balance)
        if self.cfg.inference.timescale == "dynamic" and i > 0:
            static = Gaussian(state.mean[i], state.std[i])
            kl_static = balanced_kl(q, static, recipe.kl_balance, recipe.static_prior_grad)
            kl = weight * kl + (1.0 - weight) * kl_static
        return kl

    # ----------------------------------------------------------------- imagination
    def imagine_step(
        self, carry: Carry, action: Tensor | None, sample_e: bool = True, gather_below: float = 1.0,
    ) -> tuple[Carry, list[Imagined]]:
        """One open-loop step: sample e^n ~ p(e^n | d^n[, h^n]) bottom-up while e^{n-1} = 1, then
        s^n from the change prior for the changing levels, top-down. A pure function of the carry
        (the decision statistics pass through) and the action (B, A) (or None).

        Levels above the highest changing level K' keep their state and cached top-down
        output exactly and run no network (level K'+1 only evaluates its prior factor to
        decide that it is static). `sample_e` False takes the mode of e^n; `gather_below`: see
        `fastpath.Rows`. Returns the new carry and e^n per level.
        """
        state, g, levels = carry.state, carry.generator, list(self.levels)
        # 1. e^n ~ p(e^n | d^n) bottom-up while e^{n-1} = 1 (eq. 5, 15); owed advances paid
        #    where a level is read (eq. 12)
        d, sampled = self._sample_e(state, action, sample_e, gather_below, g)
        rows = [x.rows for x in sampled]
        d = self.restart_below(d, [sel.mask if sel.kind != "none" else None for sel in rows])
        # 2. top-down from K': s^n ~ p(s^n | d^n, c^n) (eq. 14), c^{n-1} (eq. 11), and
        #    d^n_{t+1} (eq. 12) for levels whose transition takes no action
        route = self.route(state.d[0])

        def change(i: int, sel: Rows, context: Tensor) -> ChangeStep:
            return change_step(levels[i], sel.take(d[i]), context, route, g)

        td = self._top_down(state, rows, change)
        d = [d_i if run is None or run.d_next is None else sel.put(run.d_next, d_i)
             for d_i, run, sel in zip(d, td.runs, rows)]
        # 3. levels whose transition takes the action owe it to the next step
        changed = [sel.mask for sel in rows]
        new_state = HierarchicalState(
            s=td.s, mean=td.mean, std=td.std, d=d, top_down=td.top_down, t=state.t + 1,
            factor=[x.factor for x in sampled],
            pending=self.still_owed(state, [x.read for x in sampled], changed),
        )
        return Carry(new_state, carry.stats, g), [Imagined(e) for e in changed]

    def _sample_e(
        self, state: HierarchicalState, action: Tensor | None, sample_e: bool, gather_below: float,
        generator: torch.Generator | None,
    ) -> tuple[list[Tensor], list[Sampled]]:
        """Stage 1 of imagination: the rows where each level changes, bottom-up.

        Returns d^n per level once the owed advances are paid, and where each level changes.
        """
        timescale, levels = self.cfg.inference.timescale, list(self.levels)
        first = state.t == 0
        any_first = bool(first.any())
        d, sampled = list(state.d), []
        for i, level in enumerate(levels):
            below = sampled[-1].rows if i else Rows(torch.ones_like(first), all_rows=True)  # e^0 = 1
            if below.kind == "none":  # eq. 5: nothing to decide above a level that is static
                sampled.append(Sampled(below, below.mask, state.factor[i]))
                continue
            clockwork = i > 0 and timescale == "clockwork"
            read = Rows(self._read(i, below.mask, state.t), gather_below) if clockwork else below
            d[i] = self.pay_owed(i, level, state, d[i], read.mask, action, gather_below)  # eq. 12: paid here
            if i == 0 or timescale != "dynamic":  # level 1, or a schedule: it changes wherever read
                sampled.append(Sampled(read, read.mask, state.factor[i]))
                continue
            logit, h = level.change_logit(below.take(d[i]), below.take(state.factor[i]))  # eq. 15
            prob = torch.sigmoid(logit)
            e = torch.bernoulli(prob, generator=generator).bool() if sample_e else prob > 0.5
            if any_first:
                e = e | below.take(first)
            factor = state.factor[i]
            if level.factor_cell is not None:  # restarts where the level changes
                factor = below.put(torch.where(e.unsqueeze(1), torch.zeros_like(h), h), factor)
            mask = e if below.kind == "all" else below.put(e, torch.zeros_like(below.mask))
            sampled.append(Sampled(Rows(mask, gather_below), below.mask, factor))
        return d, sampled


__all__ = ["Hierarchy", "Carry", "TrainSchedule", "Decision", "Filtered", "Imagined", "change_posterior",
           "balanced_kl"]
