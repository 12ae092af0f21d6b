"""Decision bench: score eq. 4 decision rules on the fixed weights of a trained run, in seconds.

    python benchmarks/reproduce/decision_bench.py runs/quick --rules paper margin:30 relative:2
    python benchmarks/reproduce/decision_bench.py runs/quick --checkpoint step_00000800 --json out.json

Only the rule that turns a candidate posterior q'(s^n) and the two mixture components into e^n
changes; the weights do not. For each rule, filtering runs on 64 fresh test windows of 100 frames
(the windows of `dlh analyze --seed 0`) and the level-2 flags are scored against the data's true
changes (Moving Ball's colour): precision / recall / F1 exact and ±1 step, the change rate, L̄;
and the loss runs on the same windows under the rule (the negative ELBO per frame and its terms)
— what training with that rule would be optimising at these weights. Statistics a rule needs (a
running mean and spread) come from a calibration pass with the paper's rule on other windows
(`--seed 1`), as a running estimate would see them in training.

Rules (name[:parameter]):
  paper           eq. 4: the nearer component wins (KL_change < KL_static).
  margin:M        the change component must win by M nats (`model.decision_margin`).
  map             the learned prior odds join the rule (`model.decision: map`).
  tolerant:C      the static prior's std widened by C × the level's drift scale (the RMS of
                  the candidate mean's step-to-step drift per dimension) for the decision only.
  relative:G      eq. 4 and a surprise test: log KL_static above its mean by G standard
                  deviations (EM-LLM's boundary rule on our KL).
  surprise:G      the surprise test alone (no eq. 4).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import worldmodel.hierarchy as hierarchy_module
from worldmodel.distributions import Gaussian, kl_gaussian
from worldmodel.evaluation.events import level_event_scores
from worldmodel.evaluation.loading import eval_sequences, evaluation_source, resolve

PAPER = hierarchy_module.change_posterior


class Recorder:
    """Wraps `change_posterior`: records the level-2.. quantities of every call, applies `rule`."""

    def __init__(self, levels: int, rule=None, stats=None) -> None:
        self.levels, self.rule, self.stats = levels, rule, stats
        self.calls = 0
        self.log: list[dict[str, torch.Tensor]] = []

    def __call__(self, q, change_prior, static_prior, logit, assignment, decision="kl", margin=0.0):
        level = self.calls % (self.levels - 1)  # 0 -> level 2
        self.calls += 1
        kl_c, kl_s = kl_gaussian(q, change_prior), kl_gaussian(q, static_prior)
        self.log.append({"level": level, "kl_static": kl_s, "kl_change": kl_c,
                         "drift": (q.mean - static_prior.mean).float()})
        if self.rule is None:
            return PAPER(q, change_prior, static_prior, logit, assignment, decision, margin)
        return self.rule(q, change_prior, static_prior, logit, kl_s, kl_c, self.stats[level]).float()


def make_rule(spec: str):
    name, _, value = spec.partition(":")
    x = float(value) if value else None
    if name == "paper":
        return lambda q, c, s, logit, kl_s, kl_c, st: kl_s > kl_c
    if name == "margin":
        return lambda q, c, s, logit, kl_s, kl_c, st: kl_s > kl_c + x
    if name == "map":
        return lambda q, c, s, logit, kl_s, kl_c, st: kl_s - kl_c + logit.float() > 0
    if name == "tolerant":
        def tolerant(q, c, s, logit, kl_s, kl_c, st):
            wide = Gaussian(s.mean, torch.sqrt(s.std**2 + (x * st["drift_rms"]) ** 2))
            return kl_gaussian(q, wide) > kl_c
        return tolerant
    if name in ("relative", "surprise"):
        def relative(q, c, s, logit, kl_s, kl_c, st):
            z = (torch.log(kl_s.clamp_min(1e-6)) - st["log_mean"]) / st["log_std"]
            return (z > x) & (kl_s > kl_c) if name == "relative" else z > x
        return relative
    raise SystemExit(f"unknown rule {spec!r}")


def filtered(model, frames, rule=None, stats=None, chunk=16, with_loss=True):
    """observe (+ loss) over `frames` in chunks with `change_posterior` replaced; (changed, metrics, log)."""
    rec = Recorder(model.config.levels, rule, stats)
    hierarchy_module.change_posterior = rec
    try:
        changed, sums, count = [], {}, 0
        for i in range(0, len(frames), chunk):
            torch.manual_seed(i)
            with torch.no_grad():
                changed.append(model.observe(frames[i:i + chunk]).changed)
                if not with_loss:
                    continue
                _, metrics = model.loss(frames[i:i + chunk], beta=1.0)
            for key in ("loss", "recon", "kl", "factor_kl"):
                sums[key] = sums.get(key, 0.0) + metrics[key] * len(frames[i:i + chunk])
            count += len(frames[i:i + chunk])
    finally:
        hierarchy_module.change_posterior = PAPER
    return torch.cat(changed), {k: v / max(count, 1) for k, v in sums.items()}, rec.log


def calibrate(log: list[dict], levels: int) -> list[dict[str, torch.Tensor]]:
    stats = []
    for level in range(levels - 1):
        entries = [e for e in log if e["level"] == level]
        kl_s = torch.cat([e["kl_static"].flatten() for e in entries])
        drift = torch.cat([e["drift"].reshape(-1, e["drift"].shape[-1]) for e in entries])
        log_kl = torch.log(kl_s.clamp_min(1e-6))
        # robust centre and spread: true changes are rare outliers of the static KL
        med = log_kl.median()
        mad = (log_kl - med).abs().median() * 1.4826
        stats.append({"log_mean": med, "log_std": mad.clamp_min(1e-3),
                      "drift_rms": drift.pow(2).median(0).values.sqrt()})
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--checkpoint", default=None, help="name under RUN/checkpoints (default: latest)")
    parser.add_argument("--rules", nargs="+", default=["paper", "map", "margin:10", "margin:30",
                                                       "tolerant:1", "tolerant:3", "relative:1",
                                                       "relative:2", "relative:3", "surprise:2"])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = Path(args.run)
    resolved = resolve(run / "checkpoints" / args.checkpoint if args.checkpoint else run)
    model = resolved.model
    source, _ = evaluation_source(resolved.data)
    batch, truth = eval_sequences(source, args.sequences, args.length, 0)
    calib, _ = eval_sequences(source, 32, args.length, 1)
    if truth is None:
        raise SystemExit(f"{resolved.data.name} supplies no change flags")
    _, _, log = filtered(model, calib.frames, with_loss=False)
    stats = calibrate(log, model.config.levels)
    print(f"{resolved.model_file}: level-2 calibration: median log KL_static "
          f"{float(stats[0]['log_mean']):.2f} (KL {math.exp(float(stats[0]['log_mean'])):.1f} nats), "
          f"robust std {float(stats[0]['log_std']):.2f}, drift RMS {float(stats[0]['drift_rms'].mean()):.4f}")
    rows = []
    print(f"{'rule':>14} {'F1':>6} {'P':>6} {'R':>6} {'F1±1':>6} {'rate':>6} {'L̄':>6} "
          f"{'-ELBO':>9} {'recon':>9} {'KL':>7} {'fKL':>6}")
    for spec in args.rules:
        changed, metrics, _ = filtered(model, batch.frames, make_rule(spec), stats)
        r = level_event_scores(changed, truth)["level2"]
        ex = r["exact"]
        lbar = float(changed.float().sum(-1).mean())
        row = {"rule": spec, "f1": ex["f1"], "precision": ex["precision"], "recall": ex["recall"],
               "f1_tol1": r["tol1"]["f1"], "change_rate": r["change_rate"], "levels_used": lbar,
               **metrics}
        rows.append(row)
        print(f"{spec:>14} {ex['f1']:6.3f} {ex['precision']:6.3f} {ex['recall']:6.3f} "
              f"{r['tol1']['f1']:6.3f} {r['change_rate']:6.3f} {lbar:6.3f} {metrics['loss']:9.1f} "
              f"{metrics['recon']:9.1f} {metrics['kl']:7.2f} {metrics['factor_kl']:6.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
