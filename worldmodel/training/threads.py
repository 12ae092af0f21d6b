"""CPU threads for a training run, chosen so that a busy machine slows a run down gracefully.

PyTorch's default uses one OpenMP thread per core. When another process keeps one of those
cores busy, every parallel region waits for the thread that shares the busy core, and the
run slows down by far more than the lost core (docs/results.md, "Busy machine": 36× on the
2-core box). `configure_threads(None)` — what `threads: null` does — therefore counts the
CPUs that are actually free when the run starts (from /proc/stat over a short interval) and
uses that many threads; `SlowdownWatch` warns, with the remedy, when the step time later
jumps (another process started after us).
"""

from __future__ import annotations

import os
import time
import warnings

import torch

__all__ = ["busy_cpus", "configure_threads", "SlowdownWatch"]


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [float(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cpus(interval: float = 0.3) -> float | None:
    """How many CPUs other processes keep busy right now (measured over `interval` s).

    None when it cannot be measured (no /proc/stat). Call before this process starts work:
    its own load would count as busy.
    """
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int | None) -> tuple[int, str]:
    """Set torch's intra-op threads; returns (threads, why) for the run's log.

    `threads` > 0: that many, but no more than the CPUs this process may use (more threads
    than CPUs only wait on each other: a warning says so and the CPU count is used). None:
    torch's default (one per core this process may use), lowered to the CPUs that other
    processes leave free (at least 1).
    """
    cpus = _available_cpus()
    if threads is not None:
        if threads > cpus:
            warnings.warn(f"threads={threads} is more than the {cpus} CPU(s) this process may use; "
                          f"using {cpus} threads (more would only wait on each other)", stacklevel=3)
            torch.set_num_threads(cpus)
            return cpus, f"threads={threads} lowered to the {cpus} CPU(s) available"
        torch.set_num_threads(threads)
        return threads, "as configured"
    default = min(torch.get_num_threads(), cpus)
    busy = busy_cpus()
    if busy is None:
        torch.set_num_threads(default)
        return default, "one per core (load unknown)"
    free = max(1, min(default, int(cpus - busy + 0.5)))
    torch.set_num_threads(free)
    if free < default:
        return free, f"{busy:.1f} of {cpus} CPUs busy with other work"
    return free, "one per free core"


class SlowdownWatch:
    """Warns once when the time per step jumps far above the best seen so far.

    `update(seconds_per_step)` is called once per log interval. After `settle` intervals
    (start-up, first media and checkpoint writes) a step `factor`× slower than the best
    interval, with more than one thread, gets a warning naming the likely cause and the
    remedy; returns True when it warned.
    """

    def __init__(self, threads: int, factor: float = 2.0, settle: int = 2) -> None:
        self.threads, self.factor, self.settle = threads, factor, settle
        self.best: float | None = None
        self.seen = 0
        self.warned = False

    def update(self, seconds_per_step: float) -> bool:
        self.seen += 1
        if self.seen <= self.settle or seconds_per_step <= 0:
            return False
        if self.best is None or seconds_per_step < self.best:
            self.best = seconds_per_step
            return False
        if self.warned or self.threads <= 1 or seconds_per_step < self.factor * self.best:
            return False
        self.warned = True
        warnings.warn(
            f"training slowed down {seconds_per_step / self.best:.0f}× (step {seconds_per_step:.3f} s, "
            f"best {self.best:.3f} s): another process is probably using one of this run's "
            f"{self.threads} CPU threads, and OpenMP threads wait on the busy core. Remedies: "
            "--set threads=1 (or fewer threads than free cores), or OMP_WAIT_POLICY=PASSIVE "
            "in the environment; a resumed run (--resume) re-counts the free CPUs",
            stacklevel=2,
        )
        return True
