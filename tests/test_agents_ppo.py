"""The PPO-from-pixels baseline: exact step budget, same frames as the agent, CLI end to end."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("stable_baselines3")

from agents.ppo import _rollout_length, evaluate_ppo, train_ppo_pixels  # noqa: E402
from envs.point_target import POINT_TARGET_ID  # noqa: E402
from worldmodel.cli import main  # noqa: E402


@pytest.mark.parametrize("total", [100, 600, 6000, 20_000])
def test_rollout_length_divides_the_budget(total):
    n = _rollout_length(total, 512)
    assert total % n == 0 and n <= 1024


@pytest.mark.parametrize("size", [16, 40])  # SmallCNN below 36 px, NatureCNN above
def test_ppo_trains_for_exactly_the_budget_and_evaluates_on_seeds(size):
    ppo, info = train_ppo_pixels(POINT_TARGET_ID, 96, image_size=size, frame_stack=2, max_episode_steps=16,
                                 n_steps=48, batch_size=16)
    assert info["env_steps"] == 96
    assert len(info["train_returns"]) == 6  # 96 steps of 16-step episodes
    assert ppo.observation_space.shape in {(6, size, size), (size, size, 6)}
    kwargs = dict(image_size=size, frame_stack=2, max_episode_steps=16)
    a = evaluate_ppo(ppo, POINT_TARGET_ID, 3, seed=5, **kwargs)
    b = evaluate_ppo(ppo, POINT_TARGET_ID, 3, seed=5, **kwargs)
    assert len(a["returns"]) == 3 and a == b  # deterministic policy, seeded episodes
    assert all(-16.0 <= r <= 0.0 for r in a["returns"])  # reward in [-1, 0] per step


def test_ppo_rejects_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        train_ppo_pixels(POINT_TARGET_ID, 0)
    with pytest.raises(ValueError, match="cannot make env"):
        train_ppo_pixels("NoSuchEnv-v9", 10)


def test_agent_ppo_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "ppo"
    code = main(["agent-ppo", "--env", POINT_TARGET_ID, "--steps", "64", "--out", str(out),
                 "--image-size", "16", "--max-episode-steps", "16", "--episodes", "2", "--frame-stack", "1",
                 "--threads", "1"])
    assert code == 0
    report = json.loads((out / "ppo.json").read_text())
    assert report["env_steps"] == 64 and len(report["eval"]["returns"]) == 2
    assert (out / "ppo.zip").is_file()
    assert "return" in capsys.readouterr().out
