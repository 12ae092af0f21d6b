"""The ``dream-train`` sub-command of ``dlh``: an SB3 agent trained only in the world model's dream.

    dlh dream-train --checkpoint runs/pendulum --episodes data/pendulum --algo SAC --steps 50000 \\
        --out runs/pendulum_dream [--envs 16 --dream-horizon 15 --context 10 --jump-level 2]

Writes ``OUT/policy.zip`` (SB3's format: ``SAC.load``), ``OUT/dream.json`` (the report) and
TensorBoard logs under ``OUT/tb`` (SB3's scalars and ``dream/imagined_return``,
``dream/episode_length``). Then evaluates in the real env (the env of the episodes'
``recording.json``, or ``--env``) through ``DLHFeatureWrapper``: the dream policy, a random
policy and the CEM planner on the same episode seeds (return mean ± std, acting time per step).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from envs.cli import positive_int

__all__ = ["add_dream_parser", "run_dream_train"]


def add_dream_parser(subparsers: Any) -> None:
    """Register ``dream-train`` on `subparsers`."""
    p = subparsers.add_parser(
        "dream-train",
        help="train an SB3 agent only in the world model's imagination, evaluate it for real",
        description="Train Stable-Baselines3 SAC or PPO on imagined experience of a trained DLH (rows "
        "started from states filtered on recorded episodes), save it in SB3's format, and evaluate it in "
        "the real env against a random policy and the CEM planner on the same episode seeds.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="MODEL",
        help="a model file (model.safetensors) or a run directory holding one",
    )
    p.add_argument("--episodes", required=True, metavar="DATA", help="folder of recorded episode .npz files")
    p.add_argument("--algo", choices=("SAC", "PPO"), type=str.upper, default="SAC", help="default SAC")
    p.add_argument(
        "--steps",
        type=positive_int,
        required=True,
        metavar="N",
        help="imagined transitions to train on (all rows together)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="writes policy.zip, dream.json, tb/")
    d = p.add_argument_group("dream")
    d.add_argument("--envs", type=positive_int, default=16, metavar="B", help="imagined rows (default 16)")
    d.add_argument(
        "--dream-horizon",
        type=positive_int,
        default=15,
        metavar="H",
        help="imagined frames per dream episode (default 15; SB3 bootstraps at the cut)",
    )
    d.add_argument(
        "--context",
        type=positive_int,
        default=10,
        metavar="T",
        help="real frames filtered into each start state (default 10)",
    )
    d.add_argument(
        "--jump-level",
        type=positive_int,
        default=None,
        metavar="N",
        help="jumpy steps: one step runs until level N changes",
    )
    d.add_argument(
        "--max-jump", type=positive_int, default=8, metavar="K", help="frames per jumpy step at most"
    )
    d.add_argument(
        "--observation",
        choices=("features", "pixels"),
        default="features",
        help="features (default, as DLHFeatureWrapper) or decoded frames (CnnPolicy)",
    )
    e = p.add_argument_group("evaluation in the real env")
    e.add_argument(
        "--env", default=None, metavar="ID", help="default: the env of the episodes' recording.json"
    )
    e.add_argument(
        "--action-repeat",
        type=positive_int,
        default=None,
        metavar="K",
        help="default: that of recording.json, else 1",
    )
    e.add_argument("--max-episode-steps", type=positive_int, default=None, metavar="N")
    e.add_argument("--eval-episodes", type=positive_int, default=20, metavar="N", help="default 20")
    e.add_argument("--no-cem", action="store_true", help="skip the CEM baseline")
    e.add_argument("--no-random", action="store_true", help="skip the random baseline")
    e.add_argument("--candidates", type=positive_int, default=1000, metavar="N", help="CEM candidates (1000)")
    e.add_argument("--elites", type=positive_int, default=100, metavar="K", help="CEM elites (100)")
    e.add_argument(
        "--plan-iterations", type=positive_int, default=10, metavar="I", help="CEM iterations (10)"
    )
    e.add_argument("--plan-horizon", type=positive_int, default=12, metavar="H", help="CEM horizon (12)")
    p.add_argument(
        "--seed", type=int, default=0, help="training seed; evaluation episode seeds start at 1000 + it"
    )
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--progress", action="store_true", help="SB3's progress bar")
    p.set_defaults(func=run_dream_train)


def run_dream_train(args: argparse.Namespace) -> int:
    import torch

    from worldmodel import load
    from worldmodel.files import atomic_write_text
    from worldmodel.reports import json_text

    from .dream import DreamVecEnv, recorded_settings
    from .dream_sb3 import DreamSB3VecEnv, evaluate_policy_real, train_in_dream
    from .evaluate import evaluate_agent, evaluate_random
    from .loop import make_env
    from .planners import make_planner
    from .sb3 import DLHFeatureWrapper

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "model.safetensors"
    model = load(path).eval()
    recorded = recorded_settings(args.episodes) if Path(args.episodes).is_dir() else {}
    dream = DreamVecEnv(
        model,
        args.episodes,
        args.envs,
        horizon=args.dream_horizon,
        context=args.context,
        observation=args.observation,
        env_id=args.env,
        autoreset_mode="SameStep",
        jump_level=args.jump_level,
        max_jump=args.max_jump,
        seed=args.seed,
    )
    env_id = dream.env_id
    if env_id is None:
        raise ValueError(f"--env: the episodes at {args.episodes} have no recording.json naming their env")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    venv = DreamSB3VecEnv(dream)
    venv.seed(args.seed)
    agent, info = train_in_dream(
        venv, args.algo, args.steps, seed=args.seed, tensorboard_log=str(out / "tb"), progress=args.progress
    )
    agent.save(out / "policy.zip")
    print(
        f"dream: {args.algo} on {info['steps']} imagined transitions ({args.envs} rows, horizon "
        f"{args.dream_horizon}) in {info['wall_time_s']:.0f} s wall, {info['cpu_time_s']:.0f} s CPU; "
        f"imagined return {info['imagined_return']:.2f} over the last episodes"
    )

    action_repeat = args.action_repeat or int(recorded.get("action_repeat", 1))
    cfg = model.config
    seed = 1000 + args.seed
    report: dict[str, Any] = {
        "env": env_id,
        "checkpoint": str(path),
        "episodes_dir": str(args.episodes),
        "algo": args.algo,
        "dream": {
            **info,
            "envs": args.envs,
            "horizon": args.dream_horizon,
            "context": args.context,
            "jump_level": args.jump_level,
        },
        "eval_seeds": [seed, seed + args.eval_episodes - 1],
        "action_repeat": action_repeat,
    }
    def pixel_env():  # the real env as the world model sees it
        return make_env(env_id, cfg.image_size, cfg.channels, action_repeat=action_repeat,
                        max_episode_steps=args.max_episode_steps)

    env = pixel_env()
    if args.observation == "features":
        env = DLHFeatureWrapper(env, model)
    torch.manual_seed(seed)  # the filter samples posteriors: the same numbers on every run
    try:
        report["dream_policy"] = evaluate_policy_real(agent, env, args.eval_episodes, seed)
    finally:
        env.close()
    pol = report["dream_policy"]
    print(f"{env_id}, {args.eval_episodes} episodes (seeds {seed}..{seed + args.eval_episodes - 1}):")
    print(
        f"  dream policy: return {pol['mean']:.2f} ± {pol['std']:.2f}   acting {pol['act_ms']:.3f} ms "
        f"per step (+ {pol['filter_ms']:.2f} ms filtering)"
    )
    pixels = pixel_env()
    try:
        if not args.no_random:
            report["random"] = evaluate_random(pixels, args.eval_episodes, seed)
            print(f"  random policy: return {report['random']['mean']:.2f} ± {report['random']['std']:.2f}")
        if not args.no_cem:
            space = pixels.action_space
            planner = make_planner(
                "cem",
                action_low=space.low,
                action_high=space.high,
                seed=seed,
                horizon=args.plan_horizon,
                candidates=args.candidates,
                top_k=args.elites,
                iterations=args.plan_iterations,
            )
            started = time.perf_counter()
            torch.manual_seed(seed)
            cem = evaluate_agent(model, pixels, planner, args.eval_episodes, seed, compare_random=False)
            report["cem"] = {
                **cem["agent"],
                "act_ms": cem["plan_ms"],
                "act_ms_std": cem["plan_ms_std"],
                "wall_time_s": time.perf_counter() - started,
            }
            print(
                f"  CEM: return {cem['agent']['mean']:.2f} ± {cem['agent']['std']:.2f}   acting "
                f"{cem['plan_ms']:.1f} ms per step"
            )
            report["act_speedup_vs_cem"] = cem["plan_ms"] / pol["act_ms"]
            print(f"  acting is {report['act_speedup_vs_cem']:.0f}x cheaper per step than CEM")
    finally:
        pixels.close()
    atomic_write_text(out / "dream.json", json_text(report))
    print(f"  policy: {out / 'policy.zip'}   report: {out / 'dream.json'}   TensorBoard: {out / 'tb'}")
    return 0
