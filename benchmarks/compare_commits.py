"""Old commit vs new: imagination and training-step speed of two checkouts, alternated in one run.

    git worktree add /tmp/old 20c570b
    python benchmarks/compare_commits.py --old /tmp/old --new . --pairs 4 --threads 1

Each measurement runs in a fresh process whose `PYTHONPATH` is one checkout, alternating old and
new (and which goes first) so that a machine that slows down or speeds up affects both alike;
only the public API is used (`DLH`, `DLHConfig`, `observe`, `imagine`, `loss`), so any two
commits compare. Measured: `imagine(state, 100)` per step at batch 1 and 1000 (paper sizes: 3
levels, 64×64×1, random weights, best of 3) and one training step of the quick-start model
(2 levels, 32×32×3, batch 16 × 40: loss, backward, Adam; best of 6 after 2 warm-up steps).
Prints the median of each side and new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def measure(threads: int) -> dict[str, float]:
    import torch

    from worldmodel import DLH, DLHConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {}
    model = DLH(DLHConfig(levels=3, image_size=64, channels=1)).eval()
    frames = torch.rand(1000, 5, 1, 64, 64)
    with torch.no_grad():
        for batch in (1, 1000):
            state = model.observe(frames[:batch]).state
            best = float("inf")
            for _ in range(3):
                torch.manual_seed(1)
                start = time.perf_counter()
                model.imagine(state, 100)
                best = min(best, time.perf_counter() - start)
            out[f"imagine, batch {batch} (µs/step)"] = best / 100 * 1e6
    quick = DLH(DLHConfig(levels=2, image_size=32, channels=3, x_dim=128, c_dim=128, d_dim=128, s_dim=16,
                          enc_hidden=(128,), dec_hidden=(128,), state_hidden=(64, 64),
                          factor_hidden=(64,), conv_depth=16))
    opt = torch.optim.Adam(quick.parameters(), lr=1e-3)
    x = torch.rand(16, 40, 3, 32, 32)
    best = float("inf")
    for i in range(8):
        torch.manual_seed(i)
        start = time.perf_counter()
        loss, _ = quick.loss(x, beta=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    out["training step, quick start (ms)"] = best * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="checkout of the old commit")
    parser.add_argument("--new", default=".", help="checkout of the new commit")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.threads)))
        return
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for k in range(args.pairs):
        order = ("old", "new") if k % 2 == 0 else ("new", "old")
        for side in order:
            env = {**os.environ, "PYTHONPATH": os.path.abspath(getattr(args, side))}
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--old", "-",
                                   "--threads", str(args.threads)], env=env, capture_output=True,
                                  text=True, check=True, cwd="/")
            results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(side, results[side][-1], flush=True)
    print(f"\n{'measure':<34} {'old (median)':>13} {'new (median)':>13} {'new / old':>10}")
    for key in results["old"][0]:
        old = statistics.median(r[key] for r in results["old"])
        new = statistics.median(r[key] for r in results["new"])
        print(f"{key:<34} {old:13.1f} {new:13.1f} {new / old:10.3f}")


if __name__ == "__main__":
    main()
