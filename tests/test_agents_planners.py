"""CEM and MPPI planners: convergence on a known reward, batched scoring, bounds, validation."""

from __future__ import annotations

import pytest
import torch

from agents.planners import CEMPlanner, Planner, RewardScore, make_planner
from tests.conftest import tiny_config
from worldmodel import DLH

TARGET = torch.tensor([0.5, -0.3])


def agent_model(seed: int = 0, **overrides) -> DLH:
    torch.manual_seed(seed)
    base = dict(levels=2, channels=3, action_dim=2, reward_head=True)
    base.update(overrides)
    return DLH(tiny_config(**base))


def filtered_state(model: DLH):
    cfg = model.config
    size = cfg.image_size
    frame = torch.rand(1, cfg.channels, size, size, generator=torch.Generator().manual_seed(0))
    action = torch.zeros(1, cfg.action_dim) if cfg.action_dim else None
    with torch.inference_mode():
        return model.observe_step(model.initial_state(1), frame, action, torch.ones(1, dtype=torch.bool))


def toy_score(model: DLH, traj) -> torch.Tensor:
    """Known reward: r_k = -||a_k - a*||², summed over the horizon; best plan is a* everywhere."""
    return -((traj.actions - TARGET) ** 2).sum((-1, -2))


def small(kind: str, **kwargs) -> Planner:
    if kind == "cem":
        defaults = dict(horizon=4, candidates=256, iterations=8, top_k=32)
    else:
        defaults = dict(horizon=4, num_samples=256, num_elites=32, iterations=8)
    defaults.update(kwargs)
    return make_planner(kind, **defaults)


@pytest.fixture(scope="module")
def model() -> DLH:
    return agent_model()


# ---------------------------------------------------------------------- convergence
@pytest.mark.parametrize("kind", ["cem", "mppi"])
@pytest.mark.parametrize("seed", [0, 1])
def test_planner_converges_to_best_sequence(model, kind, seed):
    planner = small(kind, score_fn=toy_score, seed=seed)
    action = planner.plan(model, filtered_state(model))
    assert action.shape == (2,)
    assert torch.allclose(action, TARGET, atol=0.05), action
    # the whole refined plan, not only its first step
    assert (planner._previous - TARGET).norm(dim=-1).max() < 0.1


@pytest.mark.parametrize("kind", ["cem", "mppi"])
def test_target_outside_bounds_is_clipped(model, kind):
    def score(model, traj):
        return -((traj.actions - torch.tensor([3.0, -3.0])) ** 2).sum((-1, -2))

    planner = small(kind, score_fn=score, seed=0, action_low=[-0.5, -1.0], action_high=[0.5, 1.0])
    action = planner.plan(model, filtered_state(model))
    assert torch.allclose(action, torch.tensor([0.5, -1.0]), atol=0.02)


def test_default_score_uses_reward_head(model, monkeypatch):
    """The default score plans on the reward head: make it reward one feature column."""
    column = model.config.s_dim  # first entry of d^1: depends on the action (f_tem takes it)
    monkeypatch.setattr(model, "predict_reward", lambda features: features[..., column])
    planner = CEMPlanner(horizon=3, candidates=128, iterations=4, top_k=16, seed=0)
    state = filtered_state(model)
    action = planner.plan(model, state)

    def value(a):
        with torch.no_grad():
            actions = a.view(1, 1, 2).expand(64, 3, 2).contiguous()
            traj = model.imagine(state.repeat_interleave(64), 3, actions)
            return float(traj.features[..., column].sum(1).mean())

    assert value(action) > value(-action)


# ---------------------------------------------------------------------- batched scoring
class CountingModel(DLH):
    """Records the batch and horizon of every imagine call."""

    def __init__(self, config):
        super().__init__(config)
        self.calls: list[tuple[int, int]] = []

    def imagine(self, state, horizon, actions=None, **kwargs):
        self.calls.append((state.batch_size, horizon))
        assert isinstance(actions, torch.Tensor) and actions.shape == (state.batch_size, horizon, 2)
        return super().imagine(state, horizon, actions, **kwargs)


@pytest.mark.parametrize("kind", ["cem", "mppi"])
def test_one_batched_rollout_per_iteration(kind):
    torch.manual_seed(0)
    model = CountingModel(tiny_config(levels=2, channels=3, action_dim=2, reward_head=True))
    planner = small(kind, iterations=3, horizon=5, seed=0)
    planner.plan(model, filtered_state(model))
    assert model.calls == [(256, 5)] * 3


@pytest.mark.parametrize("kind", ["cem", "mppi"])
def test_candidates_respect_bounds(model, kind):
    seen = []

    def score(model, traj):
        seen.append(traj.actions.clone())
        return toy_score(model, traj)

    planner = small(kind, score_fn=score, action_low=-0.2, action_high=0.7, seed=0)
    action = planner.plan(model, filtered_state(model))
    actions = torch.cat(seen)
    assert actions.min() >= -0.2 and actions.max() <= 0.7
    assert -0.2 <= action.min() and action.max() <= 0.7


