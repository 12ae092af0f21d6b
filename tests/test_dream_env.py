"""The dream environment (issue 25): a trained DLH as a Gymnasium VectorEnv — spaces against the
checkers, reset/step/truncation/termination and autoreset semantics, jumpy steps, determinism
under a seed, and bad input naming what is wrong."""

from __future__ import annotations

import json
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

import envs
from agents.dream import DreamEnv, DreamVecEnv
from envs.recorder import record_episodes
from tests.conftest import tiny_config
from worldmodel import DLH
from worldmodel.data.episodes import EpisodeSource

BOX = spaces.Box(-1.0, 1.0, (2,), np.float32)


def world_model(seed: int = 0, **overrides) -> DLH:
    torch.manual_seed(seed)
    base = {"levels": 2, "channels": 3, "action_dim": 2, "reward_head": True, **overrides}
    return DLH(tiny_config(**base)).eval()


def pin_last_layer(mlp, bias: float) -> None:
    """The MLP's output is `bias` whatever its input (last layer's weights zeroed)."""
    with torch.no_grad():
        mlp._linears[-1].weight.zero_()
        mlp._linears[-1].bias.fill_(bias)


def pin_change_prob(model: DLH, prob: float) -> None:
    for level in model.hierarchy.levels[1:]:
        pin_last_layer(level.factor, math.log(prob / (1 - prob)))


