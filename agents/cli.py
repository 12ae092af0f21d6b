"""The ``agent-train`` and ``agent-eval`` sub-commands of ``dlh``.

    dlh agent-train --env worldmodel/PointTarget-v0 --config configs/point_target.yaml \\
        [--set section.key=value ...] --iterations 100 --seed-episodes 5 --train-steps 100
    dlh agent-eval --checkpoint runs/pt/model.safetensors --env worldmodel/PointTarget-v0 \\
        --episodes 20 --planner cem
    dlh agent-ppo --env worldmodel/PointTarget-v0 --steps 6000 --out runs/ppo_pt

Register them with ``add_agent_parsers(subparsers)``; each parser's ``func`` returns the
exit status.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from envs.cli import positive_int

__all__ = ["add_agent_parsers", "run_agent_train", "run_agent_eval", "run_agent_ppo"]


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_planner_args(p: argparse.ArgumentParser, noise: float) -> None:
    g = p.add_argument_group("planner")
    g.add_argument("--planner", choices=("cem", "mppi"), default="cem", help="default cem")
    g.add_argument("--horizon", type=positive_int, default=12, help="imagined steps (default 12)")
    g.add_argument("--candidates", type=positive_int, default=None, metavar="N",
                   help="sequences per iteration (default: cem 1000, mppi 512)")
    g.add_argument("--elites", type=positive_int, default=None, metavar="K",
                   help="elites per iteration (default: cem 100, mppi 64)")
    g.add_argument("--plan-iterations", type=positive_int, default=None, metavar="I",
                   help="refinement iterations per action (default: cem 10, mppi 6)")
    g.add_argument("--exploration-noise", type=_non_negative_float, default=noise,
                   help=f"Gaussian noise added to planned actions (default {noise})")
    e = p.add_argument_group("environment")
    e.add_argument("--env", required=True, metavar="ID", help="Gymnasium id, e.g. worldmodel/PointTarget-v0")
    e.add_argument("--action-repeat", type=positive_int, default=1, metavar="K")
    e.add_argument("--max-episode-steps", type=positive_int, default=None, metavar="N")
    e.add_argument("--seed", type=int, default=None, help="episode seeds start here")


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's)")


def _apply_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _planner_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    names = {"cem": ("candidates", "top_k"), "mppi": ("num_samples", "num_elites")}[args.planner]
    kwargs: dict[str, Any] = {"horizon": args.horizon}
    if args.candidates is not None:
        kwargs[names[0]] = args.candidates
    if args.elites is not None:
        kwargs[names[1]] = args.elites
    if args.plan_iterations is not None:
        kwargs["iterations"] = args.plan_iterations
    return kwargs


def add_agent_parsers(subparsers: Any) -> None:
    """Register ``agent-train`` and ``agent-eval`` on `subparsers` (from ``add_subparsers``)."""
    p = subparsers.add_parser(
        "agent-train", help="train a world model and a planning agent together (PlaNet loop)",
        description="Seed episodes with a random policy, then alternate world-model training on the "
                    "episode replay with collecting an episode by planning in latent space.")
    p.add_argument("--config", default=None, help="YAML train config (model.action_dim and "
                   "model.reward_head must be set for the env)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--out", default=None, help="output directory (same as --set out_dir=...)")
    p.add_argument("--iterations", type=positive_int, required=True, metavar="N",
                   help="train/collect rounds")
    p.add_argument("--seed-episodes", type=positive_int, default=5, metavar="N", help="default 5")
    p.add_argument("--train-steps", type=positive_int, default=100, metavar="K",
                   help="optimiser steps per iteration (default 100)")
    p.add_argument("--episodes-dir", default=None, help="episode files (default OUT/episodes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("Dyna: a policy trained in the dream between model updates")
    g.add_argument("--dyna", choices=("SAC", "PPO"), type=str.upper, default=None, help="off by default")
    g.add_argument("--dyna-steps", type=positive_int, default=5000, metavar="N",
                   help="imagined transitions per iteration (default 5000)")
    g.add_argument("--dyna-act", choices=("policy", "warm_start"), default="policy",
                   help="collect with the policy (default) or with the planner warm-started by it")
    _add_planner_args(p, noise=0.3)
    p.set_defaults(func=run_agent_train)

    q = subparsers.add_parser(
        "agent-eval", help="evaluate planning with a trained world model against a random policy",
        description="Return (mean ± std) of a planning agent and of a random policy on the same "
                    "episode seeds, planning time per action and per-level change rates.")
    q.add_argument("--checkpoint", required=True, metavar="MODEL",
                   help="a model file (model.safetensors) or a run directory holding one")
    q.add_argument("--episodes", type=positive_int, default=20, help="default 20")
    q.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    q.add_argument("--no-random", action="store_true", help="skip the random-policy baseline")
    q.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_threads_arg(q)
    _add_planner_args(q, noise=0.0)
    q.set_defaults(func=run_agent_eval)

    r = subparsers.add_parser(
        "agent-ppo", help="the model-free baseline: SB3 PPO from pixels, trained and evaluated",
        description="Train Stable-Baselines3 PPO (CnnPolicy, stacked frames) on the same pixel env "
                    "the planning agent sees, for a given number of agent steps, then evaluate its "
                    "deterministic policy on the episode seeds `dlh agent-eval` uses.")
    r.add_argument("--env", required=True, metavar="ID", help="Gymnasium id, e.g. Pendulum-v1")
    r.add_argument("--steps", type=positive_int, required=True, metavar="N",
                   help="environment (agent) steps to train for")
    r.add_argument("--out", required=True, metavar="DIR", help="writes ppo.zip, ppo.json, TensorBoard logs")
    r.add_argument("--image-size", type=positive_int, default=32, metavar="PX", help="default 32")
    r.add_argument("--grayscale", action="store_true", help="one channel instead of RGB")
    r.add_argument("--frame-stack", type=positive_int, default=3, metavar="K", help="default 3")
    r.add_argument("--action-repeat", type=positive_int, default=1, metavar="K")
    r.add_argument("--max-episode-steps", type=positive_int, default=None, metavar="N")
    r.add_argument("--episodes", type=positive_int, default=20, help="evaluation episodes (default 20)")
    r.add_argument("--seed", type=int, default=0, help="training seed; evaluation episode seeds start here")
    _add_threads_arg(r)
    r.set_defaults(func=run_agent_ppo)

    from .dream_cli import add_dream_parser

    add_dream_parser(subparsers)


def run_agent_train(args: argparse.Namespace) -> int:
    from .loop import run_planet_loop

    dyna = None
    if getattr(args, "dyna", None):
        from .dream_loop import DynaOptions

        dyna = DynaOptions(algo=args.dyna, steps=args.dyna_steps, act=args.dyna_act)
    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out_dir={args.out}")
    summary = run_planet_loop(
        args.config, args.env, args.iterations, args.seed_episodes, args.train_steps,
        overrides=overrides, planner=args.planner, planner_kwargs=_planner_kwargs(args),
        exploration_noise=args.exploration_noise, action_repeat=args.action_repeat,
        max_episode_steps=args.max_episode_steps, episodes_dir=args.episodes_dir, seed=args.seed,
        progress=not args.no_progress, dyna=dyna)
    agent = summary["agent"]
    returns = agent["returns"]
    print(f"done: {agent['iterations']} iterations, {agent['env_steps']} env steps, {summary.get('steps')} "
          f"train steps in {summary.get('wall_time_s')} s")
    if returns:
        last = returns[-min(5, len(returns)):]
        print(f"  episode return: first {returns[0]:.2f}  last {returns[-1]:.2f}  "
              f"mean of last {len(last)} {sum(last) / len(last):.2f}")
    if agent["seed_returns"]:
        seed_mean = sum(agent["seed_returns"]) / len(agent["seed_returns"])
        print(f"  random seed episodes: mean return {seed_mean:.2f}")
    if agent["plan_ms"]:
        print(f"  planning: {sum(agent['plan_ms']) / len(agent['plan_ms']):.1f} ms per action")
    upper = _upper_change_rates(summary.get("final_metrics") or {})
    if upper:
        # on Pendulum the loop's good models had a silent level 2 (docs/results.md, issue 25)
        print(f"  change rate in training (last log): {upper}")
    if summary.get("model"):
        print(f"  model: {summary['model']}   agent log: {Path(summary['model']).parent / 'agent.json'}")
    return 0


def _upper_change_rates(metrics: dict[str, Any]) -> str:
    """'level2 0.123  level3 0.045' from a trainer's logged metrics (levels >= 2; '' if none)."""
    rates, n = [], 2
    while isinstance(metrics.get(f"change_rate/level{n}"), (int, float)):  # DLH.loss's keys, n = 1..N
        rates.append(f"level{n} {metrics[f'change_rate/level{n}']:.3f}")
        n += 1
    return "  ".join(rates)


