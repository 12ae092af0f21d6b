"""The `dlh` command line.

    dlh train --config configs/moving_ball_cpu.yaml [--set section.key=value ...] [--resume]
    dlh record --env worldmodel/PointTarget-v0 --policy random --episodes 20 --out data/pt
    dlh eval | rollout | analyze --checkpoint RUN ...      (worldmodel.evaluation)
    dlh agent-train | agent-eval | agent-ppo --env ID ...   (agents)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .files import one_line

# pygame (gymnasium rendering; moviepy, which TensorBoard's add_video imports) without a sound
# card or a display: the CLI never opens a window, and SDL's default drivers print errors
# ("XDG_RUNTIME_DIR is invalid", ALSA) on headless machines
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


def _train(args: argparse.Namespace) -> int:
    from .evaluation.swap import format_usage
    from .training import load_config, train

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out_dir={args.out}")
    cfg = load_config(args.config, overrides)
    requested = [item.split("=", 1)[0].strip() for item in overrides]
    summary = train(cfg, resume=args.resume, progress=not args.no_progress, requested=requested)
    if summary.get("already_finished"):
        print(f"{cfg.out_dir} already finished at step {summary['steps']} (steps={cfg.steps}); "
              "nothing to train: raise steps to train on")
        return 0
    if summary:
        final = summary["final_metrics"]
        nan = float("nan")
        rollout = summary["rollout"]
        print(f"done: {summary['steps']} steps in {summary['wall_time_s']} s on {summary['device']}, "
              f"{summary['threads']} threads, {summary['precision']}")
        print(f"  final loss {final.get('loss', nan):.2f}  elbo {final.get('elbo', nan):.2f}"
              f"  levels used {final.get('levels_used', nan):.2f}")
        print(f"  open-loop rollout: SSIM {rollout['ssim']:.3f}  PSNR {rollout['psnr']:.2f} dB")
        for n in range(2, cfg.model.levels + 1):
            key = f"events/level{n}"
            if f"{key}_f1" in final:
                print(f"  level {n} vs the data's events: precision {final[f'{key}_precision']:.3f}  "
                      f"recall {final[f'{key}_recall']:.3f}  F1 {final[f'{key}_f1']:.3f}  "
                      f"(±1 step {final[f'{key}_f1_tol1']:.3f})")
        probes = {k.removeprefix("probe/"): v for k, v in final.items() if k.startswith("probe/")}
        for line in format_usage(probes).splitlines():  # the swap test of the last tracking probe
            print(f"  {line}")
        print(f"  rollout GIF: {summary['rollout_gif']}")
        print(f"  model: {summary['model']}   summary: {cfg.out_dir}/summary.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlh", description="Dynamic Latent Hierarchy world model")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a DLH from a YAML config")
    p.add_argument("--config", default=None, help="YAML config (default: built-in Moving Ball defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--out", default=None, help="output directory (same as --set out_dir=...)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    from agents.cli import add_agent_parsers
    from envs.cli import add_record_parser

    add_record_parser(sub)
    add_agent_parsers(sub)
    from .evaluation.cli import add_parsers as add_evaluation_parsers

    add_evaluation_parsers(sub)
    return parser


def _allocator_failed(exc: Exception) -> bool:
    """torch's CPU allocator reports a failed allocation as a RuntimeError (CUDA's has a type)."""
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)[:500]


def _known_error(exc: Exception) -> tuple[int, str] | None:
    """(exit status, message) for an error the user can act on; None for a bug (traceback).

    Status 2: bad input (configs, arguments, missing or corrupt files, YAML); status 1: the
    run could not go on (divergence, the file system refused, out of memory).
    """
    import yaml

    from .training import TrainingDiverged

    if isinstance(exc, TrainingDiverged):
        return 1, f"training diverged: {exc}"
    if isinstance(exc, FileNotFoundError) and exc.filename is None:
        return 2, str(exc)  # our own message, naming what is missing and where to get it
    if isinstance(exc, ValueError):
        return 2, str(exc)
    if isinstance(exc, yaml.YAMLError):
        from .training.config import yaml_problem

        return 2, f"invalid YAML: {yaml_problem(exc)}"
    if isinstance(exc, OSError):
        if exc.filename is None:
            return 1, exc.strerror or str(exc) or type(exc).__name__
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return (2 if isinstance(exc, FileNotFoundError) else 1), f"{where}: {exc.strerror or exc}"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or _allocator_failed(exc):
        detail = f" ({one_line(str(exc).splitlines()[0])[:200]})" if str(exc) else ""
        return 1, f"out of memory{detail}: lower data.batch_size or data.seq_len, or the model's sizes"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `dlh` command; errors a user can act on end it with one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line (a training run says where it stopped)
        print(f"dlh {args.command}: {one_line(exc) if str(exc) else 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as exc:
        known = _known_error(exc)
        if known is None:
            raise
        status, message = known
        print(f"dlh {args.command}: error: {one_line(message)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "build_parser", "json"]
