"""PlaNet-style training of a small DLH and a CEM agent on PointTarget, then an evaluation.

A CPU-sized demo (minutes, not hours): a reduced model at 32x32, short episodes and a
smaller planner than PlaNet's defaults. For the full setting use the CLI:

    dlh agent-train --env worldmodel/PointTarget-v0 --config my_config.yaml --iterations 100

    python examples/planet_point_target.py --out runs/planet_pt --iterations 10
"""

from __future__ import annotations

import argparse
import json

import torch

import envs
from agents import CEMPlanner, evaluate_agent, run_planet_loop
from agents.loop import make_env
from worldmodel import DLHConfig, LossConfig, load
from worldmodel.data import DataConfig
from worldmodel.training import LoggingConfig, OptimConfig, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/planet_point_target")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seed-episodes", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--episode-steps", type=int, default=100)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # the sizes of configs/moving_ball_cpu.yaml; obs_std 0.05 (the default 1.0 lets the posterior collapse)
    model = DLHConfig(levels=2, image_size=32, channels=3, action_dim=2, reward_head=True, x_dim=128,
                      c_dim=128, d_dim=128, s_dim=16, enc_hidden=(128,), dec_hidden=(128,),
                      state_hidden=(64, 64), factor_hidden=(64,), head_hidden=(128, 128), conv_depth=16,
                      loss=LossConfig(obs_std=0.05))
    cfg = TrainConfig(model=model, data=DataConfig(name="episodes", image_size=32, channels=3, seq_len=32,
                                                   batch_size=16),
                      optim=OptimConfig(lr=1e-3, beta_warmup=500), out_dir=args.out, device="cpu",
                      threads=args.threads,
                      logging=LoggingConfig(log_every=10, media_every=0, checkpoint_every=1000,
                                            rollout_context=8, rollout_horizon=16))
    planner = {"horizon": 8, "candidates": 200, "iterations": 5, "top_k": 20}
    summary = run_planet_loop(cfg, envs.POINT_TARGET_ID, args.iterations, args.seed_episodes,
                              args.train_steps, planner="cem", planner_kwargs=planner,
                              max_episode_steps=args.episode_steps)
    print("returns while training:", [round(r, 2) for r in summary["agent"]["returns"]])

    trained = load(summary["model"]).eval()
    env = make_env(envs.POINT_TARGET_ID, 32, 3, max_episode_steps=args.episode_steps)
    report = evaluate_agent(trained, env, CEMPlanner(seed=0, **planner), args.eval_episodes, seed=1000)
    print(json.dumps({k: v for k, v in report.items() if k != "agent" and k != "random"}, indent=1))
    print(f"agent {report['agent']['mean']:.2f} ± {report['agent']['std']:.2f}   "
          f"random {report['random']['mean']:.2f} ± {report['random']['std']:.2f}")


if __name__ == "__main__":
    main()
