"""The running decision rules (worldmodel/decisions.py) against hand-made KL sequences."""

from __future__ import annotations

import pytest
import torch

from worldmodel import DLH, DLHConfig, InferenceConfig, LossConfig, load
from worldmodel.decisions import agree_across_ranks, decide, initial_stats, update, warm
from worldmodel.distributions import Gaussian, kl_gaussian

S = 8


def gaussian(mean: torch.Tensor, std: float) -> Gaussian:
    return Gaussian(mean, torch.full_like(mean, std))


def paper(q: Gaussian, change: Gaussian, static: Gaussian) -> torch.Tensor:
    return kl_gaussian(q, static) > kl_gaussian(q, change)


def run_sequence(rule: str, offsets: list[float], drift=lambda k: 0.05,
                 updates: int = 300) -> tuple[list, list]:
    """A level whose candidate posterior (std 0.02) drifts around its static prior by
    `drift(k)` per dimension at update k (noise), against a broad change prior (std 1): after
    `updates` training updates, the rule's and eq. 4's decisions for a posterior at each offset."""
    gen = torch.Generator().manual_seed(0)
    stats = initial_stats(S)
    static, change = gaussian(torch.zeros(16, S), 0.02), gaussian(torch.zeros(16, S), 1.0)
    for k in range(updates):  # a static stretch: the posterior drifts
        q = gaussian(drift(k) * torch.randn(16, S, generator=gen), 0.02)
        weight, kl_static = decide(rule, q, change, static, stats, 2.0, 2.0, 0)
        stats = update(stats, q, static, kl_static, torch.ones(16, dtype=torch.bool), weight > 0.5, 0.05)
    static, change = gaussian(torch.zeros(1, S), 0.02), gaussian(torch.zeros(1, S), 1.0)
    ours, eq4 = [], []
    for off in offsets:
        q = gaussian(torch.full((1, S), off), 0.02)
        ours.append(bool(decide(rule, q, change, static, stats, 2.0, 2.0, 0)[0][0] > 0.5))
        eq4.append(bool(paper(q, change, static)[0]))
    return ours, eq4


@pytest.mark.parametrize("rule", ["tolerant", "relative"])
def test_drift_is_static_and_a_jump_is_a_change(rule):
    # an offset of 0.07 per dimension against std 0.02 costs 49 nats of static KL, more than
    # the ≈ 27 nats to the broad change prior: eq. 4 calls it a change; it is this level's usual
    # drift. A jump of 1.0 costs ≈ 10,000 nats.
    ours, eq4 = run_sequence(rule, [0.07, 0.075, 1.0])
    assert eq4 == [True, True, True]
    assert ours == [False, False, True]


@pytest.mark.parametrize("rule", ["tolerant", "relative"])
def test_a_slow_ramp_of_drift_moves_the_threshold_with_it(rule):
    # the drift grows from 0.02 to 0.12 per dimension over 600 updates: the threshold follows,
    # so an offset at the drift of the end (0.15: ≈ 225 nats of static KL) is static, a jump of
    # 2.0 is not
    ours, eq4 = run_sequence(rule, [0.12, 0.15, 2.0], drift=lambda k: 0.02 + 0.1 * k / 600, updates=600)
    assert eq4 == [True, True, True]
    assert ours == [False, False, True]
    early, _ = run_sequence(rule, [0.15, 0.2, 2.0], drift=lambda k: 0.02, updates=600)
    assert early == [True, True, True]  # learned on small drift, the same offsets are changes


@pytest.mark.parametrize("rule", ["tolerant", "relative"])
def test_an_empty_level_never_changes_and_stays_finite(rule):
    stats = initial_stats(S)
    static = gaussian(torch.zeros(4, S), 0.5)
    change = gaussian(torch.ones(4, S), 0.5)
    for _ in range(50):  # the posterior is the static prior: KL 0 (a level that holds nothing)
        weight, kl_static = decide(rule, static, change, static, stats, 2.0, 2.0, 0)
        e = weight > 0.5
        assert not e.any()
        stats = update(stats, static, static, kl_static, torch.ones(4, dtype=torch.bool), e, 0.05)
    assert torch.isfinite(stats).all()


def test_the_warm_up_is_eq4():
    stats = initial_stats(S)
    q = gaussian(torch.full((3, S), 0.05), 0.02)
    static, change = gaussian(torch.zeros(3, S), 0.02), gaussian(torch.zeros(3, S), 1.0)
    for _ in range(3):
        assert not warm(stats, 3)
        weight, kl_static = decide("relative", q, change, static, stats, 2.0, 50.0, 3)
        e = weight > 0.5
        assert torch.equal(e, paper(q, change, static))
        stats = update(stats, q, static, kl_static, torch.ones(3, dtype=torch.bool), e, 0.1)
    assert warm(stats, 3)
    assert not (decide("relative", q, change, static, stats, 2.0, 50.0, 3)[0] > 0.5).any()


def test_rows_not_decided_do_not_move_the_statistics():
    stats = initial_stats(S)
    q, static = gaussian(torch.full((2, S), 0.3), 0.02), gaussian(torch.zeros(2, S), 0.02)
    stats = update(stats, q, static, kl_gaussian(q, static), torch.zeros(2, dtype=torch.bool),
                  torch.zeros(2, dtype=torch.bool), 0.1)
    assert torch.equal(stats, initial_stats(S))


