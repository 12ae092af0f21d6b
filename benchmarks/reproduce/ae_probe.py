"""How fast do the conv towers alone learn a frame's content? A deterministic autoencoder.

    python benchmarks/reproduce/ae_probe.py --steps 600 --seeds 0 1 2 --variant base \\
        --variant 'lr3e-3: lr=3e-3'

The DLH's frame path without the hierarchy: ConvEncoder -> linear bottleneck (|x| = |c|) ->
ConvDecoder, trained on Moving Ball windows with the frame likelihood of the DLH (Gaussian,
fixed `obs_std`, summed over pixels, mean over frames), Adam and the global-norm clip of the
training recipe. Every `every` steps it scores 256 held-out test frames: the mean squared
error on the ball's pixels (those that differ from the background) and the colour kept — the
palette colour nearest to the mean reconstructed colour on the true ball's pixels, against the
true colour. Ground truth is used for measurement only. Each variant's `key=value` items
override the defaults below (names as in `Settings`).

It answers, for the price of seconds a run, which optimiser / likelihood / tower settings let
the towers learn the ball's colour early, before anyone trains a DLH with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time

import numpy as np
import torch
from torch import nn

from worldmodel.data.base import videos_to_frames
from worldmodel.data.moving_ball import DEFAULT_PALETTE, MovingBallOptions, generate_moving_ball
from worldmodel.networks import MLP, ConvDecoder, ConvEncoder, initialize


@dataclasses.dataclass
class Settings:
    lr: float = 1e-3
    eps: float = 1e-8
    clip: float = 100.0        # 0: no clip
    obs_std: float = 0.05      # 0: learned σ² = the batch's MSE (σ-VAE's optimal σ)
    depth: int = 16
    norm: str = "none"         # the conv towers' normalisation (networks.CONV_NORMS)
    act: str = "elu"
    bottleneck: int = 128
    init: str = "torch"        # networks.initialize: "torch" (PyTorch's default) or "xavier"
    latent: int = 0            # > 0: the DLH's latent path between the towers: an MLP to a
    latent_hidden: int = 64    # Gaussian of this size (hidden `latent_hidden`, twice), a sample
    noise: float = 0.7         # with this std at init (softplus head), an MLP [128] back
    sequences: int = 16        # windows per batch ...
    frames: int = 40           # ... and frames taken from each
    size: int = 32


def batch(rng: np.random.Generator, s: Settings) -> torch.Tensor:
    videos, _ = generate_moving_ball(rng, s.sequences, s.frames, s.size, 3, MovingBallOptions())
    return videos_to_frames(videos).flatten(0, 1)


def score(model: nn.Module, frames: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        recon = model(frames)
    model.train()
    ball = (frames > 0.02).any(1)  # (N, H, W): background is black
    mse = float(((recon - frames) ** 2).sum(1)[ball].mean())
    weight = ball.float().unsqueeze(1)
    mean_recon = (recon * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1)  # (N, 3)
    mean_true = (frames * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1)
    palette = torch.tensor(DEFAULT_PALETTE, dtype=torch.float32) / 255.0
    nearest = lambda c: torch.cdist(c, palette).argmin(1)  # noqa: E731
    # the true colour: nearest palette colour to the anti-aliased mean (the rim is darker)
    true = nearest(mean_true / mean_true.amax(1, keepdim=True).clamp_min(1e-6))
    kept = float((nearest(mean_recon / mean_recon.amax(1, keepdim=True).clamp_min(1e-6)) == true)
                 .float().mean())
    return mse, kept


class LatentPath(nn.Module):
    """x -> MLP -> Gaussian (mean, softplus std + 0.01) -> sample -> MLP -> c, as a DLH level."""

    def __init__(self, s: Settings) -> None:
        super().__init__()
        self.head = MLP(s.bottleneck, [s.latent_hidden, s.latent_hidden], 2 * s.latent)
        self.back = MLP(s.latent, [128], s.bottleneck)
        self.settings = s
        self.start_noise()

    def start_noise(self) -> None:
        s = self.settings
        with torch.no_grad():  # std = softplus(bias) + 0.01 = noise at init
            target = torch.tensor(max(s.noise - 0.01, 1e-3))
            self.head._linears[-1].bias[s.latent:] = target + torch.log(-torch.expm1(-target))
            self.head._linears[-1].weight[s.latent:] *= 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, raw = self.head(x).chunk(2, -1)
        std = torch.nn.functional.softplus(raw) + 0.01
        sample = mean + std * torch.randn_like(std) if self.training else mean
        return self.back(sample)


def run(s: Settings, seed: int, steps: int, every: int) -> list[dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    middle = [LatentPath(s)] if s.latent else []
    model = nn.Sequential(ConvEncoder(3, s.size, s.depth, s.bottleneck, s.norm, s.act), *middle,
                          ConvDecoder(3, s.size, s.depth, s.bottleneck, s.norm, s.act))
    initialize(model, s.init)
    for path in middle:  # the std head's start, after the init
        path.start_noise()
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, eps=s.eps)
    test = batch(np.random.default_rng(10_000 + seed), dataclasses.replace(s, sequences=64, frames=4))
    curve = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x = batch(rng, s)
        err = ((model(x) - x) ** 2).sum((1, 2, 3))  # (N,)
        var = s.obs_std**2 if s.obs_std > 0 else float(err.detach().mean()) / x[0].numel()
        loss = (err / (2 * var)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        opt.step()
        if step % every == 0 or step == steps:
            mse, kept = score(model, test)
            curve.append({"step": step, "ball_mse": round(mse, 4), "colour_kept": round(kept, 3),
                          "seconds": round(time.perf_counter() - start, 1)})
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", default=[],
                        help="'name: key=value ...' (overrides of Settings); 'base' alone = defaults")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write every curve to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for spec in args.variant or ["base"]:
        name, _, items = spec.partition(":")
        settings = Settings()
        for item in shlex.split(items):
            key, _, value = item.partition("=")
            kind = type(getattr(settings, key))
            setattr(settings, key, kind(float(value)) if kind is int else kind(value))
        for seed in args.seeds:
            curve = run(settings, seed, args.steps, args.every)
            results[f"{name.strip()}_s{seed}"] = curve
            cells = "  ".join(f"{c['step']}: {c['colour_kept']:.2f}/{c['ball_mse']:.3f}" for c in curve)
            print(f"{name.strip():>14} s{seed}  colour kept / ball MSE at step  {cells}  "
                  f"({curve[-1]['seconds']} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
