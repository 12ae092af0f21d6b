"""Planning in the DLH's latent space: CEM (PlaNet) and MPPI (TD-MPC2).

A planner turns a filtered batch-1 state into the first action of the best action sequence
it finds. Every iteration scores *all* candidate sequences with one batched rollout,
``model.imagine(state.repeat_interleave(n), horizon, actions)`` — so imagination's reuse of
static upper levels speeds planning up directly — and a score function (by default the sum
of the reward head's predictions, optionally discounted and weighted by the continue head).

    >>> planner = CEMPlanner(horizon=12, candidates=1000, iterations=10, top_k=100)
    >>> action = planner.plan(model, state)          # (A,) tensor in the action bounds
    >>> planner.reset()                              # at an episode start

A custom score is any callable ``score_fn(model, traj) -> (n,)``; ``traj.actions`` holds
the candidates (n, H, A), ``traj.features`` (n, H, F), ``traj.changed`` (n, H, N).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from worldmodel import DLH, HierarchicalState, Trajectory
from worldmodel.arguments import check_int

ScoreFn = Callable[[DLH, Trajectory], Tensor]
"""(model, trajectory of n candidates) -> (n,) score; higher is better."""

Bound = float | Sequence[float] | Tensor


def _check_float(
    name: str, value: Any, low: float, high: float = math.inf, *, open_low: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (open_low and value == low):
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


class RewardScore:
    """The default score: predicted return of each imagined trajectory.

    G = Σ_k γ^k · w_k · r̂_k, with r̂_k = ``model.predict_reward(features[:, k])`` (the reward
    of the step into imagined frame k) and w_k = Π_{j<k} ĉ_j the probability that the episode
    is still running after the previous steps (ĉ = ``model.predict_continue``) when
    ``use_continue`` is set, else 1.

    Args:
        discount: γ in (0, 1].
        use_continue: weight by the continue head's cumulative product (needs the head).
    """

    def __init__(self, discount: float = 1.0, use_continue: bool = False) -> None:
        self.discount = _check_float("discount", discount, 0.0, 1.0, open_low=True)
        self.use_continue = bool(use_continue)

    def check_model(self, model: DLH) -> None:
        """ValueError if `model` lacks a head this score reads."""
        if model.reward_head is None:
            raise ValueError("planning on predicted rewards needs a reward head: train the model with "
                             "DLHConfig(reward_head=True) (--set model.reward_head=true)")
        if self.use_continue and model.continue_head is None:
            raise ValueError("RewardScore(use_continue=True) needs DLHConfig(continue_head=True)")

    def __call__(self, model: DLH, traj: Trajectory) -> Tensor:
        rewards = model.predict_reward(traj.features)  # (n, H)
        horizon = rewards.shape[1]
        weights = self.discount ** torch.arange(horizon, device=rewards.device, dtype=rewards.dtype)
        weights = weights.expand_as(rewards)
        if self.use_continue:
            cont = model.predict_continue(traj.features)  # (n, H)
            alive = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1), 1)
            weights = weights * alive
        return (weights * rewards).sum(1)  # (n,)


class Planner(ABC):
    """Common base: bounds, the batched scoring rollout, warm starts and `plan`.

    Args:
        horizon: planning horizon H (imagined steps).
        iterations: refinement iterations per action.
        action_low, action_high: bounds of every action component (a number or one per
            component); candidates are clipped to them.
        score_fn: ``(model, traj) -> (n,)``; default :class:`RewardScore` ().
        warm_start: start from the previous plan's mean shifted by one step.
        seed: seed of the planner's own sampling noise (None: nondeterministic).
    """

    def __init__(
        self,
        horizon: int,
        iterations: int,
        action_low: Bound = -1.0,
        action_high: Bound = 1.0,
        score_fn: ScoreFn | None = None,
        warm_start: bool = False,
        seed: int | None = None,
    ) -> None:
        self.horizon = check_int(horizon, "horizon", 1)
        self.iterations = check_int(iterations, "iterations", 1)
        low = torch.as_tensor(action_low, dtype=torch.float32).flatten()
        high = torch.as_tensor(action_high, dtype=torch.float32).flatten()
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()) or bool((low >= high).any()):
            raise ValueError(f"action_low must be finite and < action_high everywhere, got "
                             f"action_low={action_low!r}, action_high={action_high!r}")
        self.action_low, self.action_high = low, high
        if score_fn is not None and not callable(score_fn):
            raise ValueError(f"score_fn must be callable (model, traj) -> (n,), got {score_fn!r}")
        self.score_fn: ScoreFn = score_fn if score_fn is not None else RewardScore()
        self.warm_start = bool(warm_start)
        if seed is not None:
            check_int(seed, "seed", 0)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self._previous: Tensor | None = None  # (H, A) mean of the last plan
        self.last_stats: dict[str, Any] = {}

    # ------------------------------------------------------------------ public
    def reset(self) -> None:
        """Forget the previous plan (call at an episode start)."""
        self._previous = None
        self.last_stats = {}

    def check_model(self, model: DLH) -> None:
        """ValueError if `model` cannot be planned with (no actions, wrong bounds, no head)."""
        if not isinstance(model, DLH):
            raise ValueError(f"model must be a worldmodel.DLH, got {type(model).__name__}")
        adim = model.config.action_dim
        if adim == 0:
            raise ValueError("the model takes no actions (action_dim=0): nothing to plan")
        if self.action_low.numel() not in (1, adim) or self.action_high.numel() not in (1, adim):
            raise ValueError(f"action bounds have {self.action_low.numel()} and {self.action_high.numel()} "
                             f"components, the model's actions {adim}")
        check = getattr(self.score_fn, "check_model", None)
        if check is not None:
            check(model)

    def plan(self, model: DLH, state: HierarchicalState) -> Tensor:
        """The first action (A,) of the best plan from a filtered batch-1 `state`."""
        self.check_model(model)
        if not isinstance(state, HierarchicalState) or state.batch_size != 1:
            got = state.batch_size if isinstance(state, HierarchicalState) else type(state).__name__
            raise ValueError(f"plan expects a HierarchicalState with batch 1, got {got}")
        device, adim = model.device, model.config.action_dim
        low = self.action_low.to(device).expand(adim)
        high = self.action_high.to(device).expand(adim)
        mean = torch.zeros(self.horizon, adim, device=device)  # (H, A)
        if self.warm_start and self._previous is not None and self._previous.shape == mean.shape:
            mean[:-1] = self._previous[1:].to(device)
        with torch.no_grad():
            action, mean = self._optimise(model, state, mean, low, high)
        self._previous = mean.detach().clone()
        return action.clamp(low, high)

    # ------------------------------------------------------------------ helpers
    def _noise(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        return torch.randn(shape, generator=self.generator).to(device)

    def _score(self, model: DLH, states: HierarchicalState, actions: Tensor) -> Tensor:
        """One batched rollout of all candidates (n, H, A) -> scores (n,)."""
        traj = model.imagine(states, self.horizon, actions)
        scores = self.score_fn(model, traj)
        if scores.shape != actions.shape[:1]:
            raise ValueError(f"score_fn must return shape ({actions.shape[0]},), got {tuple(scores.shape)}")
        self._record(traj, scores)
        return torch.nan_to_num(scores.float(), nan=-math.inf)

    def _record(self, traj: Trajectory, scores: Tensor) -> None:
        self.last_stats = {
            "score_max": float(scores.max()),
            "score_mean": float(scores.mean()),
            "imagined_change_rate": traj.changed.float().mean((0, 1)).tolist(),  # per level (N,)
        }

    @abstractmethod
    def _optimise(
        self, model: DLH, state: HierarchicalState, mean: Tensor, low: Tensor, high: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Refine the sequence distribution from `mean` (H, A); return (action (A,), mean (H, A))."""


