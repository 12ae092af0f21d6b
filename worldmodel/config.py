"""Typed, frozen configuration for the DLH model and strict construction from mappings.

`DLHConfig` holds every architectural choice (App. A / Table 4 sizes are the defaults).
`from_dict` builds any (nested) frozen dataclass from a plain mapping — as read by
`yaml.safe_load` — and rejects unknown keys by name, so a typo in a YAML file is an
error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

TIMESCALES = ("dynamic", "clockwork", "every_step")
ASSIGNMENTS = ("hard", "vade")
DECISIONS = ("kl", "map")
BOUNDARIES = ("reinfer", "copy", "anchor")
PRIOR_FACTORS = ("feedforward", "recurrent")


@dataclass(frozen=True)
class DLHConfig:
    """Architecture of a Dynamic Latent Hierarchy.

    Attributes:
        levels: number of latent levels N (1 gives a flat sequential VAE).
        image_size: frame height = width; a multiple of 16 (32 and 64 in the paper's data).
        channels: frame channels, 1 (grayscale) or 3 (RGB).
        action_dim: size of the action vector A; 0 for video-only models.
        action_levels: 1-based levels whose temporal transition f_tem takes the action.
        x_dim, c_dim, d_dim, s_dim: |x^n|, |c^n|, |d^n|, |s^n| (App. A.1: 200, 200, 200, 20).
        enc_hidden, dec_hidden: hidden sizes of f_enc^n and f_dec^n (Table 4: MLP [200]).
        state_hidden: hidden sizes of the posterior and change-prior MLPs (Table 4: [40, 40, 40]).
        factor_hidden: hidden sizes of the prior factor's MLP head.
        prior_factor: "feedforward" — p(e^n = 1 | d^n) is an MLP on the level's temporal
            state d^n, which is frozen while the level is static, so the predicted change
            probability is constant over a static stretch; "recurrent" — Table 4's
            "GRU [200]": a GRU cell of its own (hidden size d_dim) reads d^n every step the
            factor is evaluated (e^{n-1} = 1) and restarts from zero when level n changes,
            so it can learn when the next change is due (a hazard over the time since the
            last change). See docs/model.md.
        conv_depth: channels of the first conv layer; layers use depth * (1, 2, 4, 8).
        min_std: floor added to every Gaussian standard deviation.
        obs_std: the fixed standard deviation of the Gaussian frame likelihood.
        timescale: "dynamic" (DLH), "clockwork" (CW-VAE schedule) or "every_step".
        clockwork_k: the clockwork base k: level n updates when t mod k^(n-1) = 0.
        assignment: "hard" (eq. 4, the paper's default) or "vade" (soft q(e), eq. 34).
        upper_min_std: the std floor of the levels n >= 2 (None: `min_std`). The static
            prior is the previous posterior, so this floor sets how far a static level's
            posterior may drift before eq. 4 calls it a change.
        decision: how the hard rule (eq. 4) weighs the two components: "kl" (the paper:
            the nearer component wins) or "map" (the learned prior odds join the rule:
            change iff KL_change − log p(e=1) < KL_static − log p(e=0), the MAP
            assignment of the mixture).
        decision_margin: nats the change component must win by (0: the paper).
        kl_balance: α of KL balancing (DreamerV2): the state KL's gradient trains the
            prior with weight 2α and the posterior with 2(1 − α) (0.5: the plain KL). The
            loss value is unchanged.
        boundary: what the first static level K does in filtering (DESIGN §2 step 4):
            "reinfer" (DESIGN's reading) — a fresh posterior, sampled and decoded, whose KL
            goes to the static prior (eq. 9); "copy" — level K keeps its previous sample and
            top-down output exactly, like every level above it (and as in imagination), so its
            state KL is 0 at static steps. Under "reinfer" a static level can pass new
            information to the frame at every step for a small KL, which imagination never
            reproduces; under "copy" a sample drawn at a change must serve the whole static
            stretch, which rewards features that persist; "anchor" — K keeps its sample as
            under "copy", and its fresh posterior, which reaches no frame, is still pulled
            toward the static prior by eq. 9's KL (so the posterior learns to stay put over a
            static stretch). See docs/model.md.
        init_std: the std the Gaussian heads (posteriors and change priors) output at
            initialisation (None: PyTorch's default init, softplus(≈0) ≈ 0.7). A sample that
            is mostly noise teaches the decoder to ignore the latents (early posterior
            collapse on small objects); a smaller start lets the decoder use them at once.
        free_nats: free bits of the state KL (DreamerV3): at each step the loss uses
            max(free_nats, Σ_n KL^n), so below this many nats the KL is not pushed down —
            a guard against early posterior collapse (0: the paper's ELBO).
        static_prior_grad: whether the static prior (the previous posterior) receives
            gradient from eq. 9's static KL (True: the paper's ELBO as written).
        reward_head, continue_head: add heads on `features(state)` trained with the loss.
        head_hidden: hidden sizes of the reward and continue heads.
        reward_scale, continue_scale: weights of the heads' losses against the ELBO (whose
            reconstruction term sums over pixels and can drown a unit-weight reward loss).
    """

    levels: int = 3
    image_size: int = 64
    channels: int = 1
    action_dim: int = 0
    action_levels: tuple[int, ...] = (1,)
    x_dim: int = 200
    c_dim: int = 200
    d_dim: int = 200
    s_dim: int = 20
    enc_hidden: tuple[int, ...] = (200,)
    dec_hidden: tuple[int, ...] = (200,)
    state_hidden: tuple[int, ...] = (40, 40, 40)
    factor_hidden: tuple[int, ...] = (200,)
    prior_factor: str = "feedforward"
    conv_depth: int = 48
    min_std: float = 0.01
    obs_std: float = 1.0
    timescale: str = "dynamic"
    clockwork_k: int = 6
    assignment: str = "hard"
    upper_min_std: float | None = None
    decision: str = "kl"
    decision_margin: float = 0.0
    kl_balance: float = 0.5
    static_prior_grad: bool = True
    free_nats: float = 0.0
    init_std: float | None = None
    boundary: str = "reinfer"
    reward_head: bool = False
    continue_head: bool = False
    head_hidden: tuple[int, ...] = (200, 200)
    reward_scale: float = 1.0
    continue_scale: float = 1.0

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DLHConfig.{name} must be a positive int, got {value!r}")

        for name in ("levels", "x_dim", "c_dim", "d_dim", "s_dim", "conv_depth", "channels"):
            positive(name)
        if not isinstance(self.action_dim, int) or self.action_dim < 0:
            raise ValueError(f"DLHConfig.action_dim must be an int >= 0, got {self.action_dim!r}")
        if not isinstance(self.image_size, int) or self.image_size < 16 or self.image_size % 16:
            raise ValueError(
                f"DLHConfig.image_size must be a multiple of 16 (e.g. 32 or 64), got {self.image_size!r}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"DLHConfig.channels must be 1 or 3, got {self.channels!r}")
        if self.timescale not in TIMESCALES:
            raise ValueError(f"DLHConfig.timescale must be one of {TIMESCALES}, got {self.timescale!r}")
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"DLHConfig.assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"DLHConfig.boundary must be one of {BOUNDARIES}, got {self.boundary!r}")
        if self.decision not in DECISIONS:
            raise ValueError(f"DLHConfig.decision must be one of {DECISIONS}, got {self.decision!r}")
        if isinstance(self.decision_margin, bool) or not self.decision_margin >= 0:
            raise ValueError(f"DLHConfig.decision_margin must be >= 0 nats, got {self.decision_margin!r}")
        if isinstance(self.kl_balance, bool) or not 0 <= self.kl_balance <= 1:
            raise ValueError(f"DLHConfig.kl_balance must be in [0, 1], got {self.kl_balance!r}")
        if self.upper_min_std is not None and (isinstance(self.upper_min_std, bool)
                                               or not self.upper_min_std > 0):
            raise ValueError(f"DLHConfig.upper_min_std must be > 0 or null, got {self.upper_min_std!r}")
        if self.init_std is not None and (isinstance(self.init_std, bool) or not self.init_std > self.min_std
                                          or not (self.upper_min_std or 0) < self.init_std):
            raise ValueError(f"DLHConfig.init_std must exceed every level's min_std, got {self.init_std!r}")
        if isinstance(self.free_nats, bool) or not self.free_nats >= 0:
            raise ValueError(f"DLHConfig.free_nats must be >= 0, got {self.free_nats!r}")
        if not isinstance(self.static_prior_grad, bool):
            raise ValueError(
                f"DLHConfig.static_prior_grad must be true or false, got {self.static_prior_grad!r}"
            )
        if self.prior_factor not in PRIOR_FACTORS:
            raise ValueError(
                f"DLHConfig.prior_factor must be one of {PRIOR_FACTORS}, got {self.prior_factor!r}"
            )
        if not isinstance(self.clockwork_k, int) or self.clockwork_k < 2:
            raise ValueError(f"DLHConfig.clockwork_k must be an int >= 2, got {self.clockwork_k!r}")
        if not self.reward_scale >= 0 or not self.continue_scale >= 0:
            raise ValueError(
                f"DLHConfig.reward_scale and continue_scale must be >= 0, "
                f"got {self.reward_scale!r}, {self.continue_scale!r}"
            )
        if not self.min_std > 0 or not self.obs_std > 0:
            raise ValueError(
                f"DLHConfig.min_std and obs_std must be > 0, got {self.min_std!r}, {self.obs_std!r}"
            )
        object.__setattr__(self, "action_levels", tuple(self.action_levels))
        for level in self.action_levels:
            if not isinstance(level, int) or not 1 <= level <= self.levels:
                raise ValueError(
                    f"DLHConfig.action_levels must hold 1-based levels in 1..{self.levels}, "
                    f"got {self.action_levels!r}"
                )
        for name in ("enc_hidden", "dec_hidden", "state_hidden", "factor_hidden", "head_hidden"):
            value = tuple(getattr(self, name))
            if any(not isinstance(h, int) or h < 1 for h in value):
                raise ValueError(f"DLHConfig.{name} must be a list of positive ints, got {value!r}")
            object.__setattr__(self, name, value)

    def level_min_std(self, level: int) -> float:
        """The std floor of 1-based `level`."""
        if level >= 2 and self.upper_min_std is not None:
            return self.upper_min_std
        return self.min_std

    @property
    def feature_dim(self) -> int:
        """Size F of `DLH.features(state)`: s^n and d^n concatenated over levels."""
        return self.levels * (self.s_dim + self.d_dim)

    def replace(self, **changes: Any) -> DLHConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON/YAML-compatible values (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        return _coerce(value, others[0], where) if len(others) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation in (int, float, str, bool):
        if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
            raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str | None = None) -> T:
    """Build the frozen dataclass `cls` from `data`, rejecting unknown keys by name.

    Nested dataclass fields take nested mappings; lists become tuples where the field is a
    tuple. Raises ValueError naming the offending key (with its dotted path) and the keys
    that are allowed.
    """
    where = where or cls.__name__
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {names}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        # a nested section given in part keeps the defaults of the field's default instance
        if f.name in data and isinstance(data[f.name], dict) and dataclasses.is_dataclass(hints[f.name]):
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                defaults = to_dict(f.default_factory())  # type: ignore[misc]
                data[f.name] = {**defaults, **data[f.name]}
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


__all__ = ["DLHConfig", "from_dict", "to_dict", "TIMESCALES", "ASSIGNMENTS", "field"]
