"""Training-step speed: fp32 vs bf16 autocast, and threads on an idle vs a busy machine.

    # precision: fp32 and bf16 steps alternated in one process (ratios within one run)
    python benchmarks/train_speed.py --config configs/moving_ball.yaml --threads 2
    python benchmarks/train_speed.py --config configs/moving_ball_cpu.yaml --threads 2

    # threads: each setting in a fresh process (OpenMP reads its environment once), first
    # on the idle machine, then with one competing busy process on one core
    python benchmarks/train_speed.py --config configs/moving_ball_cpu.yaml --busy-check

    # the trainer against its bare step: one run, N steps of the quick start
    python benchmarks/train_speed.py --trainer-overhead --steps 2000

    # where the step stands against the machine: fp32 matmul peak measured in the same run,
    # the step's GFLOP counted by torch.utils.flop_counter, frames/s and fraction of peak for
    # the conv towers alone, the latent recurrence alone and the whole step
    python benchmarks/train_speed.py --roofline --threads 1

`--trainer-overhead` trains N steps with the real trainer (`Trainer.train_steps` and
`finish`: logging, probes, tracking, media, checkpoints at the config's intervals) and, after
every block of `--block` trainer steps, times the same number of bare steps (forward, backward,
clip, Adam, on pre-drawn batches of the same step numbers) on a copy of the trainer's model and
optimiser at that point, so that both see the same weights (a DLH's step cost depends on how
often its upper levels change). It prints both frames/s, their ratio, and where the trainer's
extra time went.

A step is what `dlh train` does per step: forward, backward, gradient clip and an Adam
update on a batch drawn like the trainer draws it (`data.batch_size` windows of
`data.seq_len` frames). Frames/s = batch · window / step time, best of `--repeats` timed
blocks of `--steps` steps after `--warmup` steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time


def _spin(stop) -> None:  # a competing busy process: one core, pure Python
    x = 0
    while not stop.is_set():
        x += 1


def time_steps(config: str, precision: str, steps: int, warmup: int, repeats: int,
               threads: int | None, sets: list[str]) -> dict[str, float]:
    """Frames/s of training steps in this process (threads: torch.set_num_threads, None = default)."""
    import torch

    from worldmodel import DLH
    from worldmodel.data import build_source
    from worldmodel.data.base import batch_at
    from worldmodel.training import load_config

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    cfg = load_config(config, sets)
    torch.manual_seed(cfg.seed)
    model = DLH(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, eps=cfg.optim.eps)
    source = build_source(cfg.data, "train")
    batches = [batch_at(source, cfg.seed, k, cfg.data.batch_size, cfg.data.seq_len) for k in range(4)]

    def step(k: int) -> None:
        batch = batches[k % len(batches)]
        cast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
        with cast:
            loss, _ = model.loss(batch.frames, batch.actions, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()

    for k in range(warmup):
        step(k)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for k in range(steps):
            step(k)
        best = min(best, (time.perf_counter() - start) / steps)
    frames = cfg.data.batch_size * cfg.data.seq_len
    return {"step_s": best, "frames_per_s": frames / best, "threads": torch.get_num_threads()}


def precision_table(args: argparse.Namespace) -> None:
    import torch

    print(f"# training step, {args.config}, {platform.machine()}, torch {torch.__version__}, "
          f"threads {args.threads}, best of {args.repeats}×{args.steps} steps")
    results: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):  # alternate so that drift in machine load hits both
        for precision in ("fp32", "bf16"):
            r = time_steps(args.config, precision, args.steps, args.warmup, args.repeats,
                           args.threads, args.set)
            results[precision].append(r["frames_per_s"])
    best = {k: max(v) for k, v in results.items()}
    for k, v in best.items():
        print(f"{k:>5}: {v:8.1f} frames/s  (rounds: {', '.join(f'{x:.1f}' for x in results[k])})")
    print(f"bf16 / fp32: {best['bf16'] / best['fp32']:.2f}×")


def _child(args: argparse.Namespace, threads: int | None, env: dict[str, str | None]) -> dict[str, float]:
    """Time steps in a fresh process; `env` sets (str) or removes (None) environment variables."""
    cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--child",
           "--precision", args.precision]
    if threads:
        cmd += ["--threads", str(threads)]
    for item in args.set:
        cmd += ["--set", item]
    child_env = dict(os.environ)
    for key, value in env.items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    out = subprocess.run(cmd, env=child_env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def busy_table(args: argparse.Namespace) -> None:
    no_policy = {"OMP_WAIT_POLICY": None, "WORLDMODEL_DEFAULT_ENV": None}
    settings: list[tuple[str, int | None, dict[str, str | None]]] = [
        ("2 threads, OpenMP default wait", 2, no_policy),
        ("2 threads, OMP_WAIT_POLICY=passive", 2, {**no_policy, "OMP_WAIT_POLICY": "PASSIVE"}),
        ("1 thread", 1, no_policy),
        ("dlh default (threads: null)", None, {**no_policy, "WORLDMODEL_DEFAULT_ENV": "1"}),
    ]
    print(f"# training step, {args.config}, precision {args.precision}, {os.cpu_count()} CPUs, "
          f"best of {args.repeats}x{args.steps} steps; each setting in a fresh process")
    print(f"{'setting':<38} {'idle frames/s':>14} {'busy frames/s':>14} {'busy/idle':>10} {'threads':>8}")
    for name, threads, env in settings:
        idle = _child(args, threads, env)
        stop = multiprocessing.Event()
        spinner = multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
        spinner.start()
        try:
            time.sleep(0.5)  # the competitor is running before the child counts free CPUs
            busy = _child(args, threads, env)
        finally:
            stop.set()
            spinner.join()
        used = f"{idle['threads']:.0f}/{busy['threads']:.0f}"
        print(f"{name:<38} {idle['frames_per_s']:>14.1f} {busy['frames_per_s']:>14.1f} "
              f"{busy['frames_per_s'] / idle['frames_per_s']:>10.2f} {used:>8}", flush=True)


class _Clock:
    """Total seconds and calls of wrapped callables, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
                self.calls[name] = self.calls.get(name, 0) + 1
        return timed


