#!/usr/bin/env bash
# Issue 5's results table for one env: a PlaNet-style DLH agent (dlh agent-train), evaluated
# against a random policy on 20 held-out episode seeds (dlh agent-eval), SB3 PPO from the same
# pixels with the same number of env steps (dlh agent-ppo), and the planner's time per action
# with `dynamic` vs `every_step` imagination on the trained weights (benchmarks/planning_speed.py).
#   ENV=worldmodel/PointTarget-v0 CONFIG=configs/point_target_cpu.yaml NAME=point_target \
#     SET="model.reward_scale=100" bash benchmarks/reproduce/rl.sh
#   ENV=Pendulum-v1 CONFIG=configs/pendulum_cpu.yaml NAME=pendulum bash benchmarks/reproduce/rl.sh
# Environment: ITERATIONS (30), SEED_EPISODES (5), TRAIN_STEPS (100 per iteration), REPEAT
# (action repeat, 2), CANDIDATES/ELITES/PLAN_ITERS (CEM, 300/30/6: PlaNet's 1000/100/10 costs
# seconds per action on 2 CPU cores), EVAL_EPISODES (20), EVAL_SEED (1000), SEED (0), THREADS (1).
set -euo pipefail
export SDL_AUDIODRIVER=${SDL_AUDIODRIVER:-dummy}
OUT=${OUT:-runs/rl}
ITERATIONS=${ITERATIONS:-30}
SEED_EPISODES=${SEED_EPISODES:-5}
TRAIN_STEPS=${TRAIN_STEPS:-100}
REPEAT=${REPEAT:-2}
CANDIDATES=${CANDIDATES:-300}
ELITES=${ELITES:-30}
PLAN_ITERS=${PLAN_ITERS:-6}
EVAL_EPISODES=${EVAL_EPISODES:-20}
EVAL_SEED=${EVAL_SEED:-1000}
SEED=${SEED:-0}
THREADS=${THREADS:-1}
SET=${SET:-}
dir=$OUT/$NAME
planner=(--action-repeat "$REPEAT" --candidates "$CANDIDATES" --elites "$ELITES" --plan-iterations "$PLAN_ITERS")
sets=(--set threads="$THREADS")
for kv in $SET; do sets+=(--set "$kv"); done

if [ ! -f "$dir/agent.json" ]; then
  echo "== agent-train $dir"
  dlh agent-train --env "$ENV" --config "$CONFIG" "${sets[@]}" --out "$dir" --iterations "$ITERATIONS" \
    --seed-episodes "$SEED_EPISODES" --train-steps "$TRAIN_STEPS" --seed "$SEED" --no-progress "${planner[@]}"
fi
echo "== agent-eval $dir"
dlh agent-eval --checkpoint "$dir" --env "$ENV" --episodes "$EVAL_EPISODES" --seed "$EVAL_SEED" \
  --json "$dir/eval.json" --threads "$THREADS" --no-progress "${planner[@]}"
steps=$(python -c "import json; print(json.load(open('$dir/agent.json'))['env_steps'])")
echo "== agent-ppo $dir/ppo ($steps env steps)"
dlh agent-ppo --env "$ENV" --steps "$steps" --out "$dir/ppo" --action-repeat "$REPEAT" \
  --episodes "$EVAL_EPISODES" --seed "$EVAL_SEED" --threads "$THREADS"
echo "== planning speed $dir"
python benchmarks/planning_speed.py --checkpoint "$dir/model.safetensors" --candidates "$CANDIDATES" \
  --top-k "$ELITES" --iterations "$PLAN_ITERS" --threads "$THREADS" | tee "$dir/planning_speed.txt"
