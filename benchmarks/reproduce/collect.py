"""Collect the reproduction runs under a folder into the markdown tables of docs/results.md.

    python benchmarks/reproduce/collect.py runs/reproduce > runs/reproduce/tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pm(stat: dict | None, digits: int = 2) -> str:
    if not stat:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _wall(run: Path) -> str:
    summary = _load(run / "summary.json")
    return f"{summary['wall_time_s'] / 60:.0f} min" if summary else "–"


def table3(root: Path) -> list[str]:
    lines = ["| prior factor | λ | p(e²=1) at inferred change | p(e²=1) at inferred static | L̄ "
             "| P(e²=1 \\| true change) | P(e²=1 \\| no change) | event F1 (exact / ±1) | steps "
             "| train wall |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for factor, suffix in (("feedforward", ""), ("recurrent", "_recurrent")):
        for lam in ("0.0", "0.1", "0.3"):
            lines += _table3_row(root / f"ball_lam{lam}{suffix}", factor, lam)
    return lines


def _table3_row(run: Path, factor: str, lam: str) -> list[str]:
    a = _load(run / "analysis" / "analysis.json")
    if a is None:
        return []
    prior = a.get("change_prior", {}).get("level2", {})
    det = a.get("change_detection", {}).get("level2", {})
    summary = _load(run / "summary.json") or {}
    wall = f"{summary['wall_time_s'] / 60:.0f} min" if summary else "–"
    events = a.get("events", {}).get("level2")
    f1 = f"{events['exact']['f1']:.2f} / {events['tol1']['f1']:.2f}" if events else "–"
    return [
        f"| {factor} | {lam} | {_pm(prior.get('change'), 3)} | {_pm(prior.get('static'), 3)} | "
        f"{_pm(a['levels_used'])} | {det.get('hit_rate', float('nan')):.2f} | "
        f"{det.get('false_alarm_rate', float('nan')):.2f} | {f1} | {summary.get('steps', '–')} | {wall} |"
    ]


def levels(root: Path) -> list[str]:
    lines = ["| levels | L̄ | total KL | KL (L1) | KL (L2) | KL (L3) | KL (L4) | KL (L5) | train wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in (2, 3, 4, 5):
        run = root / ("ball_lam0.0" if n == 2 else f"ball_levels{n}")
        a = _load(run / "analysis" / "analysis.json")
        if a is None:
            continue
        kls = [f"{a['kl_per_level'][f'level{i}']['mean']:.2f}" if i <= n else "–" for i in range(1, 6)]
        lines.append(f"| {n} | {_pm(a['levels_used'])} | {_pm(a['kl_total'], 1)} | " + " | ".join(kls)
                     + f" | {_wall(run)} |")
    return lines


def baselines(root: Path) -> list[str]:
    lines = ["| data | steps | timescale | SSIM (Gaussian 11×11) | SSIM (uniform 7×7) | PSNR (dB) "
             "| context / horizon / K | train wall |", "|---|---|---|---|---|---|---|---|"]
    for data, prefix in (("Moving Ball", "ball"), ("Moving Fashion-MNIST", "fmnist")):
        for run in sorted(root.glob(f"{prefix}_steps*_*")):
            e = _load(run / "eval" / "eval.json")
            if e is None:
                continue
            steps, mode = run.name[len(prefix) + 6:].split("_", 1)
            av = e["averages"]
            ssim, psnr = av["ssim_gaussian11"], av["psnr"]
            lines.append(
                f"| {data} | {steps} | {mode} | {ssim['mean']:.3f} ± {ssim['std_over_sequences']:.3f}"
                f" | {av['ssim_uniform7']['mean']:.3f}"
                f" | {psnr['mean']:.2f} ± {psnr['std_over_sequences']:.2f}"
                f" | {e['context']} / {e['horizon']} / {e['samples']} | {_wall(run)} |"
            )
    return lines


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce")
    for title, rows in (("Table 3", table3(root)), ("Tables 2 and 5", levels(root)),
                        ("Baselines", baselines(root))):
        print(f"### {title}\n")
        print("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
