"""A training run's folder: one writer at a time, resuming and its checks, what the run records.

    run_dir/
        .lock               held by the one process that trains the run (`files.FolderLock`)
        config.yaml         the run's configuration
        metrics.jsonl, tb/  scalars (`Monitor`); media/: logged videos
        checkpoints/        step_*/ with model.safetensors, optimizer.pt, trainer.json
        resumes.jsonl       one row per resume: the step, the checkpoint, the settings changed
        summary.json, model.safetensors, rollout.gif   written when the run finishes

Every file is written atomically (or appended a whole line at a time), so a run killed at any
point resumes from its newest checkpoint without any clean-up.
"""

from __future__ import annotations

import json
import time
import warnings
import weakref
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from ..files import FolderLock, atomic_write_text, check_output_folder, naming, remove_stale_temporaries
from . import distributed
from .checkpoints import (
    CheckpointContents,
    CorruptCheckpoint,
    checkpoint_candidates,
    checkpoint_dir,
    latest_checkpoint,
    read_checkpoint,
    restore,
    save_checkpoint,
    set_aside,
)
from .config import TrainConfig, dump_config, resume_changes
from .monitor import Monitor


def set_learning_rates(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> None:
    """Every Adam group's rate for optimiser step `step` of the run `cfg`:
    `optim.lr_at` times the group's `lr_scale` (`optim.level_lr_scale`; 1 without)."""
    rate = cfg.optim.lr_at(step, cfg.steps)
    for group in optimizer.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0)