def trainer_overhead(args: argparse.Namespace) -> dict[str, float]:
    """Bare-step and trainer frames/s over `args.steps` steps in this process (module docstring)."""
    import copy
    import tempfile

    import torch

    from worldmodel.data.base import batch_at
    from worldmodel.training import Trainer, load_config
    from worldmodel.training import trainer as trainer_module

    with tempfile.TemporaryDirectory() as tmp:
        sets = [*args.set, f"out_dir={tmp}/run", f"steps={args.steps}"]
        if args.threads:
            sets.append(f"threads={args.threads}")
        cfg = load_config(args.config, sets)
        trainer = Trainer(cfg, progress=False)
        clock = _Clock()
        # where the trainer's time goes: the step, and everything it does around it
        trainer.train_step = clock.wrap("train_step", trainer.train_step)
        trainer.groups.grad_norms = clock.wrap("grad_norms", trainer.groups.grad_norms)
        trainer.groups.snapshot = clock.wrap("update_snapshot", trainer.groups.snapshot)
        trainer.groups.relative_updates = clock.wrap("relative_updates", trainer.groups.relative_updates)
        trainer.monitor.scalars = clock.wrap("log_scalars", trainer.monitor.scalars)
        trainer.media = clock.wrap("media", trainer.media)
        trainer.checkpoint = clock.wrap("checkpoint", trainer.checkpoint)
        trainer.track = clock.wrap("track", trainer.track)
        if trainer.event_probe is not None:
            trainer.event_probe = clock.wrap("event_probe", trainer.event_probe)
        data = clock.wrap("data", batch_at)
        trainer_module.batch_at = data  # the trainer's own draws
        frames = cfg.data.batch_size * cfg.data.seq_len
        bare_s = trainer_s = 0.0
        try:
            while trainer.step < cfg.steps:
                first, count = trainer.step, min(args.block, cfg.steps - trainer.step)
                model, optimizer = copy.deepcopy((trainer.model, trainer.optimizer))
                batches = [batch_at(trainer.source, cfg.seed, k, cfg.data.batch_size, cfg.data.seq_len)
                           for k in range(first, first + count)]
                start = time.perf_counter()
                for k, batch in zip(range(first, first + count), batches):
                    loss, _ = model.loss(batch.frames, batch.actions, cfg.optim.beta(k))
                    loss.backward()
                    if cfg.optim.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                bare_s += time.perf_counter() - start
                del model, optimizer
                start = time.perf_counter()
                trainer.train_steps(count, run_end=cfg.steps)
                trainer_s += time.perf_counter() - start
            start = time.perf_counter()
            trainer.finish()
            finish_s = time.perf_counter() - start
        finally:
            trainer_module.batch_at = batch_at
    total = cfg.steps * frames
    result = {"steps": cfg.steps, "threads": trainer.threads,
              "bare_frames_per_s": total / bare_s,
              "trainer_frames_per_s": total / (trainer_s + finish_s),
              "trainer_frames_per_s_without_finish": total / trainer_s,
              "finish_s": finish_s, "bare_s": bare_s, "trainer_s": trainer_s}
    result["ratio"] = result["trainer_frames_per_s"] / result["bare_frames_per_s"]
    print(f"# {args.config}: {cfg.steps} steps, {trainer.threads} threads ({trainer.threads_reason}), "
          f"precision {trainer.precision}; bare blocks of {args.block} steps on copies of the "
          "trainer's model")
    print(f"bare step:  {result['bare_frames_per_s']:8.1f} frames/s  ({bare_s:.1f} s)")
    print(f"trainer:    {result['trainer_frames_per_s']:8.1f} frames/s  ({trainer_s:.1f} s "
          f"+ finish {finish_s:.1f} s)")
    print(f"trainer / bare: {result['ratio']:.3f}")
    print("trainer time by part (s, calls):  "
          + "  ".join(f"{name} {clock.seconds[name]:.2f} ({clock.calls[name]})" for name in clock.seconds))
    step_extra = clock.seconds.get("train_step", 0.0) - bare_s
    print(f"train_step - bare: {step_extra:.2f} s (includes grad_norms, update snapshots, data)")
    return result


