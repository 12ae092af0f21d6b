"""`DLH`: the Dynamic Latent Hierarchy as a world model (the public API, docs/design.md §3).

    model = DLH(DLHConfig(levels=3, image_size=64, channels=1))
    out = model.observe(frames)                 # filter a sequence (B, T, C, H, W)
    traj = model.imagine(out.state, horizon=50) # open-loop rollout in latent space
    video = model.decode(traj)                  # (B, 50, C, H, W) in [0, 1]
    loss, metrics = model.loss(frames, beta=1.0)

The conv encoder runs on every frame of a sequence at once before the time loop and the
conv decoder on every step after it; only the latent recurrence is sequential.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from . import validation as check
from .arguments import check_int
from .config import DLHConfig, model_file_metadata
from .distributions import Gaussian, kl_gaussian
from .fastpath import one_rollout
from .files import atomic_write
from .hierarchy import NO_SCHEDULE, Hierarchy, TrainSchedule
from .losses import continue_nll, elbo_terms, reverse_gradient, reward_nll
from .networks import MLP, ConvDecoder, ConvEncoder, initialize
from .state import HierarchicalState, ObserveOutput, Trajectory

Policy = Callable[[HierarchicalState], Tensor]


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    return generator


class DLH(nn.Module):
    """Dynamic Latent Hierarchy world model; see the module docstring for the API."""

    def __init__(self, config: DLHConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = DLHConfig()
        if not isinstance(config, DLHConfig):
            raise ValueError(f"DLH expects a DLHConfig, got {type(config).__name__}")
        device = torch.get_default_device()
        if device.type != "meta":  # a huge config: one line with the number, not an allocator traceback
            check.check_model_memory(config, device, torch.get_default_dtype())
        self.config = cfg = config
        towers = {"norm": cfg.conv_norm, "act": cfg.conv_act}
        self.encoder = ConvEncoder(cfg.channels, cfg.image_size, cfg.conv_depth, cfg.x_dim, **towers)
        self.decoder = ConvDecoder(cfg.channels, cfg.image_size, cfg.conv_depth, cfg.c_dim, **towers)
        self.hierarchy = Hierarchy(cfg)
        self.reward_head = MLP(cfg.feature_dim, cfg.head_hidden, 1) if cfg.reward_head else None
        self.continue_head = MLP(cfg.feature_dim, cfg.head_hidden, 1) if cfg.continue_head else None
        # loss.held_twice: probe n−2 predicts level n's posterior mean from level n−1's (issue 23)
        self.held_twice_probes = nn.ModuleList(
            MLP(cfg.level_s_dim(n - 1), cfg.state_hidden, cfg.level_s_dim(n))
            for n in range(2, cfg.levels + 1)
        ) if cfg.loss.held_twice > 0 else None
        for module in (self.encoder, self.decoder, self.reward_head, self.continue_head):
            if module is not None:
                initialize(module, cfg.init)  # the levels initialise their own networks

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        return self.hierarchy.top_context.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights: floating inputs of another dtype are converted to it."""
        return self.hierarchy.top_context.dtype

    def initial_state(self, batch_size: int) -> HierarchicalState:
        """The empty state: the next step is a sequence's first (every level updates)."""
        return self.hierarchy.initial_state(check_int(batch_size, "batch_size", 1), self.device)

    def features(self, state: HierarchicalState) -> Tensor:
        """(B, F): s^n and d^n of every level concatenated, F = N·(|s| + |d|)."""
        state = self._check_state(state)
        parts = []
        for s, d in zip(state.s, state.d):
            parts += [s, d]
        return torch.cat(parts, -1)

    def _features_over_time(self, states: list[HierarchicalState]) -> Tensor:
        """`features` of each state, stacked: (B, T, F), one stack per level and field."""
        parts = []
        for n in range(self.config.levels):
            parts += [torch.stack([st.s[n] for st in states], 1), torch.stack([st.d[n] for st in states], 1)]
        return torch.cat(parts, -1)

    def _check_state(self, state: object, batch: int | None = None) -> HierarchicalState:
        """`state` if it is a state of this model (sizes, device) with `batch` rows (any if None)."""
        factor_sizes = [level.factor_size for level in self.hierarchy.levels]
        return check.check_state(state, self.config, factor_sizes, batch, **self._inputs())

    def _inputs(self) -> dict[str, torch.device | torch.dtype]:
        dtype = self.dtype
        if dtype != torch.float32:  # the Gaussian heads and decisions run in float32 (eq. 4's KLs)
            raise ValueError(f"the model's weights are {dtype}: DLH runs in float32 (bf16 through autocast, "
                             "the training `precision`); call model.float()")
        return {"dtype": dtype, "device": self.device}

    # ------------------------------------------------------------------ filtering
    def _filter(
        self,
        frames: Tensor,
        actions: Tensor | None,
        is_first: Tensor | None,
        state: HierarchicalState | None,
        update_stats: bool = False,
        schedule: TrainSchedule = NO_SCHEDULE,
        generator: torch.Generator | None = None,
        xs: list[Tensor] | None = None,
    ) -> tuple[ObserveOutput, list[HierarchicalState]]:
        """The filtering loop; `update_stats`: advance the decision statistics, `schedule`: the
        training loop's settings of this step (both for training only); `xs`: the frames'
        bottom-up features when the caller has them (`_bottom_up`)."""
        batch, steps = frames.shape[:2]
        state = self.initial_state(batch) if state is None else self._check_state(state, batch)
        xs = self._bottom_up(frames) if xs is None else xs
        carry = self.hierarchy.carry(state, generator)
        results, states = [], []
        for t in range(steps):
            action = actions[:, t] if actions is not None else None
            first = is_first[:, t] if is_first is not None else None
            carry, levels = self.hierarchy.infer_step(carry, [x[:, t] for x in xs], action, first,
                                                      update_stats=update_stats, schedule=schedule)
            states.append(carry.state)
            results.append(levels)
        if update_stats:
            self.hierarchy.keep_stats(carry.stats)
        state = carry.state

        def stacked(name: str) -> Tensor:  # (B, T, N)
            return torch.stack([torch.stack([getattr(r, name) for r in levels], 1) for levels in results], 1)

        context = torch.stack([s.top_down[0] for s in states], 1)  # (B, T, C)
        recon_mean = self.decoder(context.flatten(0, 1)).unflatten(0, (batch, steps))
        features = self._features_over_time(states)
        out = ObserveOutput(
            state=state,
            changed=stacked("changed"),
            kl=stacked("kl"),
            factor_kl=stacked("factor_kl"),
            recon=recon_mean.detach().clamp(0.0, 1.0),
            features=features,
            change_prob=stacked("change_prob"),
            evaluated=stacked("evaluated"),
            recon_mean=recon_mean,
        )
        return out, states

    def observe(
        self,
        frames: Tensor,
        actions: Tensor | None = None,
        is_first: Tensor | None = None,
        state: HierarchicalState | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> ObserveOutput:
        """Filter a sequence of frames into the hierarchical state.

        Args:
            frames: (B, T, C, H, W) float in [0, 1]; a float dtype other than the model's
                (e.g. float64 from `torch.from_numpy(x / 255.)`) is converted to it.
            actions: (B, T, A) float, actions[:, t] the action that led to frame t; None when
                the model takes no actions.
            is_first: (B, T) bool (or 0/1), episode starts: the state of those rows resets there.
            state: the state to continue from (default: the initial state).
            generator: the source of the posterior samples (None: torch's global RNG).

        Raises:
            ValueError: naming the argument, for any input that does not fit the model.
        """
        frames, actions, is_first = self._check_sequence(frames, actions, is_first)
        return self._filter(frames, actions, is_first, state, generator=_check_generator(generator))[0]

    def _check_sequence(
        self, frames: object, actions: object, is_first: object
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        frames = check.check_frames(frames, self.config, sequence=True, **self._inputs())
        lead = tuple(frames.shape[:2])
        actions = check.check_actions(actions, self.config, lead, **self._inputs())
        is_first = check.check_mask(is_first, lead, "is_first", device=self.device)
        return frames, actions, is_first

    def observe_step(
        self,
        state: HierarchicalState,
        frame: Tensor,
        action: Tensor | None = None,
        is_first: Tensor | None = None,
    ) -> HierarchicalState:
        """Filter one frame (B, C, H, W) float in [0, 1] — an agent's per-step update.

        `action` (B, A) led to `frame`; `is_first` (B,) bool resets those rows first. Inputs
        are checked (and converted) as in `observe`; `state` must have B rows.
        """
        frame = check.check_frames(frame, self.config, sequence=False, name="frame", **self._inputs())
        batch = frame.shape[0]
        state = self._check_state(state, batch)
        action = check.check_actions(action, self.config, (batch,), "action", **self._inputs())
        is_first = check.check_mask(is_first, (batch,), "is_first", device=self.device)
        xs = self.hierarchy.bottom_up(self.encoder(frame))
        return self.hierarchy.infer_step(self.hierarchy.carry(state), xs, action, is_first)[0].state

    # ------------------------------------------------------------------ imagination
    def imagine(
        self,
        state: HierarchicalState,
        horizon: int,
        actions: Tensor | Policy | None = None,
        *,
        sample_e: bool = True,
        gather_below: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Trajectory:
        """Roll the model `horizon` steps open loop from `state`.

        Args:
            state: a filtered state (B rows).
            horizon: number of steps (> 0).
            actions: (B, horizon, A) actions, actions[:, k] leading to the k-th imagined
                frame; or a callable policy(state) -> (B, A) called before each step; None
                for a model without actions.
            sample_e: sample e^n ~ p(e^n | d^n) (default) or take its mode.
            gather_below: in a batch whose rows differ in which levels change, a level runs
                on gathered rows when fewer than this fraction are active, else on all rows
                masked. The default 1.0 always gathers: measured faster on CPU at batch 1000
                (docs/results.md); 0 forces the masked path.
            generator: the source of the rollout's random draws (None: torch's global RNG).
        """
        horizon = check.check_horizon(horizon)
        state = self._check_state(state)
        batch = state.batch_size
        if not isinstance(sample_e, bool):
            raise ValueError(f"sample_e: expected True or False, got {sample_e!r}")
        if isinstance(gather_below, bool) or not isinstance(gather_below, numbers.Real) \
                or not 0 <= gather_below <= 1:
            raise ValueError(f"gather_below: expected a number in [0, 1], got {gather_below!r}")
        generator = _check_generator(generator)
        self._check_rollout_memory(batch, horizon)
        policy = actions if callable(actions) else None
        if policy is None:
            actions = check.check_actions(actions, self.config, (batch, horizon), **self._inputs())
        elif self.config.action_dim == 0:
            raise ValueError("actions: this model takes no actions (action_dim=0), got a policy")
        states, changed, used = [], [], []
        carry = self.hierarchy.carry(state, generator)
        with one_rollout():  # the fused step's weights are checked once, not every step
            for k in range(horizon):
                if policy is not None:
                    action = check.check_actions(
                        policy(carry.state), self.config, (batch,), "policy(state)", **self._inputs()
                    )
                else:
                    action = actions[:, k] if actions is not None else None
                carry, levels = self.hierarchy.imagine_step(carry, action, sample_e, gather_below)
                states.append(carry.state)
                changed.append(torch.stack([level.changed for level in levels], 1))
                if action is not None:
                    used.append(action)
        return Trajectory(
            states=states,
            changed=torch.stack(changed, 1),  # (B, horizon, N)
            features=self._features_over_time(states),
            decoder_input=torch.stack([s.top_down[0] for s in states], 1),
            actions=torch.stack(used, 1) if used else None,
        )

    def _check_rollout_memory(self, batch: int, horizon: int) -> None:
        """Refuse (ValueError) a rollout whose trajectory cannot fit in free memory, before it
        grows step by step until the machine runs out."""
        cfg = self.config
        factors = sum(level.factor_size for level in self.hierarchy.levels)
        s_sizes = sum(3 * level.s_dim for level in self.hierarchy.levels)  # s, mean, std
        d_sizes = sum(level.d_dim for level in self.hierarchy.levels)
        state = s_sizes + d_sizes + cfg.levels * cfg.c_dim + factors
        per_step = state + cfg.feature_dim + cfg.c_dim + cfg.action_dim  # + features, c^0, actions
        needed = horizon * batch * per_step * self.dtype.itemsize
        check.check_memory(needed, self.device, f"imagine: a rollout of horizon={horizon} for {batch} rows",
                           "imagine fewer steps at a time (from trajectory.final_state) or fewer rows")

    def decode(self, source: Trajectory | HierarchicalState) -> Tensor:
        """Frames in [0, 1]: (B, horizon, C, H, W) for a Trajectory, (B, C, H, W) for a state."""
        if isinstance(source, Trajectory):
            context = check.check_trajectory(source, self.config, device=self.device)
            return self.decoder(context.flatten(0, 1)).unflatten(0, context.shape[:2]).clamp(0, 1)
        if isinstance(source, HierarchicalState):
            return self.decoder(self._check_state(source).top_down[0]).clamp(0, 1)
        raise ValueError(f"decode: expected a Trajectory or HierarchicalState, got {type(source).__name__}")

    # ------------------------------------------------------------------ heads
    def predict_reward(self, features: Tensor) -> Tensor:
        """Mean reward (...,) from features (..., F) float; needs `reward_head=True`."""
        if self.reward_head is None:
            raise ValueError("this model has no reward head: build it with DLHConfig(reward_head=True)")
        return self.reward_head(check.check_features(features, self.config, **self._inputs())).squeeze(-1)

    def predict_continue(self, features: Tensor) -> Tensor:
        """Probability (...,) that the episode continues from features (..., F) float; needs
        `continue_head=True`."""
        if self.continue_head is None:
            raise ValueError("this model has no continue head: build it with DLHConfig(continue_head=True)")
        features = check.check_features(features, self.config, **self._inputs())
        return torch.sigmoid(self.continue_head(features).squeeze(-1))

    # ------------------------------------------------------------------ training
    def loss(
        self,
        frames: Tensor,
        actions: Tensor | None = None,
        beta: float = 1.0,
        *,
        rewards: Tensor | None = None,
        continues: Tensor | None = None,
        is_first: Tensor | None = None,
        schedule: TrainSchedule | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """The negative ELBO (eq. 8) per frame, with β on the KL terms, plus head losses.

        Returns the scalar loss and metrics (floats): "loss", "elbo", "recon", "kl",
        "factor_kl", per level "kl/level{n}", "factor_kl/level{n}", "change_rate/level{n}",
        "levels_used" (L̄), "beta", and "reward_nll"/"continue_nll" when trained.
        `schedule`: the training loop's settings of this step (`hierarchy.TrainSchedule`:
        upper_warmup, memory dropout, the margin's schedule; None: none of them). `generator`:
        the source of every random draw of the loss (None: torch's global RNG).
        """
        loss, metrics, _ = self.loss_and_output(
            frames, actions, beta, rewards=rewards, continues=continues, is_first=is_first,
            schedule=schedule, generator=generator,
        )
        return loss, metrics

    def loss_and_output(
        self,
        frames: Tensor,
        actions: Tensor | None = None,
        beta: float = 1.0,
        *,
        rewards: Tensor | None = None,
        continues: Tensor | None = None,
        is_first: Tensor | None = None,
        float_metrics: bool = True,
        schedule: TrainSchedule | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor | float], ObserveOutput]:
        """`loss`, also returning the ObserveOutput (for logging reconstructions).

        `float_metrics=False` leaves the metrics as 0-dim tensors ("beta" stays a float): turning
        each into a Python float waits for the device, so a caller that logs only some steps (the
        trainer) converts them on those steps alone.
        """
        beta = check.check_weight(beta, "beta")
        frames, actions, is_first = self._check_sequence(frames, actions, is_first)
        lead = tuple(frames.shape[:2])
        rewards = check.check_targets(rewards, lead, "rewards", device=self.device)
        continues = check.check_targets(continues, lead, "continues", binary=True, device=self.device)
        if rewards is not None and self.reward_head is None:
            raise ValueError("rewards given but the model has no reward head: build it with "
                             "DLHConfig(reward_head=True)")
        if continues is not None and self.continue_head is None:
            raise ValueError("continues given but the model has no continue head: build it with "
                             "DLHConfig(continue_head=True)")
        # the training objective is the one caller that advances the decision statistics
        if schedule is not None and not isinstance(schedule, TrainSchedule):
            raise ValueError(f"schedule: expected a worldmodel.hierarchy.TrainSchedule or None, "
                             f"got {type(schedule).__name__}")
        generator = _check_generator(generator)
        xs = self._bottom_up(frames)  # also read by held_twice: the encoder runs once
        out, states = self._filter(frames, actions, is_first, None, update_stats=self.training,
                                   schedule=schedule or NO_SCHEDULE, generator=generator, xs=xs)
        recipe = self.config.loss
        terms = elbo_terms(frames, out.recon_mean, recipe.obs_std, out.kl, out.factor_kl)
        kl = terms["kl"]
        if recipe.level_kl_scale is not None:  # per-level weights in the loss; the ELBO reported unweighted
            kl = (out.kl * out.kl.new_tensor(recipe.level_kl_scale)).sum(-1)
        if recipe.free_nats > 0:  # free bits: no pressure below the floor (value kept for metrics)
            kl = torch.clamp(kl, min=recipe.free_nats)
        if recipe.window_free_nats is not None:  # free bits per level and window (issue 23)
            kl = kl + self._window_free_extra(out.kl, recipe.window_free_nats)
        loss = terms["recon"] + beta * (kl + terms["factor_kl"])
        extra: dict[str, Tensor] = {}
        if recipe.overshoot > 1:  # latent overshooting of level 1's prior (PlaNet), scaled like the KL
            extra["overshoot_kl"] = self._overshoot_kl(states, actions, is_first, recipe.overshoot, generator)
            loss = loss + beta * recipe.overshoot_scale * extra["overshoot_kl"]
        if recipe.held_twice > 0:  # what a level keeps that the level above holds (issue 23)
            extra["held_twice"] = self._held_twice(xs, states, recipe.held_twice)
            loss = loss + extra["held_twice"]
        if rewards is not None:
            extra["reward_nll"] = reward_nll(self.predict_reward(out.features), rewards)
        if continues is not None:
            extra["continue_nll"] = continue_nll(self.continue_head(out.features).squeeze(-1), continues)
        scales = {"reward_nll": recipe.reward_scale, "continue_nll": recipe.continue_scale}
        for key, value in extra.items():
            if key in scales:
                loss = loss + scales[key] * value
        total = loss.mean()
        with torch.no_grad():
            metrics: dict[str, Tensor | float] = {
                "loss": total.detach(),
                "elbo": -(terms["recon"] + terms["kl"] + terms["factor_kl"]).mean(),
                "recon": terms["recon"].mean(),
                "kl": terms["kl"].mean(),
                "factor_kl": terms["factor_kl"].mean(),
                "levels_used": out.changed.float().sum(-1).mean(),
                "beta": float(beta),
            }
            for n in range(self.config.levels):
                metrics[f"kl/level{n + 1}"] = out.kl[..., n].mean()
                metrics[f"change_rate/level{n + 1}"] = out.changed[..., n].float().mean()
                if n > 0:
                    metrics[f"factor_kl/level{n + 1}"] = out.factor_kl[..., n].mean()
            metrics.update({k: v.mean() for k, v in extra.items()})
        if float_metrics:
            metrics = {k: float(v) for k, v in metrics.items()}
        return total, metrics, out

    def _bottom_up(self, frames: Tensor) -> list[Tensor]:
        """x^n of every frame, per level (B, T, X) (the encoder, then eq. 10)."""
        batch, steps = frames.shape[:2]
        x1 = self.encoder(frames.flatten(0, 1)).unflatten(0, (batch, steps))  # (B, T, X)
        return self.hierarchy.bottom_up(x1)

    def _held_twice(self, xs: list[Tensor], states: list[HierarchicalState], weight: float) -> Tensor:
        """`loss.held_twice`: the probes' error, (B, T), summed over the level pairs.

        For each level n >= 2, level n−1's posterior is recomputed from its detached inputs
        (x^{n−1} of the frame, the context c^{n−1} it read) so that only its own network is
        trained against the probe; the probe predicts level n's posterior mean, detached and
        standardised over batch and time. Minimising this trains the probe; the reversed
        gradient trains level n−1's posterior to keep nothing the probe can read level n from.
        """
        assert self.held_twice_probes is not None
        total = xs[0].new_zeros(xs[0].shape[:2])
        for n, probe in enumerate(self.held_twice_probes, start=1):  # 0-based upper level n
            context = torch.stack([s.top_down[n] for s in states], 1).detach()  # c^{n-1} read by level n-1
            lower = self.hierarchy.levels[n - 1].infer(xs[n - 1].detach(), context).mean  # (B, T, S)
            upper = torch.stack([s.mean[n] for s in states], 1).detach()
            upper = (upper - upper.mean((0, 1))) / upper.std((0, 1)).clamp_min(1e-3)
            guess = probe(reverse_gradient(lower, weight))
            total = total + (guess - upper).square().mean(-1)
        return total

    @staticmethod
    def _window_free_extra(kl: Tensor, floors: tuple[float, ...]) -> Tensor:
        """What per-level, per-window free bits add to the per-step loss: (B, T).

        For level n with floor f_n > 0 the loss pays max(f_n, Σ_t KL^n_t) over the window instead
        of Σ_t KL^n_t: the difference, (f_n − Σ_t KL^n_t)⁺ with no gradient, spread evenly over the
        window's steps — so no gradient pushes level n's KL down while its window total is below
        f_n, and above it the KL is paid as usual.
        """
        steps = kl.shape[1]
        extra = torch.zeros(kl.shape[:2], device=kl.device, dtype=kl.dtype)
        for n, floor in enumerate(floors):
            if floor > 0:
                total = kl[..., n].sum(1)  # (B,)
                below = (floor - total).clamp_min(0.0)
                # the gradient of the level's KL is cancelled where the window is below the floor
                cancel = torch.where((total < floor).unsqueeze(1), kl[..., n] - kl[..., n].detach(),
                                     torch.zeros_like(kl[..., n]))
                extra = extra + below.detach().unsqueeze(1) / steps - cancel
        return extra

    def _overshoot_kl(
        self, states: list[HierarchicalState], actions: Tensor | None, is_first: Tensor | None, depth: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Latent overshooting of level 1 (PlaNet, Hafner et al. 2019): the mean over k = 2..depth
        of KL[q(s^1_{t+k}) ‖ p_k(s^1_{t+k})], p_k the change prior after k − 1 steps of the open-loop
        recurrence from the filtered d^1 (samples of the prior fed back, eq. 12 and 14), each
        step reading the filtered context c^1 of its own frame (the upper levels teacher-forced).
        The posterior is a fixed target (no gradient): only the prior and the recurrence learn to
        predict further than one step, as imagination uses them. Chains that cross an episode
        start (`is_first`) or the window's end are left out. Returns (B, T): the KL of the
        chains ending at frame t, averaged over their k, 0 where none ends.
        """
        level, hierarchy = self.hierarchy.levels[0], self.hierarchy
        batch, steps = len(states[0].t), len(states)
        stack = lambda xs: torch.stack(xs, 1)  # noqa: E731  list of (B, ·) -> (B, T, ·)
        post_mean = stack([st.mean[0] for st in states]).detach()
        post_std = stack([st.std[0] for st in states]).detach()
        context = stack([hierarchy.context(0, st.top_down) for st in states])  # c^1_t
        d = stack([st.d[0] for st in states])  # d^1 after step t (owed under actions: d^1_t)
        s = stack([st.s[0] for st in states])
        if level.takes_action:  # pay the owed advance with the action of the next step
            nxt = torch.cat([actions[:, 1:], actions[:, -1:]], 1)
            d = level.transition(s.flatten(0, 1), d.flatten(0, 1), nxt.flatten(0, 1)).unflatten(
                0, (batch, steps))
        starts = is_first.bool() if is_first is not None else torch.zeros(batch, steps, dtype=torch.bool,
                                                                          device=d.device)
        valid = torch.ones(batch, steps, dtype=torch.bool, device=d.device)
        total = torch.zeros(batch, steps, device=d.device)
        count = torch.zeros(batch, steps, device=d.device)
        for k in range(1, min(depth, steps - 1) + 1):
            span = steps - k  # d[:, t] predicts frame t + k, for t < span
            valid = valid[:, :span] & ~starts[:, k:]  # no episode start in (t, t + k]
            d = d[:, :span]
            prior = level.predict(d.flatten(0, 1), context[:, k:].flatten(0, 1))  # eq. 14
            if k >= 2:  # k = 1 is the one-step prior the ELBO already trains
                target = Gaussian(post_mean[:, k:].flatten(0, 1), post_std[:, k:].flatten(0, 1))
                kl = kl_gaussian(target, prior).unflatten(0, (batch, span))
                total[:, k:] += torch.where(valid, kl, torch.zeros_like(kl))
                count[:, k:] += valid.float()
            if k < depth and span > 1:  # feed the prior's sample back (eq. 12)
                sample = prior.rsample(generator).unflatten(0, (batch, span))[:, :-1]
                act = actions[:, k + 1:].flatten(0, 1) if level.takes_action else None
                d = level.transition(sample.flatten(0, 1), d[:, :-1].flatten(0, 1), act).unflatten(
                    0, (batch, span - 1))
        return total / count.clamp_min(1.0)

    def forward(self, *args, **kwargs) -> tuple[Tensor, dict[str, Tensor | float], ObserveOutput]:
        """Same as `loss_and_output` (so that DistributedDataParallel can wrap the model)."""
        return self.loss_and_output(*args, **kwargs)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Weights (safetensors) and config (JSON metadata) in one file, written atomically.

        `worldmodel.load(path)` rebuilds the model; nothing in the file is pickled.
        """
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = model_file_metadata(self.config)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


__all__ = ["DLH"]
