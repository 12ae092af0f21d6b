"""Imagination speed: `dynamic` (static levels reused) vs `every_step` on the same weights.

Prints imagine steps/s for both modes at batch 1 (an acting agent) and batch 1000 (a
planner scoring candidates), the mean number of active levels L̄ of the dynamic rollout,
and the ratio dynamic/every_step with the target 0.8·N/L̄ (batch 1).

    python benchmarks/imagine_speed.py                       # paper sizes, random weights
    python benchmarks/imagine_speed.py --checkpoint runs/x/model.safetensors
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from worldmodel import DLH, DLHConfig, load


def timed_rollout(model: DLH, state, horizon: int, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` steps/s and the mean active levels of the last rollout."""
    best, levels_used = 0.0, 0.0
    with torch.inference_mode():
        model.imagine(state, min(horizon, 5))  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            traj = model.imagine(state, horizon)
            elapsed = time.perf_counter() - start
            best = max(best, horizon / elapsed)
            levels_used = float(traj.changed.float().sum(-1).mean())
    return best, levels_used


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=None, help="a saved DLH (default: random weights)")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Denormal floats make CPU elementwise ops ~10x slower at random; flush them (both modes).
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        dynamic = load(args.checkpoint)
    else:
        dynamic = DLH(DLHConfig(levels=args.levels, image_size=64, channels=1))
    dynamic.eval()
    cfg = dynamic.config.replace(timescale="dynamic")
    dynamic_model = DLH(cfg)
    dynamic_model.load_state_dict(dynamic.state_dict())
    every_step = DLH(cfg.replace(timescale="every_step"))
    every_step.load_state_dict(dynamic.state_dict())  # the same weights
    n = cfg.levels
    print(f"# imagine speed, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, N={n}, horizon {args.horizon}, "
          f"weights: {args.checkpoint or 'random (paper sizes)'}")
    print(f"{'batch':>6} {'dynamic steps/s':>16} {'every_step steps/s':>19} {'L̄':>6} "
          f"{'ratio':>6} {'target 0.8·N/L̄':>15}")
    for batch in args.batches:
        frames = torch.rand(batch, 5, cfg.channels, cfg.image_size, cfg.image_size)
        actions = None if cfg.action_dim == 0 else torch.zeros(batch, 5, cfg.action_dim)
        with torch.inference_mode():
            state = dynamic_model.observe(frames, actions).state
        if cfg.action_dim:
            raise SystemExit("this benchmark rolls out unconditional models only")
        fast, levels_used = timed_rollout(dynamic_model, state, args.horizon, args.repeats)
        slow, _ = timed_rollout(every_step, state, args.horizon, args.repeats)
        ratio = fast / slow
        target = 0.8 * n / levels_used
        print(f"{batch:>6} {fast:>16.1f} {slow:>19.1f} {levels_used:>6.2f} {ratio:>6.2f} {target:>15.2f}"
              + ("" if batch != 1 else ("  PASS" if ratio >= target else "  BELOW TARGET")))


if __name__ == "__main__":
    main()
