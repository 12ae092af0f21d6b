"""Training configuration: model + data + optimiser + run settings, loaded strictly from YAML.

    cfg = load_config("configs/moving_ball_cpu.yaml", ["optim.lr=1e-3", "steps=500"])

An unknown key anywhere is a ValueError naming its dotted path; `--set a.b=value` overrides
parse `value` as YAML (so `3`, `1e-3`, `true`, `[1, 2]` and `null` get their types). A YAML
syntax error is a ValueError naming the file (with line and column) or the `--set` item.

`resume_changes` decides which settings a resumed run may change (see `RESUME_FREE` and
`RESUME_ON_REQUEST`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..arguments import brief, check_int
from ..config import DLHConfig, current_key, from_dict, is_finite_number, migrate, to_dict
from ..data import DataConfig
from ..files import one_line


@dataclass(frozen=True)
class OptimConfig:
    """Adam with the paper's settings (App. A.1) and the β warm-up of the KL terms.

    Attributes:
        lr, eps: Adam learning rate and epsilon. Our loss is a per-frame mean where the paper's
            (App. A.1: 5e-4, 1e-4) sums over its batch of 100 × 100 frames, so the paper's ε is
            1e-8 at our scale; a larger ε swamps the small, clipped gradients of the upper
            levels' networks, which then hardly move (docs/results.md, timescales §1).
        beta_max: the final β; β = beta_max · min(1, step / beta_warmup).
        beta_warmup: steps over which β rises linearly from 0 (10k in the paper).
        grad_clip: clip the global gradient norm to this value (0 disables). A per-frame ELBO's
            gradient norm starts orders of magnitude above its later level; clipped, Adam sees
            normalised gradients from the start, which lets the decoder start using the latents
            (the early posterior collapse ends sooner: docs/results.md, timescales §2).
        beta2: Adam's second-moment decay (PyTorch default 0.999). The first, largest gradients
            of a per-frame ELBO fill the second-moment estimate; the longer its memory, the
            longer Adam under-steps after the gradient norm has fallen.
        lr_warmup: steps over which the learning rate rises linearly from lr/lr_warmup to lr
            (0: constant lr).
        lr_decay_to: after the warm-up the learning rate falls along a half cosine to
            lr × lr_decay_to at the run's last step (`steps`); None: constant (issue 24's
            schedule candidate). A resumed run with more steps stretches the rest of the curve.
        upper_warmup: a bootstrapped schedule (issue 23, candidate d; 0: off, the paper):
            for this many training steps the levels n >= 2 change only at a sequence's first
            step (eq. 4 is not applied; no prior-factor loss), so level 1 learns what moves
            and an upper level can hold only what persists through a window; eq. 4 after.
            Evaluation and probes always use eq. 4.
        upper_first: an upper-first schedule (issue 23; 0: off, the paper): for this many
            training steps every level below the top contributes a zero sample and no KL, so
            the top level and the decoders learn alone whatever a window shows; with
            `upper_warmup` at least as long the top level can hold only what persists through
            a window (the colour), and the decoder learns to draw it from above before level 1
            exists to offer a copy. Evaluation and probes always run every level.
        schedule_from: the training step at which `upper_warmup` and `upper_first` begin (0: the
            first step). Later, the schedule is a phase in the middle of a run: the model has
            left the early posterior collapse and learned what the frame shows (the colour at
            ≈ 1,300 steps of the quick start) before the levels below the top fall silent.
        memory_dropout: in training, each level below the top restarts its temporal state
            d^n at zero with this probability per row and step (issue 23; 0: off, the paper):
            where it is dropped its change prior has only c^n from above, so a feature that
            persists is cheapest in the levels above. Evaluation and imagination never drop.
        margin_warmup, margin_ramp: a schedule for eq. 4's prior odds in training (issue 23;
            0, 0: off): for the first `margin_warmup` steps levels >= 2 are decided with no
            margin (the paper's eq. 4), then the margin rises linearly to the model's
            `inference.decision_margin` over `margin_ramp` steps (0: at once). A margin from
            the first step keeps an empty upper level from ever changing; after the warm-up
            the level holds content and the margin only removes its spurious changes.
            Evaluation, probes and acting always use the model's own margin.
        level_lr_scale: one learning-rate factor per level (issue 23; None: 1 everywhere, the
            paper): level n's networks (its posterior, change prior, prior factor, GRU, f_dec^n
            and f_enc^{n-1}, the encoder that makes x^n) train at lr × level_lr_scale[n-1]; the
            conv towers and heads at lr. In the quick start both posteriors read the ball's colour
            from the towers at about the same time and level 1's shorter path to the frame wins
            the race; a faster level 2 tests whether who is first decides where it lives.
    """

    lr: float = 5e-4
    eps: float = 1e-8
    beta_max: float = 1.0
    beta_warmup: int = 10_000
    grad_clip: float = 100.0
    lr_warmup: int = 0
    beta2: float = 0.999
    upper_warmup: int = 0
    upper_first: int = 0
    schedule_from: int = 0
    memory_dropout: float = 0.0
    margin_warmup: int = 0
    margin_ramp: int = 0
    level_lr_scale: tuple[float, ...] | None = None
    lr_decay_to: float | None = None

    def __post_init__(self) -> None:
        if self.lr_decay_to is not None and (not is_finite_number(self.lr_decay_to)
                                             or not 0 <= self.lr_decay_to <= 1):
            raise ValueError("optim.lr_decay_to must be in [0, 1] (the final lr as a fraction of lr) "
                             f"or null, got {self.lr_decay_to!r}")
        if self.level_lr_scale is not None:
            scales = self.level_lr_scale
            if (isinstance(scales, (str, bytes)) or not isinstance(scales, (list, tuple)) or not scales
                    or not all(is_finite_number(v) and v > 0 for v in scales)):
                raise ValueError(f"optim.level_lr_scale must be a list of finite numbers > 0, one per "
                                 f"level, got {scales!r}")
            object.__setattr__(self, "level_lr_scale", tuple(float(v) for v in scales))
        if not is_finite_number(self.memory_dropout) or not 0 <= self.memory_dropout < 1:
            raise ValueError(f"optim.memory_dropout must be in [0, 1), got {self.memory_dropout!r}")
        for name in ("lr", "eps"):
            value = getattr(self, name)
            if not is_finite_number(value) or not value > 0:
                raise ValueError(f"optim.{name} must be a finite number > 0, got {value!r}")
        for name in ("beta_max", "grad_clip"):
            value = getattr(self, name)
            if not is_finite_number(value) or not value >= 0:
                raise ValueError(f"optim.{name} must be a finite number >= 0, got {value!r}"
                                 + (" (0 disables clipping)" if name == "grad_clip" else ""))
        for name in ("beta_warmup", "lr_warmup", "upper_warmup", "upper_first", "schedule_from",
                     "margin_warmup", "margin_ramp"):
            value = getattr(self, name)
            object.__setattr__(self, name, check_int(value, f"optim.{name}", 0, hint="steps"))
        if not is_finite_number(self.beta2) or not 0 < self.beta2 < 1:
            raise ValueError(f"optim.beta2 must be in (0, 1), got {self.beta2!r}")

    def lr_at(self, step: int, steps: int | None = None) -> float:
        """The learning rate of optimiser step `step` (0-based) of a run of `steps` steps (only
        `lr_decay_to` needs it)."""
        if step < self.lr_warmup:
            return self.lr * (step + 1) / self.lr_warmup
        if self.lr_decay_to is None or steps is None:
            return self.lr
        span = max(1, steps - 1 - self.lr_warmup)
        progress = min(1.0, (step - self.lr_warmup) / span)
        floor = self.lr_decay_to
        return self.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    def margin_scale(self, step: int) -> float:
        """The fraction of the model's decision margin used by training step `step` (0-based)."""
        if step < self.margin_warmup:
            return 0.0
        if self.margin_ramp == 0:
            return 1.0
        return min(1.0, (step - self.margin_warmup + 1) / self.margin_ramp)

    def beta(self, step: int) -> float:
        if self.beta_warmup == 0:
            return self.beta_max
        return self.beta_max * min(1.0, step / self.beta_warmup)


