"""Dream throughput: imagined env steps per second of `DreamVecEnv` against the bare `imagine`.

Both run the same model, batch and horizon in one process, alternated round by round (best of
`--rounds`), so a machine whose load changes affects both alike:

- **imagine**: ``model.imagine(state, H, actions)`` from B filtered start states with random
  actions (B, H, A) — the model alone, no reward head, no env bookkeeping;
- **imagine + rewards**: the same and ``model.predict_reward`` on its features (what a planner's
  score costs; the least any env step built on the model must compute);
- **dream (SameStep)**: ``DreamVecEnv.step`` with random NumPy actions, B rows, truncated at H
  frames and reset in the same step (the mode SB3 trains in): observations, rewards from the
  reward head, NumPy conversion, autoresets from the start pool — everything an agent gets;
- **dream (NextStep)**: Gymnasium's default autoreset (one step in H + 1 is a reset step and
  imagines nothing for those rows; counted as env steps all the same);
- **SB3 adapter**: ``DreamSB3VecEnv.step`` (per-row info dicts on top).

Reported: steps/s (B × steps / s) of each and its ratios to imagine (the target is >= 0.8 at
B = 1000) and to imagine + rewards. The model has random weights (sizes of
``configs/pendulum_cpu.yaml`` or the paper's three 64-px levels with an action and a reward
head) unless `--checkpoint` is given;
its episodes are random frames (the start pool is filtered on them; imagination's cost does
not depend on what it starts from).

    OMP_NUM_THREADS=1 python benchmarks/dream_speed.py --model pendulum --batch 1000 --threads 1
    OMP_NUM_THREADS=1 python benchmarks/dream_speed.py --model paper --batch 1000 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import yaml
from gymnasium import spaces

from agents.dream import DreamVecEnv
from agents.dream_sb3 import DreamSB3VecEnv
from worldmodel import DLH, DLHConfig, load
from worldmodel.config import from_dict
from worldmodel.data.episodes import EpisodeSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_model(name: str, checkpoint: str | None) -> DLH:
    if checkpoint:
        return load(checkpoint).eval()
    if name == "pendulum":
        with open(os.path.join(ROOT, "configs", "pendulum_cpu.yaml")) as handle:
            config = from_dict(DLHConfig, yaml.safe_load(handle)["model"])
    else:  # the paper's sizes (App. A), with an action and a reward head
        config = DLHConfig(levels=3, image_size=64, channels=1, action_dim=1, reward_head=True)
    torch.manual_seed(0)
    return DLH(config).eval()


def random_episodes(model: DLH, episodes: int = 8, length: int = 40) -> EpisodeSource:
    cfg, rng = model.config, np.random.default_rng(0)
    source = EpisodeSource(cfg.image_size, cfg.channels, cfg.action_dim)
    for _ in range(episodes):
        action = rng.uniform(-1, 1, (length, cfg.action_dim)).astype(np.float32)
        action[0] = 0
        image = rng.integers(0, 256, (length, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8)
        flags = np.zeros(length, bool)
        source.add_episode(
            {
                "image": image,
                "action": action,
                "reward": np.zeros(length, np.float32),
                "is_first": np.eye(1, length, 0, dtype=bool)[0],
                "is_last": flags.copy(),
                "is_terminal": flags,
            }
        )
    return source


def seconds(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call of `fn` over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("pendulum", "paper"), default="pendulum")
    parser.add_argument("--checkpoint", default=None, help="a saved DLH with a reward head (default: random)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=15, help="imagine's horizon = the dream's truncation")
    parser.add_argument("--rollouts", type=int, default=2, help="horizons per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.model, args.checkpoint)
    cfg = model.config
    source = random_episodes(model)
    space = spaces.Box(-1.0, 1.0, (cfg.action_dim,), np.float32)
    batch, horizon = args.batch, args.horizon
    load_before = os.getloadavg()
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
        f"load average {load_before[0]:.2f} (1 min) on {os.cpu_count()} CPUs"
    )
    print(
        f"model: {args.checkpoint or args.model + ' sizes, random weights'}: levels {cfg.levels}, "
        f"{cfg.image_size}px, |d| {cfg.d_dim}, |s| {cfg.s_dim}; batch {batch}, horizon {horizon}"
    )

    def dream(mode: str) -> DreamVecEnv:
        return DreamVecEnv(model, source, batch, horizon=horizon, context=5, action_space=space,
                           autoreset_mode=mode, starts=batch, seed=0)

    dreams = {mode: dream(mode) for mode in ("SameStep", "NextStep")}
    sb3 = DreamSB3VecEnv(dream("SameStep"))
    for env in dreams.values():
        env.reset(seed=0)
    sb3.seed(0)
    sb3.reset()
    start = dreams["SameStep"].state
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (batch, cfg.action_dim)).astype(np.float32)
    rollout_actions = torch.as_tensor(
        rng.uniform(-1, 1, (batch, horizon, cfg.action_dim)), dtype=torch.float32
    )

    def bare() -> None:
        with torch.inference_mode():
            model.imagine(start, horizon, rollout_actions)

    def bare_rewards() -> None:
        with torch.inference_mode():
            model.predict_reward(model.imagine(start, horizon, rollout_actions).features)

    steps = args.rollouts * horizon
    timers: dict[str, Callable[[], float]] = {
        "imagine": lambda: seconds(bare, args.rollouts) / horizon,
        "imagine + rewards": lambda: seconds(bare_rewards, args.rollouts) / horizon,
        "dream (SameStep)": lambda: seconds(lambda: dreams["SameStep"].step(actions), steps),
        "dream (NextStep)": lambda: seconds(lambda: dreams["NextStep"].step(actions), steps),
        "SB3 adapter": lambda: seconds(lambda: sb3.step(actions), steps),
    }
    for timer in timers.values():  # warm-up
        timer()
    best = {name: math.inf for name in timers}
    for _ in range(args.rounds):
        for name, timer in timers.items():
            best[name] = min(best[name], timer())
    load_after = os.getloadavg()
    base = batch / best["imagine"]
    with_rewards = batch / best["imagine + rewards"]
    print(
        f"{'':18s} {'env steps/s':>12s} {'ms per step':>12s} {'ratio to imagine':>17s} {'to + rewards':>13s}"
    )
    for name, per_step in best.items():
        rate = batch / per_step
        print(
            f"{name:18s} {rate:12.0f} {1000 * per_step:12.2f} {rate / base:17.3f} {rate / with_rewards:13.3f}"
        )
    print(f"load average after: {load_after[0]:.2f} (1 min); target: dream (SameStep) >= 0.8 x imagine")


if __name__ == "__main__":
    main()
