"""The ``record`` sub-command: record Gymnasium episodes as pixel ``.npz`` files.

Wired into the ``dlh`` console script by :mod:`worldmodel.cli`; also runnable on
its own::

    python -m envs.cli record --env Pendulum-v1 --policy random --episodes 10 --out data/pendulum
    dlh record --env worldmodel/PointTarget-v0 --policy sb3:ppo.zip --algo PPO --episodes 5 --out data/pt

Recording again into the same ``--out`` continues it: new file indices and new episode
seeds (the seeds already used there are skipped), never a copy of an earlier episode.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

from envs.policies import SB3_ALGORITHMS
from envs.recorder import MAX_SEED
from worldmodel.files import one_line

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


def int_between(low: int, high: int) -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]``; argparse names the flag in its error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}")
        return value

    return parse


# Bounds of the numeric ``record`` flags: beyond them a run would exhaust memory (an
# episode is held in memory until written: steps x size x size x 3 bytes) or disk.
MAX_SIZE = 512
MAX_EPISODES = 1_000_000
MAX_ACTION_REPEAT = 1000
MAX_STEPS = 100_000


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
    parser.add_argument(
        "--algo",
        type=str.upper,
        choices=SB3_ALGORITHMS,
        default=None,
        help="the algorithm that saved the sb3:PATH model (required with sb3:PATH); its policy "
        "network is rebuilt from the zip's JSON and weights without unpickling anything",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load the sb3:PATH model with SB3's own loader, which unpickles (runs code from) "
        "the file: only for files you trust (without --algo every algorithm is tried)",
    )
    parser.add_argument("--episodes", type=int_between(1, MAX_EPISODES), required=True, metavar="N")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output directory; recording again into it adds new episodes")
    parser.add_argument("--size", type=int_between(1, MAX_SIZE), default=64,
                        help=f"image side, at most {MAX_SIZE} (default 64)")
    parser.add_argument("--grayscale", action="store_true", help="one channel instead of RGB")
    parser.add_argument("--action-repeat", type=int_between(1, MAX_ACTION_REPEAT), default=1,
                        metavar="K", help="default 1")
    parser.add_argument(
        "--seed",
        type=int_between(0, MAX_SEED),
        default=0,
        help="episodes are reset with seed, seed+1, ..., skipping the seeds of episodes already "
        "in --out (default 0)",
    )
    parser.add_argument(
        "--max-steps",
        type=int_between(1, MAX_STEPS),
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

    if args.policy.startswith("sb3:") and args.algo is None and not args.trust_pickle:
        print(f"dlh record: error: --policy sb3:PATH needs --algo, one of {', '.join(SB3_ALGORITHMS)} "
              f"(the algorithm that saved the model)", file=sys.stderr)
        return 2
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
        print(f"dlh record: error: cannot make env {args.env!r}: {one_line(err)}", file=sys.stderr)
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
            algo=args.algo,
            trust_pickle=args.trust_pickle,
            settings={"env": args.env, "size": args.size, "grayscale": args.grayscale,
                      "action_repeat": args.action_repeat},
        )
    except ValueError as err:
        print(f"dlh record: error: {one_line(err)}", file=sys.stderr)
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