@dataclass(frozen=True)
class LoggingConfig:
    """What a run writes and how often: scalars, videos, checkpoints (`logging` in a config).

    Attributes:
        log_every: scalars to TensorBoard and metrics.jsonl every this many steps.
        media_every: reconstruction and rollout videos every this many steps (0: only at the end).
        checkpoint_every: checkpoint every this many steps (and always at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        media_sequences: sequences shown in logged videos.
        rollout_context, rollout_horizon: frames of context and of open-loop prediction in
            the logged rollout videos (and in the tracking probe, `probes.track_every`).
    """

    log_every: int = 50
    media_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    media_sequences: int = 4
    rollout_context: int = 10
    rollout_horizon: int = 40

    def __post_init__(self) -> None:
        for name in ("log_every", "checkpoint_every", "keep_checkpoints", "media_sequences",
                     "rollout_context", "rollout_horizon"):
            object.__setattr__(self, name, check_int(getattr(self, name), f"logging.{name}", 1))
        object.__setattr__(self, "media_every", check_int(self.media_every, "logging.media_every", 0))


@dataclass(frozen=True)
class ProbeConfig:
    """What a run measures while it trains, beyond the loss (`probes` in a config).

    Attributes:
        event_every: every this many steps (and at the end), score each level's change
            flags against the data's known events (event precision/recall/F1 on
            `event_sequences` held-out windows of `event_length` frames) — only for data that
            supplies change flags, such as Moving Ball; 0 disables.
        track_every: every this many steps (and at the end), the open-loop tracking scores
            (`track/centroid_px_at{k}`, `track/colour_kept`, ...: best of `track_samples`
            rollouts of `logging.rollout_horizon` frames from `logging.rollout_context` filtered
            ones, on `track_sequences` fresh test windows) and the linear level probes
            (`probe/level{n}_position_r2`, `probe/level{n}_colour_r2`) — only for data that can
            read its objects off the frames, such as Moving Ball; 0 disables.
        collapse_kl: after the β warm-up, warn of posterior collapse when every level's
            state KL is below this (nats per step).
        frozen_ratio: warn that a level's networks are frozen when its relative update
            ‖Δθ‖/‖θ‖ is below this fraction of level 1's.
    """

    event_every: int = 500
    event_sequences: int = 32
    event_length: int = 100
    track_every: int = 250
    track_sequences: int = 16
    track_samples: int = 4
    collapse_kl: float = 2.0
    frozen_ratio: float = 0.05

    def __post_init__(self) -> None:
        for name in ("event_every", "track_every"):
            object.__setattr__(self, name, check_int(getattr(self, name), f"probes.{name}", 0))
        for name in ("event_sequences", "event_length"):
            object.__setattr__(self, name, check_int(getattr(self, name), f"probes.{name}", 2))
        for name in ("track_sequences", "track_samples"):
            object.__setattr__(self, name, check_int(getattr(self, name), f"probes.{name}", 1))
        if not (is_finite_number(self.collapse_kl) and self.collapse_kl >= 0
                and is_finite_number(self.frozen_ratio) and 0 <= self.frozen_ratio <= 1):
            raise ValueError(f"probes.collapse_kl must be >= 0 and probes.frozen_ratio in [0, 1], got "
                             f"{self.collapse_kl!r}, {self.frozen_ratio!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one `dlh train` run needs.

    Attributes:
        model, data, optim: the nested configs.
        steps: total optimiser steps.
        seed: seeds the model initialisation, the sampling noise and the data stream.
        out_dir: where checkpoints, TensorBoard logs, media and the summary go.
        device: "auto" (CUDA when present), "cpu" or "cuda[:i]".
        precision: "auto" (bf16 autocast on CUDA, fp32 on CPU: bf16 autocast lowered the
            quick start's event F1, docs/results.md "bf16 on CPU"), "fp32" or "bf16". The run's
            summary.json and first log line say which was used and why.
        threads: torch CPU threads. null: one per CPU that other processes leave free when
            the run starts (docs/results.md "Busy machine"); a warning names the remedy when
            the step time later jumps.
        max_bad_steps: consecutive non-finite losses after which the run stops.
        logging: scalars, videos and checkpoints (`LoggingConfig`).
        probes: event scores, tracking, level probes and health warnings (`ProbeConfig`).

    Configs of earlier versions kept the keys of `logging` and `probes` at the top level
    (`log_every: 25`, `--set track_every=0`); they are read into their sections
    (`worldmodel.config.MOVED_KEYS`).
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
    max_bad_steps: int = 5
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "max_bad_steps"):
            object.__setattr__(self, name, check_int(getattr(self, name), name, 1))
        object.__setattr__(self, "seed", check_int(self.seed, "seed", 0))
        for name, section in (("model", DLHConfig), ("data", DataConfig), ("optim", OptimConfig),
                              ("logging", LoggingConfig), ("probes", ProbeConfig)):
            if not isinstance(getattr(self, name), section):
                raise ValueError(f"{name} must be a {section.__name__} (config_from_dict reads mappings), "
                                 f"got {type(getattr(self, name)).__name__}")
        if not isinstance(self.out_dir, (str, os.PathLike)) or not str(self.out_dir).strip():
            raise ValueError(f"out_dir must name a folder (e.g. runs/my_run), got {self.out_dir!r}")
        object.__setattr__(self, "out_dir", os.fspath(self.out_dir))
        if self.threads is not None:
            threads = check_int(self.threads, "threads", 1, hint="or null: torch's default")
            object.__setattr__(self, "threads", threads)
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:i], got {self.device!r}")
        m, d = self.model, self.data
        if self.optim.upper_first and m.levels < 2:
            raise ValueError(f"optim.upper_first={self.optim.upper_first} silences the levels below the top: "
                             "it needs model.levels >= 2 (set it to 0)")
        scales = self.optim.level_lr_scale
        if scales is not None and len(scales) != m.levels:
            raise ValueError(f"optim.level_lr_scale must give one factor per level ({m.levels}), "
                             f"got {list(scales)}")
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


