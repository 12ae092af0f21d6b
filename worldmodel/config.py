"""Typed, frozen configuration for the DLH model and strict construction from mappings.

`DLHConfig` holds the architecture (App. A / Table 4 sizes are the defaults) at its top level
and two nested sections: `inference` (`InferenceConfig`: how e^n_t is inferred in filtering,
eq. 4/5) and `loss` (`LossConfig`: the recipe of eq. 8 on top of the paper's ELBO).

    DLHConfig(levels=2, image_size=32, channels=3,
              inference=InferenceConfig(boundary="copy"), loss=LossConfig(obs_std=0.05))

`from_dict` builds any (nested) frozen dataclass from a plain mapping — as read by
`yaml.safe_load` — and rejects unknown keys by name, so a typo in a YAML file is an
error rather than a silently ignored setting. Keys of earlier versions, which kept every
setting at the top level (`obs_std`, `boundary`, `log_every`, ...), are moved to their
sections first by the one table `MOVED_KEYS` (YAML files, `--set` items, stored run configs
and version-1 model files all go through it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .arguments import brief, check_int, is_int

T = TypeVar("T")

CONV_NORMS = ("none", "layer")  # worldmodel.networks builds them
CONV_ACTS = ("elu", "silu")
INITS = ("torch", "xavier")
TIMESCALES = ("dynamic", "clockwork", "every_step")
ASSIGNMENTS = ("hard", "vade")
DECISIONS = ("kl", "map", "tolerant", "relative")
BOUNDARIES = ("reinfer", "copy", "anchor")
PRIOR_FACTORS = ("feedforward", "recurrent")
UPPER_PRIORS = ("recurrent", "context")
LOWER_PRIORS = ("paper", "memory")


def is_finite_number(value: Any) -> bool:
    """A config number: an int or float (not a bool) that is finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(config: Any, name: str, minimum: int, owner: str = "DLHConfig") -> None:
    """An int field of `config` (called `owner` in messages): an int (not a bool; a NumPy integer
    is stored as an int) >= minimum, else a ValueError naming it."""
    object.__setattr__(config, name, check_int(getattr(config, name), f"{owner}.{name}", minimum))


def _check_number(
    name: str,
    value: Any,
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    or_null: bool = False,
) -> None:
    """A DLHConfig float field (`name` dotted below DLHConfig, e.g. "loss.obs_std"): a finite real
    number (not a bool) in range, else a ValueError."""
    bounds = [f"> {above:g}" if above is not None else "", f">= {at_least:g}" if at_least is not None else "",
              f"<= {at_most:g}" if at_most is not None else ""]
    what = " and ".join(b for b in bounds if b) + (" or null" if or_null else "")
    ok = is_finite_number(value) and (above is None or value > above)
    if not ok or (at_least is not None and value < at_least) or (at_most is not None and value > at_most):
        raise ValueError(f"DLHConfig.{name} must be a finite number {what}, got {brief(value)}")


def _check_ints(name: str, value: Any, maximum: int | None = None) -> tuple[int, ...]:
    """A DLHConfig list field as a tuple: ints (not bools) in 1..maximum, else a ValueError."""
    what = f"1-based levels in 1..{maximum}" if maximum is not None else "positive ints"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"DLHConfig.{name} must be a list of {what}, got {brief(value)}")
    if not all(is_int(v) and v >= 1 and (maximum is None or v <= maximum) for v in value):
        raise ValueError(f"DLHConfig.{name} must be a list of {what}, got {brief(value)}")
    return tuple(int(v) for v in value)


