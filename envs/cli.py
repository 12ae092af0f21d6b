"""The ``record`` sub-command: record Gymnasium episodes as pixel ``.npz`` files.

Wired into the ``dlh`` console script by :mod:`worldmodel.cli`; also runnable on
its own::

    python -m envs.cli record --env Pendulum-v1 --policy random --episodes 10 --out data/pendulum
    dlh record --env worldmodel/PointTarget-v0 --policy sb3:ppo.zip --episodes 5 --out data/pt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import gymnasium as gym

__all__ = ["add_record_parser", "run_record", "main"]


def positive_int(text: str) -> int:
    """argparse type: a positive integer, with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_record_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``record`` sub-command on ``subparsers`` (from ``add_subparsers``).

    The parser's default ``func`` is :func:`run_record`, so a main can dispatch with
    ``return args.func(args)``.
    """
    parser = subparsers.add_parser(
        "record",
        help="record Gymnasium episodes as pixel .npz files",
        description=(
            "Run a policy in a Gymnasium environment rendered to pixels and write one "
            "compressed .npz file per episode (image, action, reward, is_first, is_last, "
            "is_terminal), ready for world-model training."
        ),
    )
    parser.add_argument(
        "--env",
        required=True,
        metavar="ID",
        help="Gymnasium id, e.g. Pendulum-v1 or worldmodel/PointTarget-v0 (module:ID imports "
        "the module first)",
    )
    parser.add_argument(
        "--policy",
        default="random",
        metavar="random|sb3:PATH",
        help="'random' or 'sb3:PATH' to a saved Stable-Baselines3 model zip (default: random)",
    )
    parser.add_argument("--episodes", type=positive_int, required=True, metavar="N")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--size", type=positive_int, default=64, help="image side (default 64)")
    parser.add_argument("--grayscale", action="store_true", help="one channel instead of RGB")
    parser.add_argument("--action-repeat", type=positive_int, default=1, metavar="K", help="default 1")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed+i (default 0)")
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        metavar="N",
        help="cap on agent steps per episode (after action repeat); the env's own limit still applies",
    )
    parser.add_argument(
        "--log-info",
        action="append",
        default=[],
        metavar="KEY",
        help="also store info[KEY] per step as log_KEY (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_record)
    return parser


def run_record(args: argparse.Namespace) -> int:
    """Run ``record`` with parsed ``args``; return the exit status (0 ok, 2 bad input)."""
    import envs  # noqa: F401 - registers worldmodel/PointTarget-v0
    from envs.pixels import make_pixel_env
    from envs.recorder import record_episodes

    try:
        env = make_pixel_env(
            args.env,
            size=args.size,
            grayscale=args.grayscale,
            action_repeat=args.action_repeat,
            seed=args.seed,
            max_episode_steps=args.max_steps,
        )
    except (ValueError, gym.error.Error, ModuleNotFoundError) as err:
        print(f"dlh record: error: cannot make env {args.env!r}: {err}", file=sys.stderr)
        return 2
    try:
        paths = record_episodes(
            env,
            args.policy,
            args.episodes,
            args.out,
            seed=args.seed,
            progress=not args.no_progress,
            info_keys=args.log_info,
        )
    except ValueError as err:
        print(f"dlh record: error: {err}", file=sys.stderr)
        return 2
    finally:
        env.close()
    steps = sum(int(p.stem.rsplit("_", 1)[-1]) for p in paths)
    print(f"wrote {len(paths)} episodes ({steps} steps) to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m envs.cli record ...``."""
    parser = argparse.ArgumentParser(prog="python -m envs.cli")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_record_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
