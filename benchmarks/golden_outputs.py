"""Golden outputs: what two checkouts compute, compared bit for bit.

    git worktree add /tmp/old 60e12e4
    python benchmarks/golden_outputs.py --old /tmp/old --new .

For every shipped config (configs/*.yaml, the model section as it is) and a few option variants
of the CPU quick start, each checkout computes in its own process (`PYTHONPATH` = that checkout,
one thread): `observe` (recon, state tensors, e^n, KLs), `observe_step` over a few frames, `loss`
(its value, metrics and gradients, plus the decision statistics after it), `imagine` (a few
decoded steps, gathered and masked rows) and one action of `LatentMPCAgent` with a tiny CEM
planner (a model without actions gets the same config with `action_dim=2` and a reward head for
that part). Models are built under `torch.manual_seed(0)`; inputs are small (batch 2, 5 frames)
and seeded. Prints one line per case and output: identical, or the max abs difference. Exit code
1 when anything differs. Only the public API is used, so any two commits compare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# (name, config file, overrides): every shipped config, then option variants of the quick start
VARIANTS = [
    ("clockwork", "moving_ball_cpu.yaml", ["model.inference.timescale=clockwork",
                                           "model.inference.clockwork_k=2"]),
    ("every_step", "moving_ball_cpu.yaml", ["model.inference.timescale=every_step"]),
    ("reinfer+vade", "moving_fashion_mnist_cpu.yaml", ["model.inference.boundary=reinfer",
                                                        "model.inference.assignment=vade"]),
    ("anchor", "moving_fashion_mnist_cpu.yaml", ["model.inference.boundary=anchor"]),
    ("relative", "moving_fashion_mnist_cpu.yaml", ["model.inference.decision=relative",
                                                    "model.inference.decision_warmup=2"]),
    ("tolerant", "moving_ball_cpu.yaml", ["model.inference.decision=tolerant"]),
    ("map+margin", "moving_ball_cpu.yaml", ["model.inference.decision=map",
                                             "model.inference.decision_margin=2.0"]),
    ("restart_below", "moving_fashion_mnist_cpu.yaml", ["model.inference.restart_below=true"]),
    ("recurrent_factor", "moving_fashion_mnist_cpu.yaml", ["model.prior_factor=recurrent"]),
    ("upper_context+memory", "moving_fashion_mnist_cpu.yaml", ["model.upper_prior=context",
                                                               "model.lower_prior=memory"]),
    ("posterior_reads_d", "moving_ball_cpu.yaml", ["model.posterior_reads_d=true"]),
    ("actions_all_levels", "point_target_cpu.yaml", ["model.action_levels=[1,2]"]),
    ("actions_clockwork", "point_target_cpu.yaml", ["model.action_levels=[1,2]",
                                                    "model.inference.timescale=clockwork",
                                                    "model.inference.clockwork_k=2"]),
]
TRAINER_SETTINGS = {  # hierarchy attributes the trainer sets, run under the first variant's loss
    "memory_dropout": ("moving_fashion_mnist_cpu.yaml", {"memory_dropout": 0.3}),
    "hold_upper": ("moving_ball_cpu.yaml", {"hold_upper": True}),
    "margin_scale": ("moving_ball_cpu.yaml", {"margin_scale": 0.5}),
}


def cases(repo: Path) -> list[tuple[str, Path, list[str], dict]]:
    out = [(p.stem, p, [], {}) for p in sorted((repo / "configs").glob("*.yaml"))]
    out += [(name, repo / "configs" / file, sets, {}) for name, file, sets in VARIANTS]
    out += [(name, repo / "configs" / file, [], attrs) for name, (file, attrs) in TRAINER_SETTINGS.items()]
    return out


def compute(repo: Path) -> dict[str, object]:
    """Every golden tensor of this checkout, by "case/output"."""
    import numpy as np
    import torch
    from gymnasium import spaces

    from agents.mpc import LatentMPCAgent
    from agents.planners import CEMPlanner
    from worldmodel import DLH
    from worldmodel.training import load_config

    torch.set_num_threads(1)
    results: dict[str, object] = {}
    for name, path, sets, attrs in cases(repo):
        cfg = load_config(path, sets).model
        torch.manual_seed(0)
        model = DLH(cfg)
        loss_kwargs: dict = {}
        if attrs:  # the trainer's per-step settings: an argument of the loss since TrainSchedule,
            try:   # hierarchy attributes before (read in train mode only); compared on the loss alone
                from worldmodel.hierarchy import TrainSchedule
                loss_kwargs["schedule"] = TrainSchedule(**attrs)
            except ImportError:
                for key, value in attrs.items():
                    setattr(model.hierarchy, key, value)
        batch, steps = 2, 5
        g = torch.Generator().manual_seed(1)
        frames = torch.rand(batch, steps, cfg.channels, cfg.image_size, cfg.image_size, generator=g)
        actions = torch.rand(batch, steps, cfg.action_dim, generator=g) * 2 - 1 if cfg.action_dim else None
        is_first = torch.zeros(batch, steps, dtype=torch.bool)
        is_first[1, 3] = True

        def put(key: str, value: object, case: str = name, attrs: dict = attrs) -> None:
            if attrs and not key.startswith("loss."):
                return  # the trainer's settings act in training only: their cases compare the loss
            results[f"{case}/{key}"] = value

        def put_state(key: str, state) -> None:
            tensors = {f"{field}{n + 1}": v.detach().clone()
                       for field in ("s", "mean", "std", "d", "top_down", "factor")
                       for n, v in enumerate(getattr(state, field))}
            put(key, {**tensors, "pending": state.pending.clone(), "t": state.t.clone()})

        # observe (evaluation and train mode) and observe_step
        for mode in ("eval", "train"):
            model.train(mode == "train")
            torch.manual_seed(1)
            with torch.no_grad():
                out = model.observe(frames, actions, is_first)
            for field in ("recon", "recon_mean", "changed", "kl", "factor_kl", "change_prob", "evaluated",
                          "features"):
                put(f"observe[{mode}].{field}", getattr(out, field))
            put_state(f"observe[{mode}].state", out.state)
        model.eval()
        torch.manual_seed(2)
        with torch.no_grad():
            state = model.initial_state(batch)
            for t in range(3):
                state = model.observe_step(state, frames[:, t], None if actions is None else actions[:, t],
                                           is_first[:, t])
        put_state("observe_step.state", state)
        # loss, metrics, gradients (train mode), and the decision statistics it moves
        model.train()
        model.zero_grad()
        torch.manual_seed(3)
        loss, metrics = model.loss(frames, actions, beta=0.7, is_first=is_first, **loss_kwargs)
        loss.backward()
        put("loss.value", loss.detach())
        put("loss.metrics", {k: v for k, v in sorted(metrics.items())})
        put("loss.grads", {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
        put("loss.buffers", {k: b.clone() for k, b in model.named_buffers()})
        # imagination from the filtered state, decoded (gathered rows, then masked, then the mode of e)
        model.eval()
        with torch.no_grad():
            start = model.observe(frames, actions, is_first).state
            horizon = 4
            plan = torch.rand(batch, horizon, cfg.action_dim, generator=g) * 2 - 1 if cfg.action_dim else None
            for label, kwargs in (("gathered", {}), ("masked", {"gather_below": 0.0}),
                                  ("mode", {"sample_e": False})):
                torch.manual_seed(4)
                traj = model.imagine(start, horizon, plan, **kwargs)
                put(f"imagine[{label}].decoded", model.decode(traj))
                put(f"imagine[{label}].changed", traj.changed)
                put(f"imagine[{label}].features", traj.features)
                put_state(f"imagine[{label}].final", traj.final_state)
        # one agent action (two frames) with a tiny CEM planner
        agent_cfg = cfg
        if not cfg.action_dim or not cfg.reward_head:
            agent_cfg = load_config(path, [*sets, "model.action_dim=2", "model.reward_head=true"]).model
        torch.manual_seed(0)
        agent_model = DLH(agent_cfg)
        for key, value in attrs.items():
            setattr(agent_model.hierarchy, key, value)
        adim = agent_cfg.action_dim
        planner = CEMPlanner(horizon=3, candidates=16, iterations=2, top_k=4, seed=0)
        agent = LatentMPCAgent(agent_model, planner, spaces.Box(-1.0, 1.0, (adim,), np.float32),
                               exploration_noise=0.3, seed=0)
        rng = np.random.default_rng(0)
        torch.manual_seed(5)
        taken = []
        for _ in range(2):
            obs = rng.integers(0, 256, (agent_cfg.image_size, agent_cfg.image_size, agent_cfg.channels),
                               dtype=np.uint8)
            taken.append(torch.as_tensor(agent.act(obs)))
        put("agent.actions", torch.stack(taken))
        put_state("agent.state", agent.state)
    return results


def flatten(value: object, prefix: str) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}[{k}]"))
        return out
    return {prefix: value}


def difference(a: object, b: object) -> str | None:
    """None if identical, else a short description."""
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        if torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                 and torch.equal(a.nan_to_num(), b.nan_to_num())):
            return None
        diff = (a.double() - b.double()).abs().nan_to_num(nan=float("inf")).max()
        return f"max abs diff {float(diff):.3g}"
    if isinstance(a, float) and isinstance(b, float):
        same = a == b or (a != a and b != b)
        return None if same else f"max abs diff {abs(a - b):.3g}"
    return None if a == b else f"{a!r} vs {b!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="checkout of the old commit")
    parser.add_argument("--new", default=".", help="checkout of the new commit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="one line per tensor, not per output group")
    args = parser.parse_args()
    import torch

    if args.child:
        torch.save(compute(Path(os.environ["PYTHONPATH"])), args.child)
        return
    saved = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("old", "new"):
            repo = os.path.abspath(getattr(args, side))
            env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
            target = os.path.join(tmp, f"{side}.pt")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--old", "-", "--child", target],
                           env=env, check=True, cwd=repo)
            saved[side] = torch.load(target, weights_only=False)
    old, new = saved["old"], saved["new"]
    differs = False
    for key in sorted(set(old) | set(new), key=lambda k: (list(old).index(k) if k in old else len(old), k)):
        if key not in old or key not in new:
            print(f"{key}: only in {'new' if key not in old else 'old'}")
            differs = True
            continue
        a, b = flatten(old[key], key), flatten(new[key], key)
        problems = []
        for item in sorted(set(a) | set(b)):
            if item not in a or item not in b:
                problems.append(f"{item}: only in {'new' if item not in a else 'old'}")
                continue
            found = difference(a[item], b[item])
            if found is not None:
                problems.append(f"{item}: {found}")
            elif args.verbose:
                print(f"{item}: identical")
        differs |= bool(problems)
        print(f"{key}: identical" if not problems else "\n".join(problems))
    print("ALL IDENTICAL" if not differs else "DIFFERENCES FOUND")
    sys.exit(1 if differs else 0)


if __name__ == "__main__":
    main()