class _SamplingPlanner(Planner):
    """CEM's and MPPI's common loop: sample around (mean, std), clip, score, keep the elites, refit."""

    def _optimise(
        self, model: DLH, state: HierarchicalState, mean: Tensor, low: Tensor, high: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Each iteration samples sequences around (mean, std), clips them to the bounds, scores
        them in one batched rollout, keeps the best and refits (mean, std) to them (`_refit`:
        where the planners differ)."""
        n, k, std0 = self._sampling()
        std = torch.full_like(mean, std0)
        states = state.repeat_interleave(n)
        for _ in range(self.iterations):
            noise = self._noise((n, *mean.shape), mean.device)
            actions = torch.maximum(torch.minimum(mean + std * noise, high), low)  # (n, H, A)
            scores = self._score(model, states, actions)  # (n,)
            top = scores.topk(k)
            elites, values = actions[top.indices], top.values  # (k, H, A), (k,)
            mean, std = self._refit(elites, values)
        return self._action(mean, elites, values), mean

    @abstractmethod
    def _sampling(self) -> tuple[int, int, float]:
        """Sequences sampled per iteration, elites kept, and the starting std."""

    @abstractmethod
    def _refit(self, elites: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std), each (H, A), of the next iteration from the elites (k, H, A) and their
        scores (k,)."""

    def _action(self, mean: Tensor, elites: Tensor, values: Tensor) -> Tensor:
        """The action (A,) to take after the last iteration: the mean's first step."""
        return mean[0]


class CEMPlanner(_SamplingPlanner):
    """Cross-entropy method over action sequences (PlaNet, Hafner et al. 2019).

    Each iteration samples `candidates` sequences from a diagonal Gaussian over (H, A),
    clips them to the bounds, scores them in one batched rollout and refits the Gaussian
    to the `top_k` best. The action is the final mean's first step.

    Args:
        horizon, iterations: PlaNet's 12 and 10.
        candidates: sequences per iteration (PlaNet: 1000).
        top_k: elites refitted to (PlaNet: 100).
        init_std: initial standard deviation of every component.
        min_std: floor of the refitted standard deviation.
        (others: see :class:`Planner`; `warm_start` defaults to False as in PlaNet.)
    """

    def __init__(
        self,
        horizon: int = 12,
        candidates: int = 1000,
        iterations: int = 10,
        top_k: int = 100,
        init_std: float = 1.0,
        min_std: float = 0.0,
        action_low: Bound = -1.0,
        action_high: Bound = 1.0,
        score_fn: ScoreFn | None = None,
        warm_start: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(horizon, iterations, action_low, action_high, score_fn, warm_start, seed)
        self.candidates = check_int(candidates, "candidates", 2)
        self.top_k = check_int(top_k, "top_k", 1)
        if self.top_k > self.candidates:
            raise ValueError(f"top_k must be <= candidates={self.candidates}, got {top_k!r}")
        self.init_std = _check_float("init_std", init_std, 0.0, open_low=True)
        self.min_std = _check_float("min_std", min_std, 0.0)

    def _sampling(self) -> tuple[int, int, float]:
        return self.candidates, self.top_k, self.init_std

    def _refit(self, elites: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return elites.mean(0), elites.std(0, unbiased=False).clamp_min(self.min_std)


class MPPIPlanner(_SamplingPlanner):
    """MPPI as in TD-MPC2 (Hansen et al. 2024): elites weighted by their exponentiated score.

    Each iteration samples `num_samples` sequences around the mean with the current std,
    keeps the `num_elites` best and sets mean/std to the score-weighted moments of the elites,
    weights ∝ exp((G − max G) / temperature); std is clamped to [min_std, max_std]. The mean
    starts from the previous plan shifted by one step (`warm_start`). The action is the
    final mean's first step, or, with `sample_elite`, TD-MPC2's choice: an elite drawn by
    weight.

    Args:
        horizon: imagined steps (TD-MPC2: 3; planning on a world model without a value
            function wants longer, default 12).
        num_samples, num_elites: TD-MPC2's 512 and 64.
        iterations: TD-MPC2's 6.
        temperature: softness of the weights (> 0; lower is greedier).
        min_std, max_std: std bounds (TD-MPC2: 0.05 and 2); the std starts at max_std.
        sample_elite: return an elite's first action drawn by weight instead of the mean.
    """

    # the two constructors repeat Planner's arguments on purpose: each signature names its own
    # parameters and defaults (PlaNet's, TD-MPC2's) for the reader and the type checker
    def __init__(
        self,
        horizon: int = 12,
        num_samples: int = 512,
        num_elites: int = 64,
        iterations: int = 6,
        temperature: float = 0.5,
        min_std: float = 0.05,
        max_std: float = 2.0,
        action_low: Bound = -1.0,
        action_high: Bound = 1.0,
        score_fn: ScoreFn | None = None,
        warm_start: bool = True,
        sample_elite: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(horizon, iterations, action_low, action_high, score_fn, warm_start, seed)
        self.num_samples = check_int(num_samples, "num_samples", 2)
        self.num_elites = check_int(num_elites, "num_elites", 1)
        if self.num_elites > self.num_samples:
            raise ValueError(f"num_elites must be <= num_samples={self.num_samples}, got {num_elites!r}")
        self.temperature = _check_float("temperature", temperature, 0.0, open_low=True)
        self.min_std = _check_float("min_std", min_std, 0.0)
        self.max_std = _check_float("max_std", max_std, 0.0, open_low=True)
        if self.min_std > self.max_std:
            raise ValueError(f"min_std must be <= max_std={self.max_std}, got {min_std!r}")
        self.sample_elite = bool(sample_elite)

    def _sampling(self) -> tuple[int, int, float]:
        return self.num_samples, self.num_elites, self.max_std

    def _weights(self, values: Tensor) -> Tensor:
        """The elites' weights (k, 1, 1): ∝ exp((G − max G) / temperature), summing to 1."""
        weights = torch.exp((values - values.max()) / self.temperature)
        return (weights / weights.sum()).view(-1, 1, 1)

    def _refit(self, elites: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        weights = self._weights(values)
        mean = (weights * elites).sum(0)
        return mean, ((weights * (elites - mean) ** 2).sum(0)).sqrt().clamp(self.min_std, self.max_std)

    def _action(self, mean: Tensor, elites: Tensor, values: Tensor) -> Tensor:
        if self.sample_elite:  # TD-MPC2: an elite of the last iteration, drawn by weight
            pick = torch.multinomial(self._weights(values).flatten().cpu(), 1, generator=self.generator)
            return elites[int(pick)][0]
        return mean[0]


def make_planner(name: str, **kwargs: Any) -> Planner:
    """A planner by name: "cem" (:class:`CEMPlanner`) or "mppi" (:class:`MPPIPlanner`)."""
    planners: dict[str, type[Planner]] = {"cem": CEMPlanner, "mppi": MPPIPlanner}
    if name not in planners:
        raise ValueError(f"planner must be one of {sorted(planners)}, got {name!r}")
    return planners[name](**kwargs)


__all__ = ["Planner", "CEMPlanner", "MPPIPlanner", "RewardScore", "ScoreFn", "make_planner"]
