"""The one trainer for every mode and data set: `train(cfg)`.

`Trainer` holds the model, the optimiser and the loop; the run folder (lock, resume, records) is a
`RunFolder`, and the loop's periodic work — scalars, media, probes, checkpoints — is a list of
hooks, each with its own interval (`training.hooks`).

Step k uses the data batch `batch_at(source, seed, k, rank)` and sampling noise seeded from
(seed, k, rank), so a run resumed from the checkpoint of step k continues with exactly the
losses an uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import errno
import gc
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
from ..evaluation.context import evaluating, evaluation_source
from ..files import FolderInUse, FolderLock
from ..hierarchy import TrainSchedule
from ..model import DLH
from ..video import write_gif
from . import distributed
from .checkpoints import non_finite_tensors
from .config import TrainConfig
from .diagnostics import EventProbe, HealthCheck, ParameterGroups
from .hooks import CheckpointHook, Hook, LogHook, MediaHook, ScalarsHook
from .monitor import Monitor, rollout_media
from .run_folder import RunFolder, set_learning_rates
from .threads import SlowdownWatch, configure_threads


class TrainingDiverged(RuntimeError):
    """Raised after `max_bad_steps` consecutive non-finite losses or gradients, or when the
    weights themselves turn non-finite; the message names the last good checkpoint."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped `Trainer.fit`; the message says at which step and from which
    checkpoint `--resume` continues (what was written stays intact: every file is atomic)."""


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


#: The Trainers of this process by run folder (real path), to refuse a second on one folder.
_TRAINING: dict[str, weakref.ref] = {}


def _claim_for_training(trainer: Trainer) -> None:
    """Record `trainer` as the one training its run folder in this process; FolderInUse when
    another Trainer has trained there and is neither finished nor dropped (the folder lock is
    shared within a process, so it cannot tell them apart): both would write the same
    checkpoints and logs."""
    key = os.path.realpath(trainer.run_dir)
    ref = _TRAINING.get(key)
    if ref is not None and ref() is not None and ref() is not trainer:
        gc.collect()  # a dropped Trainer in a reference cycle: collected, it no longer counts
        other = ref()
        if other is not None and other.lock is not None and other.lock._key is not None:
            raise FolderInUse(errno.EBUSY, "in use by another Trainer of this process that has not "
                              "finished; call its finish() (or drop it) before training another on this "
                              "run", str(trainer.run_dir))
    _TRAINING[key] = weakref.ref(trainer)



def level_param_groups(model: DLH, scales: tuple[float, ...] | None) -> list[dict]:
    """Adam's parameter groups, each with its `lr_scale` (`optim.level_lr_scale`): one group per
    level n — level n's networks and f_enc^{n-1}, the encoder that makes its input x^n — and
    one for the rest (conv towers, heads, the top context) at scale 1. Without scales one group."""
    if scales is None:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    levels = model.hierarchy.levels
    owned: list[list[torch.nn.Parameter]] = [[] for _ in levels]
    for i, level in enumerate(levels):
        for name, p in level.named_parameters():
            j = i + 1 if name.startswith("encoder.") else i  # f_enc^n feeds level n + 1
            owned[j].append(p)
    ids = {id(p) for group in owned for p in group}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr_scale": 1.0}] + [
        {"params": group, "lr_scale": scale} for group, scale in zip(owned, scales)]

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

    After every optimiser step the loop runs `hooks` (`training.hooks`), in order: scalars
    (`logging.log_every`), media (`logging.media_every`), the event probe (`probes.event_every`),
    the tracking probe (`probes.track_every`) and the checkpoint (`logging.checkpoint_every`),
    each at the multiples of its own interval and at the end; append a `Hook` for more. The run
    folder's lock, resume checks and records are `run` (`RunFolder`).

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
        self.run = RunFolder(cfg.out_dir)
        self.runtime = runtime = distributed.setup(cfg.device)
        self._set_up_compute()
        # identical initialisation on every rank; the global RNG untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = DLH(cfg.model).to(runtime.device)
        self.optimizer = torch.optim.Adam(level_param_groups(self.model, cfg.optim.level_lr_scale),
                                          lr=cfg.optim.lr, eps=cfg.optim.eps, betas=(0.9, cfg.optim.beta2))
        if runtime.is_main:  # one process writes a run: a second is refused, naming the first's PID
            self.run.claim()
        self.step, self.finished = self.run.start(cfg, self.model, self.optimizer, runtime, resume,
                                                  requested)
        self.resumed_from = self.step
        self.progress = progress and runtime.is_main
        self.generator = torch.Generator(runtime.device)  # the training steps' noise (train_step)
        self.monitor = Monitor(self.run.path, enabled=False)
        self.hooks: list[Hook] = []
        self.bar: tqdm | None = None
        self.last: dict[str, float] = {}
        self.bad_in_a_row = 0
        self.checkpoint_due = False  # a checkpoint postponed past non-finite steps
        self.started = time.perf_counter()
        if not self.finished:
            self._set_up_training(progress, resume, source, media_batch)

    # ------------------------------------------------------------------ set-up
    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def lock(self) -> FolderLock | None:
        return self.run.lock

    def _set_up_compute(self) -> None:
        """Threads, precision and the per-process batch, checked before anything is built."""
        cfg, device = self.cfg, self.runtime.device
        if device.type == "cpu" or cfg.threads:
            self.threads, self.threads_reason = configure_threads(cfg.threads)
        else:
            self.threads, self.threads_reason = torch.get_num_threads(), "torch default"
        self.slowdown = SlowdownWatch(self.threads if device.type == "cpu" else 1)
        self.precision, self.precision_reason = resolve_precision(cfg.precision, device)
        self.run_mode = f"{device.type}, {self.threads} threads, {self.precision}"
        if device.type == "cpu":
            torch.set_flush_denormal(True)
        if cfg.data.batch_size % self.runtime.world_size:
            raise ValueError(
                f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                f"{self.runtime.world_size} processes"
            )
        self.local_batch = cfg.data.batch_size // self.runtime.world_size

    def _set_up_training(self, progress: bool, resume: bool, source: SequenceSource | None,
                         media_batch: Batch | None) -> None:
        """The data, the logs and the hooks of a run that has steps left."""
        cfg, runtime, model = self.cfg, self.runtime, self.model
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
                          "learned (transitions, level changes); use data.seq_len >= 2", stacklevel=3)
        self.monitor = self.run.monitor(enabled=runtime.is_main, purge_step=self.step if resume else None)
        if runtime.is_main:
            self.run.write_config(cfg)
        self.groups = ParameterGroups(model)
        self._set_up_measurements(media_batch)
        self.hooks = self._default_hooks()

    def _set_up_measurements(self, media_batch: Batch | None) -> None:
        """The media windows, the event probe and the tracking probe's data (rank 0 only): all
        from the test split, or from the training data where the data has none (said once)."""
        cfg, probes = self.cfg, self.cfg.probes
        self.media_batch, self.media_context = None, cfg.logging.rollout_context
        self.event_probe: EventProbe | None = None
        self.track_source: SequenceSource | None = None
        if not self.runtime.is_main:
            return
        events = bool(probes.event_every) and cfg.model.levels >= 2
        uses = {"logged videos": media_batch is None, "the event probe": events,
                "the tracking probe": bool(probes.track_every)}
        held_out = self.source
        if any(uses.values()):
            held_out, split = evaluation_source(cfg.data, self.source)
            if split == "train":
                print(f"the data has no test split: {', '.join(k for k, v in uses.items() if v)} read the "
                      "training data", flush=True)
        if media_batch is None:
            self.media_batch, self.media_context = _media_windows(held_out, cfg)
        else:
            self.media_batch = media_batch
            self.media_context = min(cfg.logging.rollout_context, max(1, media_batch.frames.shape[1] // 2))
            if self.media_context < cfg.logging.rollout_context:
                warnings.warn(f"media: the given windows hold {media_batch.frames.shape[1]} frames; "
                              f"logged rollouts use {self.media_context} of context "
                              f"(logging.rollout_context={cfg.logging.rollout_context} lowered)",
                              stacklevel=4)
        if events:
            self.event_probe = EventProbe.build(held_out, probes.event_sequences, probes.event_length,
                                                cfg.seed)
        if probes.track_every:
            from ..evaluation.tracking import reads_objects  # evaluation imports training

            if reads_objects(held_out) and not held_out.action_dim:
                self.track_source = held_out

    def _default_hooks(self) -> list[Hook]:
        """Scalars, media, event probe, tracking probe, checkpoint — in this order, each at its
        interval (the measurements on rank 0 only)."""
        cfg = self.cfg
        health = HealthCheck(cfg.model.levels, cfg.optim.beta_warmup, cfg.probes.collapse_kl,
                             cfg.probes.frozen_ratio)
        hooks: list[Hook] = [LogHook(cfg.logging.log_every, health, self.slowdown)]
        if self.media_batch is not None and cfg.logging.media_every:
            hooks.append(MediaHook(cfg.logging.media_every))
        if self.event_probe is not None:
            hooks.append(ScalarsHook(cfg.probes.event_every, lambda trainer: trainer.probe_events()))
        if self.track_source is not None:
            hooks.append(ScalarsHook(cfg.probes.track_every, lambda trainer: trainer.track()))
        hooks.append(CheckpointHook(cfg.logging.checkpoint_every))
        return hooks

    # ------------------------------------------------------------------ one step
    def schedule_at(self, step: int) -> TrainSchedule:
        """The training loop's settings of the filtering step at optimiser step `step` (0-based)."""
        optim = self.cfg.optim
        phase = step - optim.schedule_from  # the upper-level schedules start at optim.schedule_from
        return TrainSchedule(hold_upper=0 <= phase < optim.upper_warmup, memory_dropout=optim.memory_dropout,
                             margin_scale=optim.margin_scale(step),
                             silence_lower=0 <= phase < optim.upper_first)

    def train_step(self) -> dict[str, Any] | None:
        """One optimiser step on the batch of the current step; None if it was skipped.

        The metrics are 0-dim tensors still on the device, but for floats ("grad_norm", "beta", and
        the per-network norms of the last step of each logging interval): the log hook turns them
        into floats on the steps it logs, so no other step waits for the device to report them.
        """
        cfg, runtime, step = self.cfg, self.runtime, self.step
        batch = batch_at(self.source, cfg.seed, step, self.local_batch, cfg.data.seq_len, runtime.rank)
        batch = batch.to(runtime.device)
        # the step's noise comes from the trainer's own generator, seeded per step and rank (so a
        # resumed run draws what an uninterrupted one does); torch's global RNG is left alone
        self.generator.manual_seed(_step_seed(cfg.seed, step, runtime.rank))
        beta = cfg.optim.beta(step)
        kwargs: dict[str, Any] = {"is_first": batch.is_first, "float_metrics": False,
                                  "schedule": self.schedule_at(step), "generator": self.generator}
        if cfg.model.reward_head and batch.rewards is not None:
            kwargs["rewards"] = batch.rewards
        if cfg.model.continue_head and batch.continues is not None:
            kwargs["continues"] = batch.continues
        with _autocast(runtime, self.precision):
            loss, metrics, _ = self.wrapped(batch.frames, batch.actions, beta, **kwargs)
        bad = distributed.any_true(not math.isfinite(float(metrics["loss"])), runtime)  # read every step
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
                    f"{self.run.last_good()}; try a lower optim.lr, an optim.grad_clip "
                    "or precision=fp32 (--set KEY=VALUE with --resume)"
                )
            return None
        self.bad_in_a_row = 0
        before = self.groups.snapshot() if log_step else None
        set_learning_rates(self.optimizer, cfg, step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics["grad_norm"] = grad_norm
        metrics.update(group_norms)
        if before is not None:
            metrics.update(self.groups.relative_updates(before))
        return metrics

    def train_steps(self, count: int, run_end: int | None = None) -> dict[str, float]:
        """Run `count` optimiser steps, each followed by the hooks; returns the last logged metrics.

        The hooks due "at the end" (last scalars, event probe, tracking, checkpoint) fire at the
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
        self.bar = tqdm(total=end, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                        mininterval=1.0, desc=f"train ({self.run_mode})")
        try:
            while self.step < stop:
                started = time.perf_counter()
                metrics = self.train_step()
                seconds = time.perf_counter() - started
                self.bar.update(1)
                for hook in self.hooks:
                    hook.on_step(self, metrics, seconds)
                    if hook.due(self.step, end):
                        hook.fire(self)
        finally:
            self.bar.close()
            self.bar = None
        return self.last

    def show_progress(self, logged: dict[str, float]) -> None:
        """The logged means on the progress bar (shown at its next, rate-limited, refresh)."""
        if self.bar is not None and self.progress:
            self.bar.set_postfix(loss=f"{logged['loss']:.1f}", L=f"{logged['levels_used']:.2f}",
                                 beta=f"{logged['beta']:.2f}", refresh=False)

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
            path = self.run.save_checkpoint(self.step, self.model, self.optimizer, self.cfg, self.last)
        self.checkpoint_due = False
        distributed.barrier(self.runtime)
        return path

    def media(self) -> dict[str, Any]:
        """Log reconstruction and rollout videos of the media batch; returns their scores."""
        batch = self.media_batch.to(self.runtime.device)
        # its own noise, seeded by the step: the same videos after a resume; the global RNG untouched
        seed = _step_seed(self.cfg.seed, self.step, 10_000)
        with evaluating(self.model, seed), _autocast(self.runtime, self.precision):
            result = rollout_media(self.model, batch.frames, self.media_context,
                                   batch.frames.shape[1] - self.media_context, batch.actions)
        self.monitor.video("reconstruction", self.step, result["recon"])
        self.monitor.video("rollout", self.step, result["rollout"])
        self.monitor.scalars(self.step, {
            "eval/rollout_ssim": result["ssim"], "eval/rollout_psnr": result["psnr"],
            "eval/rollout_levels_used": result["levels_used"]})
        return result

    def probe_events(self) -> dict[str, float]:
        """Event precision/recall/F1 of each level (`events/*`, `EventProbe`) of the current weights."""
        return self.event_probe(self.model, seed=_step_seed(self.cfg.seed, self.step, 20_000))

    def track(self) -> dict[str, float]:
        """Open-loop tracking scores (`track/*`), linear level probes and the swap test of level
        usage (`probe/*`) of the current weights on fresh test windows; `track/seconds` is what
        they cost."""
        from ..evaluation.probes import level_probes
        from ..evaluation.swap import level_usage
        from ..evaluation.tracking import offsets_within, tracking_scores

        cfg, model = self.cfg, self.model
        started = time.perf_counter()
        with evaluating(model):  # each measurement forks and seeds its own random stream
            scores = tracking_scores(
                model, self.track_source, context=cfg.logging.rollout_context,
                horizon=cfg.logging.rollout_horizon,
                samples=cfg.probes.track_samples, sequences=cfg.probes.track_sequences, seed=cfg.seed,
                at=offsets_within(cfg.logging.rollout_horizon)) or {}
            probes = level_probes(model, self.track_source, seed=cfg.seed) or {}
            if model.config.levels >= 2:  # the swap test: which level the frame follows
                probes.update(level_usage(model, self.track_source, seed=cfg.seed))
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
                                   f"{self.run.last_good()}")
        for hook in self.hooks:
            hook.on_end(self)
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
            self.run.write_summary(summary)
        self.monitor.close()
        distributed.teardown(self.runtime)
        self.run.release()
        return summary

    def fit(self) -> dict[str, Any]:
        """Train up to `cfg.steps` and finish; a finished run returns its stored summary."""
        if self.finished:
            distributed.teardown(self.runtime)
            self.run.release()
            if not self.runtime.is_main:
                return {}
            return {**self.run.stored_summary(), "already_finished": True}
        try:
            self.train_steps(max(0, self.cfg.steps - self.step))
            return self.finish()
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.run.interrupted(self.step, self.cfg.steps)) from None


def _media_windows(source: SequenceSource, cfg: TrainConfig) -> tuple[Batch, int]:
    """Fixed evaluation windows of `source` for logged videos, and their frames of context."""
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
                      "lowered)", stacklevel=5)
        return source.eval_batch(media.media_sequences, length, seed=cfg.seed), context


def train(
    cfg: TrainConfig, resume: bool = False, progress: bool = True, requested: Collection[str] = ()
) -> dict[str, Any]:
    """Train a DLH as configured; returns the run summary (also written to summary.json).

    `requested`: the config keys set explicitly (see `Trainer`), for the checks of a resume.
    """
    return Trainer(cfg, resume=resume, progress=progress, requested=requested).fit()


__all__ = ["Trainer", "train", "TrainingDiverged", "TrainingInterrupted"]