def apply_overrides(tree: dict[str, Any], overrides: list[str], cls: type = TrainConfig) -> dict[str, Any]:
    """Apply `section.key=value` strings to a config mapping for `cls` (values parsed as YAML).

    A key of an earlier version names the setting where it lives now (`model.obs_std` sets
    `model.loss.obs_std`, `log_every` sets `logging.log_every`: `current_key`).
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ValueError(f"--set expects section.key=value, got {item!r}")
        try:
            value = read_yaml(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {brief(item)}: the value is not valid YAML ({yaml_problem(exc)}); "
                             "quote it if it is a string") from None
        except ValueError as exc:
            raise ValueError(f"--set {brief(item)}: {one_line(exc)}") from None
        _set_path(tree, current_key(cls, key.strip()), value)
    return tree


class StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses aliases (`*name`, `<<: *name`) and duplicate keys.

    An alias lets a few hundred bytes stand for gigabytes (a list of aliases of lists of
    aliases: the "billion laughs"), and no config needs one; a duplicate key would silently
    take the later value.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases are not accepted in a config (write the value out): *{event.anchor}",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {brief(key)} (first at line {first.start_mark.line + 1}; "
                        "give each key once)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """The value of YAML `text`, read by `StrictLoader`.

    Raises:
        yaml.YAMLError: invalid YAML, an alias or a duplicate key (`yaml_problem` words it).
        ValueError: a value Python will not build (an int of more than 4300 digits).
    """
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line and column, 1-based)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(filter(None, [exc.context, exc.problem]))
        return f"{what} at line {mark.line + 1}, column {mark.column + 1}"
    return one_line(str(exc))


def config_from_dict(tree: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, tree, "config")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults when `path` is None) and apply overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = read_yaml(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not a text (UTF-8) YAML file "
                             f"({exc.reason} at byte {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
        except ValueError as exc:
            raise ValueError(f"{path}: {one_line(exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        tree = migrate(TrainConfig, loaded or {}, "config")  # keys of earlier versions, before --set
    tree = apply_overrides(tree, overrides or [])
    return config_from_dict(tree)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------- resume
#: Settings a resumed run may change freely: how long to train, where and how often to log,
#: checkpoint and probe, where to run. They do not touch the weights' trajectory. A section
#: (`logging`, `probes`) stands for every key in it.
RESUME_FREE = ("steps", "out_dir", "device", "threads", "max_bad_steps", "logging", "probes")
#: Settings a resumed run changes only when asked by name (`--set key=value` on the CLI):
#: the usual remedies after a divergence, and memory dropout — a training-time regulariser with
#: no parameters and no optimiser state, which a study may switch on in the middle of a run
#: (issue 23: does it move a feature learned so far?). Everything else — model.*, data.*, seed,
#: optim.eps, optim.beta2, optim.beta_max, optim.beta_warmup, optim.lr_warmup — is fixed for a run.
RESUME_ON_REQUEST = ("optim.lr", "optim.grad_clip", "precision", "optim.memory_dropout")

_UNSET = object()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _within(key: str, names: Collection[str]) -> bool:
    """Whether dotted `key` is one of `names` or lies in a section named there."""
    return any(key == name or key.startswith(name + ".") for name in names)


def _show(value: Any) -> str:
    return "(unset)" if value is _UNSET else repr(value)


def resume_changes(
    stored: Mapping[str, Any],
    cfg: TrainConfig,
    requested: Collection[str] = (),
    where: str = "the checkpoint",
) -> dict[str, tuple[Any, Any]]:
    """The settings in which `cfg` differs from the `stored` config of the run being resumed.

    Returns {dotted key: (old, new)} when every difference is allowed on a resume; raises a
    ValueError naming each difference that is not: keys in `RESUME_FREE` may change, keys in
    `RESUME_ON_REQUEST` only when named in `requested` (a key or a section above it, as the
    CLI's `--set` items give them), every other key may not. `where` names the stored config
    in the message. Keys are compared in the current (nested) form: a stored config of an
    earlier version, and keys of earlier versions in `requested`, are migrated first.
    """
    try:  # fill in settings an older version did not store, in the form to_dict gives
        old = to_dict(config_from_dict(dict(stored)))
    except ValueError as err:
        warnings.warn(f"--resume: the config stored in {where} does not load in this version "
                      f"({one_line(err)}); comparing it key by key as stored", RuntimeWarning, stacklevel=2)
        try:
            old = migrate(TrainConfig, dict(stored), "config")
        except ValueError:
            old = dict(stored)
    requested = [current_key(TrainConfig, key) for key in requested]
    old_flat, new_flat = _flatten(old), _flatten(cfg.to_dict())
    changes = {}
    for key in sorted(set(old_flat) | set(new_flat)):
        a, b = old_flat.get(key, _UNSET), new_flat.get(key, _UNSET)
        if a is _UNSET or b is _UNSET or a != b:
            changes[key] = (a, b)
    fixed, unrequested = [], []
    for key, (a, b) in changes.items():
        if _within(key, RESUME_FREE):
            continue
        if key in RESUME_ON_REQUEST:
            if not _within(key, requested):
                unrequested.append(f"{key} {_show(a)} -> {_show(b)} (pass --set {key}={b} to change it)")
            continue
        fixed.append(f"{key} {_show(a)} -> {_show(b)}")
    if fixed or unrequested:
        parts = []
        if fixed:
            parts.append(f"settings that cannot change in the middle of a run differ from {where}: "
                         f"{'; '.join(fixed)} — restore them, or start a new run in another out_dir")
        if unrequested:
            parts.append(f"settings that change on resume only when asked for differ from {where}: "
                         f"{'; '.join(unrequested)}")
        raise ValueError("--resume: " + ". ".join(parts))
    return changes


__all__ = ["OptimConfig", "LoggingConfig", "ProbeConfig", "TrainConfig", "load_config", "apply_overrides",
           "config_from_dict", "dump_config", "dataclasses", "resume_changes", "RESUME_FREE",
           "RESUME_ON_REQUEST", "yaml_problem"]
