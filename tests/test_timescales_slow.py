"""The quick start's recipe learns Moving Ball's events: level 2 changes at the colour changes,
and the trained model's decisions under bf16 autocast are those of fp32.

Slow (about 13 minutes on 2 CPU cores): the full quick start, `configs/moving_ball_cpu.yaml`,
seed 0. The event F1 is the trainer's own probe (32 held-out windows of 100 frames at the end
of the run); ground-truth flags are only measured, never trained on. Bound chosen from the
measured runs in docs/results.md (timescales section, "The quick start"): this exact run measured
F1 0.662 with the recipe of session 10 (0.400 in session 3, 0.542 with the free bits alone); the
1-thread seeds 0 / 1 / 2 of the recipe 0.34 / 0.46 / 0.62; the paper's reading (`boundary:
reinfer`) with ε 1e-8 sat at 0.18–0.20 and went over-active, and a frozen or collapsed level 2
scores ≈ 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from worldmodel.data import build_source
from worldmodel.training import Trainer, load_config

REPO = Path(__file__).resolve().parents[1]
F1_BOUND = 0.3


@pytest.mark.slow
def test_the_quick_start_learns_the_colour_changes(tmp_path):
    cfg = load_config(REPO / "configs" / "moving_ball_cpu.yaml",
                      [f"out_dir={tmp_path / 'run'}", "threads=2", "media_every=0"])
    trainer = Trainer(cfg, progress=False)
    summary = trainer.fit()
    final = summary["final_metrics"]
    f1 = final["events/level2_f1"]
    assert f1 > F1_BOUND, f"level 2 event F1 {f1:.3f} (precision {final['events/level2_precision']:.3f}, " \
                          f"recall {final['events/level2_recall']:.3f})"
    assert not final["diag/collapsed"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == cfg.steps

    # bf16 autocast at inference takes the trained model's decisions as fp32 does (the eq. 4
    # comparison and the KLs stay fp32): measured 99.2 % agreement on level 2's flags of the
    # fp32 quick-start models (docs/results.md, "bf16 on CPU")
    model = trainer.model.eval()
    frames = build_source(cfg.data, "test").eval_batch(16, 100, seed=1).frames
    with torch.no_grad():
        torch.manual_seed(0)
        fp32 = model.observe(frames).changed
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.manual_seed(0)
            bf16 = model.observe(frames).changed
    agree = float((fp32[..., 1:] == bf16[..., 1:]).float().mean())
    assert agree > 0.97, f"bf16 and fp32 agree on {agree:.3f} of level 2's change flags"
