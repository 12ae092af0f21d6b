"""Training configuration: model + data + optimiser + run settings, loaded strictly from YAML.

    cfg = load_config("configs/moving_ball_cpu.yaml", ["optim.lr=1e-3", "steps=500"])

An unknown key anywhere is a ValueError naming its dotted path; `--set a.b=value` overrides
parse `value` as YAML (so `3`, `1e-3`, `true`, `[1, 2]` and `null` get their types).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import DLHConfig, from_dict, to_dict
from ..data import DataConfig


@dataclass(frozen=True)
class OptimConfig:
    """Adam with the paper's settings (App. A.1) and the β warm-up of the KL terms.

    Attributes:
        lr, eps: Adam learning rate and epsilon. The paper's 5e-4 and 1e-4 are for its summed
            ELBO (batch 100 × 100 frames); our loss is a per-frame mean, and under a clip to
            `grad_clip` every update has norm ≤ 100 over millions of weights, so ε = 1e-4
            swamped the gradients of level 2's networks (they moved at 0.1–4 % of the nominal
            rate); 1e-8 is the paper's ε at our loss scale (docs/results.md, timescales).
        beta_max: the final β; β = beta_max · min(1, step / beta_warmup).
        beta_warmup: steps over which β rises linearly from 0 (10k in the paper).
        grad_clip: clip the global gradient norm to this value (0 disables). The per-frame
            ELBO's gradient norm falls from ~3e5 to ~4e3 in the first few hundred steps; clipped
            below it, Adam sees normalised gradients, which is what lets the decoder start using
            the latents (without the clip the early posterior collapse lasted > 1,000 steps).
        beta2: Adam's second-moment decay (PyTorch default 0.999). The gradient norm of a
            per-frame ELBO falls ~100× in the first few hundred steps (background learned);
            with a long second-moment memory Adam then under-steps for thousands of steps.
        lr_warmup: steps over which the learning rate rises linearly from lr/lr_warmup to lr
            (0: constant lr).
    """

    lr: float = 5e-4
    eps: float = 1e-8
    beta_max: float = 1.0
    beta_warmup: int = 10_000
    grad_clip: float = 100.0
    lr_warmup: int = 0
    beta2: float = 0.999

    def __post_init__(self) -> None:
        if not self.lr > 0 or not self.eps > 0:
            raise ValueError(f"optim.lr and optim.eps must be > 0, got {self.lr!r}, {self.eps!r}")
        if not self.beta_max >= 0 or self.beta_warmup < 0 or self.grad_clip < 0 or self.lr_warmup < 0:
            raise ValueError(
                "optim.beta_max, optim.beta_warmup, optim.grad_clip and optim.lr_warmup must be >= 0"
            )

        if isinstance(self.beta2, bool) or not 0 < self.beta2 < 1:
            raise ValueError(f"optim.beta2 must be in (0, 1), got {self.beta2!r}")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimiser step `step` (0-based)."""
        if self.lr_warmup == 0:
            return self.lr
        return self.lr * min(1.0, (step + 1) / self.lr_warmup)

    def beta(self, step: int) -> float:
        if self.beta_warmup == 0:
            return self.beta_max
        return self.beta_max * min(1.0, step / self.beta_warmup)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one `dlh train` run needs.

    Attributes:
        model, data, optim: the nested configs.
        steps: total optimiser steps.
        seed: seeds the model initialisation, the sampling noise and the data stream.
        out_dir: where checkpoints, TensorBoard logs, media and the summary go.
        device: "auto" (CUDA when present), "cpu" or "cuda[:i]".
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16".
        threads: torch CPU threads (null: torch's default).
        log_every: scalars to TensorBoard and metrics.jsonl every this many steps.
        media_every: reconstruction and rollout videos every this many steps (0: only at the end).
        checkpoint_every: checkpoint every this many steps (and always at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        max_bad_steps: consecutive non-finite losses after which the run stops.
        rollout_context, rollout_horizon: frames of context and of open-loop prediction in
            the logged rollout videos.
        media_sequences: sequences shown in logged videos.
        event_every: every this many steps (and at the end), score each level's change
            flags against the data's known events (event precision/recall/F1 on
            `event_sequences` held-out windows of `event_length` frames) — only for data that
            supplies change flags, such as Moving Ball; 0 disables.
        collapse_kl: after the β warm-up, warn of posterior collapse when every level's
            state KL is below this (nats per step).
        frozen_ratio: warn that a level's networks are frozen when its relative update
            ‖Δθ‖/‖θ‖ is below this fraction of level 1's.
    """

    model: DLHConfig = field(default_factory=lambda: DLHConfig(levels=2, image_size=32, channels=3))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 100_000
    seed: int = 0
    out_dir: str = "runs/default"
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    log_every: int = 50
    media_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    max_bad_steps: int = 5
    rollout_context: int = 10
    rollout_horizon: int = 40
    media_sequences: int = 4
    event_every: int = 500
    event_sequences: int = 32
    event_length: int = 100
    collapse_kl: float = 2.0
    frozen_ratio: float = 0.05

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "max_bad_steps",
                     "rollout_context", "rollout_horizon", "media_sequences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.media_every < 0 or self.seed < 0 or self.event_every < 0:
            raise ValueError("media_every, event_every and seed must be >= 0")
        for name in ("event_sequences", "event_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an int >= 2, got {value!r}")
        if not (self.collapse_kl >= 0 and 0 <= self.frozen_ratio <= 1):
            raise ValueError(f"collapse_kl must be >= 0 and frozen_ratio in [0, 1], got "
                             f"{self.collapse_kl!r}, {self.frozen_ratio!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:i], got {self.device!r}")
        m, d = self.model, self.data
        if (m.image_size, m.channels) != (d.image_size, d.channels):
            raise ValueError(
                f"model.image_size/channels ({m.image_size}, {m.channels}) must match "
                f"data.image_size/channels ({d.image_size}, {d.channels})"
            )
        if d.name == "episodes" and m.action_dim == 0:
            raise ValueError(
                "data.name=episodes carries actions: set model.action_dim to the env's action size"
            )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a config mapping (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        _set_path(tree, key.strip(), yaml.safe_load(raw))
    return tree


def config_from_dict(tree: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, tree, "config")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults when `path` is None) and apply overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        tree = loaded or {}
    tree = apply_overrides(tree, overrides or [])
    return config_from_dict(tree)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = ["OptimConfig", "TrainConfig", "load_config", "apply_overrides", "config_from_dict",
           "dump_config", "dataclasses"]
