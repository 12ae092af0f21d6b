"""What the open-loop motion error is made of, on fixed weights (issue 24).

    python benchmarks/reproduce/motion_errors.py runs/a/model.safetensors [--windows 64]

Moving Ball only (the ball is read off the pixels). On `--windows` test windows, context 10,
horizon 30, seed 0:
1. the best of 10 samples' error at +1/+5/+10/+20/+30 px, split by whether the true ball has
   bounced yet; on windows with no bounce in the first k frames, the imagined displacement over
   k frames against the true one (speed) and the angle between them (direction), all samples;
2. which noise matters: the same rollouts with the context's posterior draws at their means,
   the rollout's draws at their means (e^n at its mode), both, or the rollout's noise halved.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch

from worldmodel import load
from worldmodel.distributions import Gaussian
from worldmodel.evaluation.context import evaluation_source
from worldmodel.evaluation.loading import eval_sequences
from worldmodel.training.config import load_config

CONTEXT, HORIZON, SAMPLES, AT = 10, 30, 10, (1, 5, 10, 20, 30)
REAL = Gaussian.rsample


def noise_scaled(factor: float):
    """Gaussian.rsample with its noise times `factor` (0: the mean)."""
    def rsample(self, generator=None):
        if factor == 0:
            return self.mean
        x = REAL(self, generator)
        return self.mean + factor * (x - self.mean)
    return rsample


def rollout(model, source, batch, context_noise: float, rollout_noise: float, samples: int):
    """Centroids (n, samples, HORIZON, 2) of imagined rollouts with the draws scaled as asked."""
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            Gaussian.rsample = noise_scaled(context_noise)
            state = model.observe(batch.frames[:, :CONTEXT]).state.repeat_interleave(samples)
            Gaussian.rsample = noise_scaled(rollout_noise)
            video = model.decode(model.imagine(state, HORIZON, sample_e=rollout_noise != 0))
    finally:
        Gaussian.rsample = REAL
    n = batch.frames.shape[0]
    return source.read_objects(video).centroid.reshape(n, samples, HORIZON, 2)


def errors(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(all errors (n, K, H), the best sample's (n, H)); a lost ball counts 45 px."""
    err = np.linalg.norm(pred - truth[:, None], axis=-1)
    err = np.where(np.isnan(err), 45.0, err)
    best = err.mean(-1).argmin(1)
    return err, err[np.arange(len(best)), best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--windows", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load(args.model)
    model.eval()
    model.hierarchy.step_mode = "eager"  # the fused step draws its own noise
    run = pathlib.Path(args.model).parent
    while not (run / "config.yaml").exists():
        run = run.parent
    source = evaluation_source(load_config(run / "config.yaml").data)[0]
    batch, _ = eval_sequences(source, args.windows, CONTEXT + HORIZON, 0, "context + horizon")
    truth = source.read_objects(batch.frames).centroid
    future, last = truth[:, CONTEXT:], truth[:, CONTEXT - 1]
    pred = rollout(model, source, batch, 1.0, 1.0, SAMPLES)
    _, best = errors(pred, future)
    velocity = np.diff(truth, axis=1)[:, CONTEXT - 1:CONTEXT + HORIZON - 1]
    bounce = (np.sign(velocity[:, 1:]) != np.sign(velocity[:, :-1])).any(-1)
    first_bounce = np.where(bounce.any(1), bounce.argmax(1) + 1, HORIZON)
    for k in AT:
        calm = first_bounce >= k
        split = [np.median(best[rows, k - 1]) if rows.any() else float("nan") for rows in (calm, ~calm)]
        print(f"+{k:2d}: best of {SAMPLES} {np.median(best[:, k - 1]):5.2f} px | no bounce yet "
              f"({calm.sum()}) {split[0]:5.2f} | bounced ({(~calm).sum()}) {split[1]:5.2f}")
    for k in (5, 10):
        calm = first_bounce >= k
        true_step = future[calm, k - 1] - last[calm]
        imagined = pred[calm, :, k - 1] - last[calm][:, None]
        length, true_length = np.linalg.norm(imagined, axis=-1), np.linalg.norm(true_step, axis=-1)[:, None]
        ratio = length / np.maximum(true_length, 1e-3)
        cos = (imagined * true_step[:, None]).sum(-1) / (length * true_length + 1e-9)
        angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        print(f"+{k}, {calm.sum()} windows without a bounce: displacement imagined / true "
              f"{np.nanmedian(ratio):.2f}, direction off by {np.nanmedian(angle):.1f} deg")
    for name, context_noise, rollout_noise, samples in [
            ("context at the posterior means, best of 10", 0.0, 1.0, SAMPLES),
            ("rollout at the prior's means, one rollout", 1.0, 0.0, 1),
            ("both at the means", 0.0, 0.0, 1),
            ("rollout noise halved, best of 10", 1.0, 0.5, SAMPLES)]:
        _, best = errors(rollout(model, source, batch, context_noise, rollout_noise, samples), future)
        print(f"{name}: " + " / ".join(f"{np.median(best[:, k - 1]):.2f}" for k in AT))


if __name__ == "__main__":
    main()