def matmul_peak(threads: int | None, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a size³ fp32 matmul, best of `repeats` (the machine's practical peak)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def roofline(args: argparse.Namespace) -> dict[str, float]:
    """The training step against the machine's fp32 matmul peak (all measured in this run).

    Parts: "towers" — the conv encoder on every frame of the batch and the conv decoder back
    (forward + backward, the step's pixel NLL on top); "recurrence" — the same model with the
    towers cut to a 1-channel stub (what the latent loop costs); "step" — forward, backward,
    clip and Adam of the real model. GFLOP are counted (torch.utils.flop_counter: matmuls and
    convolutions, forward and backward), not assumed.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from worldmodel import DLH
    from worldmodel.data import build_source
    from worldmodel.data.base import batch_at
    from worldmodel.training import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    peak = matmul_peak(args.threads)
    cfg = load_config(args.config, args.set)
    torch.manual_seed(cfg.seed)
    model = DLH(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, eps=cfg.optim.eps)
    source = build_source(cfg.data, "train")
    batch = batch_at(source, cfg.seed, 0, cfg.data.batch_size, cfg.data.seq_len)
    frames = batch.frames
    flat = frames.flatten(0, 1)
    context = torch.randn(flat.shape[0], cfg.model.c_dim, requires_grad=True)

    def towers() -> None:
        x = model.encoder(flat)
        recon = model.decoder(context + 0.0 * x.sum())
        (0.5 * ((flat - recon) / cfg.model.loss.obs_std).pow(2)).sum().backward()

    def step() -> None:
        loss, _ = model.loss(frames, batch.actions, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
        optimizer.step()

    def timed(fn) -> float:
        for _ in range(args.warmup):
            fn()
        best = math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            best = min(best, (time.perf_counter() - start) / args.steps)
        return best

    def flops(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops() / 1e9

    n_frames = flat.shape[0]
    rows = {"towers": (flops(towers), timed(towers)), "step": (flops(step), timed(step))}
    step_flops, step_time = rows["step"]
    tower_flops, tower_time = rows["towers"]
    rows["rest (step − towers)"] = (step_flops - tower_flops, step_time - tower_time)
    print(f"# {args.config}, batch {cfg.data.batch_size} × {cfg.data.seq_len} frames, "
          f"{platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"best of {args.repeats}×{args.steps}")
    print(f"fp32 matmul peak (2048³, this run): {peak:.1f} GFLOP/s")
    result = {"peak_gflops": peak, "threads": torch.get_num_threads()}
    for name, (gflop, seconds) in rows.items():
        rate = gflop / seconds if seconds > 0 else math.nan
        print(f"{name:>22}: {gflop:6.2f} GFLOP  {seconds * 1e3:7.1f} ms  {n_frames / seconds:7.0f} frames/s  "
              f"{rate:6.1f} GFLOP/s = {rate / peak:5.1%} of peak")
        key = name.split()[0]
        result.update({f"{key}_gflop": gflop, f"{key}_ms": seconds * 1e3, f"{key}_fraction": rate / peak})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/moving_ball_cpu.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="fp32/bf16 alternations")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="with --busy-check: the precision timed")
    parser.add_argument("--busy-check", action="store_true",
                        help="thread settings on an idle machine and next to one busy process")
    parser.add_argument("--trainer-overhead", action="store_true",
                        help="the trainer's frames/s against its bare step over --steps steps")
    parser.add_argument("--block", type=int, default=25,
                        help="with --trainer-overhead: steps per alternating block (default 25)")
    parser.add_argument("--json", default=None, help="with --trainer-overhead: also write the result here")
    parser.add_argument("--roofline", action="store_true",
                        help="fp32 matmul peak, counted GFLOP and fraction of peak of towers and step")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if os.environ.get("WORLDMODEL_DEFAULT_ENV"):
            from worldmodel.training.threads import configure_threads  # what `dlh train` does

            configure_threads(None)
        print(json.dumps(time_steps(args.config, args.precision, args.steps, args.warmup, args.repeats,
                                    args.threads, args.set)))
    elif args.roofline:
        result = roofline(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    elif args.trainer_overhead:
        result = trainer_overhead(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    elif args.busy_check:
        busy_table(args)
    else:
        precision_table(args)


if __name__ == "__main__":
    main()
