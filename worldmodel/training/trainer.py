"""The one trainer for every mode and data set: `train(cfg)`.

Step k uses the data batch `batch_at(source, seed, k, rank)` and sampling noise seeded from
(seed, k, rank), so a run resumed from the checkpoint of step k continues with exactly the
losses an uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import math
import os
import time
import warnings
import weakref
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data import Batch, SequenceSource, build_source
from ..data.base import batch_at
from ..files import (
    FolderInUse,
    FolderLock,
    atomic_write_text,
    check_output_folder,
    naming,
    one_line,
    remove_stale_temporaries,
)
from ..model import DLH
from ..video import write_gif
from . import distributed
from .checkpoints import (
    CheckpointContents,
    CorruptCheckpoint,
    checkpoint_candidates,
    checkpoint_dir,
    latest_checkpoint,
    non_finite_tensors,
    read_checkpoint,
    restore,
    save_checkpoint,
    set_aside,
)
from .config import TrainConfig, dump_config, resume_changes
from .diagnostics import EventProbe, HealthCheck, ParameterGroups
from .monitor import Monitor, rollout_media
from .threads import SlowdownWatch, configure_threads


class TrainingDiverged(RuntimeError):
    """Raised after `max_bad_steps` consecutive non-finite losses or gradients, or when the
    weights themselves turn non-finite; the message names the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped `Trainer.fit`; the message says at which step and from which
    checkpoint `--resume` continues (what was written stays intact: every file is atomic)."""


def _last_good(run_dir: Path) -> str:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return "There is no good checkpoint (none was written with finite weights)"
    return f"The last good checkpoint is {ckpt} (--resume continues from it)"


def _check_action_size(source: SequenceSource, cfg: TrainConfig) -> None:
    """ValueError at the start, naming the data and the setting, when the data's actions do not
    have the model's size (else the first training step fails on a batch's shape)."""
    size = getattr(source, "action_dim", 0)
    if size != cfg.model.action_dim:
        data = f"data.path={cfg.data.path!r}" if cfg.data.path is not None else f"data.name={cfg.data.name!r}"
        has = f"actions of size {size}" if size else "no actions"
        raise ValueError(f"the data ({data}) has {has}, but model.action_dim={cfg.model.action_dim}: "
                         f"set model.action_dim={size} (--set model.action_dim={size})")


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16; Linux flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision a run uses ("fp32" or "bf16") and why, for its log and summary."""
    if precision != "auto":
        return precision, "as configured"
    if device.type == "cuda":
        return "bf16", "auto: CUDA"
    if device.type == "cpu" and cpu_has_native_bf16():
        # bf16 autocast on CPU is faster but lowered event F1 on 3 of 3 seeds (docs/results.md)
        return "fp32", "auto: CPU (bf16 autocast did not hold quality, docs/results.md)"
    return "fp32", f"auto: {device.type} without native bf16"


def _autocast(runtime: distributed.Runtime, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for a resolved precision ("fp32" or "bf16", see `resolve_precision`)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=torch.bfloat16)