@dataclass(frozen=True)
class InferenceConfig:
    """How filtering infers e^n_t (eq. 4/5) and what the first static level does: `model.inference`.

    Attributes:
        timescale: "dynamic" (DLH), "clockwork" (CW-VAE schedule) or "every_step".
        clockwork_k: the clockwork base k: level n updates when t mod k^(n-1) = 0.
        assignment: "hard" (eq. 4, the paper's default) or "vade" (soft q(e), eq. 34).
        boundary: what the first static level K (the lowest with e^n_t = 0) does in filtering
            under `timescale: dynamic` (docs/design.md §2, step 4). A schedule infers no level it
            keeps, so it has no such level: there any value but the default has no effect, and is
            warned about. "reinfer" (the default, so that `DLHConfig()` is the paper's eq. 9 as
            written) — K gets a fresh posterior, sampled and decoded, whose KL goes to the static
            prior; a static level can then pass new information to the frame at every step for a
            small KL, which imagination (where K is copied) never reproduces. "copy" — K keeps its
            previous sample and top-down output exactly, like every level above it and as in
            imagination, so its state KL is 0 at static steps and a sample drawn at a change must
            serve the whole static stretch, which rewards features that persist. "anchor" — K
            keeps its sample as under "copy", and its fresh posterior, which reaches no frame, is
            still pulled toward the static prior by eq. 9's KL (a variant for studies). What each
            did in training: docs/results.md (timescales); see also docs/model.md.
        decision: how the hard rule (eq. 4) weighs the two components: "kl" (the paper:
            the nearer component wins) or "map" (the learned prior odds join the rule:
            change iff KL_change − log p(e=1) < KL_static − log p(e=0), the MAP
            assignment of the mixture).
            "tolerant" and "relative" (worldmodel/decisions.py) keep eq. 4's comparison and
            add the level's running statistics: the static prior widened by its drift for
            the decision only, or a surprise test on log KL_static; hard assignment only.
        decision_margin: nats the change component must win by in eq. 4 (0: the paper), so
            that a level changes only on clear evidence. Training scales it by the schedule of
            `optim.margin_warmup` / `margin_ramp` (default: in full from the first step): a
            level that holds nothing yet cannot win by a margin, so it would never change
            (docs/results.md: timescales, decision rules).
        decision_tolerance: "tolerant": the static std is widened in quadrature by this many
            drift scales (the running RMS of the posterior's distance from the static prior
            over static stretches).
        decision_gamma: "relative": a change also needs log KL_static this many running
            standard deviations above its running mean.
        decision_warmup: training updates (filtering steps) of the running statistics during
            which the running rules use eq. 4 alone.
        decision_rate: the running statistics' exponential averaging rate per update.
        restart_below: VTA's boundary (Kim et al. 2019; ours, not the paper's): where level
            n ≥ 2 changes, level n−1's temporal state d^{n−1} restarts at zero before it is
            read, so its change prior p(s^{n−1} | d^{n−1}, c^{n−1}) knows only what comes from
            above; nothing crosses an upper level's change in the level below except through
            the level above. False: the paper's model.
    """

    timescale: str = "dynamic"
    clockwork_k: int = 6
    assignment: str = "hard"
    boundary: str = "reinfer"
    decision: str = "kl"
    decision_margin: float = 0.0
    decision_tolerance: float = 2.0
    decision_gamma: float = 2.0
    decision_warmup: int = 0
    decision_rate: float = 0.01
    restart_below: bool = False

    def __post_init__(self) -> None:
        _check_int(self, "clockwork_k", 2, "DLHConfig.inference")
        if not isinstance(self.restart_below, bool):
            raise ValueError(f"DLHConfig.inference.restart_below must be true or false, "
                             f"got {self.restart_below!r}")
        _check_int(self, "decision_warmup", 0, "DLHConfig.inference")
        choices = {"timescale": TIMESCALES, "assignment": ASSIGNMENTS, "boundary": BOUNDARIES,
                   "decision": DECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"DLHConfig.inference.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        _check_number("inference.decision_rate", self.decision_rate, above=0.0, at_most=1.0)
        _check_number("inference.decision_gamma", self.decision_gamma)
        for name in ("decision_margin", "decision_tolerance"):
            _check_number(f"inference.{name}", getattr(self, name), at_least=0.0)
        if self.decision == "map" and self.assignment != "hard":
            raise ValueError("DLHConfig.inference.decision='map' applies to assignment='hard' (under "
                             "'vade' the prior odds are always in q(e)); use decision='kl' with 'vade'")
        if self.timescale != "dynamic" and self.boundary != "reinfer":
            # a warning, not an error: configs stating a boundary are run under schedules as
            # baselines (benchmarks/reproduce/baselines.sh), and their model files must load
            warnings.warn(f"DLHConfig.inference.boundary={self.boundary!r} has no effect under "
                          f"timescale={self.timescale!r} (a schedule keeps no level it infers): leave "
                          "boundary out (or set it to 'reinfer') with a fixed schedule", stacklevel=3)
        if self.decision in ("tolerant", "relative") and self.assignment != "hard":
            raise ValueError(f"DLHConfig.inference.decision={self.decision!r} needs assignment='hard', "
                             f"got {self.assignment!r}")

    def replace(self, **changes: Any) -> InferenceConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class LossConfig:
    """The training objective on top of the paper's ELBO (eq. 8): `model.loss`.

    The defaults are the paper's ELBO with a unit-std frame likelihood and unit-weight heads.

    Attributes:
        obs_std: the fixed standard deviation of the Gaussian frame likelihood (App. A.1:
            "optimised separately for each dataset"; configs use 0.05–0.1).
        kl_balance: α of KL balancing (DreamerV2): the state KL's gradient trains the
            prior with weight 2α and the posterior with 2(1 − α) (0.5: the plain KL). The
            loss value is unchanged.
        static_prior_grad: whether the static prior (the previous posterior) receives
            gradient from eq. 9's static KL (True: the paper's ELBO as written).
        free_nats: free bits of the state KL (DreamerV3): at each step the loss uses
            max(free_nats, Σ_n KL^n), so below this many nats the KL is not pushed down —
            a guard against early posterior collapse (0: the paper's ELBO).
        reward_scale, continue_scale: weights of the heads' losses against the ELBO (whose
            reconstruction term sums over pixels and can drown a unit-weight reward loss).
        level_kl_scale: per-level weights of the state KL in the loss, one per level (None:
            all 1, the paper's ELBO); the reported ELBO keeps unit weights. A level whose KL
            weighs less is the cheaper home for information (issue 23, candidate c).
        overshoot: latent overshooting of level 1 (PlaNet; ours, issue 24): K >= 2 adds, scaled
            by β · `overshoot_scale`, the mean over k = 2..K of KL[q(s^1_{t+k}) ‖ p_k], p_k level
            1's change prior after k − 1 open-loop steps from the filtered state (the posterior a
            fixed target), so the prior learns what imagination asks of it. 0 or 1: off.
        overshoot_scale: the weight of the overshooting KL against the one-step KL.
        window_free_nats: free bits per level and training window (ours, issue 23; None: off),
            one floor per level in nats: the loss pays max(f_n, Σ_t KL^n_t) over each window, so
            a level may hold up to f_n nats a window (what persists through it) without pressure
            to drop it, while a level that changes at every step soon pays in full.
        held_twice: a cost for a feature held by two levels (ours, issue 23; 0: off, the
            paper's ELBO). For each level n >= 2 a small probe learns to predict level n's
            posterior mean (detached, standardised over the batch) from level n−1's posterior
            mean, and level n−1's posterior network is trained *against* it with this weight
            (gradient reversal, DANN-style; its inputs x^{n−1} and c^{n−1} are detached so the
            reversal changes only what the posterior keeps, never what the level above sends
            down). A lower level then keeps nothing the level above already holds, and the
            decoder must read such a feature from above. The probes' own error is trained with
            weight 1 and is not part of the ELBO.
    """

    obs_std: float = 1.0
    kl_balance: float = 0.5
    static_prior_grad: bool = True
    free_nats: float = 0.0
    reward_scale: float = 1.0
    continue_scale: float = 1.0
    level_kl_scale: tuple[float, ...] | None = None
    overshoot: int = 0
    overshoot_scale: float = 1.0
    window_free_nats: tuple[float, ...] | None = None
    held_twice: float = 0.0

    def __post_init__(self) -> None:
        _check_number("loss.held_twice", self.held_twice, at_least=0.0)
        if self.window_free_nats is not None:
            free = self.window_free_nats
            if isinstance(free, (str, bytes)) or not isinstance(free, (list, tuple)):
                raise ValueError(f"DLHConfig.loss.window_free_nats must be a list of numbers >= 0, "
                                 f"got {brief(free)}")
            for value in free:
                _check_number("loss.window_free_nats", value, at_least=0.0)
            object.__setattr__(self, "window_free_nats", tuple(float(v) for v in free))
        _check_int(self, "overshoot", 0, "DLHConfig.loss")
        _check_number("loss.overshoot_scale", self.overshoot_scale, at_least=0.0)
        _check_number("loss.obs_std", self.obs_std, above=0.0)
        if self.level_kl_scale is not None:
            scale = self.level_kl_scale
            if isinstance(scale, (str, bytes)) or not isinstance(scale, (list, tuple)):
                raise ValueError(f"DLHConfig.loss.level_kl_scale must be a list of numbers >= 0, "
                                 f"got {brief(self.level_kl_scale)}")
            for value in self.level_kl_scale:
                _check_number("loss.level_kl_scale", value, at_least=0.0)
            object.__setattr__(self, "level_kl_scale", tuple(float(v) for v in self.level_kl_scale))
        _check_number("loss.kl_balance", self.kl_balance, at_least=0.0, at_most=1.0)
        for name in ("free_nats", "reward_scale", "continue_scale"):
            _check_number(f"loss.{name}", getattr(self, name), at_least=0.0)
        if not isinstance(self.static_prior_grad, bool):
            raise ValueError(f"DLHConfig.loss.static_prior_grad must be true or false, "
                             f"got {self.static_prior_grad!r}")

    def replace(self, **changes: Any) -> LossConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DLHConfig:
    """A Dynamic Latent Hierarchy: its architecture, with the inference rule and the loss nested.

    Attributes:
        levels: number of latent levels N (1 gives a flat sequential VAE).
        image_size: frame height = width; a multiple of 16 (32 and 64 in the paper's data).
        channels: frame channels, 1 (grayscale) or 3 (RGB).
        action_dim: size of the action vector A; 0 for video-only models.
        action_levels: 1-based levels whose temporal transition f_tem takes the action.
        x_dim, c_dim, d_dim, s_dim: |x^n|, |c^n|, |d^n|, |s^n| (App. A.1: 200, 200, 200, 20).
        level_s_dims: per-level |s^n|, one int per level (None: `s_dim` for every level; ours,
            not the paper's). A level-1 state too narrow for every feature of the frame leaves
            the persistent ones (an object's colour) one cheap home: a level above (issue 23).
        level_d_dims: per-level |d^n|, one int per level (None: `d_dim` for every level; ours).
            A wide level-1 GRU learns the motion sooner while the upper levels stay narrow
            (a wide level 2 took the position, issue 24).
        enc_hidden, dec_hidden: hidden sizes of f_enc^n and f_dec^n (Table 4: MLP [200]).
        state_hidden: hidden sizes of the posterior and change-prior MLPs (Table 4: [40, 40, 40]).
        factor_hidden: hidden sizes of the prior factor's MLP head.
        transition_hidden: dense ELU layers between s^n (and the action) and the GRU of eq. 12
            (ours, issue 24; []: the paper, the GRU reads s^n itself), as Dreamer's RSSM feeds
            its GRU a dense embedding of the stochastic state and action. Imagination runs a
            level with such layers on the per-network route (not the fused step).
        transition_norm: the GRU of eq. 12 as a layer-normalised cell (ours, issue 24; False: PyTorch's
            GRUCell, the paper): one linear map of [input, d] to the three gates, LayerNorm over
            them, the update gate's bias shifted by −1 (a cell that keeps its state at first), as
            Dreamer's RSSM. Such a level imagines on the per-network route.
        prior_factor: "feedforward" — p(e^n = 1 | d^n) is an MLP on the level's temporal
            state d^n, which is frozen while the level is static, so the predicted change
            probability is constant over a static stretch; "recurrent" — Table 4's
            "GRU [200]": a GRU cell of its own (hidden size d_dim) reads d^n every step the
            factor is evaluated (e^{n-1} = 1) and restarts from zero when level n changes,
            so it can learn when the next change is due (a hazard over the time since the
            last change). See docs/model.md.
        upper_prior: what the change prior of a level n >= 2 reads (eq. 14): "recurrent" (the
            paper: p(s^n | d^n, c^n)) or "context" (ours, THICK-like: p(s^n | c^n), the level's
            temporal state d^n left out, so an upper level that tracks a fast feature pays its
            full KL at every change while level 1 predicts it from d^1; d^n still feeds the prior
            factor and the features). Level 1's prior always reads d^1.
        lower_prior: what the change prior of a level below the top reads (eq. 14): "paper"
            (p(s^n | d^n, c^n)) or "memory" (ours, issue 23: p(s^n | d^n), the context c^n left
            out). A lower level that copies a feature the level above already holds (the colour
            in s^1 beside s^2) then pays KL wherever that feature changes, because its prior
            cannot read the new value from c^n; left to the level above it costs level n
            nothing (its decoder f_dec^n still reads c^n). The posterior still reads c^n.
        posterior_reads_d: the posterior reads the level's temporal state as well,
            q(s^n | x^n, c^n, d^n), as RSSM's q(s_t | h_t, o_t) (ours, issue 24; False: eq. 13,
            the paper, where the posterior sees only the frame's features and the level above).
        conv_depth: channels of the first conv layer; layers use depth * (1, 2, 4, 8).
        conv_norm: normalisation after each hidden layer of the conv towers: "none" or
            "layer" (per sample over channels and positions, with a learned per-channel
            gain and bias, as DreamerV3's towers). See docs/results.md (learning early).
        conv_act: the towers' activation: "elu" (App. A) or "silu".
        init: the initialisation of every linear and conv layer: "torch" (PyTorch's default,
            weight variance 1/(3·fan_in): each layer shrinks a signal ≈ 3× in variance) or
            "xavier" (Glorot-uniform weights, zero biases: the scale kept through the deep
            path pixels → x → q(s) → s → f_dec → c^0 → pixels). GRU cells keep PyTorch's.
        init_std: the std the Gaussian heads (posteriors and change priors) output at
            initialisation (None: PyTorch's default init, softplus(≈0) ≈ 0.7). A sample that
            is mostly noise teaches the decoder to ignore the latents (early posterior
            collapse on small objects); a smaller start lets the decoder use them at once.
        min_std: floor added to every Gaussian standard deviation.
        upper_min_std: the std floor of the levels n >= 2 (None: `min_std`). The static
            prior is the previous posterior, so this floor sets how far a static level's
            posterior may drift before eq. 4 calls it a change.
        reward_head, continue_head: add heads on `features(state)` trained with the loss.
        head_hidden: hidden sizes of the reward and continue heads.
        inference: the inference rule (`InferenceConfig`: timescale, assignment, boundary,
            decision rule).
        loss: the loss recipe (`LossConfig`: obs_std, KL options, head weights).
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
    level_s_dims: tuple[int, ...] | None = None
    level_d_dims: tuple[int, ...] | None = None
    enc_hidden: tuple[int, ...] = (200,)
    dec_hidden: tuple[int, ...] = (200,)
    state_hidden: tuple[int, ...] = (40, 40, 40)
    factor_hidden: tuple[int, ...] = (200,)
    transition_hidden: tuple[int, ...] = ()
    transition_norm: bool = False
    prior_factor: str = "feedforward"
    upper_prior: str = "recurrent"
    lower_prior: str = "paper"
    posterior_reads_d: bool = False
    conv_depth: int = 48
    conv_norm: str = "none"
    conv_act: str = "elu"
    init: str = "torch"
    init_std: float | None = None
    min_std: float = 0.01
    upper_min_std: float | None = None
    reward_head: bool = False
    continue_head: bool = False
    head_hidden: tuple[int, ...] = (200, 200)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        for name in ("levels", "x_dim", "c_dim", "d_dim", "s_dim", "conv_depth"):
            _check_int(self, name, 1)
        _check_int(self, "action_dim", 0)
        _check_int(self, "image_size", 16)
        if self.image_size % 16:
            raise ValueError(
                f"DLHConfig.image_size must be a multiple of 16 (e.g. 32 or 64), got {self.image_size!r}"
            )
        _check_int(self, "channels", 1)
        if self.channels not in (1, 3):
            raise ValueError(f"DLHConfig.channels must be 1 or 3, got {self.channels!r}")
        choices = {"prior_factor": PRIOR_FACTORS, "conv_norm": CONV_NORMS, "conv_act": CONV_ACTS,
                   "init": INITS, "upper_prior": UPPER_PRIORS,
                   "lower_prior": LOWER_PRIORS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"DLHConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, section in (("inference", InferenceConfig), ("loss", LossConfig)):
            if not isinstance(getattr(self, name), section):
                raise ValueError(
                    f"DLHConfig.{name} must be a {section.__name__} (e.g. {name}={section.__name__}(...); "
                    f"from_dict(DLHConfig, ...) reads mappings), got {type(getattr(self, name)).__name__}"
                )
        _check_number("min_std", self.min_std, above=0.0)
        if self.upper_min_std is not None:
            _check_number("upper_min_std", self.upper_min_std, above=0.0, or_null=True)
        if self.init_std is not None:
            _check_number("init_std", self.init_std, above=0.0, or_null=True)
            if not self.init_std > max(self.min_std, self.upper_min_std or 0.0):
                raise ValueError(
                    f"DLHConfig.init_std must exceed every level's min_std, got {self.init_std!r}"
                )
        for name in ("reward_head", "continue_head", "posterior_reads_d", "transition_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DLHConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.loss.held_twice > 0 and (self.levels < 2 or self.posterior_reads_d):
            raise ValueError("DLHConfig.loss.held_twice needs levels >= 2 and posterior_reads_d false "
                             f"(got levels={self.levels}, posterior_reads_d={self.posterior_reads_d}): "
                             "set loss.held_twice to 0")
        levels = _check_ints("action_levels", self.action_levels, self.levels)
        object.__setattr__(self, "action_levels", levels)
        for name in ("enc_hidden", "dec_hidden", "state_hidden", "factor_hidden", "head_hidden",
                     "transition_hidden"):
            object.__setattr__(self, name, _check_ints(name, getattr(self, name)))
        for name in ("level_s_dims", "level_d_dims"):
            if getattr(self, name) is not None:
                dims = _check_ints(name, getattr(self, name))
                if len(dims) != self.levels:
                    raise ValueError(f"DLHConfig.{name} must give one size per level ({self.levels}), "
                                     f"got {list(dims)}")
                object.__setattr__(self, name, dims)
        free = self.loss.window_free_nats
        if free is not None and len(free) != self.levels:
            raise ValueError(f"DLHConfig.loss.window_free_nats must give one floor per level "
                             f"({self.levels}), got {list(free)}")
        scale = self.loss.level_kl_scale
        if scale is not None and len(scale) != self.levels:
            raise ValueError(f"DLHConfig.loss.level_kl_scale must give one weight per level ({self.levels}), "
                             f"got {list(scale)}")

    def level_s_dim(self, level: int) -> int:
        """|s^n| of 1-based `level`."""
        return self.s_dim if self.level_s_dims is None else self.level_s_dims[level - 1]

    def level_d_dim(self, level: int) -> int:
        """|d^n| of 1-based `level`."""
        return self.d_dim if self.level_d_dims is None else self.level_d_dims[level - 1]

    def level_min_std(self, level: int) -> float:
        """The std floor of 1-based `level`."""
        if level >= 2 and self.upper_min_std is not None:
            return self.upper_min_std
        return self.min_std

    @property
    def feature_dim(self) -> int:
        """Size F of `DLH.features(state)`: s^n and d^n concatenated over levels."""
        return sum(self.level_s_dim(n) + self.level_d_dim(n) for n in range(1, self.levels + 1))

    def replace(self, **changes: Any) -> DLHConfig:
        """A copy with `changes`; a section changes as a whole, e.g.
        `cfg.replace(inference=cfg.inference.replace(timescale="clockwork"))`."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# ---------------------------------------------------------------------------- old keys
#: Where the keys of earlier versions live now, per config class: {class name: {old key: "section.key"}}.
#: Until model file version 2 every setting of DLHConfig and TrainConfig sat at the top level.
#: `from_dict` (hence YAML files, stored run configs and version-1 model files) moves an old key
#: to its section; `current_key` renames the dotted keys of `--set` items and `requested`.
MOVED_KEYS: dict[str, dict[str, str]] = {
    "DLHConfig": {
        "timescale": "inference.timescale",
        "clockwork_k": "inference.clockwork_k",
        "assignment": "inference.assignment",
        "boundary": "inference.boundary",
        "decision": "inference.decision",
        "decision_margin": "inference.decision_margin",
        "decision_tolerance": "inference.decision_tolerance",
        "decision_gamma": "inference.decision_gamma",
        "decision_warmup": "inference.decision_warmup",
        "decision_rate": "inference.decision_rate",
        "obs_std": "loss.obs_std",
        "kl_balance": "loss.kl_balance",
        "static_prior_grad": "loss.static_prior_grad",
        "free_nats": "loss.free_nats",
        "reward_scale": "loss.reward_scale",
        "continue_scale": "loss.continue_scale",
    },
    "TrainConfig": {  # worldmodel.training.config
        "log_every": "logging.log_every",
        "media_every": "logging.media_every",
        "checkpoint_every": "logging.checkpoint_every",
        "keep_checkpoints": "logging.keep_checkpoints",
        "media_sequences": "logging.media_sequences",
        "rollout_context": "logging.rollout_context",
        "rollout_horizon": "logging.rollout_horizon",
        "event_every": "probes.event_every",
        "event_sequences": "probes.event_sequences",
        "event_length": "probes.event_length",
        "track_every": "probes.track_every",
        "track_sequences": "probes.track_sequences",
        "track_samples": "probes.track_samples",
        "collapse_kl": "probes.collapse_kl",
        "frozen_ratio": "probes.frozen_ratio",
    },
}


def _sections(cls: type) -> dict[str, type]:
    """The fields of dataclass `cls` that are dataclasses themselves: {name: type}."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def migrate(cls: type, data: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """`data` (a mapping for dataclass `cls`) with the keys of earlier versions moved to their
    sections (`MOVED_KEYS`), in nested sections too; `data` itself is not modified.

    An old key given beside its new one is taken when both hold the same value; different
    values are a ValueError naming both.
    """
    where = where or cls.__name__
    data = dict(data)
    for old, new in MOVED_KEYS.get(cls.__name__, {}).items():
        if old not in data:
            continue
        value = data.pop(old)
        section, key = new.split(".")
        node = data.get(section)
        if node is None:
            node = {}
        if not isinstance(node, dict):
            raise ValueError(f"{where}.{section}: expected a mapping, got {brief(node)}")
        if key in node and node[key] != value:
            raise ValueError(f"{where}: {old} (the old name of {new}) is {brief(value)} but {new} is "
                             f"{brief(node[key])}; give {new} only")
        data[section] = {**node, key: value}
    for name, section_cls in _sections(cls).items():
        if isinstance(data.get(name), dict):
            data[name] = migrate(section_cls, data[name], f"{where}.{name}")
    return data


def current_key(cls: type, dotted: str) -> str:
    """A dotted key of dataclass `cls` (as a `--set` item names it) with the names of earlier
    versions replaced: `current_key(TrainConfig, "model.obs_std")` is "model.loss.obs_std"."""
    head, _, rest = dotted.partition(".")
    moved = MOVED_KEYS.get(cls.__name__, {})
    if head in moved:
        return moved[head] + (f".{rest}" if rest else "")
    sections = _sections(cls) if dataclasses.is_dataclass(cls) else {}
    if rest and head in sections:
        return f"{head}.{current_key(sections[head], rest)}"
    return dotted


def _accept_moved_keywords(cls: type) -> None:
    """Let `cls(...)` take the flat keywords of earlier versions (`DLHConfig(obs_std=0.05)`,
    `DLHConfig(timescale="clockwork")`): each goes to its section (`MOVED_KEYS`) as YAML files
    and `--set` items do, with a DeprecationWarning naming its new place. An old keyword given
    beside its section holding another value for it than the default is a ValueError naming both."""
    init = cls.__init__  # type: ignore[misc]
    moved = MOVED_KEYS[cls.__name__]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        old = [key for key in kwargs if key in moved]
        if old:
            warnings.warn(f"{cls.__name__}: " + ", ".join(f"{key}= is now {moved[key]}" for key in old)
                          + "; give it in its section (the flat keyword will be removed)",
                          DeprecationWarning, stacklevel=2)
            sections = _sections(cls)
            values: dict[str, dict[str, Any]] = {}
            for key in old:
                section, name = moved[key].split(".")
                values.setdefault(section, {})[name] = kwargs.pop(key)
            for section, given in values.items():
                section_cls = sections[section]
                current = kwargs.get(section, section_cls())
                if isinstance(current, section_cls):
                    default = section_cls()
                    for name, value in given.items():
                        held = getattr(current, name)
                        if held != getattr(default, name) and held != value:
                            raise ValueError(f"{cls.__name__}: {name}={brief(value)} (the old name of "
                                             f"{section}.{name}) but {section}.{name} is {brief(held)}; "
                                             f"give {section}.{name} only")
                    kwargs[section] = current.replace(**given)
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]


_accept_moved_keywords(DLHConfig)


# A model file (DLH.save) is safetensors whose metadata holds these three strings: the
# format tag, the format version and the config as JSON (worldmodel.checkpoint reads it).
# Version 1: the config flat (every DLHConfig field at the top level); version 2: the config
# nested (`inference`, `loss`). A version-1 config is read through `MOVED_KEYS`; the tensors of
# both versions are the same.
MODEL_FILE_FORMAT = "worldmodel.dlh"
MODEL_FILE_VERSION = "2"
MODEL_FILE_VERSIONS = ("1", "2")  # the versions this code reads


def model_file_metadata(config: DLHConfig) -> dict[str, str]:
    """The safetensors metadata that stores `config` in a model file."""
    config_json = json.dumps(config.to_dict())
    return {"format": MODEL_FILE_FORMAT, "version": MODEL_FILE_VERSION, "config": config_json}


def config_from_metadata(metadata: dict[str, str], where: str) -> DLHConfig:
    """The DLHConfig stored in a model file's metadata; ValueError starting with `where`.

    Rejects a file of another kind, a missing or unknown format version (naming the versions
    this code reads) and a config that is not valid JSON or not a valid DLHConfig. A version-1
    config (flat) is migrated to the nested form (`migrate`).
    """
    if metadata.get("format") != MODEL_FILE_FORMAT or "config" not in metadata:
        raise ValueError(f"{where}: not a worldmodel DLH file (metadata keys {sorted(metadata)})")
    version = metadata.get("version")
    if version not in MODEL_FILE_VERSIONS:
        found = "no format version" if version is None else f"format version {version!r}"
        raise ValueError(
            f"{where}: {found}; this worldmodel reads model file version(s) {list(MODEL_FILE_VERSIONS)}"
        )
    try:
        data = json.loads(metadata["config"])
    except ValueError as exc:
        raise ValueError(f"{where}: the stored config is not valid JSON ({exc})") from None
    except RecursionError:  # a value nested thousands deep
        raise ValueError(f"{where}: the stored config is nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: the stored config must be a JSON object, got {type(data).__name__}")
    try:
        if version == "1":
            data = migrate(DLHConfig, data)
        return from_dict(DLHConfig, data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: the stored config is invalid: {exc}") from exc
    except RecursionError:
        raise ValueError(f"{where}: the stored config is nested too deeply to read") from None


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
            raise ValueError(f"{where}: expected a list, got {brief(value)}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, where) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {brief(value)}")
        return dict(value)
    if annotation is float and is_int(value):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if annotation is int and is_int(value):
        return int(value)
    if annotation in (int, float, str, bool):
        if annotation is int or not isinstance(value, annotation):
            raise ValueError(f"{where}: expected {annotation.__name__}, got {brief(value)}")
    return value


def _merged(cls: type, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`defaults` (a to_dict of dataclass `cls`) updated by `given`; a nested dataclass section
    given in part keeps the rest of its defaults (a plain dict field is replaced as a whole)."""
    merged = dict(defaults)
    sections = _sections(cls)
    for key, value in given.items():
        if key in sections and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(sections[key], merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str | None = None) -> T:
    """Build the frozen dataclass `cls` from `data`, rejecting unknown keys by name.

    Nested dataclass fields take nested mappings; lists become tuples where the field is a
    tuple. Keys of earlier versions are moved to their sections first (`migrate`). Raises
    ValueError naming the offending key (with its dotted path) and the keys that are allowed.
    """
    where = where or cls.__name__
    data = migrate(cls, dict(data or {}), where)
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
                data[f.name] = _merged(hints[f.name], defaults, data[f.name])
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


__all__ = ["DLHConfig", "InferenceConfig", "LossConfig", "from_dict", "to_dict", "migrate", "current_key",
           "MOVED_KEYS", "is_finite_number", "TIMESCALES", "ASSIGNMENTS", "field",
           "MODEL_FILE_FORMAT", "MODEL_FILE_VERSION", "MODEL_FILE_VERSIONS", "model_file_metadata",
           "config_from_metadata"]