class RunFolder:
    """The folder `path` of one training run (see the module's docstring for what it holds).

    Args:
        path: the run folder (`cfg.out_dir`); checked here, created when first written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_output_folder(self.path)
        self.lock: FolderLock | None = None

    # ------------------------------------------------------------------ one writer
    def claim(self) -> None:
        """Lock the folder for this process (`FolderInUse`, naming the holder's PID, when another
        process trains it; released when this object goes) and remove the temporaries that
        interrupted writes left, with a warning."""
        self.lock = FolderLock(self.path, "training this run").acquire()
        weakref.finalize(self, self.lock.release)
        stale = [p for folder in (self.path, checkpoint_dir(self.path), self.path / "media")
                 for p in remove_stale_temporaries(folder)]
        if stale:
            warnings.warn(f"removed {len(stale)} temporaries left by interrupted writes: "
                          f"{', '.join(str(p) for p in stale[:3])}{' ...' if len(stale) > 3 else ''}",
                          stacklevel=3)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    # ------------------------------------------------------------------ start or resume
    def start(
        self, cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
        runtime: distributed.Runtime, resume: bool, requested: Collection[str],
    ) -> tuple[int, bool]:
        """The step the run starts at and whether it is already finished: with `resume`, the newest
        readable checkpoint loaded into `model` and `optimizer` (see `Trainer`); without, step 0
        after checking that the folder holds no earlier run."""
        if resume:
            return self._resume(cfg, model, optimizer, runtime, requested)
        self.refuse_an_earlier_run()
        return 0, False

    def refuse_an_earlier_run(self) -> None:
        """A fresh run must not mix its outputs into an earlier run's folder."""
        if latest_checkpoint(self.path) is not None:
            raise ValueError(
                f"{self.path} already holds checkpoints: pass --resume to continue that run, "
                "or choose another out_dir (--set out_dir=...)"
            )
        metrics = self.path / "metrics.jsonl"
        if metrics.is_file() and metrics.stat().st_size > 0:
            raise ValueError(
                f"{self.path} holds {metrics.name} of an earlier run that stopped before its first "
                "checkpoint: pass --resume to start that run over from step 0 (its logs are "
                "replaced), or choose another out_dir (--set out_dir=...)"
            )

    def _resume(
        self, cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
        runtime: distributed.Runtime, requested: Collection[str],
    ) -> tuple[int, bool]:
        """Load the newest readable checkpoint after checking the config against its own."""
        contents: CheckpointContents | None = None
        changes: dict[str, tuple[Any, Any]] = {}
        skipped: list[tuple[Path, str]] = []
        for path in checkpoint_candidates(self.path):
            try:
                contents = read_checkpoint(path)
                stored = contents.info.get("config")
                if isinstance(stored, dict):
                    changes = resume_changes(stored, cfg, requested, where=str(path / "trainer.json"))
                else:
                    warnings.warn(f"{path / 'trainer.json'} holds no config: the resumed run's settings "
                                  "were not checked against it", stacklevel=4)
                restore(contents, model, optimizer)
            except CorruptCheckpoint as exc:
                warnings.warn(f"--resume: {exc}; falling back to the checkpoint before it", stacklevel=4)
                skipped.append((path, str(exc)))
                contents = None
                continue
            break
        if contents is None:
            if skipped:
                raise ValueError(f"--resume: no readable checkpoint in {checkpoint_dir(self.path)}: "
                                 + "; ".join(problem for _, problem in skipped))
            warnings.warn(f"--resume: no checkpoint in {self.path}; starting from step 0", stacklevel=4)
            return 0, False
        step = contents.step
        if step > cfg.steps:
            raise ValueError(f"steps={cfg.steps} is below the step of {contents.path} ({step}): "
                             f"set steps >= {step} to resume this run")
        set_learning_rates(optimizer, cfg, step)  # optim.lr may have changed (on request)
        if step == cfg.steps and self.stored_summary().get("steps") == step:
            return step, True
        distributed.barrier(runtime)
        if runtime.is_main:
            for path, _ in skipped:
                set_aside(path)
            shown = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
            print(f"resuming {self.path} from {contents.path.name} (step {step})"
                  + (f" with changed settings: {shown}" if shown else ""), flush=True)
            self._record_resume({"step": step, "checkpoint": contents.path.name,
                                 "changes": {key: [old, new] for key, (old, new) in changes.items()},
                                 "skipped": [problem for _, problem in skipped], "time": time.time()})
        return step, False

    def _record_resume(self, record: dict[str, Any]) -> None:
        with naming(self.path / "resumes.jsonl"), (self.path / "resumes.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ records
    def monitor(self, enabled: bool, purge_step: int | None) -> Monitor:
        """The run's scalar and video log; a resumed run (`purge_step`) drops what was logged after
        the checkpoint it resumed from."""
        return Monitor(self.path, enabled=enabled, purge_step=purge_step)

    def write_config(self, cfg: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.yaml", dump_config(cfg))

    def save_checkpoint(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        cfg: TrainConfig, metrics: dict[str, float]) -> Path:
        """checkpoints/step_{step}/ with the weights, the optimizer state and trainer.json (the
        step, the last logged metrics and the config, which a resume checks against)."""
        info = {"metrics": metrics, "config": cfg.to_dict()}
        return save_checkpoint(self.path, step, model, optimizer, info, keep=cfg.logging.keep_checkpoints)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=1))

    def stored_summary(self) -> dict[str, Any]:
        """The run's summary.json; {} when absent or unreadable (the run then finishes again)."""
        path = self.path / "summary.json"
        if not path.is_file():
            return {}
        try:
            stored = json.loads(path.read_bytes().decode("utf-8"))
        except ValueError as exc:
            warnings.warn(f"{path}: not valid JSON ({exc}); it will be rewritten", stacklevel=3)
            return {}
        return stored if isinstance(stored, dict) else {}

    # ------------------------------------------------------------------ messages
    def last_good(self) -> str:
        """Which checkpoint a diverged run can go back to, for its error message."""
        ckpt = latest_checkpoint(self.path)
        if ckpt is None:
            return "There is no good checkpoint (none was written with finite weights)"
        return f"The last good checkpoint is {ckpt} (--resume continues from it)"

    def interrupted(self, step: int, steps: int) -> str:
        """Where a Ctrl-C stopped the run and how to go on."""
        ckpt = latest_checkpoint(self.path)
        if ckpt is None:
            return (f"interrupted at step {step} of {steps}; no checkpoint was written yet "
                    f"in {self.path} (run the command again to start over)")
        return (f"interrupted at step {step} of {steps}; the latest checkpoint is {ckpt}: "
                "run the same command with --resume to continue from it")


__all__ = ["RunFolder"]
