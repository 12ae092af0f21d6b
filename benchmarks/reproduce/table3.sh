#!/usr/bin/env bash
# Table 3 (paper §4.4): 2-level DLH on stochastic Moving Ball, λ = 0, 0.1, 0.3; mean prior
# p(e²=1) split by the inferred component. Usage: bash benchmarks/reproduce/table3.sh
# FACTOR=recurrent trains with the recurrent prior factor (model.prior_factor) into
# ball_lam*_recurrent; LAMS="0.0 0.3" picks the λ values.
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/reproduce}
FACTOR=${FACTOR:-feedforward}
LAMS=${LAMS:-0.0 0.1 0.3}
suffix=""
[ "$FACTOR" = feedforward ] || suffix="_$FACTOR"
for lam in $LAMS; do
  train_run "$OUT/ball_lam$lam$suffix" configs/moving_ball_cpu.yaml --set data.options.lam=$lam \
    --set model.prior_factor="$FACTOR"
  analyze_run "$OUT/ball_lam$lam$suffix"
done
python benchmarks/reproduce/collect.py "$OUT" > "$OUT/tables.md"
