"""Sweep harness: a grid of config overrides × seeds, trained in the background, one table.

    # run (1 thread per run, at most --parallel at a time; resumable: finished runs are skipped)
    nohup python benchmarks/reproduce/sweep.py run --out runs/sweep \\
        --config configs/moving_ball_cpu.yaml --seeds 0 1 2 \\
        --variant 'paper_adam: optim.eps=1e-8 optim.grad_clip=0' \\
        --variant 'upper_std: optim.eps=1e-8 optim.grad_clip=0 model.upper_min_std=0.1' \\
        > runs/sweep/sweep.log 2>&1 &

    # collect (any time; unfinished runs show their last logged values)
    python benchmarks/reproduce/sweep.py collect runs/sweep [--json table.json]

Each run is `dlh train --config CONFIG --set seed=S --set threads=1 OVERRIDES` into
OUT/VARIANT_sS, followed by `dlh analyze` on `--analyze-sequences` fresh test windows of
`--analyze-length` frames (Moving Ball: event precision/recall/F1 against the true colour
changes). The table has, per run: level-2 event F1 (exact and ±1 step), precision, recall,
L̄, the final training ELBO, the steps spent in posterior collapse (logged `diag/collapsed`)
and the final regime of level 2: "never" (change rate below a quarter of the true rate),
"always" (above 3× the true rate, or L̄ − 1 > 0.5), "sparse" otherwise, "collapsed" when the
run ended collapsed. Ground truth is used for measurement only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _runs(args: argparse.Namespace) -> list[tuple[str, int, list[str]]]:
    jobs = []
    for spec in args.variant:
        if ":" not in spec:
            raise SystemExit(f"--variant expects 'name: key=value ...', got {spec!r}")
        name, overrides = spec.split(":", 1)
        name = name.strip()
        if not name or "/" in name:
            raise SystemExit(f"--variant name must be a plain word, got {name!r}")
        for seed in args.seeds:
            jobs.append((name, seed, shlex.split(overrides)))
    return jobs


def _commands(args: argparse.Namespace, name: str, seed: int, overrides: list[str]) -> tuple[Path, str]:
    run_dir = Path(args.out) / f"{name}_s{seed}"
    sets = [f"seed={seed}", "threads=1", f"out_dir={run_dir}", *args.common, *overrides]
    train = ["dlh", "train", "--config", args.config, "--no-progress"]
    for item in sets:
        train += ["--set", item]
    analyze = ["dlh", "analyze", "--checkpoint", str(run_dir), "--sequences", str(args.analyze_sequences),
               "--length", str(args.analyze_length), "--maps", "4", "--samples", "2"]
    script = (f"{shlex.join(train)} > {run_dir}.train.log 2>&1 && "
              f"OMP_NUM_THREADS=1 {shlex.join(analyze)} > {run_dir}.analyze.log 2>&1")
    if (run_dir / "checkpoints").exists() and not (run_dir / "summary.json").exists():
        script = script.replace("--no-progress", "--no-progress --resume", 1)
    return run_dir, script


def run(args: argparse.Namespace) -> int:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pending = []
    for name, seed, overrides in _runs(args):
        run_dir, script = _commands(args, name, seed, overrides)
        if (run_dir / "analysis" / "analysis.json").exists():
            print(f"skip {run_dir} (done)", flush=True)
            continue
        pending.append((run_dir, script))
    active: list[tuple[Path, subprocess.Popen, float]] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while pending or active:
        while pending and len(active) < args.parallel:
            run_dir, script = pending.pop(0)
            print(f"start {run_dir}: {script}", flush=True)
            active.append((run_dir, subprocess.Popen(["bash", "-c", script], env=env), time.time()))
        time.sleep(5)
        for item in list(active):
            run_dir, proc, started = item
            if proc.poll() is not None:
                active.remove(item)
                print(f"done  {run_dir}: exit {proc.returncode} after {time.time() - started:.0f} s",
                      flush=True)
    return 0


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a live run
    return rows


def summarize_run(run_dir: Path) -> dict:
    rows = _metrics(run_dir)
    train_rows = [r for r in rows if "loss" in r]
    last = train_rows[-1] if train_rows else {}
    log_every = (train_rows[1]["step"] - train_rows[0]["step"]) if len(train_rows) > 1 else 0
    collapse_steps = sum(log_every for r in train_rows if r.get("diag/collapsed"))
    row = {"run": run_dir.name, "step": last.get("step"), "elbo": last.get("elbo"),
           "train_L": last.get("levels_used"), "collapse_steps": collapse_steps,
           "collapsed_at_end": bool(last.get("diag/collapsed"))}
    summary = run_dir / "summary.json"
    if summary.exists():
        row["wall_s"] = json.loads(summary.read_text()).get("wall_time_s")
    analysis = run_dir / "analysis" / "analysis.json"
    if analysis.exists():
        report = json.loads(analysis.read_text())
        row["L"] = report["levels_used"]["mean"]
        events = report.get("events", {})
        ev = events.get("level2")
        if ev:
            true_rate = events["true_change_rate"]
            row.update(f1=ev["exact"]["f1"], f1_tol1=ev["tol1"]["f1"], precision=ev["exact"]["precision"],
                       recall=ev["exact"]["recall"], rate2=ev["change_rate"], true_rate=true_rate)
            if row["collapsed_at_end"]:
                regime = "collapsed"
            elif ev["change_rate"] < 0.25 * true_rate:
                regime = "never"
            elif ev["change_rate"] > 3 * true_rate or row["L"] - 1 > 0.5:
                regime = "always"
            else:
                regime = "sparse"
            row["regime"] = regime
    else:  # live: the periodic event probe
        probes = [r for r in rows if "events/level2_f1" in r]
        if probes:
            row["f1_live"] = probes[-1]["events/level2_f1"]
    return row


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def collect(args: argparse.Namespace) -> int:
    root = Path(args.root)
    runs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").exists())
    rows = [summarize_run(p) for p in runs]
    cols = ["run", "step", "f1", "f1_tol1", "precision", "recall", "L", "rate2", "elbo",
            "collapse_steps", "regime", "f1_live", "wall_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(_fmt(row.get(c), 1 if c == "elbo" else 3) for c in cols) + " |")
    # per variant: mean F1 over seeds
    variants: dict[str, list[dict]] = {}
    for row in rows:
        variants.setdefault(row["run"].rsplit("_s", 1)[0], []).append(row)
    print("\n| variant | seeds | F1 mean | F1 min | L̄ mean | regimes |\n|---|---|---|---|---|---|")
    for name, group in variants.items():
        f1 = [r["f1"] for r in group if "f1" in r]
        ls = [r["L"] for r in group if "L" in r]
        print(f"| {name} | {len(f1)} | {_fmt(statistics.mean(f1)) if f1 else '–'} | "
              f"{_fmt(min(f1)) if f1 else '–'} | {_fmt(statistics.mean(ls)) if ls else '–'} | "
              f"{', '.join(r.get('regime', '?') for r in group)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and analyse a grid of variants × seeds")
    p.add_argument("--config", default="configs/moving_ball_cpu.yaml")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variant", action="append", required=True,
                   help="'name: section.key=value ...' (repeatable)")
    p.add_argument("--common", nargs="*", default=[], help="overrides applied to every variant")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--analyze-sequences", type=int, default=64)
    p.add_argument("--analyze-length", type=int, default=100)
    p.set_defaults(func=run)
    p = sub.add_parser("collect", help="one table of every run under ROOT")
    p.add_argument("root")
    p.add_argument("--json", default=None)
    p.set_defaults(func=collect)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