def _levels(rates: list[float]) -> str:
    return "  ".join(f"level{n + 1} {r:.3f}" for n, r in enumerate(rates)) or "n/a"


def run_agent_eval(args: argparse.Namespace) -> int:
    from worldmodel import load

    from .evaluate import evaluate_agent
    from .loop import make_env
    from .planners import make_planner

    _apply_threads(args)
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "model.safetensors"
    model = load(path, map_location=args.device).eval()
    cfg = model.config
    seed = 0 if args.seed is None else args.seed
    env = make_env(args.env, cfg.image_size, cfg.channels, action_repeat=args.action_repeat, seed=seed,
                   max_episode_steps=args.max_episode_steps)
    try:
        space = env.action_space
        planner = make_planner(args.planner, action_low=space.low, action_high=space.high, seed=seed,
                               **_planner_kwargs(args))
        report = evaluate_agent(model, env, planner, args.episodes, seed, args.exploration_noise,
                                compare_random=not args.no_random, progress=not args.no_progress)
    finally:
        env.close()
    agent = report["agent"]
    print(f"{args.env}: {args.episodes} episodes, {report['steps']} steps, "
          f"seeds {seed}..{seed + args.episodes - 1}")
    print(f"  agent ({args.planner}): return {agent['mean']:.2f} ± {agent['std']:.2f}")
    if "random" in report:
        rnd = report["random"]
        print(f"  random policy: return {rnd['mean']:.2f} ± {rnd['std']:.2f}")
    print(f"  planning: {report['plan_ms']:.1f} ± {report['plan_ms_std']:.1f} ms per action "
          f"({type(planner).__name__}, horizon {planner.horizon}, {planner.iterations} iterations)")
    print(f"  change rate while filtering: {_levels(report['filtered_change_rate'])}")
    print(f"  change rate in imagination:  {_levels(report['imagined_change_rate'])}")
    if "reward_r2_filtered" in report:
        print(f"  reward head R²: {report['reward_r2_filtered']:.3f} filtered, "
              f"{report['reward_r2_imagined']:.3f} imagined {planner.horizon} steps ahead "
              f"(MAE {report['reward_mae_filtered']:.3f} / {report['reward_mae_imagined']:.3f})")
    if args.json:
        from worldmodel.files import atomic_write_text
        from worldmodel.reports import json_text

        report = {**report, "env": args.env, "planner": args.planner, "checkpoint": str(path)}
        atomic_write_text(args.json, json_text(report))
        print(f"  report: {args.json}")
    return 0


