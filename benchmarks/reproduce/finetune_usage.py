"""Does a loss option move a feature between levels? Fine-tune trained weights with it and watch.

    python benchmarks/reproduce/finetune_usage.py runs/qs --set loss.held_twice=30 --steps 400
    python benchmarks/reproduce/finetune_usage.py runs/qs --steps 400          # the control

A cheap check of a mechanism before a full training run (issue 23): the run's model is
rebuilt with its config changed by `--set` (fields of `DLHConfig.loss` / `.inference` that add
no parameters, or that add parameters initialised fresh, such as the held_twice probes),
loaded with the run's weights and trained on the run's training data with a fresh Adam at the
run's learning rate, ε and clip, β = 1, one thread. The swap test of level usage
(`worldmodel.evaluation.swap.level_usage`, 128 pairs of 20-frame test windows) runs before
the first step and every `--every` steps; the training loss terms every 100 steps. Always run
the control (no `--set`) beside it: the weights drift under plain training too.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from worldmodel import DLH, DLHConfig, load
from worldmodel.config import from_dict, to_dict
from worldmodel.data import build_source
from worldmodel.evaluation.context import evaluation_source
from worldmodel.evaluation.swap import level_usage
from worldmodel.training.config import apply_overrides, load_config


def changed_config(config: DLHConfig, overrides: list[str]) -> DLHConfig:
    """`config` with `section.field=value` items applied (section: loss, inference), parsed and
    checked as `dlh train --set` parses and checks them."""
    for item in overrides:
        key, equals, _ = item.partition("=")
        section, _, field = key.partition(".")
        if section not in ("loss", "inference") or not field or not equals:
            raise SystemExit(f"--set {item!r}: expected loss.FIELD=VALUE or inference.FIELD=VALUE")
    return from_dict(DLHConfig, apply_overrides(to_dict(config), overrides, DLHConfig))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished run folder (config.yaml, model.safetensors)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=200, help="swap test every so many steps")
    parser.add_argument("--seed", type=int, default=123, help="the training batches and noise")
    parser.add_argument("--pairs", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    run = Path(args.run)
    cfg = load_config(run / "config.yaml")
    trained = load(run / "model.safetensors")
    model = DLH(changed_config(trained.config, args.set))
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    if unexpected:
        raise SystemExit(f"the changed config drops trained parameters: {unexpected[:3]}")
    train = build_source(cfg.data, "train")
    test = evaluation_source(cfg.data, train)[0]
    optim = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, eps=cfg.optim.eps)
    rng = np.random.default_rng(args.seed)
    label = " ".join(args.set) or "control"

    def report(step: int) -> None:
        usage = level_usage(model, test, sequences=2 * args.pairs, length=20, seed=0)
        print(f"[{label}] step {step}: colour -> L2 {usage['level2_colour_upper']:.2f} / -> L1 "
              f"{usage['level2_colour_lower']:.2f}, pixel share {usage['level2_pixel_share']:.2f}, "
              f"ball {usage['level2_position_px']:.2f} px from A's", flush=True)

    print(f"[{label}] new parameters: {len(missing)} tensors" if missing else f"[{label}] no new parameters")
    report(0)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        model.train()
        batch = train.sample(rng, cfg.data.batch_size, cfg.data.seq_len)
        loss, metrics = model.loss(batch.frames, batch.actions, beta=1.0, is_first=batch.is_first)
        optim.zero_grad()
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optim.step()
        if step % 100 == 0:
            shown = {k: v for k, v in metrics.items() if not k.startswith(("change", "factor"))}
            terms = ", ".join(f"{k} {v:.2f}" for k, v in shown.items())
            print(f"  step {step} ({time.perf_counter() - started:.0f} s): {terms}", flush=True)
        if step % args.every == 0:
            report(step)


if __name__ == "__main__":
    main()
