"""The training loop's periodic work, one hook each: scalars, media, probes, checkpoints.

A hook works like a stable-baselines3 callback: after every optimiser step the loop calls its
`on_step`; then, when `due`, its `fire`; `on_end` runs once when the run finishes. A hook is due
at the steps that are multiples of its `every` — counted from the run's step 0, so a resumed run
fires at the same steps an uninterrupted one does — and at the last step of the loop when (and
only when) `at_end`. The loop runs its hooks in list order (`Trainer.hooks`): what a hook logs is in
`Trainer.last` for the hooks after it (a checkpoint stores the last logged metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from ..arguments import check_int
from .config import TrainConfig
from .diagnostics import HealthCheck
from .monitor import Monitor
from .threads import SlowdownWatch


class Trainer(Protocol):
    """What the hooks read and call of the training loop (`training.Trainer` is the one)."""

    cfg: TrainConfig
    step: int  # optimiser steps done
    optimizer: torch.optim.Optimizer
    monitor: Monitor
    last: dict[str, float]  # the last logged scalars (a checkpoint stores them)
    checkpoint_due: bool  # a checkpoint was postponed past non-finite steps

    def show_progress(self, logged: dict[str, float]) -> None: ...

    def media(self) -> dict[str, Any]: ...

    def probe_events(self) -> dict[str, float]: ...

    def track(self) -> dict[str, float]: ...

    def checkpoint(self) -> Path | None: ...

#: One step's metrics: floats, or 0-dim tensors not yet moved to the host (None: a skipped step).
StepMetrics = dict[str, Any] | None


class Hook:
    """Periodic work of the training loop (see the module's docstring).

    Args:
        every: fire at the steps that are multiples of this (0: only at the end, if `at_end`).
    """

    #: at the loop's last step: True, fire whatever `every`; False, never fire there
    at_end = True

    def __init__(self, every: int) -> None:
        self.every = check_int(every, "every", 0, hint="steps")

    def due(self, step: int, end: int) -> bool:
        """Whether to fire after step `step` (the number of steps done) of a loop ending at `end`."""
        if step == end:
            return self.at_end
        return self.every > 0 and step % self.every == 0

    def on_step(self, trainer: Trainer, metrics: StepMetrics, seconds: float) -> None:
        """After every optimiser step: its metrics (None if skipped) and the seconds it took."""

    def fire(self, trainer: Trainer) -> None:
        """The periodic work, at the steps where the hook is due."""

    def on_end(self, trainer: Trainer) -> None:
        """Once, when the run finishes (`Trainer.finish`), before the final media and summary."""


def host_floats(window: dict[str, list[Any]]) -> dict[str, list[float]]:
    """The values of `window` as Python floats, its tensors moved to the host in one transfer
    (each would wait for the device on its own); the floats equal `float(value)` exactly."""
    tensors = [value.detach().double() for values in window.values() for value in values
               if isinstance(value, torch.Tensor)]
    host = iter(torch.stack(tensors).tolist() if tensors else [])
    return {key: [next(host) if isinstance(value, torch.Tensor) else float(value) for value in values]
            for key, values in window.items()}


class LogHook(Hook):
    """Scalars to TensorBoard and metrics.jsonl: the mean of each metric over the finite steps
    since the last log, with `frames_per_s`, `lr` and the health flags (`HealthCheck`).

    Only here are the step metrics turned into Python floats: the loop's other steps never wait
    for the device to report them.
    """

    def __init__(self, every: int, health: HealthCheck, slowdown: SlowdownWatch) -> None:
        super().__init__(every)
        self.health, self.slowdown = health, slowdown
        self.window: dict[str, list[Any]] = {}
        self.steps, self.step_seconds = 0, 0.0  # finite steps and the optimiser's seconds since the log
        self.interval_start = time.perf_counter()

    def on_step(self, trainer: Trainer, metrics: StepMetrics, seconds: float) -> None:
        self.step_seconds += seconds
        if metrics is not None:
            self.steps += 1
            for key, value in metrics.items():
                self.window.setdefault(key, []).append(value)

    def fire(self, trainer: Trainer) -> None:
        if not self.window:  # only skipped steps since the last log
            return
        cfg, step = trainer.cfg, trainer.step
        elapsed = time.perf_counter() - self.interval_start
        last = {key: sum(values) / len(values) for key, values in host_floats(self.window).items()}
        last["frames_per_s"] = cfg.data.batch_size * cfg.data.seq_len * self.steps / max(elapsed, 1e-9)
        last["lr"] = trainer.optimizer.param_groups[0]["lr"]
        if self.steps:  # the optimiser steps alone (no logging, media, probes)
            self.slowdown.update(self.step_seconds / self.steps)
        last.update(self.health.check(step, last))
        trainer.monitor.scalars(step, last)
        trainer.last = last
        trainer.show_progress(last)
        self.window.clear()
        self.steps, self.step_seconds = 0, 0.0
        self.interval_start = time.perf_counter()


class MediaHook(Hook):
    """Reconstruction and rollout videos (`Trainer.media`); not at the loop's end, where
    `Trainer.finish` logs the final ones."""

    at_end = False

    def fire(self, trainer: Trainer) -> None:
        trainer.media()


class ScalarsHook(Hook):
    """A measurement of the current weights (`measure(trainer)` -> scalars), logged and added
    to `Trainer.last`: the event probe, the tracking probe."""

    def __init__(self, every: int, measure: Callable[[Trainer], dict[str, float]]) -> None:
        super().__init__(every)
        self.measure = measure

    def fire(self, trainer: Trainer) -> None:
        values = self.measure(trainer)
        trainer.last.update(values)
        trainer.monitor.scalars(trainer.step, values)


class CheckpointHook(Hook):
    """A checkpoint (`Trainer.checkpoint`); one postponed past non-finite steps is written at the
    next finite step."""

    def __init__(self, every: int) -> None:
        super().__init__(every)
        self.retry = False

    def on_step(self, trainer: Trainer, metrics: StepMetrics, seconds: float) -> None:
        self.retry = trainer.checkpoint_due and metrics is not None

    def due(self, step: int, end: int) -> bool:
        return super().due(step, end) or self.retry

    def fire(self, trainer: Trainer) -> None:
        trainer.checkpoint()


__all__ = ["Hook", "LogHook", "MediaHook", "ScalarsHook", "CheckpointHook", "host_floats"]
