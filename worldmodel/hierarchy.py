"""The hierarchy's step: infer e (eq. 4, 5, 25), one top-down pass, the temporal advance.

`Hierarchy.infer_step` filters one observation (Algorithm 1) and `Hierarchy.imagine_step`
rolls the model one step open loop. Both share `_top_down`, which runs a level only on the
rows where it updates: a level with no such row runs no network at all, so the work of a
step grows with the number of active levels, not with N.

Levels are 0-based in code (level n of the paper is `levels[n - 1]`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .config import DLHConfig
from .distributions import Gaussian, bernoulli_nll, kl_bernoulli, kl_gaussian
from .level import Level, fused_change_step
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


# (level, s, context) -> Gaussian to sample s^n from, on the active rows.
SampleFn = Callable[[int, Tensor], Gaussian]


class Hierarchy(nn.Module):
    """N latent levels, the learned top context c^N, and the step logic."""

    def __init__(self, cfg: DLHConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.levels = nn.ModuleList(Level(cfg, n) for n in range(1, cfg.levels + 1))
        self.top_context = nn.Parameter(torch.zeros(cfg.c_dim))
        # the same modules in a plain list: ModuleList indexing costs microseconds per call,
        # which shows in batch-1 imagination
        self._level = list(self.levels)
        self.step_mode = "fused"
        self._compiled_step: Callable | None = None

    @property
    def step_mode(self) -> str:
        """How `imagine_step` runs a changing level outside autograd.

        "fused" (default): `fused_change_step`, the level's networks on regrouped weights
        (fewer, larger matrix products); "eager": one call per network; "compiled": the
        fused step through `torch.compile` (a one-off compile per shape class; the random
        draw stays outside the compiled region, so results match the other modes). With
        autograd on, or under autocast, every mode runs "eager".
        """
        return self._step_mode

    @step_mode.setter
    def step_mode(self, mode: str) -> None:
        if mode not in ("fused", "eager", "compiled"):
            raise ValueError(f"step_mode must be 'fused', 'eager' or 'compiled', got {mode!r}")
        self._step_mode = mode

    # ----------------------------------------------------------------- state helpers
    def initial_state(self, batch_size: int, device: torch.device | None = None) -> HierarchicalState:
        cfg, n = self.cfg, self.cfg.levels
        device = device or self.top_context.device

        def zeros(size: int) -> list[Tensor]:
            return [torch.zeros(batch_size, size, device=device) for _ in range(n)]

        return HierarchicalState(
            s=zeros(cfg.s_dim),
            mean=zeros(cfg.s_dim),
            std=[torch.ones(batch_size, cfg.s_dim, device=device) for _ in range(n)],
            d=zeros(cfg.d_dim),
            top_down=zeros(cfg.c_dim),
            pending=torch.zeros(batch_size, n, dtype=torch.bool, device=device),
            t=torch.zeros(batch_size, dtype=torch.long, device=device),
            factor=[torch.zeros(batch_size, level.factor_size, device=device) for level in self._level],
        )

    def bottom_up(self, x1: Tensor) -> list[Tensor]:
        """x^1 (..., X) -> [x^1, ..., x^N] via x^{n+1} = f_enc^n(x^n) (eq. 10)."""
        xs = [x1]
        for level in self.levels[:-1]:
            xs.append(level.encoder(xs[-1]))
        return xs

    def _context(self, i: int, top_down: list[Tensor], batch: int) -> Tensor:
        """c^{i+1} in paper terms: what level i reads from above, (B, C)."""
        if i + 1 < len(self.levels):
            return top_down[i + 1]
        return self.top_context.expand(batch, -1)

    def _clockwork(self, i: int, t: Tensor) -> Tensor:
        """CW-VAE's schedule: level i (0-based) updates when t mod k^i = 0; (B,) bool."""
        return t % (self.cfg.clockwork_k**i) == 0

    # ----------------------------------------------------------------- shared top-down pass
    def _top_down(
        self,
        state: HierarchicalState,
        d: list[Tensor],
        rows: list[Rows],
        sample_from: Callable[[int, Rows, Tensor], Gaussian],
        fused: Callable[..., tuple[Tensor, ...]] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], tuple[int, ...]]:
        """From the highest active level down to level 1, sample s^n and recompute c^{n-1}.

        `rows[i]` selects where level i runs; `sample_from(i, rows[i], context)` gives the
        distribution (posterior or change prior) on those rows. Rows where a level does not
        run keep their sample, distribution and cached top-down output exactly.
        `fused` (imagination outside autograd: `fused_change_step` or its compiled form)
        replaces change prior, sample and top-down pass of every level that takes no action,
        and advances that level's GRU as well (d is updated in place of the list); it draws
        the same (rows, S) normal noise as `rsample`, so both paths use the random stream alike.
        Returns new (s, mean, std, top_down) lists and the levels whose d was advanced.
        """
        s, mean, std, top_down = list(state.s), list(state.mean), list(state.std), list(state.top_down)
        batch, advanced = state.batch_size, []
        for i in reversed(range(len(self.levels))):
            sel, level = rows[i], self._level[i]
            if sel.kind == "none":
                continue
            context = sel.take(self._context(i, top_down, batch))
            if fused is not None and not level.takes_action:
                d_rows = sel.take(d[i])
                noise = torch.randn(d_rows.shape[0], self.cfg.s_dim, device=d_rows.device,
                                    dtype=torch.float32)
                sample, dist_mean, dist_std, below, d_next = fused(
                    d_rows, context, noise, level.fused_weights(), level.min_std)
                d[i] = sel.put(d_next, d[i])
                advanced.append(i)
            else:
                dist = sample_from(i, sel, context)
                sample, dist_mean, dist_std = dist.rsample(), dist.mean, dist.std
                below = level.top_down(sample, context)
            s[i] = sel.put(sample, s[i])
            mean[i] = sel.put(dist_mean, mean[i])
            std[i] = sel.put(dist_std, std[i])
            top_down[i] = sel.put(below, top_down[i])
        return s, mean, std, top_down, tuple(advanced)

    def _advance(
        self,
        i: int,
        sel: Rows,
        s: Tensor,
        d: Tensor,
        action: Tensor | None,
    ) -> Tensor:
        """d^n <- f_tem^n(s^n, d^n[, a]) on the rows `sel` (eq. 12)."""
        if sel.kind == "none":
            return d
        act = sel.take(action) if action is not None else None
        return sel.put(self._level[i].transition(sel.take(s), sel.take(d), act), d)

    def _finish(
        self,
        state: HierarchicalState,
        s: list[Tensor],
        d: list[Tensor],
        rows: list[Rows],
        evaluated: list[Tensor],
        mean: list[Tensor],
        std: list[Tensor],
        top_down: list[Tensor],
        factor: list[Tensor],
        advanced: tuple[int, ...] = (),
    ) -> HierarchicalState:
        """Advance the GRUs of the levels that changed (`rows`) and build the next state.

        Levels in `advanced` have advanced their d already (the fused imagination step).
        """
        pending = []
        for i, level in enumerate(self._level):
            if i in advanced:
                if self.cfg.action_dim:
                    pending.append(state.pending[:, i])
            elif level.takes_action:
                # The transition into the next step needs that step's action: owe it.
                pending.append((state.pending[:, i] & ~evaluated[i]) | rows[i].mask)
            else:
                d[i] = self._advance(i, rows[i], s[i], d[i], None)
                if self.cfg.action_dim:
                    pending.append(state.pending[:, i])  # stays False
        owed = torch.stack(pending, 1) if self.cfg.action_dim else state.pending
        return HierarchicalState(
            s=s, mean=mean, std=std, d=d, top_down=top_down, pending=owed, t=state.t + 1, factor=factor
        )

    def _settle_pending(
        self, i: int, state: HierarchicalState, d: list[Tensor], evaluated: Tensor,
        action: Tensor | None, gather_below: float,
    ) -> None:
        """An action-taking level about to be used pays its owed transition with `action`."""
        if self._level[i].takes_action:
            owed = Rows(evaluated & state.pending[:, i], gather_below)
            d[i] = self._advance(i, owed, state.s[i], d[i], action)

    # ----------------------------------------------------------------- filtering
    def infer_step(
        self, state: HierarchicalState, xs: list[Tensor], action: Tensor | None
    ) -> tuple[HierarchicalState, dict[str, Tensor]]:
        """Filter one observation given its bottom-up features (Algorithm 1).

        Args:
            state: the state after the previous step (t = 0 rows start a sequence).
            xs: per level (B, X), the bottom-up features x^n_t of the frame.
            action: (B, A) the action that led to this frame, or None.
        Returns:
            the new state and per-step tensors, each (B, N): "changed" (bool e^n_t),
            "evaluated" (bool, e^n_t was inferred), "kl" (state KL, eq. 9), "factor_kl"
            (eq. 8c), "change_prob" (p(e^n = 1 | d^n), NaN where not inferred).
        """
        cfg, n_levels, batch = self.cfg, len(self.levels), state.batch_size
        first = state.t == 0
        ones = torch.ones(batch, dtype=torch.bool, device=first.device)
        d, factor = list(state.d), list(state.factor)
        changed, evaluated = [ones], [ones]
        change_prob = [torch.ones(batch, device=first.device)]
        factor_kl = [torch.zeros(batch, device=first.device)]
        q_change = [torch.ones(batch, device=first.device)]  # q(e^n = 1), soft weights (eq. 9)
        anchor_kl: dict[int, Tensor] = {}  # boundary "anchor": the static KL of level K
        self._settle_pending(0, state, d, ones, action, 0.0)
        nan = torch.full((batch,), float("nan"), device=first.device)
        for i in range(1, n_levels):
            level = self._level[i]
            candidate = changed[i - 1]
            if cfg.timescale != "dynamic":
                e = candidate & (ones if cfg.timescale == "every_step" else self._clockwork(i, state.t))
                self._settle_pending(i, state, d, e, action, 0.0)
                changed.append(e)
                evaluated.append(e)
                change_prob.append(nan)
                factor_kl.append(torch.zeros(batch, device=first.device))
                q_change.append(e.float())
                continue
            self._settle_pending(i, state, d, candidate, action, 0.0)
            logit, h = level.change_logit(d[i], factor[i])
            # eq. 25: the context above is taken at its previous state (cached c^n).
            context = self._context(i, state.top_down, batch)
            static = Gaussian(state.mean[i], state.std[i])
            # boundary "anchor" trains this candidate posterior (below): compute it once, with grad
            fresh = level.infer(xs[i], context) if cfg.boundary == "anchor" else None
            with torch.no_grad():
                q = level.infer(xs[i], context) if fresh is None else Gaussian(
                    fresh.mean.detach(), fresh.std.detach())
                q1 = change_posterior(
                    q, level.predict(d[i], context), static, logit, cfg.assignment,
                    cfg.decision, cfg.decision_margin,
                )
                q1 = torch.where(first, torch.ones_like(q1), q1)
            inferred = candidate & ~first
            e = candidate & (q1 > 0.5)  # eq. 5: nothing changes above a static level
            if fresh is not None and bool((candidate & ~e).any()):
                # K keeps its sample; its fresh posterior (no path to the frame) is pulled toward
                # the static prior by eq. 9's KL: invariance without a leak
                static_kl = balanced_kl(fresh, static, cfg.kl_balance, cfg.static_prior_grad)
                anchor_kl[i] = torch.where(candidate & ~e, static_kl, torch.zeros_like(static_kl))
            if level.factor_cell is not None:  # ticks where e^n was decided, restarts on a change
                h = torch.where(candidate.unsqueeze(1), h, factor[i])
                factor[i] = torch.where(e.unsqueeze(1), torch.zeros_like(h), h)
            if cfg.assignment == "hard":
                fkl = bernoulli_nll(logit, e.float())  # KL[one-hot q(e) || p(e)] = −log p(e)
            else:
                fkl = kl_bernoulli(q1, logit)
            changed.append(e)
            evaluated.append(candidate)
            q_change.append(q1)
            change_prob.append(torch.where(inferred, torch.sigmoid(logit.detach()), nan))
            factor_kl.append(torch.where(inferred, fkl, torch.zeros_like(fkl)))

        # Level K (the first static one) is re-inferred in `dynamic` mode (boundary "reinfer");
        # schedules hold it.
        kls: list[Tensor] = [torch.zeros(batch, device=first.device) for _ in range(n_levels)]
        run_on = evaluated if cfg.boundary == "reinfer" else changed  # else K keeps its state too
        rows = [Rows(run_on[i]) for i in range(n_levels)]

        def posterior(i: int, sel: Rows, context: Tensor) -> Gaussian:
            level = self._level[i]  # filtering runs dense (masked): sel.take is the identity
            q = level.infer(sel.take(xs[i]), context)
            kl = balanced_kl(q, level.predict(sel.take(d[i]), context), cfg.kl_balance)
            if cfg.timescale == "dynamic" and i > 0:  # eq. 9
                kl_static = balanced_kl(q, Gaussian(state.mean[i], state.std[i]), cfg.kl_balance,
                                        cfg.static_prior_grad)
                w = q_change[i]
                kl = w * kl + (1.0 - w) * kl_static
            kls[i] = torch.where(sel.mask, kl, torch.zeros_like(kl))
            return q

        s, mean, std, top_down, _ = self._top_down(state, d, rows, posterior)
        for i, kl in anchor_kl.items():
            kls[i] = kls[i] + kl
        changed_rows = [Rows(e) for e in changed]
        new_state = self._finish(state, s, d, changed_rows, evaluated, mean, std, top_down, factor)
        info = {
            "changed": torch.stack(changed, 1),
            "evaluated": torch.stack(evaluated, 1),
            "kl": torch.stack(kls, 1),
            "factor_kl": torch.stack(factor_kl, 1),
            "change_prob": torch.stack(change_prob, 1),
        }
        return new_state, info

    # ----------------------------------------------------------------- imagination
    def imagine_step(
        self,
        state: HierarchicalState,
        action: Tensor | None,
        sample_e: bool = True,
        gather_below: float = 1.0,
    ) -> tuple[HierarchicalState, list[Tensor]]:
        """One open-loop step: sample e^n ~ p(e^n | d^n[, h^n]) bottom-up while e^{n-1} = 1, then
        sample s^n from the change prior for the changing levels, top-down.

        Levels above the highest changing level K' keep their state and cached top-down
        output exactly and run no network (level K'+1 only evaluates its prior factor to
        decide that it is static). Returns the new state and e per level, (B,) bool each.
        """
        cfg = self.cfg
        first = state.t == 0
        any_first = bool(first.any())
        d, factor = list(state.d), list(state.factor)
        rows = [Rows(torch.ones_like(first), all_rows=True)]  # level 1 always changes
        evaluated = [rows[0].mask]
        self._settle_pending(0, state, d, rows[0].mask, action, gather_below)
        for i in range(1, len(self.levels)):
            below = rows[i - 1]
            evaluated.append(below.mask)
            if below.kind == "none":  # nested timescales (eq. 5): nothing to decide
                rows.append(below)
                continue
            if cfg.timescale == "every_step":
                rows.append(below)
            elif cfg.timescale == "clockwork":
                rows.append(Rows(below.mask & self._clockwork(i, state.t), gather_below))
            else:
                self._settle_pending(i, state, d, below.mask, action, gather_below)
                level = self._level[i]
                logit, h = level.change_logit(below.take(d[i]), below.take(factor[i]))
                prob = torch.sigmoid(logit)
                e = torch.bernoulli(prob).bool() if sample_e else prob > 0.5
                if any_first:
                    e = e | below.take(first)
                if level.factor_cell is not None:  # restarts where the level changes
                    factor[i] = below.put(torch.where(e.unsqueeze(1), torch.zeros_like(h), h), factor[i])
                mask = e if below.kind == "all" else below.put(e, torch.zeros_like(below.mask))
                rows.append(Rows(mask, gather_below))
            if cfg.timescale != "dynamic":
                self._settle_pending(i, state, d, rows[i].mask, action, gather_below)
                evaluated[i] = rows[i].mask

        def change_prior(i: int, sel: Rows, context: Tensor) -> Gaussian:
            return self._level[i].predict(sel.take(d[i]), context)

        s, mean, std, top_down, advanced = self._top_down(
            state, d, rows, change_prior, self._fused_step(state.d[0]))
        new_state = self._finish(state, s, d, rows, evaluated, mean, std, top_down, factor, advanced)
        return new_state, [r.mask for r in rows]

    def _compiled(self, d: Tensor, context: Tensor, noise: Tensor, weights: tuple,
                  min_std: float) -> tuple[Tensor, ...]:
        """`fused_change_step` through torch.compile, the row count as the one dynamic size.

        Weight shapes stay static (a fully dynamic compile measured slower than eager); one
        graph serves every row count above 1 and one batch 1 (docs/results.md, "A level's step").
        """
        if self._compiled_step is None:
            self._compiled_step = torch.compile(fused_change_step)
        if d.shape[0] > 1:
            for t in (d, context, noise):
                torch._dynamo.mark_dynamic(t, 0)
        return self._compiled_step(d, context, noise, weights, min_std)

    def _fused_step(self, x: Tensor) -> Callable[..., tuple[Tensor, ...]] | None:
        """The fused level step `imagine_step` uses, or None for the per-network path."""
        if (self._step_mode == "eager" or torch.is_grad_enabled()
                or torch.is_autocast_enabled(x.device.type)):
            return None
        return self._compiled if self._step_mode == "compiled" else fused_change_step


__all__ = ["Hierarchy", "Rows", "change_posterior", "balanced_kl"]
