"""`dlh eval`, `dlh rollout` and `dlh analyze`: the evaluation sub-commands of the `dlh` CLI.

    dlh eval --checkpoint runs/mb --context 10 --horizon 90 --samples 100 [--sequences 100]
    dlh rollout --checkpoint runs/mb --context 10 --horizon 90 [--sequences 4] --out media/
    dlh analyze --checkpoint runs/mb [--sequences 32] [--length 100] --out analysis/

`--checkpoint` takes a model file, a checkpoint folder or a run folder; the data come from the
run's config.yaml (override with --config FILE and --set data.key=value). Results go to --out
(default: <run>/eval, <run>/rollout, <run>/analysis).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from ..files import check_output_folder
from ..metrics import SSIM_VARIANTS
from ..reports import json_text
from ..video import comparison_grid, image_grid, plot_curves, save_png, write_gif, write_mp4
from .analysis import (
    change_map_figure,
    level_samples,
    sampling_groups,
    sequence_measures,
    summarize,
)
from .events import level_event_scores, true_change_rate
from .loading import Resolved, eval_sequences, evaluation_source, resolve
from .probes import level_probes
from .protocol import EvalResult, averages_with_std, best_of_k_curves, evaluate, ssim_name
from .swap import format_usage, level_usage
from .tracking import DEFINITION as TRACKING_DEFINITION
from .tracking import format_tracking, offsets_within, tracking_scores


# ---------------------------------------------------------------------- shared
def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise ValueError(f"--{name} must be > 0, got {value}")
    return value


def _common(p: argparse.ArgumentParser, sequences: int) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="model file, checkpoint folder (run/checkpoints/step_*) or run folder")
    p.add_argument("--sequences", type=int, default=sequences, help="test sequences (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences filtered at once (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data windows and the sampling noise")
    p.add_argument("--out", default=None, help="output folder (default: <run>/<command>)")
    p.add_argument("--config", default=None, help="YAML config whose data: section to use "
                   "(default: the run's config.yaml)")
    p.add_argument("--set", action="append", metavar="data.KEY=VALUE",
                   help="override a data setting, e.g. --set data.options.lam=0.1 (repeatable)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:i]")


def _tracking_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--track-sequences", type=int, default=32, help="fresh test windows of the "
                   "open-loop tracking scores, for data that can read its objects off the frames "
                   "(Moving Ball); 0 skips them (default %(default)s)")
    p.add_argument("--track-samples", type=int, default=10, help="K of the tracking scores' best "
                   "of K (default %(default)s)")
    p.add_argument("--track-context", type=int, default=10, help="frames filtered before the "
                   "tracked rollout (default %(default)s)")
    p.add_argument("--track-horizon", type=int, default=30, help="open-loop frames tracked "
                   "(default %(default)s)")


def _tracking(args: argparse.Namespace, model: Any, source: Any) -> dict[str, Any] | None:
    """The tracking scores with their settings, or None (skipped, or no objects to read)."""
    if args.track_sequences < 0:
        raise ValueError(f"--track-sequences must be >= 0, got {args.track_sequences}")
    if args.track_sequences == 0:
        return None
    for name in ("track_samples", "track_context", "track_horizon"):
        _positive(name.replace("_", "-"), getattr(args, name))
    scores = tracking_scores(model, source, context=args.track_context, horizon=args.track_horizon,
                             samples=args.track_samples, sequences=args.track_sequences,
                             seed=args.seed, at=offsets_within(args.track_horizon))
    if scores is None:
        return None
    print(f"tracking (best of {args.track_samples}, context {args.track_context}, "
          f"{args.track_sequences} sequences): {format_tracking(scores)}")
    return {"context": args.track_context, "horizon": args.track_horizon,
            "samples": args.track_samples, "sequences": args.track_sequences,
            "definition": TRACKING_DEFINITION, **scores}


def _setup(args: argparse.Namespace, command: str) -> tuple[Resolved, Path]:
    _positive("sequences", args.sequences)
    _positive("batch-size", args.batch_size)
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    resolved = resolve(args.checkpoint, args.config, args.set, args.device)
    default = (resolved.run_dir or resolved.model_file.parent) / command
    out = check_output_folder(args.out) if args.out else default
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    return resolved, out


def _command(args: argparse.Namespace) -> str:
    """The canonical command line equivalent to the parsed `args`."""
    words = ["dlh", args.command]
    for key, value in sorted(vars(args).items()):
        if key in ("command", "func") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list) and key == "set":  # an append option: one flag per item
            for item in value:
                words += [flag, str(item)]
        elif isinstance(value, list):  # nargs="+"
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _provenance(args: argparse.Namespace, resolved: Resolved, split: str, started: float) -> dict[str, Any]:
    return {
        "command": _command(args),
        "checkpoint": str(resolved.model_file),
        "run_dir": str(resolved.run_dir) if resolved.run_dir else None,
        "data": resolved.data.name,
        "data_options": resolved.data.options,
        "data_config_from": resolved.data_origin,
        "split": split,
        "seed": args.seed,
        "device": str(resolved.model.device),
        "wall_time_s": round(time.perf_counter() - started, 2),
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from ..files import atomic_write_text

    atomic_write_text(path, json_text(payload) + "\n")


def _check_window(context: int, horizon: int) -> None:
    _positive("context", context)
    _positive("horizon", horizon)


# ---------------------------------------------------------------------- dlh eval
def _merge(parts: list[EvalResult]) -> EvalResult:
    """One EvalResult from results over disjoint batches of sequences."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    stacked = {n: torch.cat([p.per_sequence[n] for p in parts]) for n in first.names}

    merged = EvalResult(
        per_sequence=stacked,
        curves={n: v.mean(0) for n, v in stacked.items()},
        averages={n: float(v.mean()) for n, v in stacked.items()},
        stds={n: float(v.mean(1).std(unbiased=False)) for n, v in stacked.items()},
        best=torch.cat([p.best for p in parts]), chosen=torch.cat([p.chosen for p in parts]),
        selected_by=first.selected_by, context=first.context, horizon=first.horizon,
        samples=first.samples, names=first.names,
    )
    return merged


