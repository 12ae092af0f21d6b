#!/usr/bin/env bash
# Baselines at equal training budget: dynamic (DLH) vs clockwork (CW-VAE schedule) vs
# every_step, on long-horizon Moving Fashion-MNIST and on Moving Ball; best-of-K SSIM/PSNR.
# The Moving Ball dynamic run is Table 3's λ = 0 run.
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/reproduce}
for mode in dynamic clockwork every_step; do
  train_run "$OUT/fmnist_$mode" configs/moving_fashion_mnist_cpu.yaml --set model.timescale=$mode
  eval_run "$OUT/fmnist_$mode" 10 90
done
for mode in clockwork every_step; do
  train_run "$OUT/ball_$mode" configs/moving_ball_cpu.yaml --set model.timescale=$mode
  eval_run "$OUT/ball_$mode" 10 50
done
train_run "$OUT/ball_lam0.0" configs/moving_ball_cpu.yaml --set data.options.lam=0.0
eval_run "$OUT/ball_lam0.0" 10 50
python benchmarks/reproduce/collect.py "$OUT" > "$OUT/tables.md"
