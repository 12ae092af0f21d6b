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

from ..data import build_source
from ..data.base import batch_at
from ..files import atomic_write_text
from ..model import DLH
from ..video import write_gif
from . import distributed
from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, dump_config
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


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train a DLH as configured; returns the run summary (also written to summary.json)."""
    runtime = distributed.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if runtime.device.type == "cpu":
        torch.set_flush_denormal(True)
    run_dir = Path(cfg.out_dir)
    if cfg.data.batch_size % runtime.world_size:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} must be divisible by the {runtime.world_size} processes"
        )
    local_batch = cfg.data.batch_size // runtime.world_size

    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    model = DLH(cfg.model).to(runtime.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, eps=cfg.optim.eps)
    start = 0
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            warnings.warn(f"--resume: no checkpoint in {run_dir}; starting from step 0", stacklevel=2)
        else:
            start = int(load_checkpoint(ckpt, model, optimizer, runtime.device)["step"])
    elif latest_checkpoint(run_dir) is not None:
        raise ValueError(
            f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
            "or choose another out_dir (--set out_dir=...)"
        )
    wrapped: torch.nn.Module = model
    if runtime.distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=True,  # static levels leave networks out of some steps
        )

    source = build_source(cfg.data, "train")
    monitor = Monitor(run_dir, enabled=runtime.is_main, purge_step=start if resume else None)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        media_batch, media_context = _media_batch(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    bad_in_a_row = 0
    window: dict[str, list[float]] = {}
    last: dict[str, float] = {}
    frames_per_step = cfg.data.batch_size * cfg.data.seq_len
    started = time.perf_counter()
    interval_start, interval_steps = time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and runtime.is_main),
               dynamic_ncols=True, mininterval=1.0, desc="train")

    def checkpoint(step: int) -> None:
        if runtime.is_main:
            save_checkpoint(run_dir, step, model, optimizer,
                            {"metrics": last, "config": cfg.to_dict()}, keep=cfg.keep_checkpoints)
        distributed.barrier(runtime)

    def media(step: int) -> dict[str, Any]:
        model.eval()
        batch = media_batch.to(runtime.device)
        torch.manual_seed(_step_seed(cfg.seed, step, 10_000))
        with _autocast(runtime, cfg.precision):
            result = rollout_media(model, batch.frames, media_context,
                                   batch.frames.shape[1] - media_context, batch.actions)
        model.train()
        monitor.video("reconstruction", step, result["recon"])
        monitor.video("rollout", step, result["rollout"])
        monitor.scalars(step, {"eval/rollout_ssim": result["ssim"], "eval/rollout_psnr": result["psnr"],
                               "eval/rollout_levels_used": result["levels_used"]})
        return result

    model.train()
    try:
        for step in range(start, cfg.steps):
            batch = batch_at(source, cfg.seed, step, local_batch, cfg.data.seq_len, runtime.rank)
            batch = batch.to(runtime.device)
            torch.manual_seed(_step_seed(cfg.seed, step, runtime.rank))
            beta = cfg.optim.beta(step)
            kwargs: dict[str, Any] = {"is_first": batch.is_first}
            if cfg.model.reward_head and batch.rewards is not None:
                kwargs["rewards"] = batch.rewards
            if cfg.model.continue_head and batch.continues is not None:
                kwargs["continues"] = batch.continues
            with _autocast(runtime, cfg.precision):
                loss, metrics, _ = wrapped(batch.frames, batch.actions, beta, **kwargs)
            bad = distributed.any_true(not math.isfinite(metrics["loss"]), runtime)
            grad_norm = float("nan")
            if not bad:
                loss.backward()
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
                bad = distributed.any_true(not math.isfinite(grad_norm), runtime)
            if bad:
                optimizer.zero_grad(set_to_none=True)
                bad_in_a_row += 1
                warnings.warn(f"step {step}: non-finite loss or gradient; step skipped "
                              f"({bad_in_a_row}/{cfg.max_bad_steps} in a row)", stacklevel=2)
                if bad_in_a_row >= cfg.max_bad_steps:
                    ckpt = latest_checkpoint(run_dir)
                    raise TrainingDiverged(
                        f"{bad_in_a_row} non-finite steps in a row at step {step}; stopping. "
                        f"The last good checkpoint is {ckpt or 'none (no checkpoint written yet)'}; "
                        "try a lower optim.lr, a grad_clip, or precision=fp32"
                    )
                bar.update(1)
                continue
            bad_in_a_row = 0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            interval_steps += 1
            metrics["grad_norm"] = grad_norm
            for key, value in metrics.items():
                window.setdefault(key, []).append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.1f}", L=f"{metrics['levels_used']:.2f}", beta=f"{beta:.2f}")
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - interval_start
                last = {k: sum(v) / len(v) for k, v in window.items()}
                last["frames_per_s"] = frames_per_step * interval_steps / max(elapsed, 1e-9)
                last["lr"] = optimizer.param_groups[0]["lr"]
                monitor.scalars(done, last)
                window.clear()
                interval_start, interval_steps = time.perf_counter(), 0
            if runtime.is_main and cfg.media_every and done % cfg.media_every == 0 and done != cfg.steps:
                media(done)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
    finally:
        bar.close()

    summary: dict[str, Any] = {}
    if runtime.is_main:
        result = media(cfg.steps)
        rollout_gif = write_gif(run_dir / "rollout.gif", result["rollout"], fps=8, upscale=2)
        model.save(run_dir / "model.safetensors")
        summary = {
            "steps": cfg.steps,
            "resumed_from": start,
            "wall_time_s": round(time.perf_counter() - started, 1),
            "device": str(runtime.device),
            "processes": runtime.world_size,
            "final_metrics": last,
            "rollout": {"context": media_context, "ssim": result["ssim"], "psnr": result["psnr"],
                        "levels_used": result["levels_used"]},
            "rollout_gif": str(rollout_gif),
            "model": str(run_dir / "model.safetensors"),
        }
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    monitor.close()
    distributed.teardown(runtime)
    return summary


__all__ = ["train", "TrainingDiverged"]