def run_eval(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _check_window(args.context, args.horizon)
    _positive("samples", args.samples)
    if args.chunk is not None:
        _positive("chunk", args.chunk)
    resolved, out = _setup(args, "eval")
    source, split = evaluation_source(resolved.data)
    batch, _ = eval_sequences(source, args.sequences, args.context + args.horizon, args.seed,
                              "context + horizon")
    model, parts = resolved.model, []
    for lo in range(0, args.sequences, args.batch_size):
        rows = slice(lo, lo + args.batch_size)
        parts.append(evaluate(
            model, batch.frames[rows], args.context, args.horizon, args.samples, args.ssim_variants,
            actions=None if batch.actions is None else batch.actions[rows],
            is_first=None if batch.is_first is None else batch.is_first[rows], chunk=args.chunk,
        ))
    result = _merge(parts)

    names = result.names
    with (out / "curves.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "frame", *names])
        for k in range(args.horizon):
            writer.writerow([k + 1, args.context + k, *(f"{float(result.curves[n][k]):.6g}" for n in names)])
    ssim_curves = {n: result.curves[n] for n in names if n.startswith("ssim_")}
    title = f"best of {args.samples}, context {args.context}"
    plot_curves(out / "ssim.png", ssim_curves, "SSIM", title=title)
    plot_curves(out / "psnr.png", {"psnr": result.curves["psnr"]}, "PSNR (dB)", title=title)
    shown = min(4, args.sequences)
    truth = batch.frames[:shown, args.context:args.context + args.horizon]
    write_gif(out / "best_samples.gif", comparison_grid(truth, result.best[:shown].cpu(), context=0),
              fps=8, upscale=2)
    summary = {
        **_provenance(args, resolved, split, started),
        "protocol": f"best of K={args.samples} samples per sequence by mean {result.selected_by} "
                    "over the horizon (Denton & Fergus 2018); per-frame curves averaged over sequences",
        "context": args.context, "horizon": args.horizon, "samples": args.samples,
        "sequences": args.sequences, "ssim_variants": [ssim_name(v) for v in args.ssim_variants],
        "selected_by": result.selected_by,
        "averages": averages_with_std(result),
        "files": {"curves": "curves.csv", "ssim_plot": "ssim.png", "psnr_plot": "psnr.png",
                  "best_samples": "best_samples.gif"},
    }
    scores = "  ".join(f"{n} {result.averages[n]:.4f}" for n in names if n != "mse")
    print(f"best of {args.samples}, {args.sequences} sequences, context {args.context}, "
          f"horizon {args.horizon}: {scores}")
    tracking = _tracking(args, model, source)
    if tracking is not None:
        summary["tracking"] = tracking
    summary["wall_time_s"] = round(time.perf_counter() - started, 2)
    _write_json(out / "eval.json", summary)
    print(f"  wrote {out / 'eval.json'}, curves.csv, ssim.png, psnr.png")
    return 0


# ---------------------------------------------------------------------- dlh rollout
@torch.no_grad()
def run_rollout(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _check_window(args.context, args.horizon)
    resolved, out = _setup(args, "rollout")
    source, split = evaluation_source(resolved.data)
    batch, _ = eval_sequences(source, args.sequences, args.context + args.horizon, args.seed,
                              "context + horizon")
    model = resolved.model
    frames = batch.frames.to(model.device)
    actions = batch.actions.to(model.device) if batch.actions is not None else None
    first = batch.is_first[:, :args.context].to(model.device) if batch.is_first is not None else None
    obs = model.observe(frames[:, :args.context], None if actions is None else actions[:, :args.context],
                        first)
    future = None if actions is None else actions[:, args.context:args.context + args.horizon]
    pred = model.decode(model.imagine(obs.state, args.horizon, future))
    video = torch.cat([obs.recon, pred], 1).cpu()  # context: reconstructions, then the rollout
    grid = comparison_grid(batch.frames, video, context=args.context, ncol=min(args.sequences, 4))
    gif = write_gif(out / "rollout.gif", grid, fps=args.fps, upscale=args.upscale)
    mp4 = write_mp4(out / "rollout.mp4", grid, fps=args.fps, upscale=args.upscale)

    def single(rows: torch.Tensor, first_sample: int, count: int) -> torch.Tensor:
        return pred[rows.to(pred.device)].unsqueeze(1).float()

    truth = frames[:, args.context:args.context + args.horizon].float()
    scores = best_of_k_curves(single, truth, 1)
    _write_json(out / "rollout.json", {
        **_provenance(args, resolved, split, started),
        "context": args.context, "horizon": args.horizon, "sequences": args.sequences,
        "layout": "per sequence: ground truth above prediction; green frames = context (the "
                  "prediction row shows reconstructions there), red = open-loop prediction",
        "single_sample_averages": averages_with_std(scores),
        "files": {"gif": gif.name, "mp4": mp4.name},
    })
    print(f"wrote {gif} and {mp4}")
    return 0


# ---------------------------------------------------------------------- dlh analyze
@torch.no_grad()
def run_analyze(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _positive("samples", args.samples)
    if args.maps < 0:
        raise ValueError(f"--maps must be >= 0, got {args.maps}")
    resolved, out = _setup(args, "analysis")
    length = args.length if args.length is not None else resolved.data.seq_len
    _positive("length", length)
    source, split = evaluation_source(resolved.data)
    batch, truth_changes = eval_sequences(source, args.sequences, length, args.seed, "--length")
    model = resolved.model
    dynamic = model.config.inference.timescale == "dynamic"
    measures: dict[str, list[torch.Tensor]] = {}
    changed_all: list[torch.Tensor] = []
    maps = []
    for lo in range(0, args.sequences, args.batch_size):
        rows = slice(lo, lo + args.batch_size)
        obs = model.observe(
            batch.frames[rows].to(model.device),
            None if batch.actions is None else batch.actions[rows].to(model.device),
            None if batch.is_first is None else batch.is_first[rows].to(model.device))
        truth = None if truth_changes is None else truth_changes[rows]
        changed_all.append(obs.changed.cpu())
        for key, value in sequence_measures(obs, truth, change_prior=dynamic).items():
            measures.setdefault(key, []).append(value)
        for b in range(min(obs.changed.shape[0], args.maps - lo)):
            maps.append(change_map_figure(
                out / f"change_map_{lo + b}.png", batch.frames[lo + b], obs.changed[b], obs.evaluated[b],
                None if truth is None else truth[b], title=f"inferred e^n, sequence {lo + b}"))
        if lo == 0:  # Fig. 5a / 10 / 11 from the last filtered state of sequence 0
            generator = torch.Generator().manual_seed(args.seed)
            groups = sampling_groups(model.config.levels)
            last = batch.frames[0, -1]
            grids = {}
            for name, rows_of_levels in groups.items():
                if not rows_of_levels:  # a one-level model has no split
                    continue
                tiles = level_samples(model, obs.state, rows_of_levels, args.samples, last, generator)
                path = out / f"samples_{name}.png"
                grids[path.stem] = save_png(path, image_grid(tiles, border=1), upscale=2)
    report = summarize({k: torch.cat(v) for k, v in measures.items()})
    report["steps"] = length
    if truth_changes is not None and model.config.levels >= 2:
        report["events"] = {"true_change_rate": true_change_rate(truth_changes),
                            **level_event_scores(torch.cat(changed_all), truth_changes)}
    tracking = _tracking(args, model, source)
    if tracking is not None:
        report["tracking"] = tracking
    if args.probe_sequences < 0 or args.probe_sequences == 1:
        raise ValueError(f"--probe-sequences must be 0 or >= 2, got {args.probe_sequences}")
    probes = None
    if args.probe_sequences and batch.actions is None:
        probes = level_probes(model, source, sequences=args.probe_sequences,
                              length=_positive("probe-length", args.probe_length), seed=args.seed)
    if probes is not None:
        report["probes"] = {"sequences": args.probe_sequences, "length": args.probe_length, **probes}
    if args.swap_pairs < 0:
        raise ValueError(f"--swap-pairs must be 0 (off) or positive, got {args.swap_pairs}")
    usage = None
    if args.swap_pairs and model.config.levels >= 2:
        usage = level_usage(model, source, sequences=2 * args.swap_pairs,
                            length=_positive("swap-length", args.swap_length), seed=args.seed)
        report["usage"] = {"length": args.swap_length, **usage}
    payload = {
        **_provenance(args, resolved, split, started),
        "levels": model.config.levels, "timescale": model.config.inference.timescale,
        "definitions": {
            "levels_used": "L̄ = (1/T) Σ_t Σ_n e^n_t per sequence, mean ± std over sequences (Table 2)",
            "kl_per_level": "mean over steps of each level's state KL (eq. 9; Table 5)",
            "change_prior": "mean p(e^n=1|d^n) over steps t>0 where q(e^n) inferred change vs static, "
                            "per sequence, then mean ± std over sequences (Table 3)",
            "change_detection": "P(e^2=1 | true colour change) and P(e^2=1 | none) (Moving Ball)",
            "events": "level n's e^n_t (t >= 1) scored as a detector of the data's true changes: "
                      "precision, recall, F1 with exact matching and with one-to-one matching "
                      "within ±1 step (tol1); counts summed over sequences",
            "samples_per_level": "rows: level n resampled from its stored distribution, others held; "
                                 "columns: truth, held state, samples (Fig. 5a)",
            "samples_split": "rows alternate levels >= m resampled (Fig. 10) and levels < m "
                             "resampled (Fig. 11), for m = 2..N",
            "tracking": TRACKING_DEFINITION,
            "usage": "the swap test (evaluation.swap.level_usage): frames decoded from sequence A's "
                     "posterior means below level n and B's from level n up; pixel_share = "
                     "Σ‖swap − A‖² / Σ‖B − A‖²; colour_upper/lower: the swapped ball has B's / A's "
                     "colour (pairs whose colours differ); position_px: its distance from A's ball",
            "probes": "R² on held-out sequences of a least-squares linear map (with bias) from level "
                      "n's posterior mean to the object's position (x, y px) and palette colour, "
                      "fitted on the other half of the sequences (evaluation.probes.level_probes)",
        },
        "sampling_groups": sampling_groups(model.config.levels),
        **report,
        "files": {"change_maps": [p.name for p in maps], **{k: v.name for k, v in grids.items()}},
    }
    payload["wall_time_s"] = round(time.perf_counter() - started, 2)
    _write_json(out / "analysis.json", payload)
    lu = report["levels_used"]
    kl = "  ".join(f"L{n + 1} {report['kl_per_level'][f'level{n + 1}']['mean']:.2f}"
                   for n in range(model.config.levels))
    print(f"levels used {lu['mean']:.3f} ± {lu['std']:.3f}   KL per level: {kl}")
    for level, stats in report.get("change_prior", {}).items():
        c, s = stats["change"]["mean"], stats["static"]["mean"]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"p(e=1|d) at {level}: change {fmt(c)}  static {fmt(s)}")
    for level, ev in report.get("events", {}).items():
        if not level.startswith("level"):
            continue
        ex, tol = ev["exact"], ev["tol1"]
        print(f"events at {level}: precision {ex['precision']:.3f}  recall {ex['recall']:.3f}  "
              f"F1 {ex['f1']:.3f}   (±1 step: F1 {tol['f1']:.3f})   change rate {ev['change_rate']:.3f} "
              f"(true {report['events']['true_change_rate']:.3f})")
    if probes is not None:
        shown = "   ".join(f"L{n} position {probes[f'level{n}_position_r2']:.3f} colour "
                           f"{probes[f'level{n}_colour_r2']:.3f}" for n in range(1, model.config.levels + 1))
        print(f"level probes R²: {shown}")
    if usage is not None:
        print(format_usage(usage))
    print(f"  wrote {out / 'analysis.json'} and PNGs")
    return 0


# ---------------------------------------------------------------------- parsers
def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `eval`, `rollout` and `analyze` on the `dlh` sub-parsers."""
    p = sub.add_parser("eval", help="best-of-K open-loop SSIM/PSNR per frame (paper §4.1)")
    _common(p, sequences=100)
    p.add_argument("--context", type=int, required=True, help="context frames filtered")
    p.add_argument("--horizon", type=int, required=True, help="open-loop frames predicted and scored")
    p.add_argument("--samples", type=int, default=100, help="K samples per sequence (default 100)")
    p.add_argument("--chunk", type=int, default=None, help="most rollouts per imagine call "
                   "(default: rollouts x horizon <= 4096 frames on CPU, 65536 on GPU)")
    p.add_argument("--ssim-variants", nargs="+", choices=SSIM_VARIANTS, default=list(SSIM_VARIANTS),
                   help="SSIM variants to report; the first selects the best sample")
    _tracking_flags(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("rollout", help="ground truth beside an open-loop prediction (GIF and MP4)")
    _common(p, sequences=4)
    p.add_argument("--context", type=int, required=True, help="context frames filtered")
    p.add_argument("--horizon", type=int, required=True, help="open-loop frames predicted")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--upscale", type=int, default=2)
    p.set_defaults(func=run_rollout)

    p = sub.add_parser("analyze", help="levels used, per-level KL, change maps, per-level samples, "
                       "change prior (paper §4.3-4.4)")
    _common(p, sequences=32)
    p.add_argument("--length", type=int, default=None, help="frames per sequence (default data.seq_len)")
    p.add_argument("--samples", type=int, default=8, help="samples per row of the sampling grids")
    p.add_argument("--maps", type=int, default=2, help="change-map PNGs to draw (default 2)")
    _tracking_flags(p)
    p.add_argument("--probe-sequences", type=int, default=24, help="test windows of the linear "
                   "level probes (position, colour), for data that can read its objects; 0 skips "
                   "them (default %(default)s)")
    p.add_argument("--swap-pairs", type=int, default=128, help="pairs of test windows of the swap "
                   "test of level usage (0: off; default %(default)s)")
    p.add_argument("--swap-length", type=int, default=20, help="frames filtered per swap window "
                   "(default %(default)s)")
    p.add_argument("--probe-length", type=int, default=60, help="frames per probe window "
                   "(default %(default)s)")
    p.set_defaults(func=run_analyze)


__all__ = ["add_parsers", "run_eval", "run_rollout", "run_analyze"]
