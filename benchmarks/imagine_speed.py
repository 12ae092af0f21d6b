"""Imagination speed: `dynamic` (static levels reused) vs `every_step`, against measured floors.

Two ways to run it:

- **trained weights** (`--checkpoint`, or random paper-sized weights): each mode's steps/s,
  the mean number of changing levels L̄ of the dynamic rollout and the ratio
  dynamic/every_step against the target 0.8·N/L̄ (batch 1).
- **pinned change rate** (`--change-prob P ...`): every prior factor is pinned to
  p(e = 1) = P (its last layer's weights zeroed, its bias set to logit P), so L̄ is known
  in advance and does not depend on training. Runs N ∈ `--levels` × batch × P.

Either way each mode's time per step is printed as a multiple of its **floor**: the measured
time of the bare networks that must run in that step, and nothing else. A level that changes
runs its change prior, the sample, its decoder and its GRU (on the rows where it changes);
in `dynamic` mode the prior factor of every level whose level below changed runs as well
(that is how the first static level is found). The floor is built from the rollout's own
e flags: for level n, the fraction of steps on which it runs on at least one row times the
time of its bare networks on the mean number of such rows (timed in isolation, best of
`--repeats`). What a mode spends above its floor is the decision, gather/scatter and
bookkeeping. Ratios are measured within one run.

    python benchmarks/imagine_speed.py --change-prob 0.05 0.1 0.3 --threads 1   # floors, N = 2, 3
    python benchmarks/imagine_speed.py --change-prob 0.1 --step-mode eager --threads 1   # reference path
    python benchmarks/imagine_speed.py --level-step --threads 1   # one level: eager / fused / compiled
    python benchmarks/imagine_speed.py --checkpoint runs/moving_ball_cpu/model.safetensors
    python benchmarks/imagine_speed.py                       # paper sizes, random weights
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Callable

import torch

from worldmodel import DLH, DLHConfig, load
from worldmodel.fastpath import change_step


def _best_time(fn: Callable[[], object], repeats: int, inner: int) -> float:
    """Best-of-`repeats` seconds per call of `fn` (averaged over `inner` calls)."""
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def timed_rollout(model: DLH, state, horizon: int, repeats: int) -> tuple[float, torch.Tensor]:
    """Best-of-`repeats` seconds per imagined step and the e flags (B, horizon, N) of the last rollout."""
    best, changed = math.inf, None
    with torch.inference_mode():
        model.imagine(state, min(horizon, 5))  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            traj = model.imagine(state, horizon)
            best = min(best, (time.perf_counter() - start) / horizon)
            changed = traj.changed
    return best, changed


def level_step_fn(model: DLH, level, d: torch.Tensor, context: torch.Tensor) -> Callable[[], object]:
    """One changing level's bare step on (d, context): change prior, sample, decoder, GRU,
    on the path `model.hierarchy.step_mode` selects for imagination (when this is called).

    "eager": one call per network (the reference path); "fused": `fused_change_step` on the
    regrouped weights; "compiled": the fused step through torch.compile. Call it without
    autograd, as imagination runs.
    """
    route = model.hierarchy.route(d)
    return lambda: change_step(level, d, context, route)


def bare_costs(model: DLH, rows: int, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds for one level's bare networks on `rows` rows: (change step per level, factor per level).

    Change step: change prior, sample, decoder, GRU, on the path the model's
    `hierarchy.step_mode` uses. Factor: the prior factor's network (0 for level 1, which
    has none).
    """
    cfg, hierarchy = model.config, model.hierarchy
    inner = max(1, min(200, 20000 // max(rows, 1)))
    context = torch.randn(rows, cfg.c_dim)
    step_costs, factor_costs = [], []
    with torch.inference_mode():
        for level in hierarchy.levels:
            d = torch.randn(rows, level.d_dim)  # each level's own width (`level_d_dims`)
            h = torch.zeros(rows, level.factor_size)
            change_step = level_step_fn(model, level, d, context)
            step_costs.append(_best_time(change_step, repeats, inner))
            if level.factor is None:
                factor_costs.append(0.0)
            else:
                factor_costs.append(
                    _best_time(lambda level=level, d=d, h=h: level.change_logit(d, h), repeats, inner))
    return step_costs, factor_costs


def floor_time(model: DLH, changed: torch.Tensor, dynamic: bool, repeats: int,
               cache: dict[int, tuple[list[float], list[float]]]) -> float:
    """The floor of a rollout with e flags `changed` (B, T, N): seconds per step."""
    runs = changed.transpose(0, 1).float()  # (T, B, N): level n runs where e^n = 1
    total = 0.0
    for n in range(changed.shape[-1]):
        jobs = [(runs[:, :, n], "step")]
        if dynamic and n > 0:  # the prior factor runs where the level below changed
            jobs.append((runs[:, :, n - 1], "factor"))
        for active, kind in jobs:
            per_step = active.sum(1)  # (T,) rows per step
            used = per_step > 0
            if not bool(used.any()):
                continue
            rows = max(1, round(float(per_step[used].mean())))
            if rows not in cache:
                cache[rows] = bare_costs(model, rows, repeats)
            steps, factors = cache[rows]
            total += float(used.float().mean()) * (steps[n] if kind == "step" else factors[n])
    return total


def pin_change_prob(model: DLH, prob: float) -> None:
    """p(e^n = 1) = prob for every level above the first, whatever d^n (and h^n) are."""
    logit = math.log(prob / (1.0 - prob))
    with torch.no_grad():
        for level in model.hierarchy.levels[1:]:
            last = level.factor._linears[-1]
            last.weight.zero_()
            last.bias.fill_(logit)


def same_weights(model: DLH, timescale: str) -> DLH:
    rule = model.config.inference  # a schedule has no boundary level: its default (no effect)
    boundary = rule.boundary if timescale == "dynamic" else "reinfer"
    other = DLH(model.config.replace(inference=rule.replace(timescale=timescale, boundary=boundary)))
    other.load_state_dict(model.state_dict())
    other.hierarchy.step_mode = model.hierarchy.step_mode
    return other.eval()


def matmul_peak(repeats: int) -> float:
    """Measured fp32 matmul FLOP/s of this process (2048² · 2048, best of `repeats`)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / _best_time(lambda: a @ b, repeats, 3)


def step_flop(level) -> int:
    """Multiply-adds ×2 of one row through a changing level's networks (prior, decoder, GRU)."""
    flop = 0
    for mlp in (level.prior, level.decoder):
        flop += sum(2 * m.in_features * m.out_features for m in mlp._linears)
    gru = level.temporal
    return flop + 2 * 3 * gru.hidden_size * (gru.input_size + gru.hidden_size)


def level_step_table(args: argparse.Namespace) -> None:
    """A level's bare step, eager vs fused vs compiled, against the matmul peak.

    The three modes are timed in turn `--rounds` times (best of each kept), so that drift in
    the machine's load reaches all of them; the matmul peak is re-measured in every round.
    """
    torch.manual_seed(args.seed)
    model = DLH(DLHConfig(levels=2, image_size=64, channels=1)).eval()
    level, cfg = model.hierarchy.levels[1], model.config
    flop = step_flop(level)
    modes = ("eager", "fused", "compiled")
    rows = []
    peak = 0.0
    with torch.inference_mode():
        for batch in args.batches:
            d, context = torch.randn(batch, cfg.d_dim), torch.randn(batch, cfg.c_dim)
            inner = max(1, min(500, 50000 // batch))
            fns = {}
            for mode in modes:
                model.hierarchy.step_mode = mode
                fns[mode] = level_step_fn(model, level, d, context)
            start = time.perf_counter()
            fns["compiled"]()
            print(f"# compile (batch {batch}): {time.perf_counter() - start:.1f} s", flush=True)
            best = dict.fromkeys(modes, math.inf)
            for _ in range(args.rounds):
                peak = max(peak, matmul_peak(args.repeats))
                for mode in modes:
                    best[mode] = min(best[mode], _best_time(fns[mode], args.repeats, inner))
            outputs = {}
            for mode in modes:
                torch.manual_seed(1)
                outputs[mode] = fns[mode]()
            rows.append((batch, best, outputs))
    print(f"# one level's change step (prior, sample, decoder, GRU), paper sizes: {flop / 1e6:.3f} MFLOP "
          f"per row; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (2048³, best in this process); "
          f"best of {args.rounds} rounds × {args.repeats}")
    print(f"{'batch':>6} {'mode':>9} {'µs/step':>10} {'vs eager':>9} {'GFLOP/s':>8} {'% peak':>7} "
          f"{'max |Δ|':>9}")
    for batch, best, outputs in rows:
        for mode in modes:
            t = best[mode]
            diff = max(float((a - b).abs().max()) for a, b in zip(outputs[mode], outputs["eager"]))
            gflops = flop * batch / t / 1e9
            print(f"{batch:>6} {mode:>9} {t * 1e6:>10.1f} {best['eager'] / t:>8.2f}× {gflops:>8.1f} "
                  f"{100 * gflops * 1e9 / peak:>6.1f}% {diff:>9.1e}", flush=True)


def measure(model: DLH, batch: int, horizon: int, repeats: int) -> dict[str, float]:
    """Both modes on the same weights and start state: per-step time, floor, L̄."""
    cfg = model.config
    if cfg.action_dim:
        raise SystemExit("this benchmark rolls out unconditional models only")
    dynamic, every_step = same_weights(model, "dynamic"), same_weights(model, "every_step")
    frames = torch.rand(batch, 5, cfg.channels, cfg.image_size, cfg.image_size)
    with torch.inference_mode():
        state = dynamic.observe(frames).state
    cache: dict[int, tuple[list[float], list[float]]] = {}
    t_dyn, e_dyn = timed_rollout(dynamic, state, horizon, repeats)
    t_all, e_all = timed_rollout(every_step, state, horizon, repeats)
    return {
        "dynamic": t_dyn,
        "every_step": t_all,
        "floor_dynamic": floor_time(dynamic, e_dyn, True, repeats, cache),
        "floor_every_step": floor_time(every_step, e_all, False, repeats, cache),
        "levels_used": float(e_dyn.float().sum(-1).mean()),
    }


def _row(batch: int, r: dict[str, float], n: int, extra: str = "") -> str:
    ratio = r["every_step"] / r["dynamic"]
    return (f"{batch:>6} {r['levels_used']:>5.2f} {n / r['levels_used']:>5.2f} "
            f"{r['dynamic'] * 1e6:>10.1f} {r['floor_dynamic'] * 1e6:>10.1f} "
            f"{r['dynamic'] / r['floor_dynamic']:>6.2f}× "
            f"{r['every_step'] * 1e6:>10.1f} {r['floor_every_step'] * 1e6:>10.1f} "
            f"{r['every_step'] / r['floor_every_step']:>6.2f}× {ratio:>6.2f}{extra}")


HEADER = (f"{'batch':>6} {'L̄':>5} {'N/L̄':>5} {'dyn µs':>10} {'floor':>10} {'×floor':>7} "
          f"{'every µs':>10} {'floor':>10} {'×floor':>7} {'ratio':>6}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=None, help="a saved DLH (default: random weights)")
    parser.add_argument("--change-prob", type=float, nargs="+", default=None,
                        help="pin every prior factor to p(e=1) = P (random paper-sized weights)")
    parser.add_argument("--levels", type=int, nargs="+", default=None,
                        help="N (default: 3; with --change-prob: 2 3)")
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="with --level-step: mode alternations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-mode", default="fused", choices=("fused", "eager", "compiled"),
                        help="Hierarchy.step_mode of both rollouts and their floors (default: fused)")
    parser.add_argument("--level-step", action="store_true",
                        help="time one level's step: eager vs fused vs compiled, vs the matmul peak")
    args = parser.parse_args()
    if args.change_prob is not None and not all(0.0 < p < 1.0 for p in args.change_prob):
        parser.error("--change-prob: each P must lie in (0, 1)")
    torch.set_num_threads(args.threads)
    # Denormal floats make CPU elementwise ops ~10x slower at random; flush them (both modes).
    torch.set_flush_denormal(True)
    print(f"# imagine speed, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, horizon {args.horizon}, best of {args.repeats}, "
          f"step_mode {args.step_mode}")
    if args.level_step:
        level_step_table(args)
        return
    print("# per-step times in µs; ×floor = time / floor; ratio = every_step / dynamic")
    if args.change_prob is None:
        torch.manual_seed(args.seed)
        model = load(args.checkpoint) if args.checkpoint else DLH(
            DLHConfig(levels=(args.levels or [3])[0], image_size=64, channels=1))
        model.eval()
        model.hierarchy.step_mode = args.step_mode
        n = model.config.levels
        print(f"# N={n}, weights: {args.checkpoint or 'random (paper sizes)'}; target at batch 1: "
              "ratio >= 0.8·N/L̄")
        print(HEADER + f" {'target':>7}")
        for batch in args.batches:
            r = measure(model, batch, args.horizon, args.repeats)
            target = 0.8 * n / r["levels_used"]
            ratio = r["every_step"] / r["dynamic"]
            verdict = "" if batch != 1 else ("  PASS" if ratio >= target else "  BELOW TARGET")
            print(_row(batch, r, n, f" {target:>7.2f}{verdict}"))
        return
    for n in args.levels or [2, 3]:
        torch.manual_seed(args.seed)
        model = DLH(DLHConfig(levels=n, image_size=64, channels=1)).eval()
        model.hierarchy.step_mode = args.step_mode
        for prob in args.change_prob:
            pin_change_prob(model, prob)
            print(f"# N={n}, p(e=1) pinned to {prob}, random paper-sized weights")
            print(HEADER)
            for batch in args.batches:
                print(_row(batch, measure(model, batch, args.horizon, args.repeats), n), flush=True)


if __name__ == "__main__":
    main()
