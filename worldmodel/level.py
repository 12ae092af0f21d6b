"""One latent level n of the hierarchy: it owns every network of that level (eq. 10-15)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .config import DLHConfig
from .decisions import RUNNING_RULES, initial_stats
from .distributions import Gaussian, gaussian_from_params
from .networks import MLP, NormGRUCell, initialize


def full_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on x's device (fp32 heads) when it is on; else a no-op."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


class Level(nn.Module):
    """Networks of level n (1-based `index`).

    - `encoder`   f_enc^n : x^n -> x^{n+1}              (eq. 10; absent on the top level)
    - `decoder`   f_dec^n : (s^n, c^n) -> c^{n-1}        (eq. 11)
    - `temporal`  f_tem^n : (s^n, d^n[, a]) -> d^{n+1}   (eq. 12, a GRU cell; `temporal_in`,
      dense layers before it under `transition_hidden`, else None)
    - `posterior` q(s^n | x^n, c^n)                      (eq. 13)
    - `prior`     p(s^n | d^n, c^n), the change prior    (eq. 14)
    - `factor`    logit of p(e^n = 1 | d^n)              (eq. 15; absent on level 1, where e = 1)
    - `factor_cell` the prior factor's own GRU cell (``prior_factor: recurrent`` only): its
      state h^n restarts at zero when the level changes and ticks on d^n whenever e^n is
      decided, and the MLP head reads h^n instead of d^n
    """

    def __init__(self, cfg: DLHConfig, index: int) -> None:
        super().__init__()
        self.index = index
        self.min_std = cfg.level_min_std(index)
        self.s_dim = s_dim = cfg.level_s_dim(index)
        self.d_dim = d_dim = cfg.level_d_dim(index)
        self.takes_action = cfg.action_dim > 0 and index in cfg.action_levels
        self.encoder = MLP(cfg.x_dim, cfg.enc_hidden, cfg.x_dim) if index < cfg.levels else None
        self.decoder = MLP(s_dim + cfg.c_dim, cfg.dec_hidden, cfg.c_dim)
        gru_in = s_dim + (cfg.action_dim if self.takes_action else 0)
        # transition_hidden: dense ELU layers before the GRU (Dreamer's embedding of s and a)
        widths = (gru_in, *cfg.transition_hidden)
        layers = [layer for a, b in zip(widths, widths[1:]) for layer in (nn.Linear(a, b), nn.ELU())]
        self.temporal_in = nn.Sequential(*layers) if layers else None
        # eq. 12's GRU; `transition_norm`: gates layer-normalised (Dreamer's RSSM; per-network route)
        cell = NormGRUCell if cfg.transition_norm else nn.GRUCell
        self.temporal = cell(widths[-1], d_dim)
        self.posterior_reads_d = cfg.posterior_reads_d  # RSSM's posterior q(s^n | x^n, c^n, d^n)
        post_in = cfg.x_dim + cfg.c_dim + (d_dim if cfg.posterior_reads_d else 0)
        self.posterior = MLP(post_in, cfg.state_hidden, 2 * s_dim)
        self.prior = MLP(d_dim + cfg.c_dim, cfg.state_hidden, 2 * s_dim)
        self.prior_reads_d = index == 1 or cfg.upper_prior == "recurrent"  # eq. 14 or p(s^n | c^n)
        self.prior_reads_c = index == cfg.levels or cfg.lower_prior == "paper"  # eq. 14 or p(s^n | d^n)
        self.factor = MLP(d_dim, cfg.factor_hidden, 1) if index > 1 else None
        recurrent = index > 1 and cfg.prior_factor == "recurrent"
        self.factor_cell = nn.GRUCell(d_dim, d_dim) if recurrent else None
        self.factor_size = d_dim if recurrent else 0  # width of the factor's state h^n
        # running statistics of the decision rules `tolerant`/`relative` (worldmodel/decisions.py)
        self.decision_stats: Tensor | None
        if index > 1 and cfg.inference.decision in RUNNING_RULES:
            self.register_buffer("decision_stats", initial_stats(s_dim))
        else:
            self.decision_stats = None
        initialize(self, cfg.init)
        self.start_heads(cfg)

    def start_heads(self, cfg: DLHConfig) -> None:
        """`init_std`: the Gaussian heads output this std at initialisation (None: as drawn)."""
        if cfg.init_std is None:
            return
        for head in (self.posterior, self.prior):
            last = head._linears[-1]
            with torch.no_grad():  # std = softplus(raw) + min_std = init_std at raw = bias
                target = torch.tensor(cfg.init_std - self.min_std)
                last.bias[self.s_dim:] = target + torch.log(-torch.expm1(-target))
                last.weight[self.s_dim:] *= 0.1

    def infer(self, x: Tensor, context: Tensor, d: Tensor | None = None) -> Gaussian:
        """q(s^n | x^n, c^n): x (B, X), context (B, C) -> Gaussian over (B, S).

        Under `posterior_reads_d` the posterior also reads the level's temporal state d (B, D)
        (RSSM's q(s_t | h_t, o_t); a deviation from eq. 13).

        The Gaussian heads run in fp32 under autocast: eq. 4 compares KLs of means whose std
        can be ~0.01, which bf16 rounding would turn into spurious KL (and flipped decisions).
        """
        inputs = [x, context]
        if self.posterior_reads_d:
            if d is None:
                raise ValueError("this level's posterior reads d^n (posterior_reads_d): pass d")
            inputs.append(d)
        with full_precision(x):
            params = self.posterior(torch.cat(inputs, -1).float())
        return gaussian_from_params(params, self.min_std)

    def predict(self, d: Tensor, context: Tensor) -> Gaussian:
        """Change prior p(s^n | d^n, c^n): d (B, D), context (B, C) -> Gaussian over (B, S) (fp32).

        Under `upper_prior: context` a level n >= 2 reads zeros in place of d^n: p(s^n | c^n);
        under `lower_prior: memory` a level below the top reads zeros in place of c^n: p(s^n | d^n).
        """
        if not self.prior_reads_d:
            d = torch.zeros_like(d)
        if not self.prior_reads_c:
            context = torch.zeros_like(context)
        with full_precision(d):
            params = self.prior(torch.cat([d, context], -1).float())
        return gaussian_from_params(params, self.min_std)

    def change_logit(self, d: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Logit of p(e^n = 1 | ·) and the factor's next state: d (B, D), h (B, H) -> (B,), (B, H).

        Feed-forward factor: logit = MLP(d^n), h (width 0) passes through. Recurrent
        factor: h' = GRU(d^n, h) and logit = MLP(h'); the caller keeps h' where e^n was
        decided and resets it to zero where the level changed.
        """
        assert self.factor is not None, "level 1 has no prior factor: e^1 = 1 always"
        if self.factor_cell is None:
            return self.factor(d).squeeze(-1).float(), h
        h = self.factor_cell(d, h)
        return self.factor(h).squeeze(-1).float(), h

    def top_down(self, s: Tensor, context: Tensor) -> Tensor:
        """c^{n-1} = f_dec^n(s^n, c^n): (B, S), (B, C) -> (B, C)."""
        return self.decoder(torch.cat([s, context], -1))

    def transition(self, s: Tensor, d: Tensor, action: Tensor | None) -> Tensor:
        """d' = f_tem^n(s^n, d^n[, a]): (B, S), (B, D), (B, A) -> (B, D)."""
        inputs = torch.cat([s, action], -1) if self.takes_action else s
        if self.temporal_in is not None:
            inputs = self.temporal_in(inputs)
        return self.temporal(inputs, d)


__all__ = ["Level"]
