"""Does a PointTarget world model rank action sequences the way the env does?

From `--probes` states (episode seed 100 + i, 15 random agent steps), imagine `--horizon` steps
of five constant actions (right, left, up, down, none), average the predicted return over
`--samples` rollouts, and compare with the true return of the same actions from a copy of the
env. Prints both per probe and how often the best predicted action is the true best.

    python benchmarks/reproduce/action_probe.py runs/rl/point_target/model.safetensors --probes 6
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from agents.mpc import obs_to_frame
from envs import POINT_TARGET_ID, make_pixel_env
from worldmodel import load

DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (0, 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--probes", type=int, default=6)
    ap.add_argument("--horizon", type=int, default=12)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--action-repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seeds the imagined samples")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = load(args.checkpoint).eval()
    agree = 0
    for probe in range(args.probes):
        env = make_pixel_env(POINT_TARGET_ID, size=model.config.image_size, action_repeat=args.action_repeat,
                             seed=probe)
        obs, _ = env.reset(seed=100 + probe)
        rng = np.random.default_rng(probe)
        state, previous = model.initial_state(1), torch.zeros(1, model.config.action_dim)
        with torch.inference_mode():
            for t in range(16):
                first = torch.tensor([t == 0])
                state = model.observe_step(state, obs_to_frame(obs, model), previous, first)
                if t == 15:
                    break
                action = rng.uniform(-1, 1, 2).astype(np.float32)
                obs, *_ = env.step(action)
                previous = torch.as_tensor(action)[None]
            actions = torch.tensor([[d] * args.horizon for d in DIRECTIONS], dtype=torch.float32)
            predicted = torch.stack([
                model.predict_reward(model.imagine(state.repeat_interleave(len(DIRECTIONS)), args.horizon,
                                                   actions).features).sum(1)
                for _ in range(args.samples)
            ]).mean(0).numpy()
        true = []
        for d in DIRECTIONS:
            twin = copy.deepcopy(env)
            true.append(sum(twin.step(np.array(d, np.float32))[1] for _ in range(args.horizon)))
        true = np.array(true)
        agree += int(predicted.argmax() == true.argmax())
        print(f"probe {probe}: predicted {predicted.round(2)}  true {true.round(2)}  "
              f"best predicted {DIRECTIONS[predicted.argmax()]}  true best {DIRECTIONS[true.argmax()]}")
    print(f"best action sequence agrees in {agree} of {args.probes} probes")


if __name__ == "__main__":
    main()
