#!/usr/bin/env bash
# Tables 2 and 5 (paper §4.3, App. C.3): DLH with 2, 3, 4, 5 levels on Moving Ball (λ = 0):
# levels used L̄ and per-level KL. The 2-level run is Table 3's λ = 0 run.
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/reproduce}
for n in 3 4 5; do
  # the config's per-level lists (level 1's GRU width, the free-bits floors) extended to n levels
  upper=$(printf ',%.0s' $(seq 2 $n))
  train_run "$OUT/ball_levels$n" configs/moving_ball_cpu.yaml --set model.levels=$n \
    --set "model.level_d_dims=[512${upper//,/,128}]" --set "model.loss.window_free_nats=[0${upper//,/,32}]"
  analyze_run "$OUT/ball_levels$n"
done
train_run "$OUT/ball_lam0.0" configs/moving_ball_cpu.yaml --set data.options.lam=0.0
[ -f "$OUT/ball_lam0.0/analysis/analysis.json" ] || analyze_run "$OUT/ball_lam0.0"
python benchmarks/reproduce/collect.py "$OUT" > "$OUT/tables.md"