def small(rule: str, **kw) -> DLHConfig:
    return DLHConfig(levels=2, image_size=16, channels=1, x_dim=16, c_dim=16, d_dim=16, s_dim=4,
                     enc_hidden=(16,), dec_hidden=(16,), state_hidden=(16,), factor_hidden=(16,),
                     conv_depth=4, loss=LossConfig(obs_std=0.1),
                     inference=InferenceConfig(decision=rule, **kw))


@pytest.mark.parametrize("rule", ["tolerant", "relative"])
def test_statistics_move_in_the_training_loss_only_and_are_saved(rule, tmp_path):
    torch.manual_seed(0)
    model = DLH(small(rule))
    frames = torch.rand(2, 6, 1, 16, 16)
    before = model.hierarchy.levels[1].decision_stats.clone()
    model.eval()
    model.observe(frames)
    model.loss(frames)
    assert torch.equal(model.hierarchy.levels[1].decision_stats, before)
    model.train()  # an agent acting or filtering with a model in train mode moves nothing
    model.observe(frames)
    state = model.observe_step(model.initial_state(2), frames[:, 0])
    model.observe_step(state, frames[:, 1])
    model.imagine(state, 3)
    assert torch.equal(model.hierarchy.levels[1].decision_stats, before)
    model.loss(frames)
    after = model.hierarchy.levels[1].decision_stats.clone()
    assert after[0] == 5  # one update per filtering step after the first
    model.save(tmp_path / "m.safetensors")
    assert torch.equal(load(tmp_path / "m.safetensors").hierarchy.levels[1].decision_stats, after)


def test_the_papers_rule_keeps_no_statistics_and_running_rules_need_hard_assignment():
    assert DLH(small("kl")).hierarchy.levels[1].decision_stats is None
    with pytest.raises(ValueError, match="assignment='hard'"):
        small("relative", assignment="vade")
    with pytest.raises(ValueError, match="decision_rate"):
        small("relative", decision_rate=0.0)


def test_acting_with_a_model_in_train_mode_leaves_the_statistics_unchanged():
    """An agent acting with the trainer's model (train mode) filters and plans; only the
    training loss advances the statistics (issue 26)."""
    import numpy as np
    from gymnasium import spaces

    from agents.mpc import LatentMPCAgent
    from agents.planners import CEMPlanner

    torch.manual_seed(0)
    cfg = small("relative")
    model = DLH(DLHConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                             "action_dim": 2, "reward_head": True}))
    model.train()
    before = model.hierarchy.levels[1].decision_stats.clone()
    agent = LatentMPCAgent(model, CEMPlanner(horizon=3, candidates=8, iterations=2, top_k=2, seed=0),
                           spaces.Box(-1.0, 1.0, (2,), np.float32), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(4):
        agent.act(rng.integers(0, 256, (16, 16, 1), dtype=np.uint8))
    assert model.training
    assert torch.equal(model.hierarchy.levels[1].decision_stats, before)
    hierarchy = model.hierarchy  # the step itself: the statistics pass through unless asked
    carry = hierarchy.carry(agent.state)
    with torch.inference_mode():
        xs = hierarchy.bottom_up(model.encoder(torch.rand(1, 1, 16, 16)))
        new, _ = hierarchy.infer_step(carry, xs, torch.zeros(1, 2))
    assert new.stats[1] is carry.stats[1]


def test_agree_across_ranks_is_the_identity_in_one_process():
    old, new = initial_stats(S), initial_stats(S) + 1
    assert agree_across_ranks(old, new) is new


def _ranks_worker(rank: int, world: int, path: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    try:
        # the reduction: rank 0 updates by +2, rank 1 by +4, rank 2 (if any) not at all
        old = torch.zeros(4)
        new = old + 2.0 * (rank + 1) if rank < 2 else old
        reduced = agree_across_ranks(old, new)
        # the training loss: each rank filters its own frames; the buffers must stay equal
        torch.manual_seed(0)
        model = DLH(small("relative"))
        torch.manual_seed(100 + rank)
        for _ in range(2):
            model.loss(torch.rand(2, 5, 1, 16, 16))
        stats = model.hierarchy.levels[1].decision_stats
        gathered = [torch.zeros_like(stats) for _ in range(world)]
        dist.all_gather(gathered, stats)
        torch.save({"reduced": reduced, "stats": gathered}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ranks_keep_the_same_statistics_under_gloo(tmp_path):
    """Two gloo processes filter different frames: every rank applies the mean of the ranks'
    updates, so their buffers are equal (DDP would otherwise keep rank 0's)."""
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_ranks_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=world)
    results = [torch.load(tmp_path / f"out.{rank}") for rank in range(world)]
    for r in results:
        assert torch.equal(r["reduced"], torch.full((4,), 3.0))  # mean of +2 and +4
        assert torch.equal(r["stats"][0], r["stats"][1])
        assert r["stats"][0][0] == 8  # 4 updates a window, 2 windows: the counter advances once a step
    torch.manual_seed(0)
    alone = DLH(small("relative"))
    torch.manual_seed(100)
    for _ in range(2):
        alone.loss(torch.rand(2, 5, 1, 16, 16))
    alone_stats = alone.hierarchy.levels[1].decision_stats
    assert not torch.equal(alone_stats, results[0]["stats"][0])  # both ranks' frames counted
