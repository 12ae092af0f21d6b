#!/usr/bin/env bash
# Table 3 (paper §4.4): 2-level DLH on stochastic Moving Ball, λ = 0, 0.1, 0.3; mean prior
# p(e²=1 | d²) split by the inferred component. Usage: bash benchmarks/reproduce/table3.sh
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/reproduce}
for lam in 0.0 0.1 0.3; do
  train_run "$OUT/ball_lam$lam" configs/moving_ball_cpu.yaml --set data.options.lam=$lam
  analyze_run "$OUT/ball_lam$lam"
done
python benchmarks/reproduce/collect.py "$OUT" > "$OUT/tables.md"
