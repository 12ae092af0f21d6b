"""How well can each prior-factor reading predict the changes a trained model infers?

Table 3 asks how confidently p(e²=1 | ·) predicts level 2's inferred changes. With hard
assignment (eq. 4) the factor does not take part in the decision, and its loss (eq. 8c) is a
plain classification loss on the inferred e. So, holding a trained model fixed, we can fit
fresh factors of both readings (`DLHConfig.prior_factor`) to the e² sequences it infers on
training windows, and compare them on held-out windows — the same inferred changes, only the
factor's reading differs:

* `feedforward`: MLP(d²), where d² does not move while level 2 is static;
* `recurrent`: a GRU cell on d² that restarts at each change, MLP head on its state;
* `as trained`: the model's own factor.

Each refit is Adam on the inferred steps of the training windows, early-stopped on validation
windows (also from the training split). Reported per factor: held-out NLL per inferred step
(nats) and Table 3's statistic (mean p(e²=1) at inferred-change and at inferred-static steps,
t > 0) on the test windows.

    python benchmarks/reproduce/factor_refit.py --checkpoint runs/moving_ball_cpu

Uses the model's private `_filter` to get the states after every step.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.data.registry import build_source
from worldmodel.evaluation.loading import evaluation_source, resolve
from worldmodel.level import Level


@torch.no_grad()
def inferred(model, frames: torch.Tensor, chunk: int = 32):
    """d² before each step (B, T, D), e² (B, T) float, evaluated² (B, T) bool, the model's p (B, T)."""
    ds, es, evs, ps = [], [], [], []
    for start in range(0, frames.shape[0], chunk):
        out, states = model._filter(frames[start:start + chunk], None, None, None)
        after = torch.stack([s.d[1] for s in states], 1)  # d² after each step
        before = torch.cat([torch.zeros_like(after[:, :1]), after[:, :-1]], 1)
        ds.append(before)
        es.append(out.changed[..., 1].float())
        evs.append(out.evaluated[..., 1].clone())
        ps.append(out.change_prob[..., 1])
    ev = torch.cat(evs)
    ev[:, 0] = False  # t = 0 is forced, not inferred
    return torch.cat(ds), torch.cat(es), ev, torch.cat(ps)


def factor_logits(level: Level, d: torch.Tensor, e: torch.Tensor, ev: torch.Tensor) -> torch.Tensor:
    """Logits (B, T) of `level`'s factor over a sequence with the given inferred e (and ticks)."""
    if level.factor_cell is None:
        return level.factor(d).squeeze(-1)
    h = torch.zeros(d.shape[0], level.factor_size)
    logits = []
    for t in range(d.shape[1]):
        new = level.factor_cell(d[:, t], h)
        logits.append(level.factor(new).squeeze(-1))
        tick = (ev[:, t] | (t == 0)).unsqueeze(1)  # level 1 always changes: the factor ticks
        h = torch.where(tick, new, h)
        h = torch.where(e[:, t].bool().unsqueeze(1), torch.zeros_like(h), h)
    return torch.stack(logits, 1)


def report(p: torch.Tensor, e: torch.Tensor, ev: torch.Tensor) -> dict[str, float]:
    p = p.double().clamp(1e-6, 1 - 1e-6)
    e = e.double()
    nll = -(e * p.log() + (1 - e) * (1 - p).log())[ev].mean()
    change, static = ev & (e > 0), ev & (e == 0)
    return {"nll": float(nll), "p_change": float(p[change].mean()), "p_static": float(p[static].mean()),
            "steps_change": int(change.sum()), "steps_static": int(static.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--train-seqs", type=int, default=256)
    ap.add_argument("--eval-seqs", type=int, default=64)
    ap.add_argument("--length", type=int, default=100)
    ap.add_argument("--steps", type=int, default=600, help="Adam steps per factor")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    r = resolve(args.checkpoint)
    model = r.model
    if model.config.levels < 2 or model.config.inference.timescale != "dynamic":
        raise SystemExit("needs a dynamic model with >= 2 levels")
    train_src = build_source(r.data, "train")
    test_src, _ = evaluation_source(r.data)
    rng = np.random.default_rng([args.seed, 1])
    train = inferred(model, train_src.sample(rng, args.train_seqs, args.length).frames)
    val = inferred(model, train_src.sample(rng, args.eval_seqs, args.length).frames)
    test = inferred(model, test_src.eval_batch(args.eval_seqs, args.length, args.seed).frames)
    results = {"as trained (" + model.config.prior_factor + ")": report(test[3].nan_to_num(0.5), *test[1:3])}
    for reading in ("feedforward", "recurrent"):
        torch.manual_seed(args.seed)
        level = Level(model.config.replace(prior_factor=reading), 2)
        params = [p for name, p in level.named_parameters() if name.startswith("factor")]
        opt = torch.optim.Adam(params, lr=args.lr)
        d, e, ev, _ = train
        g = torch.Generator().manual_seed(args.seed)
        best = (float("inf"), None)
        for step in range(args.steps + 1):
            if step % 50 == 0:  # early stopping on validation windows from the training split
                with torch.no_grad():
                    v = report(torch.sigmoid(factor_logits(level, *val[:3])), *val[1:3])["nll"]
                if v < best[0]:
                    best = (v, {k: t.clone() for k, t in level.state_dict().items()})
            if step == args.steps:
                break
            rows = torch.randint(0, d.shape[0], (args.batch,), generator=g)
            logits = factor_logits(level, d[rows], e[rows], ev[rows])
            loss = F.binary_cross_entropy_with_logits(logits[ev[rows]], e[rows][ev[rows]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        level.load_state_dict(best[1])
        with torch.no_grad():
            p = torch.sigmoid(factor_logits(level, *test[:3]))
            part = [x[:args.eval_seqs] for x in train]
            fit = torch.sigmoid(factor_logits(level, *part[:3]))
        results["refit " + reading] = report(p, *test[1:3])
        results["refit " + reading]["train_nll"] = report(fit, *part[1:3])["nll"]
    rate = float(test[1][test[2]].mean())
    print(f"{r.model_file}: {args.train_seqs} train / {args.eval_seqs} held-out windows of {args.length} "
          f"frames; level 2 changes at {rate:.3f} of inferred steps ({time.perf_counter() - started:.0f} s)")
    print("| factor | held-out NLL (nats/step) | training NLL | p(e²=1) at inferred change "
          "| p(e²=1) at inferred static |")
    print("|---|---|---|---|---|")
    for name, m in results.items():
        train_nll = f"{m['train_nll']:.3f}" if "train_nll" in m else "–"
        print(f"| {name} | {m['nll']:.3f} | {train_nll} | {m['p_change']:.3f} | {m['p_static']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            summary = {"checkpoint": str(r.model_file), "change_rate": rate, **vars(args), "results": results}
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
