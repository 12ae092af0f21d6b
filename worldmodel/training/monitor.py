"""What a run reports: TensorBoard scalars and videos, metrics.jsonl, GIFs under media/.

Only rank 0 of a distributed run writes. TensorBoard's `add_video` needs moviepy < 2
(with moviepy 2 it silently logs nothing), so videos are also written as GIFs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..arguments import is_int
from ..files import atomic_write_text, naming
from ..metrics import per_frame_metrics
from ..model import DLH
from ..video import comparison_grid, write_gif


def read_metrics_lines(path: Path) -> list[tuple[int, str]]:
    """(step, line) of each row of a metrics.jsonl file.

    A torn last line (the process was killed mid-write) is dropped with a warning; a bad
    line before it is a ValueError naming the file and the line.
    """
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    rows = []
    for i, (number, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            step = row["step"]
            if not is_int(step):
                raise ValueError(f"step {step!r} is not an int")
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(numbered) - 1:
                warnings.warn(f"{path}: dropping its torn last line {number} (a run killed while "
                              f"writing it): {line[:60]!r}", stacklevel=3)
                continue
            problem = f"no 'step' ({exc})" if isinstance(exc, (KeyError, TypeError)) else str(exc)
            raise ValueError(f"{path}, line {number}: not a metrics row ({problem}); "
                             "fix or delete that line") from exc
        rows.append((step, line))
    return rows


class Monitor:
    """Scalars to TensorBoard and `metrics.jsonl`, videos to TensorBoard and `media/`."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        (self.run_dir / "media").mkdir(parents=True, exist_ok=True)
        self.jsonl = self.run_dir / "metrics.jsonl"
        if purge_step is not None and self.jsonl.exists():
            # a resumed run rewrites what the interrupted one logged after its checkpoint
            kept = [line for step, line in read_metrics_lines(self.jsonl) if step <= purge_step]
            atomic_write_text(self.jsonl, "".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            # what step k logged precedes its checkpoint, so a resume from k keeps step k's events
            purge = None if purge_step is None else purge_step + 1
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        except ImportError as exc:  # tensorboard is a dependency, but stay usable without it
            warnings.warn(f"TensorBoard unavailable ({exc}); logging to metrics.jsonl only", stacklevel=2)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        with naming(self.jsonl), self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")

    def video(self, tag: str, step: int, frames: np.ndarray, fps: int = 8) -> Path | None:
        """frames (T, H, W, 3) uint8 -> TensorBoard video and media/{tag}_{step}.gif."""
        if not self.enabled:
            return None
        if self.writer is not None:
            clip = torch.from_numpy(frames).permute(0, 3, 1, 2).unsqueeze(0)  # (1, T, 3, H, W)
            self.writer.add_video(tag, clip, step, fps=fps)
        name = tag.replace("/", "_")
        path = write_gif(self.run_dir / "media" / f"{name}_{step:08d}.gif", frames, fps=fps, upscale=2)
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def rollout_media(
    model: DLH, frames: torch.Tensor, context: int, horizon: int, actions: torch.Tensor | None = None
) -> dict[str, Any]:
    """Reconstructions and an open-loop rollout of `frames` (B, context + horizon, C, H, W).

    Returns {"recon": grid (T, H', W', 3), "rollout": grid, "ssim": float, "psnr": float,
    "levels_used": float} with SSIM/PSNR averaged over the predicted frames.
    """
    acts_ctx = actions[:, :context] if actions is not None else None
    out = model.observe(frames[:, :context], acts_ctx)
    recon_grid = comparison_grid(frames[:, :context], out.recon, context=context)
    future = actions[:, context : context + horizon] if actions is not None else None
    traj = model.imagine(out.state, horizon, future)
    pred = model.decode(traj)
    truth = frames[:, context : context + horizon]
    scores = per_frame_metrics(pred.float(), truth.float())
    full_pred = torch.cat([out.recon, pred], 1)
    rollout_grid = comparison_grid(frames[:, : context + horizon], full_pred, context=context)
    return {
        "recon": recon_grid,
        "rollout": rollout_grid,
        "ssim": float(scores["ssim"].mean()),
        "psnr": float(scores["psnr"].mean()),
        "levels_used": float(traj.changed.float().sum(-1).mean()),
    }


__all__ = ["Monitor", "rollout_media", "read_metrics_lines"]