def synthetic_source(
    action_dim: int = 2, episodes: int = 3, length: int = 20, seed: int = 0, one_hot: bool = False
) -> EpisodeSource:
    rng = np.random.default_rng(seed)
    source = EpisodeSource(16, 3, action_dim)
    for _ in range(episodes):
        if one_hot:
            action = np.eye(action_dim, dtype=np.float32)[rng.integers(0, action_dim, length)]
        else:
            action = rng.uniform(-1, 1, (length, action_dim)).astype(np.float32)
        action[0] = 0
        flags = np.zeros(length, bool)
        source.add_episode(
            {
                "image": rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8),
                "action": action,
                "reward": rng.normal(size=length).astype(np.float32),
                "is_first": np.eye(1, length, 0, dtype=bool)[0],
                "is_last": np.eye(1, length, length - 1, dtype=bool)[0],
                "is_terminal": flags,
            }
        )
    return source


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three PointTarget episodes of 12 steps at 16 px, with recording.json naming the env."""
    out = tmp_path_factory.mktemp("dream_episodes")
    env = envs.make_pixel_env(envs.POINT_TARGET_ID, size=16, max_episode_steps=12)
    record_episodes(
        env,
        "random",
        3,
        out,
        seed=0,
        progress=False,
        settings={"env": envs.POINT_TARGET_ID, "size": 16, "grayscale": False, "action_repeat": 1},
    )
    env.close()
    return out


@pytest.fixture(scope="module")
def source():
    return synthetic_source()


def dream(source, num_envs: int = 4, model: DLH | None = None, **kwargs) -> DreamVecEnv:
    kwargs = {"horizon": 5, "context": 4, "action_space": BOX, "starts": 16, **kwargs}
    return DreamVecEnv(model if model is not None else world_model(), source, num_envs, **kwargs)


# ---------------------------------------------------------------------- spaces and checkers
@pytest.mark.parametrize("observation", ["features", "pixels"])
@pytest.mark.parametrize("num_envs", [1, 3])
def test_spaces_and_shapes(source, observation, num_envs):
    env = dream(source, num_envs, observation=observation)
    model = env.model
    if observation == "features":
        single = spaces.Box(-np.inf, np.inf, (model.config.feature_dim,), np.float32)
    else:
        single = spaces.Box(0, 255, (16, 16, 3), np.uint8)
    assert env.single_observation_space == single
    assert env.observation_space.shape == (num_envs, *single.shape)
    assert env.single_action_space == BOX and env.action_space.shape == (num_envs, 2)
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.dtype == single.dtype
    assert env.observation_space.contains(obs) and isinstance(info, dict)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert reward.shape == (num_envs,) and reward.dtype == np.float64
    assert terminated.dtype == np.bool_ and truncated.dtype == np.bool_ and terminated.shape == (num_envs,)
    assert info["frames"].tolist() == [1] * num_envs and info["_frames"].all()
    env.close()


def test_observation_space_is_the_feature_wrappers(source):
    """A policy moves from dream to reality unchanged: the same observation space."""
    from agents.sb3 import DLHFeatureWrapper

    env = dream(source, 2)
    real = DLHFeatureWrapper(
        envs.make_pixel_env(envs.POINT_TARGET_ID, size=16, max_episode_steps=5), env.model
    )
    assert real.observation_space == env.single_observation_space
    assert real.action_space == env.single_action_space
    real.close()


def test_single_env_passes_gymnasium_and_sb3_checkers(source):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = DreamEnv(world_model(), source, action_space=BOX, context=4, horizon=5, starts=8)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*infinity.*"
        )  # features are unbounded, as DLHFeatureWrapper's
        warnings.filterwarnings("ignore", message=".*render.*")
        gym_check(env, skip_render_check=True)
        sb3_check(env, warn=False)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(BOX.sample())
    assert isinstance(reward, float) and info["frames"] == 1


# ---------------------------------------------------------------------- what a step computes
def test_step_is_one_imagine_step_of_the_model(source):
    """Observation = features after one model.imagine step, reward = the reward head on them; the
    dream's numbers are the model's own (same noise, same state)."""
    env = dream(source, 3)
    model = env.model
    obs, _ = env.reset(seed=1)
    with torch.inference_mode():
        assert np.allclose(obs, model.features(env.state).numpy())
    before, noise = env.state, env._torch_state.clone()
    actions = np.array([[0.5, -0.5], [1.0, 0.0], [-0.2, 0.3]], np.float32)
    obs, reward, *_ = env.step(actions)
    outside = torch.get_rng_state()
    torch.set_rng_state(noise)
    with torch.inference_mode():
        traj = model.imagine(before, 1, torch.as_tensor(actions)[:, None])
        expected = traj.features[:, 0]
        expected_reward = model.predict_reward(expected)
    torch.set_rng_state(outside)
    assert np.array_equal(obs, expected.numpy())
    assert np.allclose(reward, expected_reward.double().numpy())


def test_box_actions_are_clipped_to_the_space(source):
    env = dream(source, 2)
    env.reset(seed=0)
    encoded = env.encode_actions(np.array([[3.0, -7.0], [0.25, 0.5]], np.float32))
    assert encoded.tolist() == [[1.0, -1.0], [0.25, 0.5]]


def test_start_states_are_filtered_real_windows(source):
    """Every reset row is a pool state: model.observe of `context` real frames of an episode."""
    env = dream(source, 2, starts=3)
    obs, _ = env.reset(seed=0)
    pool = env._pool_features.numpy()
    assert all(any(np.array_equal(row, p) for p in pool) for row in obs)
    assert env.state.t.tolist() == [4, 4]  # filtered over context=4 frames


# ---------------------------------------------------------------------- episode ends
def test_truncation_at_horizon_then_next_step_reset(source):
    env = dream(source, 3, horizon=3)
    env.reset(seed=0)
    for k in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated.any()  # no continue head: never terminated
        assert truncated.all() == (k == 2) and truncated.any() == (k == 2)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert (reward == 0).all() and not terminated.any() and not truncated.any()
    assert (info["frames"] == 0).all()
    pool = env._pool_features.numpy()
    assert all(any(np.array_equal(row, p) for p in pool) for row in obs)
    for _ in range(2):  # a fresh episode: truncated again after 3 more steps
        *_, truncated, _ = env.step(env.action_space.sample())
        assert not truncated.any()
    assert env.step(env.action_space.sample())[3].all()


@pytest.mark.parametrize("bias, ends", [(-20.0, True), (20.0, False)])
def test_terminated_from_the_continue_head(source, bias, ends):
    model = world_model(continue_head=True)
    pin_last_layer(model.continue_head, bias)  # p(continue) = sigmoid(bias)
    env = dream(source, 3, model=model, horizon=50)
    env.reset(seed=0)
    _, _, terminated, truncated, _ = env.step(env.action_space.sample())
    assert terminated.tolist() == [ends] * 3 and not truncated.any()


def test_same_step_autoreset_reports_final_obs(source):
    env = dream(source, 2, horizon=2, autoreset_mode="SameStep")
    env.reset(seed=0)
    _, _, _, truncated, info = env.step(env.action_space.sample())
    assert not truncated.any() and "final_obs" not in info
    obs, _, _, truncated, info = env.step(env.action_space.sample())
    assert truncated.all() and info["_final_obs"].all()
    final = np.stack(info["final_obs"])
    assert final.shape == obs.shape and not np.array_equal(final, obs)
    pool = env._pool_features.numpy()
    assert all(any(np.array_equal(row, p) for p in pool) for row in obs)  # already reset
    assert not env.step(env.action_space.sample())[3].any()


def test_disabled_autoreset_and_per_row_reset_mask(source):
    env = dream(source, 3, horizon=2, autoreset_mode="Disabled")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    obs, *_, truncated, _ = env.step(env.action_space.sample())
    assert truncated.all()
    mask = np.array([True, False, True])
    fresh, _ = env.reset(options={"reset_mask": mask})
    assert np.array_equal(fresh[1], obs[1]) and not np.array_equal(fresh[0], obs[0])
    _, _, _, truncated, _ = env.step(env.action_space.sample())
    assert truncated.tolist() == [False, True, False]


# ---------------------------------------------------------------------- jumpy steps
def test_jumpy_step_runs_to_the_level_change(source):
    model = world_model()
    pin_change_prob(model, 1e-6)  # level 2 never changes: every jump runs max_jump frames
    env = dream(source, 3, model=model, jump_level=2, max_jump=4, horizon=50)
    env.reset(seed=0)
    *_, info = env.step(env.action_space.sample())
    assert info["frames"].tolist() == [4, 4, 4]
    pin_change_prob(model, 1 - 1e-6)  # always changes: one frame per step
    *_, info = env.step(env.action_space.sample())
    assert info["frames"].tolist() == [1, 1, 1]


def test_jumpy_reward_is_summed_over_its_frames(source):
    model = world_model()
    pin_change_prob(model, 1e-6)
    jumpy = dream(source, 2, model=model, jump_level=2, max_jump=3, horizon=50)
    plain = dream(source, 2, model=model, horizon=50)
    jumpy.reset(seed=5)
    plain.reset(seed=5)
    action = np.array([[0.3, -0.1], [0.9, 0.2]], np.float32)
    obs, reward, *_ = jumpy.step(action)
    total = np.zeros(2)
    for _ in range(3):  # the same action held, the same noise stream
        plain_obs, r, *_ = plain.step(action)
        total += r
    assert np.allclose(reward, total, atol=1e-5) and np.allclose(obs, plain_obs, atol=1e-5)


def test_jumpy_step_stops_at_the_horizon(source):
    model = world_model()
    pin_change_prob(model, 1e-6)
    env = dream(source, 2, model=model, jump_level=2, max_jump=8, horizon=3)
    env.reset(seed=0)
    *_, truncated, info = env.step(env.action_space.sample())
    assert info["frames"].tolist() == [3, 3] and truncated.all()


# ---------------------------------------------------------------------- determinism
def rollout(env: DreamVecEnv, seed: int, steps: int = 6):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        torch.randn(7)  # someone else drawing from torch's global generator changes nothing
        out += [obs, reward, terminated, truncated]
    return out


def test_deterministic_under_a_seed(source):
    model = world_model(continue_head=True)
    a = rollout(dream(source, 3, model=model, horizon=3), seed=7)
    b = rollout(dream(source, 3, model=model, horizon=3), seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    env = dream(source, 3, model=model, horizon=3)
    assert all(np.array_equal(x, y) for x, y in zip(rollout(env, 7), a))  # reset(seed) again: the same
    c = rollout(env, seed=8)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_global_torch_generator_untouched(source):
    env = dream(source, 2)
    before = torch.get_rng_state()
    env.reset(seed=0)
    env.step(env.action_space.sample())
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------- other action spaces, episode folders
def test_discrete_actions_are_one_hot(tmp_path):
    model = world_model(action_dim=3)
    env = DreamVecEnv(
        model, synthetic_source(3, one_hot=True), 2, action_space=spaces.Discrete(3), context=4, starts=8
    )
    env.reset(seed=0)
    assert env.encode_actions(np.array([2, 0])).tolist() == [[0, 0, 1], [1, 0, 0]]
    obs, *_ = env.step(np.array([1, 2]))
    assert obs.shape == (2, model.config.feature_dim)
    with pytest.raises(ValueError, match=r"outside Discrete\(3\)"):
        env.step(np.array([3, 0]))


def test_episode_folder_names_its_env(recorded):
    env = DreamVecEnv(world_model(), recorded, 2, context=4, starts=8)
    assert env.env_id == envs.POINT_TARGET_ID
    assert env.single_action_space == gym.make(envs.POINT_TARGET_ID).action_space
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, env.model.config.feature_dim)


def test_model_path_is_loaded(tmp_path, source):
    model = world_model()
    model.save(tmp_path / "model.safetensors")
    env = DreamVecEnv(tmp_path, source, 1, action_space=BOX, context=4, starts=4)
    assert env.model.config == model.config


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("num_envs", [0, -3, 1.5, True])
def test_bad_batch_size(source, num_envs):
    with pytest.raises(ValueError, match="num_envs"):
        dream(source, num_envs)


def test_model_without_reward_head(source):
    with pytest.raises(ValueError, match="no reward head"):
        dream(source, 2, model=world_model(reward_head=False))


def test_model_without_actions(source):
    with pytest.raises(ValueError, match="action_dim=0"):
        dream(source, 2, model=world_model(action_dim=0))


@pytest.mark.parametrize(
    "actions, match",
    [
        (np.zeros((2, 3), np.float32), r"expected shape \(2, 2\)"),
        (np.zeros((3, 2), np.float32), r"expected shape \(2, 2\)"),
        (np.zeros(2, np.float32), r"expected shape \(2, 2\)"),
        (np.full((2, 2), np.nan, np.float32), "NaN"),
    ],
)
def test_wrong_actions(source, actions, match):
    env = dream(source, 2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(actions)


def test_step_before_reset(source):
    with pytest.raises(ValueError, match="reset"):
        dream(source, 2).step(np.zeros((2, 2), np.float32))


def test_episodes_of_another_action_size(source):
    with pytest.raises(ValueError, match="actions of size 2, the model takes actions of size 3"):
        dream(source, 2, model=world_model(action_dim=3), action_space=spaces.Box(-1, 1, (3,)))


def test_episodes_recorded_from_another_env(recorded):
    with pytest.raises(
        ValueError, match="recorded from 'worldmodel/PointTarget-v0'.*not from env_id='Pendulum-v1'"
    ):
        DreamVecEnv(world_model(), recorded, 2, env_id="Pendulum-v1", context=4)


def test_episode_folder_of_another_action_size(recorded):
    with pytest.raises(
        ValueError, match="PointTarget-v0.*actions of size 2, the model takes actions of size 1"
    ):
        DreamVecEnv(world_model(action_dim=1), recorded, 2, context=4)


def test_action_space_of_another_size(source):
    with pytest.raises(ValueError, match="encodes to actions of size 3, the model takes actions of size 2"):
        dream(source, 2, action_space=spaces.Box(-1, 1, (3,)))


def test_no_action_space_and_no_recording(source):
    with pytest.raises(ValueError, match="action_space"):
        DreamVecEnv(world_model(), source, 2, context=4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"horizon": 0}, "horizon"),
        ({"context": 0}, "context"),
        ({"context": 21}, "longer than the longest"),
        ({"observation": "rgb"}, "observation"),
        ({"jump_level": 3}, "jump_level"),
        ({"jump_level": 1}, "jump_level"),
        ({"max_jump": 0}, "max_jump"),
        ({"termination_threshold": 1.5}, "termination_threshold"),
        ({"autoreset_mode": "sometimes"}, "autoreset_mode"),
        ({"starts": 0}, "starts"),
    ],
)
def test_bad_arguments(source, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dream(source, 2, **kwargs)


def test_jumpy_needs_two_levels(source):
    with pytest.raises(ValueError, match="one level"):
        dream(source, 2, model=world_model(levels=1), jump_level=2)


def test_bad_episodes_argument():
    with pytest.raises(ValueError, match="EpisodeSource or a folder"):
        DreamVecEnv(world_model(), [1, 2], 2, action_space=BOX)


def test_recording_json_unreadable(tmp_path, recorded):
    import shutil

    copy = tmp_path / "eps"
    shutil.copytree(recorded, copy)
    (copy / "recording.json").write_text("{not json")
    with pytest.raises(ValueError, match="recording.json"):
        DreamVecEnv(world_model(), copy, 2, context=4)
    json.loads((recorded / "recording.json").read_text())  # the original is intact


# ---------------------------------------------------------------------- the reward head's static part
def test_static_level_head_reuses_the_upper_levels_part_and_matches_the_head():
    """_StaticLevelHead: the reward head with W_2 f_2 kept per row and recomputed only where
    level 2's features changed, equal to the head to rounding; new weights (an optimiser step,
    an in-place edit) recompute everything."""
    from agents.dream import _StaticLevelHead

    model = world_model(continue_head=True)
    cfg = model.config
    widths = [cfg.level_s_dim(n) + cfg.level_d_dim(n) for n in (1, 2)]
    split = _StaticLevelHead(model.reward_head, widths)
    torch.manual_seed(3)
    f = torch.randn(6, cfg.feature_dim)
    with torch.no_grad():
        assert torch.allclose(split(f), model.reward_head(f), atol=1e-6)
        g = f.clone()
        g[:, :widths[0]] = torch.randn(6, widths[0])  # level 1 moves everywhere
        g[[1, 4], widths[0]:] = torch.randn(2, widths[1])  # level 2 changes in rows 1 and 4
        kept = split.kept[1][1].clone()
        split.kept[1] = (split.kept[1][0], kept + 1000.0)  # poison the kept product: reused rows show it
        out = split(g)
        expected = model.reward_head(g)
        reused = [0, 2, 3, 5]
        assert not torch.allclose(out[reused], expected[reused])  # those rows read the kept product
        assert torch.allclose(out[[1, 4]], expected[[1, 4]], atol=1e-6)  # recomputed
        split.kept[1] = (split.kept[1][0], kept)
        split.kept[1] = None
        assert torch.allclose(split(g), expected, atol=1e-6)
        model.reward_head._linears[0].weight.mul_(2.0)  # an in-place edit bumps the version
        assert torch.allclose(split(g), model.reward_head(g), atol=1e-6)
        fewer = g[:4]  # another batch: computed afresh
        assert torch.allclose(split(fewer), model.reward_head(fewer), atol=1e-6)
    optimizer = torch.optim.SGD(model.reward_head.parameters(), lr=0.1)
    model.reward_head(g).sum().backward()
    optimizer.step()
    with torch.no_grad():
        assert torch.allclose(split(g), model.reward_head(g), atol=1e-6)


def test_dream_rewards_match_the_head_over_many_steps(source):
    """Over steps where level 2 changes in some rows and not in others, the dream's reward is
    model.predict_reward on its observations."""
    env = dream(source, 8, horizon=20)
    pin_change_prob(env.model, 0.3)
    obs, _ = env.reset(seed=2)
    static = 0
    for _ in range(10):
        before = obs
        obs, reward, *_ = env.step(env.action_space.sample())
        level2 = slice(env.model.config.level_s_dim(1) + env.model.config.level_d_dim(1), None)
        static += int((obs[:, level2] == before[:, level2]).all(1).sum())
        with torch.inference_mode():
            expected = env.model.predict_reward(torch.as_tensor(obs)).double().numpy()
        assert np.allclose(reward, expected, atol=1e-6)
    assert 0 < static < 80  # both kinds of rows were seen
