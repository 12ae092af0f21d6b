"""Planning speed: CEM time per action with `dynamic` (static levels reused) vs `every_step`.

Both modes use the same weights and plan from the same filtered state: PlaNet's CEM with
1000 candidates, horizon 12, 10 iterations, top 100 (one batched rollout of all candidates
per iteration). Prints milliseconds per planned action for each mode, the mean number of
active levels L̄ in the dynamic model's imagined rollouts, and the ratio every_step/dynamic
(the speed-up the dynamic hierarchy gives the planner).

    python benchmarks/planning_speed.py                        # paper sizes, random weights
    python benchmarks/planning_speed.py --checkpoint runs/pt/model.safetensors --threads 4
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

import envs
from agents.mpc import obs_to_frame
from agents.planners import CEMPlanner
from worldmodel import DLH, DLHConfig, HierarchicalState, load


def filtered_state(model: DLH, frames: int, seed: int) -> HierarchicalState:
    """State after filtering `frames` PointTarget frames of a random policy (batch 1)."""
    cfg = model.config
    env = envs.make_pixel_env(envs.POINT_TARGET_ID, size=cfg.image_size, grayscale=cfg.channels == 1)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    state, action = model.initial_state(1), torch.zeros(1, cfg.action_dim)
    with torch.inference_mode():
        for t in range(frames):
            first = torch.tensor([t == 0])
            state = model.observe_step(state, obs_to_frame(obs, model), action, first)
            a = env.action_space.sample()
            action = torch.as_tensor(np.resize(a, cfg.action_dim), dtype=torch.float32)[None]
            obs, *_ = env.step(a)
    env.close()
    return state


def time_planning(
    model: DLH, state: HierarchicalState, args: argparse.Namespace
) -> tuple[list[float], float]:
    """Seconds per planned action (one per repeat) and the mean active levels L̄ imagined."""
    planner = CEMPlanner(horizon=args.horizon, candidates=args.candidates, iterations=args.iterations,
                         top_k=args.top_k, seed=args.seed)
    times, levels = [], []
    with torch.inference_mode():
        CEMPlanner(horizon=args.horizon, candidates=args.candidates, iterations=1, top_k=args.top_k,
                   seed=args.seed).plan(model, state)  # warm-up
        for _ in range(args.repeats):
            start = time.perf_counter()
            planner.plan(model, state)
            times.append(time.perf_counter() - start)
            levels.append(sum(planner.last_stats["imagined_change_rate"]))
    return times, statistics.mean(levels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a saved DLH with actions and a reward head "
                        "(default: random weights, paper sizes, 64x64 RGB, 2-D actions)")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--context", type=int, default=10, help="frames filtered before planning")
    parser.add_argument("--repeats", type=int, default=3, help="planned actions timed per mode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # denormals slow CPU kernels at random; flush them in both modes
    torch.manual_seed(args.seed)
    if args.checkpoint:
        source = load(args.checkpoint)
    else:
        source = DLH(DLHConfig(levels=args.levels, image_size=64, channels=3, action_dim=2, reward_head=True))
    cfg = source.config
    if cfg.action_dim == 0 or not cfg.reward_head:
        raise SystemExit("planning needs a model with actions (action_dim > 0) and a reward head")
    models = {}
    for mode in ("dynamic", "every_step"):
        boundary = cfg.inference.boundary if mode == "dynamic" else "reinfer"  # no effect under a schedule
        rule = cfg.inference.replace(timescale=mode, boundary=boundary)
        models[mode] = DLH(cfg.replace(inference=rule)).eval()
        models[mode].load_state_dict(source.state_dict())  # the same weights
    torch.manual_seed(args.seed)
    state = filtered_state(models["dynamic"], args.context, args.seed)

    print(f"# planning speed, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, N={cfg.levels}, CEM {args.candidates} candidates x "
          f"horizon {args.horizon} x {args.iterations} iterations (top {args.top_k}), "
          f"weights: {args.checkpoint or 'random (paper sizes)'}")
    results = {}
    for mode, model in models.items():
        times, levels = time_planning(model, state, args)
        results[mode] = statistics.median(times)
        print(f"{mode:>10}: {1000 * results[mode]:9.1f} ms per action (median of {len(times)}; "
              f"min {1000 * min(times):.1f})   imagined L̄ {levels:.2f} of {cfg.levels}")
    ratio = results["every_step"] / results["dynamic"]
    print(f"     ratio: every_step / dynamic = {ratio:.2f}x")


if __name__ == "__main__":
    main()