def test_mppi_warm_start_shifts_previous_mean(model):
    planner = small("mppi", score_fn=toy_score, seed=0, iterations=1)
    state = filtered_state(model)
    planner._previous = torch.arange(8.0).view(4, 2) / 10
    starts = []
    original = planner._optimise

    def spy(model, state, mean, low, high):
        starts.append(mean.clone())
        return original(model, state, mean, low, high)

    planner._optimise = spy
    planner.plan(model, state)
    expected = torch.tensor([[0.2, 0.3], [0.4, 0.5], [0.6, 0.7], [0.0, 0.0]])
    assert torch.allclose(starts[0], expected)
    planner.reset()
    planner.plan(model, state)
    assert torch.equal(starts[1], torch.zeros(4, 2))


def test_cem_does_not_warm_start_by_default(model):
    planner = small("cem", score_fn=toy_score, seed=0)
    assert not planner.warm_start and small("mppi").warm_start


def test_seeded_planner_is_deterministic(model):
    state = filtered_state(model)
    a = small("cem", score_fn=toy_score, seed=3).plan(model, state)
    b = small("cem", score_fn=toy_score, seed=3).plan(model, state)
    assert torch.equal(a, b)


def test_mppi_sample_elite_returns_an_action_in_bounds(model):
    planner = small("mppi", score_fn=toy_score, seed=0, sample_elite=True)
    action = planner.plan(model, filtered_state(model))
    assert action.shape == (2,) and action.abs().max() <= 1


def test_last_stats_report_imagined_change_rates(model):
    planner = small("cem", score_fn=toy_score, seed=0, iterations=1)
    planner.plan(model, filtered_state(model))
    rates = planner.last_stats["imagined_change_rate"]
    assert len(rates) == 2 and rates[0] == 1.0 and 0.0 <= rates[1] <= 1.0


# ---------------------------------------------------------------------- the reward score
def test_reward_score_discount_and_continue(model, monkeypatch):
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    cont = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 1.0]])
    monkeypatch.setattr(model, "predict_reward", lambda f: rewards)
    monkeypatch.setattr(model, "predict_continue", lambda f: cont)
    traj = type("T", (), {"features": torch.zeros(2, 3, 4)})()
    plain = RewardScore()(model, traj)
    assert torch.allclose(plain, torch.tensor([6.0, 1.5]))
    discounted = RewardScore(discount=0.5)(model, traj)
    assert torch.allclose(discounted, torch.tensor([1 + 1 + 0.75, 0.5 + 0.25 + 0.125]))
    with pytest.raises(ValueError, match="continue_head"):
        RewardScore(use_continue=True).check_model(model)
    weighted = RewardScore(use_continue=True)(model, traj)
    # weights Π_{j<k} c_j: [1, .5, .25] and [1, 1, 0]
    assert torch.allclose(weighted, torch.tensor([1 + 1 + 0.75, 0.5 + 0.5 + 0.0]))


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kind", "kwargs", "match"),
    [
        ("cem", {"horizon": 0}, "horizon"),
        ("cem", {"horizon": 2.5}, "horizon"),
        ("cem", {"iterations": 0}, "iterations"),
        ("cem", {"candidates": 1}, "candidates"),
        ("cem", {"top_k": 0}, "top_k"),
        ("cem", {"candidates": 10, "top_k": 11}, "top_k"),
        ("cem", {"init_std": 0.0}, "init_std"),
        ("cem", {"min_std": -1.0}, "min_std"),
        ("cem", {"action_low": 1.0, "action_high": 1.0}, "action_low"),
        ("cem", {"action_low": float("-inf")}, "action_low"),
        ("cem", {"score_fn": 3}, "score_fn"),
        ("cem", {"seed": -1}, "seed"),
        ("mppi", {"num_samples": True}, "num_samples"),
        ("mppi", {"num_elites": 600}, "num_elites"),
        ("mppi", {"temperature": 0.0}, "temperature"),
        ("mppi", {"temperature": float("nan")}, "temperature"),
        ("mppi", {"max_std": 0.0}, "max_std"),
        ("mppi", {"min_std": 3.0}, "min_std"),
    ],
)
def test_bad_arguments_name_the_value(kind, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_planner(kind, **kwargs)


def test_unknown_planner_name():
    with pytest.raises(ValueError, match="'ilqr'"):
        make_planner("ilqr")


def test_reward_score_bad_discount():
    with pytest.raises(ValueError, match="discount"):
        RewardScore(discount=0.0)


def test_plan_rejects_batched_state(model):
    state = filtered_state(model).repeat_interleave(2)
    with pytest.raises(ValueError, match="batch 1"):
        small("cem").plan(model, state)


def test_plan_needs_reward_head_and_actions():
    no_reward = agent_model(reward_head=False)
    with pytest.raises(ValueError, match="reward_head"):
        small("cem").plan(no_reward, filtered_state(no_reward))
    no_actions = agent_model(action_dim=0)
    with pytest.raises(ValueError, match="action_dim=0"):
        small("cem").plan(no_actions, filtered_state(no_actions))
    with pytest.raises(ValueError, match="components"):
        small("cem", action_low=[-1, -1, -1], action_high=[1, 1, 1]).plan(
            agent_model(), filtered_state(agent_model()))


def test_bad_score_shape(model):
    planner = small("cem", score_fn=lambda model, traj: traj.features.sum(-1))
    with pytest.raises(ValueError, match="score_fn must return shape"):
        planner.plan(model, filtered_state(model))