def run_agent_ppo(args: argparse.Namespace) -> int:
    from worldmodel.files import atomic_write_text
    from worldmodel.reports import json_text

    try:
        from .ppo import evaluate_ppo, train_ppo_pixels
    except ImportError as err:
        raise ValueError(f"agent-ppo needs stable-baselines3 ({err}): pip install 'worldmodel[sb3]'") from err

    _apply_threads(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env_kwargs = {"image_size": args.image_size, "channels": 1 if args.grayscale else 3,
                  "action_repeat": args.action_repeat, "frame_stack": args.frame_stack,
                  "max_episode_steps": args.max_episode_steps}
    ppo, info = train_ppo_pixels(args.env, args.steps, seed=args.seed, tensorboard_log=str(out / "tb"),
                                 **env_kwargs)
    ppo.save(out / "ppo.zip")
    report = evaluate_ppo(ppo, args.env, args.episodes, args.seed, **env_kwargs)
    train = info["train_returns"]
    print(f"{args.env}: PPO from {args.image_size}px pixels, {info['env_steps']} env steps in "
          f"{info['wall_time_s']:.0f} s ({len(train)} training episodes)")
    print(f"  evaluation, {args.episodes} episodes (seeds {args.seed}..{args.seed + args.episodes - 1}): "
          f"return {report['mean']:.2f} ± {report['std']:.2f}")
    summary = {"env": args.env, "seed": args.seed, **env_kwargs, **info, "eval": report}
    atomic_write_text(out / "ppo.json", json_text(summary))
    print(f"  model: {out / 'ppo.zip'}   report: {out / 'ppo.json'}")
    return 0