def _media_batch(cfg: TrainConfig):
    """Fixed evaluation windows for logged videos (test split when it exists)."""
    try:
        source = build_source(cfg.data, "test")
    except ValueError as err:
        print(f"media: no test split ({one_line(err)}); logged videos use training windows", flush=True)
        source = build_source(cfg.data, "train")
    media = cfg.logging
    length = media.rollout_context + media.rollout_horizon
    try:
        return source.eval_batch(media.media_sequences, length, seed=cfg.seed), media.rollout_context
    except ValueError:  # data with short videos (e.g. 20-frame Moving MNIST): use what fits
        length = cfg.data.seq_len
        context = max(1, min(media.rollout_context, length // 2))
        warnings.warn(f"media: videos shorter than logging.rollout_context + rollout_horizon = "
                      f"{media.rollout_context + media.rollout_horizon}; logged rollouts use {length} "
                      f"frames, {context} of context (logging.rollout_context={media.rollout_context} "
                      "lowered)", stacklevel=3)
        return source.eval_batch(media.media_sequences, length, seed=cfg.seed), context


#: The Trainers of this process by run folder (real path), to refuse a second on one folder.
_TRAINING: dict[str, weakref.ref] = {}


def _key(run_dir: Path) -> str:
    return os.path.realpath(run_dir)


def _claim_for_training(trainer: Trainer) -> None:
    """Record `trainer` as the one training its run folder in this process; FolderInUse when
    another Trainer has trained there and is neither finished nor dropped (the folder lock is
    shared within a process, so it cannot tell them apart): both would write the same
    checkpoints and logs."""
    key = _key(trainer.run_dir)
    ref = _TRAINING.get(key)
    if ref is not None and ref() is not None and ref() is not trainer:
        gc.collect()  # a dropped Trainer in a reference cycle: collected, it no longer counts
        other = ref()
        if other is not None and other.lock is not None and other.lock._key is not None:
            raise FolderInUse(errno.EBUSY, "in use by another Trainer of this process that has not "
                              "finished; call its finish() (or drop it) before training another on this "
                              "run", str(trainer.run_dir))
    _TRAINING[key] = weakref.ref(trainer)


class Trainer:
    """Trains one DLH on one source; `train(cfg)` is `Trainer(cfg).fit()`.

    An online loop (e.g. the PlaNet-style agent loop) builds a Trainer on a growing
    `EpisodeSource` and alternates `train_steps(k)` with data collection; checkpoints,
    TensorBoard and media work the same.

    Resuming (`resume=True`) continues from the newest readable checkpoint in `cfg.out_dir`
    (a checkpoint with an unreadable file is skipped with a warning naming the file, and set
    aside as `checkpoints/corrupt_step_*`). The config is compared with the one the checkpoint
    was trained with (`config.resume_changes`): the keys of `config.RESUME_FREE` (logging,
    checkpointing, `steps`, `threads`, ...) change freely; those of `config.RESUME_ON_REQUEST`
    (`optim.lr` — applied to the optimizer's param groups and the lr schedule —,
    `optim.grad_clip`, `precision`) only when named in `requested` (the CLI passes its `--set`
    keys); every other setting (`model.*`, `data.*`, `seed`, `optim.eps`, ...) is fixed: a
    difference is a ValueError naming each key with its old and new value.

    Applied changes are printed and appended to `run_dir/resumes.jsonl` (one row per resume).
    A run resumed at `steps` whose summary.json records that step is finished: `fit()` trains nothing
    and returns the stored summary with `"already_finished": True`. Without `resume`, a
    run folder holding checkpoints or logged metrics is an error (pass resume, or choose
    another out_dir). Temporaries left by interrupted writes are removed at the start. One
    process at a time trains a run: the run folder is locked (`files.FolderLock`), and a second
    Trainer on it in another process gets `FolderInUse` naming the first one's PID; the lock
    dies with its process, so a killed run resumes without any clean-up. Training a second
    Trainer on it in the same process, while one that trained there is referenced and not
    finished, is a `FolderInUse` too.

    Args:
        cfg: the run's configuration.
        resume: continue from the latest checkpoint in `cfg.out_dir`.
        progress: show a tqdm bar.
        source: the training data (default: `build_source(cfg.data, "train")`).
        media_batch: a fixed Batch for logged videos (default: evaluation windows of the data).
        requested: dotted config keys (or sections) the caller set explicitly; on resume, the
            settings of `RESUME_ON_REQUEST` change only when named here.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        progress: bool = True,
        source: SequenceSource | None = None,
        media_batch: Batch | None = None,
        requested: Collection[str] = (),
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir = Path(cfg.out_dir)
        check_output_folder(run_dir)
        self.runtime = runtime = distributed.setup(cfg.device)
        if runtime.device.type == "cpu" or cfg.threads:
            self.threads, self.threads_reason = configure_threads(cfg.threads)
        else:
            self.threads, self.threads_reason = torch.get_num_threads(), "torch default"
        self.slowdown = SlowdownWatch(self.threads if runtime.device.type == "cpu" else 1)
        self.precision, self.precision_reason = resolve_precision(cfg.precision, runtime.device)
        self.run_mode = f"{runtime.device.type}, {self.threads} threads, {self.precision}"
        self._step_seconds = 0.0
        if runtime.device.type == "cpu":
            torch.set_flush_denormal(True)
        if cfg.data.batch_size % runtime.world_size:
            raise ValueError(
                f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                f"{runtime.world_size} processes"
            )
        self.local_batch = cfg.data.batch_size // runtime.world_size
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        self.model = model = DLH(cfg.model).to(runtime.device)
        model.hierarchy.memory_dropout = cfg.optim.memory_dropout  # training only (hierarchy.py)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, eps=cfg.optim.eps,
                                          betas=(0.9, cfg.optim.beta2))
        self.step = 0
        self.finished = False
        self.lock = None
        if runtime.is_main:  # one process writes a run: a second is refused, naming the first's PID
            self.lock = FolderLock(run_dir, "training this run").acquire()
            weakref.finalize(self, self.lock.release)
            stale = [p for folder in (run_dir, checkpoint_dir(run_dir), run_dir / "media")
                     for p in remove_stale_temporaries(folder)]
            if stale:
                warnings.warn(f"removed {len(stale)} temporaries left by interrupted writes: "
                              f"{', '.join(str(p) for p in stale[:3])}{' ...' if len(stale) > 3 else ''}",
                              stacklevel=2)
        if resume:
            self._resume(requested)
        else:
            self._refuse_an_earlier_run()
        self.resumed_from = self.step
        if self.finished:
            self.monitor = Monitor(run_dir, enabled=False)
            return
        if runtime.is_main and (progress or runtime.device.type == "cpu"):
            print(f"training on {self.run_mode} (threads: {self.threads_reason}; "
                  f"precision: {self.precision_reason})", flush=True)
        self.wrapped: torch.nn.Module = model
        if runtime.distributed:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
                find_unused_parameters=True,  # static levels leave networks out of some steps
            )
        self.source = source if source is not None else build_source(cfg.data, "train")
        _check_action_size(self.source, cfg)
        if cfg.data.seq_len == 1 and runtime.is_main and not resume:
            warnings.warn("data.seq_len=1: every training window is one frame, so nothing temporal is "
                          "learned (transitions, level changes); use data.seq_len >= 2", stacklevel=2)
        self.monitor = Monitor(run_dir, enabled=runtime.is_main, purge_step=self.step if resume else None)
        self.media_batch, self.media_context = None, cfg.logging.rollout_context
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            if media_batch is not None:
                self.media_batch = media_batch
                context = max(1, media_batch.frames.shape[1] // 2)
                self.media_context = min(cfg.logging.rollout_context, context)
                if self.media_context < cfg.logging.rollout_context:
                    warnings.warn(f"media: the given windows hold {media_batch.frames.shape[1]} frames; "
                                  f"logged rollouts use {self.media_context} of context "
                                  f"(logging.rollout_context={cfg.logging.rollout_context} lowered)",
                                  stacklevel=2)
            else:
                self.media_batch, self.media_context = _media_batch(cfg)
        self.progress = progress and runtime.is_main
        self.groups = ParameterGroups(model)
        self.health = HealthCheck(cfg.model.levels, cfg.optim.beta_warmup, cfg.probes.collapse_kl,
                                  cfg.probes.frozen_ratio)
        self.event_probe = None
        if runtime.is_main and cfg.probes.event_every and cfg.model.levels >= 2:
            try:
                probe_source = build_source(cfg.data, "test")
            except ValueError as err:
                print(f"event probe: no test split ({one_line(err)}); it reads training data", flush=True)
                probe_source = self.source
            self.event_probe = EventProbe.build(probe_source, cfg.probes.event_sequences,
                                                cfg.probes.event_length, cfg.seed)
        self.track_source: SequenceSource | None = None
        if runtime.is_main and cfg.probes.track_every:
            from ..evaluation.tracking import reads_objects  # evaluation imports training

            try:
                track_source = build_source(cfg.data, "test")
            except ValueError:
                track_source = self.source
            if reads_objects(track_source) and not track_source.action_dim:
                self.track_source = track_source
        self.bad_in_a_row = 0
        self.checkpoint_due = False  # a checkpoint postponed past non-finite steps
        self.window: dict[str, list[float]] = {}
        self.last: dict[str, float] = {}
        self.started = time.perf_counter()
        self._interval_start, self._interval_steps = time.perf_counter(), 0

    # ------------------------------------------------------------------ start or resume
    def _refuse_an_earlier_run(self) -> None:
        """A fresh run must not mix its outputs into an earlier run's folder."""
        run_dir = self.run_dir
        if latest_checkpoint(run_dir) is not None:
            raise ValueError(
                f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose another out_dir (--set out_dir=...)"
            )
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and metrics.stat().st_size > 0:
            raise ValueError(
                f"{run_dir} holds {metrics.name} of an earlier run that stopped before its first "
                "checkpoint: pass --resume to start that run over from step 0 (its logs are "
                "replaced), or choose another out_dir (--set out_dir=...)"
            )

    def _stored_summary(self) -> dict[str, Any]:
        """The run's summary.json; {} when absent or unreadable (the run then finishes again)."""
        path = self.run_dir / "summary.json"
        if not path.is_file():
            return {}
        try:
            stored = json.loads(path.read_bytes().decode("utf-8"))
        except ValueError as exc:
            warnings.warn(f"{path}: not valid JSON ({exc}); it will be rewritten", stacklevel=3)
            return {}
        return stored if isinstance(stored, dict) else {}

    def _resume(self, requested: Collection[str]) -> None:
        """Load the newest readable checkpoint after checking the config against its own."""
        cfg, run_dir, runtime = self.cfg, self.run_dir, self.runtime
        contents: CheckpointContents | None = None
        changes: dict[str, tuple[Any, Any]] = {}
        skipped: list[tuple[Path, str]] = []
        for path in checkpoint_candidates(run_dir):
            try:
                contents = read_checkpoint(path)
                stored = contents.info.get("config")
                if isinstance(stored, dict):
                    changes = resume_changes(stored, cfg, requested, where=str(path / "trainer.json"))
                else:
                    warnings.warn(f"{path / 'trainer.json'} holds no config: the resumed run's settings "
                                  "were not checked against it", stacklevel=3)
                restore(contents, self.model, self.optimizer)
            except CorruptCheckpoint as exc:
                warnings.warn(f"--resume: {exc}; falling back to the checkpoint before it", stacklevel=3)
                skipped.append((path, str(exc)))
                contents = None
                continue
            break
        if contents is None:
            if skipped:
                raise ValueError(f"--resume: no readable checkpoint in {checkpoint_dir(run_dir)}: "
                                 + "; ".join(problem for _, problem in skipped))
            warnings.warn(f"--resume: no checkpoint in {run_dir}; starting from step 0", stacklevel=3)
            return
        self.step = step = contents.step
        if step > cfg.steps:
            raise ValueError(f"steps={cfg.steps} is below the step of {contents.path} ({step}): "
                             f"set steps >= {step} to resume this run")
        for group in self.optimizer.param_groups:  # optim.lr may have changed (on request)
            group["lr"] = cfg.optim.lr_at(step)
        if step == cfg.steps and self._stored_summary().get("steps") == step:
            self.finished = True
            return
        distributed.barrier(runtime)
        if runtime.is_main:
            for path, _ in skipped:
                set_aside(path)
            shown = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())
            print(f"resuming {run_dir} from {contents.path.name} (step {step})"
                  + (f" with changed settings: {shown}" if shown else ""), flush=True)
            record = {"step": step, "checkpoint": contents.path.name,
                      "changes": {key: [old, new] for key, (old, new) in changes.items()},
                      "skipped": [problem for _, problem in skipped], "time": time.time()}
            with naming(run_dir / "resumes.jsonl"), (run_dir / "resumes.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float] | None:
        """One optimiser step on the batch of the current step; None if it was skipped."""
        cfg, runtime, step = self.cfg, self.runtime, self.step
        batch = batch_at(self.source, cfg.seed, step, self.local_batch, cfg.data.seq_len, runtime.rank)
        batch = batch.to(runtime.device)
        torch.manual_seed(_step_seed(cfg.seed, step, runtime.rank))
        beta = cfg.optim.beta(step)
        self.model.hierarchy.hold_upper = step < cfg.optim.upper_warmup  # bootstrapped schedule
        self.model.hierarchy.margin_scale = cfg.optim.margin_scale(step)  # eq. 4's margin schedule
        kwargs: dict[str, Any] = {"is_first": batch.is_first}
        if cfg.model.reward_head and batch.rewards is not None:
            kwargs["rewards"] = batch.rewards
        if cfg.model.continue_head and batch.continues is not None:
            kwargs["continues"] = batch.continues
        with _autocast(runtime, self.precision):
            loss, metrics, _ = self.wrapped(batch.frames, batch.actions, beta, **kwargs)
        bad = distributed.any_true(not math.isfinite(metrics["loss"]), runtime)
        grad_norm = float("nan")
        # per-network diagnostics are measured on the last step of each logging interval
        log_step = (step + 1) % cfg.logging.log_every == 0
        group_norms: dict[str, float] = {}
        if not bad:
            loss.backward()
            if log_step:
                group_norms = self.groups.grad_norms()
            clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
            bad = distributed.any_true(not math.isfinite(grad_norm), runtime)
        self.step += 1
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_in_a_row += 1
            warnings.warn(f"step {step}: non-finite loss or gradient; step skipped "
                          f"({self.bad_in_a_row}/{cfg.max_bad_steps} in a row)", stacklevel=2)
            if self.bad_in_a_row >= cfg.max_bad_steps:
                raise TrainingDiverged(
                    f"{self.bad_in_a_row} non-finite steps in a row at step {step}; stopping. "
                    f"{_last_good(self.run_dir)}; try a lower optim.lr, an optim.grad_clip "
                    "or precision=fp32 (--set KEY=VALUE with --resume)"
                )
            return None
        self.bad_in_a_row = 0
        before = self.groups.snapshot() if log_step else None
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr_at(step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["grad_norm"] = grad_norm
        metrics.update(group_norms)
        if before is not None:
            metrics.update(self.groups.relative_updates(before))
        return metrics

    def _after_step(self, metrics: dict[str, float] | None, bar: tqdm, end: int) -> None:
        cfg, done = self.cfg, self.step
        bar.update(1)
        if metrics is not None:
            self._interval_steps += 1
            for key, value in metrics.items():
                self.window.setdefault(key, []).append(value)
            if self.progress:  # shown at the bar's next (rate-limited) refresh
                bar.set_postfix(loss=f"{metrics['loss']:.1f}", L=f"{metrics['levels_used']:.2f}",
                                beta=f"{metrics['beta']:.2f}", refresh=False)
        if (done % cfg.logging.log_every == 0 or done == end) and self.window:
            elapsed = time.perf_counter() - self._interval_start
            self.last = {k: sum(v) / len(v) for k, v in self.window.items()}
            frames = cfg.data.batch_size * cfg.data.seq_len * self._interval_steps
            self.last["frames_per_s"] = frames / max(elapsed, 1e-9)
            self.last["lr"] = self.optimizer.param_groups[0]["lr"]
            if self._interval_steps:  # the optimiser steps alone (no logging, media, probes)
                self.slowdown.update(self._step_seconds / self._interval_steps)
            self._step_seconds = 0.0
            self.last.update(self.health.check(done, self.last))
            self.monitor.scalars(done, self.last)
            self.window.clear()
            self._interval_start, self._interval_steps = time.perf_counter(), 0
        every = cfg.logging
        if self.runtime.is_main and every.media_every and done % every.media_every == 0 and done != end:
            self.media()
        if self.event_probe is not None and (done % cfg.probes.event_every == 0 or done == end):
            events = self.event_probe(self.model)
            self.last.update(events)
            self.monitor.scalars(done, events)
        if self.track_source is not None and (done % cfg.probes.track_every == 0 or done == end):
            tracked = self.track()
            self.last.update(tracked)
            self.monitor.scalars(done, tracked)
        if done % every.checkpoint_every == 0 or done == end or (self.checkpoint_due and metrics is not None):
            self.checkpoint()

    def train_steps(self, count: int, run_end: int | None = None) -> dict[str, float]:
        """Run `count` optimiser steps (with logging and checkpoints); returns the last metrics.

        The work due "at the end" (last scalars, event probe, tracking, checkpoint) runs at the
        end of this call — what the agent loop wants after each round — or, with `run_end`,
        only when that step is reached (a run driven in blocks, as `benchmarks/train_speed.py
        --trainer-overhead` does, then does the work of one run).
        """
        if self.finished:
            raise ValueError(f"{self.run_dir} already finished at step {self.step}; "
                             "raise steps to train on")
        if self.lock is not None:
            _claim_for_training(self)
        stop = self.step + count
        end = stop if run_end is None else run_end
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   mininterval=1.0, desc=f"train ({self.run_mode})")
        try:
            while self.step < stop:
                started = time.perf_counter()
                metrics = self.train_step()
                self._step_seconds += time.perf_counter() - started
                self._after_step(metrics, bar, end)
        finally:
            bar.close()
        return self.last

    # ------------------------------------------------------------------ outputs
    def checkpoint(self) -> Path | None:
        """Checkpoint the current step, unless the state may not be good; returns the folder.

        After a non-finite step (the weights just gave a non-finite loss or gradient) or with
        non-finite weights or optimizer state, nothing is written: the checkpoint is postponed
        to the next finite step, so the newest checkpoint is always one to go back to.
        """
        path = None
        if self.bad_in_a_row:
            reason = "the last step was non-finite"
        else:
            bad = non_finite_tensors(self.model, self.optimizer)
            reason = ""
            if distributed.any_true(bool(bad), self.runtime):
                reason = (f"NaN or inf in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}" if bad
                          else "non-finite state on another process")
        if reason:
            self.checkpoint_due = True
            if self.runtime.is_main:
                warnings.warn(f"step {self.step}: checkpoint postponed: {reason}", stacklevel=2)
            return None
        if self.runtime.is_main:
            path = save_checkpoint(self.run_dir, self.step, self.model, self.optimizer,
                                   {"metrics": self.last, "config": self.cfg.to_dict()},
                                   keep=self.cfg.logging.keep_checkpoints)
        self.checkpoint_due = False
        distributed.barrier(self.runtime)
        return path

    def media(self) -> dict[str, Any]:
        """Log reconstruction and rollout videos of the media batch; returns their scores."""
        model, cfg = self.model, self.cfg
        model.eval()
        batch = self.media_batch.to(self.runtime.device)
        torch.manual_seed(_step_seed(cfg.seed, self.step, 10_000))
        with _autocast(self.runtime, self.precision):
            result = rollout_media(model, batch.frames, self.media_context,
                                   batch.frames.shape[1] - self.media_context, batch.actions)
        model.train()
        self.monitor.video("reconstruction", self.step, result["recon"])
        self.monitor.video("rollout", self.step, result["rollout"])
        self.monitor.scalars(self.step, {
            "eval/rollout_ssim": result["ssim"], "eval/rollout_psnr": result["psnr"],
            "eval/rollout_levels_used": result["levels_used"]})
        return result

    def track(self) -> dict[str, float]:
        """Open-loop tracking scores (`track/*`), linear level probes and the swap test of level
        usage (`probe/*`) of the current weights on fresh test windows; `track/seconds` is what
        they cost."""
        from ..evaluation.probes import level_probes
        from ..evaluation.swap import level_usage
        from ..evaluation.tracking import offsets_within, tracking_scores

        cfg, model = self.cfg, self.model
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            scores = tracking_scores(
                model, self.track_source, context=cfg.logging.rollout_context,
                horizon=cfg.logging.rollout_horizon,
                samples=cfg.probes.track_samples, sequences=cfg.probes.track_sequences, seed=cfg.seed,
                at=offsets_within(cfg.logging.rollout_horizon)) or {}
            probes = level_probes(model, self.track_source, seed=cfg.seed) or {}
            if model.config.levels >= 2:  # the swap test: which level the frame follows
                probes.update(level_usage(model, self.track_source, seed=cfg.seed))
        finally:
            model.train(was_training)
        out = {f"track/{key}": value for key, value in scores.items()}
        out.update({f"probe/{key}": value for key, value in probes.items()})
        out["track/seconds"] = time.perf_counter() - started
        return out

    def finish(self) -> dict[str, Any]:
        """Final media, model file and summary.json (rank 0); closes logs and the process group."""
        summary: dict[str, Any] = {}
        if distributed.any_true(bool(non_finite_tensors(self.model, None)), self.runtime):
            self.monitor.close()
            distributed.teardown(self.runtime)
            raise TrainingDiverged(f"the weights hold NaN or inf at step {self.step}; no model written. "
                                   f"{_last_good(self.run_dir)}")
        if self.runtime.is_main:
            result = self.media()
            rollout_gif = write_gif(self.run_dir / "rollout.gif", result["rollout"], fps=8, upscale=2)
            self.model.save(self.run_dir / "model.safetensors")
            summary = {
                "steps": self.step,
                "resumed_from": self.resumed_from,
                "wall_time_s": round(time.perf_counter() - self.started, 1),
                "device": str(self.runtime.device),
                "precision": self.precision,
                "precision_reason": self.precision_reason,
                "threads": self.threads,
                "threads_reason": self.threads_reason,
                "processes": self.runtime.world_size,
                "final_metrics": self.last,
                "rollout": {"context": self.media_context, "ssim": result["ssim"], "psnr": result["psnr"],
                            "levels_used": result["levels_used"]},
                "rollout_gif": str(rollout_gif),
                "model": str(self.run_dir / "model.safetensors"),
            }
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        self.monitor.close()
        distributed.teardown(self.runtime)
        if self.lock is not None:
            self.lock.release()
        return summary

    def fit(self) -> dict[str, Any]:
        """Train up to `cfg.steps` and finish; a finished run returns its stored summary."""
        if self.finished:
            distributed.teardown(self.runtime)
            if self.lock is not None:
                self.lock.release()
            if not self.runtime.is_main:
                return {}
            return {**self._stored_summary(), "already_finished": True}
        try:
            self.train_steps(max(0, self.cfg.steps - self.step))
            return self.finish()
        except KeyboardInterrupt:
            raise TrainingInterrupted(self._interrupted()) from None

    def _interrupted(self) -> str:
        """Where a Ctrl-C stopped the run and how to go on."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return (f"interrupted at step {self.step} of {self.cfg.steps}; no checkpoint was written yet "
                    f"in {self.run_dir} (run the command again to start over)")
        return (f"interrupted at step {self.step} of {self.cfg.steps}; the latest checkpoint is {ckpt}: "
                "run the same command with --resume to continue from it")


def train(
    cfg: TrainConfig, resume: bool = False, progress: bool = True, requested: Collection[str] = ()
) -> dict[str, Any]:
    """Train a DLH as configured; returns the run summary (also written to summary.json).

    `requested`: the config keys set explicitly (see `Trainer`), for the checks of a resume.
    """
    return Trainer(cfg, resume=resume, progress=progress, requested=requested).fit()


__all__ = ["Trainer", "train", "TrainingDiverged", "TrainingInterrupted"]
