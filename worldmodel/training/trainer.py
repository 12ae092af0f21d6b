"""The one trainer for every mode and data set: `train(cfg)`.

Step k uses the data batch `batch_at(source, seed, k, rank)` and sampling noise seeded from
(seed, k, rank), so a run resumed from the checkpoint of step k continues with exactly the
losses an uninterrupted run would have had.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data import Batch, SequenceSource, build_source
from ..data.base import batch_at
from ..files import atomic_write_text
from ..model import DLH
from ..video import write_gif
from . import distributed
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, dump_config
from .diagnostics import EventProbe, HealthCheck, ParameterGroups
from .monitor import Monitor, rollout_media


class TrainingDiverged(RuntimeError):
    """Raised after `max_bad_steps` consecutive non-finite losses or gradients."""


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)


def _autocast(runtime: distributed.Runtime, precision: str) -> contextlib.AbstractContextManager:
    use_bf16 = precision == "bf16" or (precision == "auto" and runtime.device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=torch.bfloat16)


def _media_batch(cfg: TrainConfig):
    """Fixed evaluation windows for logged videos (test split when it exists)."""
    try:
        source = build_source(cfg.data, "test")
    except ValueError:
        source = build_source(cfg.data, "train")
    length = cfg.rollout_context + cfg.rollout_horizon
    try:
        return source.eval_batch(cfg.media_sequences, length, seed=cfg.seed), cfg.rollout_context
    except ValueError:  # data with short videos (e.g. 20-frame Moving MNIST): use what fits
        length = cfg.data.seq_len
        context = max(1, min(cfg.rollout_context, length // 2))
        return source.eval_batch(cfg.media_sequences, length, seed=cfg.seed), context


class Trainer:
    """Trains one DLH on one source; `train(cfg)` is `Trainer(cfg).fit()`.

    An online loop (e.g. the PlaNet-style agent loop) builds a Trainer on a growing
    `EpisodeSource` and alternates `train_steps(k)` with data collection; checkpoints,
    TensorBoard and media work the same.

    Args:
        cfg: the run's configuration.
        resume: continue from the latest checkpoint in `cfg.out_dir`.
        progress: show a tqdm bar.
        source: the training data (default: `build_source(cfg.data, "train")`).
        media_frames: a fixed Batch for logged videos (default: evaluation windows of the data).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume: bool = False,
        progress: bool = True,
        source: SequenceSource | None = None,
        media_batch: Batch | None = None,
    ) -> None:
        self.cfg = cfg
        self.runtime = runtime = distributed.setup(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if runtime.device.type == "cpu":
            torch.set_flush_denormal(True)
        self.run_dir = run_dir = Path(cfg.out_dir)
        if cfg.data.batch_size % runtime.world_size:
            raise ValueError(
                f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                f"{runtime.world_size} processes"
            )
        self.local_batch = cfg.data.batch_size // runtime.world_size
        torch.manual_seed(cfg.seed)  # identical initialisation on every rank
        self.model = model = DLH(cfg.model).to(runtime.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, eps=cfg.optim.eps,
                                          betas=(0.9, cfg.optim.beta2))
        self.step = 0
        if resume:
            ckpt = latest_checkpoint(run_dir)
            if ckpt is None:
                warnings.warn(f"--resume: no checkpoint in {run_dir}; starting from step 0", stacklevel=2)
            else:
                self.step = int(load_checkpoint(ckpt, model, self.optimizer, runtime.device)["step"])
        elif latest_checkpoint(run_dir) is not None:
            raise ValueError(
                f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                "or choose another out_dir (--set out_dir=...)"
            )
        self.resumed_from = self.step
        self.wrapped: torch.nn.Module = model
        if runtime.distributed:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
                find_unused_parameters=True,  # static levels leave networks out of some steps
            )
        self.source = source if source is not None else build_source(cfg.data, "train")
        self.monitor = Monitor(run_dir, enabled=runtime.is_main, purge_step=self.step if resume else None)
        self.media_batch, self.media_context = None, cfg.rollout_context
        if runtime.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            if media_batch is not None:
                self.media_batch = media_batch
                self.media_context = min(cfg.rollout_context, max(1, media_batch.frames.shape[1] // 2))
            else:
                self.media_batch, self.media_context = _media_batch(cfg)
        self.progress = progress and runtime.is_main
        self.groups = ParameterGroups(model)
        self.health = HealthCheck(cfg.model.levels, cfg.optim.beta_warmup, cfg.collapse_kl, cfg.frozen_ratio)
        self.event_probe = None
        if runtime.is_main and cfg.event_every and cfg.model.levels >= 2:
            try:
                probe_source = build_source(cfg.data, "test")
            except ValueError:
                probe_source = self.source
            self.event_probe = EventProbe.build(probe_source, cfg.event_sequences, cfg.event_length, cfg.seed)
        self.bad_in_a_row = 0
        self.window: dict[str, list[float]] = {}
        self.last: dict[str, float] = {}
        self.started = time.perf_counter()
        self._interval_start, self._interval_steps = time.perf_counter(), 0

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float] | None:
        """One optimiser step on the batch of the current step; None if it was skipped."""
        cfg, runtime, step = self.cfg, self.runtime, self.step
        batch = batch_at(self.source, cfg.seed, step, self.local_batch, cfg.data.seq_len, runtime.rank)
        batch = batch.to(runtime.device)
        torch.manual_seed(_step_seed(cfg.seed, step, runtime.rank))
        beta = cfg.optim.beta(step)
        kwargs: dict[str, Any] = {"is_first": batch.is_first}
        if cfg.model.reward_head and batch.rewards is not None:
            kwargs["rewards"] = batch.rewards
        if cfg.model.continue_head and batch.continues is not None:
            kwargs["continues"] = batch.continues
        with _autocast(runtime, cfg.precision):
            loss, metrics, _ = self.wrapped(batch.frames, batch.actions, beta, **kwargs)
        bad = distributed.any_true(not math.isfinite(metrics["loss"]), runtime)
        grad_norm = float("nan")
        if not bad:
            loss.backward()
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
                ckpt = latest_checkpoint(self.run_dir)
                raise TrainingDiverged(
                    f"{self.bad_in_a_row} non-finite steps in a row at step {step}; stopping. "
                    f"The last good checkpoint is {ckpt or 'none (no checkpoint written yet)'}; "
                    "try a lower optim.lr, a grad_clip, or precision=fp32"
                )
            return None
        self.bad_in_a_row = 0
        # relative update sizes are measured on the last step of each logging interval
        before = self.groups.snapshot() if self.step % cfg.log_every == 0 else None
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
            bar.set_postfix(loss=f"{metrics['loss']:.1f}", L=f"{metrics['levels_used']:.2f}",
                            beta=f"{metrics['beta']:.2f}")
        if (done % cfg.log_every == 0 or done == end) and self.window:
            elapsed = time.perf_counter() - self._interval_start
            self.last = {k: sum(v) / len(v) for k, v in self.window.items()}
            frames = cfg.data.batch_size * cfg.data.seq_len * self._interval_steps
            self.last["frames_per_s"] = frames / max(elapsed, 1e-9)
            self.last["lr"] = self.optimizer.param_groups[0]["lr"]
            self.last.update(self.health.check(done, self.last))
            self.monitor.scalars(done, self.last)
            self.window.clear()
            self._interval_start, self._interval_steps = time.perf_counter(), 0
        if self.runtime.is_main and cfg.media_every and done % cfg.media_every == 0 and done != end:
            self.media()
        if self.event_probe is not None and (done % cfg.event_every == 0 or done == end):
            events = self.event_probe(self.model)
            self.last.update(events)
            self.monitor.scalars(done, events)
        if done % cfg.checkpoint_every == 0 or done == end:
            self.checkpoint()

    def train_steps(self, count: int) -> dict[str, float]:
        """Run `count` optimiser steps (with logging and checkpoints); returns the last metrics."""
        end = self.step + count
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   mininterval=1.0, desc="train")
        try:
            while self.step < end:
                self._after_step(self.train_step(), bar, end)
        finally:
            bar.close()
        return self.last

    # ------------------------------------------------------------------ outputs
    def checkpoint(self) -> None:
        if self.runtime.is_main:
            save_checkpoint(self.run_dir, self.step, self.model, self.optimizer,
                            {"metrics": self.last, "config": self.cfg.to_dict()},
                            keep=self.cfg.keep_checkpoints)
        distributed.barrier(self.runtime)

    def media(self) -> dict[str, Any]:
        """Log reconstruction and rollout videos of the media batch; returns their scores."""
        model, cfg = self.model, self.cfg
        model.eval()
        batch = self.media_batch.to(self.runtime.device)
        torch.manual_seed(_step_seed(cfg.seed, self.step, 10_000))
        with _autocast(self.runtime, cfg.precision):
            result = rollout_media(model, batch.frames, self.media_context,
                                   batch.frames.shape[1] - self.media_context, batch.actions)
        model.train()
        self.monitor.video("reconstruction", self.step, result["recon"])
        self.monitor.video("rollout", self.step, result["rollout"])
        self.monitor.scalars(self.step, {
            "eval/rollout_ssim": result["ssim"], "eval/rollout_psnr": result["psnr"],
            "eval/rollout_levels_used": result["levels_used"]})
        return result

    def finish(self) -> dict[str, Any]:
        """Final media, model file and summary.json (rank 0); closes logs and the process group."""
        summary: dict[str, Any] = {}
        if self.runtime.is_main:
            result = self.media()
            rollout_gif = write_gif(self.run_dir / "rollout.gif", result["rollout"], fps=8, upscale=2)
            self.model.save(self.run_dir / "model.safetensors")
            summary = {
                "steps": self.step,
                "resumed_from": self.resumed_from,
                "wall_time_s": round(time.perf_counter() - self.started, 1),
                "device": str(self.runtime.device),
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
        return summary

    def fit(self) -> dict[str, Any]:
        """Train up to `cfg.steps` and finish."""
        self.train_steps(max(0, self.cfg.steps - self.step))
        return self.finish()


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a DLH as configured; returns the run summary (also written to summary.json)."""
    return Trainer(cfg, resume=resume, progress=progress).fit()


__all__ = ["Trainer", "train", "TrainingDiverged"]
