#!/usr/bin/env bash
# Baselines at equal training budget: dynamic (DLH) vs clockwork (CW-VAE schedule) vs
# every_step; best-of-K SSIM/PSNR of open-loop rollouts. DATA=ball (default) or fmnist
# (long-horizon Moving Fashion-MNIST from Debian's dataset-fashion-mnist). MODES picks the
# timescales (default all three), e.g. to train them in parallel shells.
source "$(dirname "$0")/common.sh"
OUT=${OUT:-runs/reproduce}
DATA=${DATA:-ball}
case $DATA in
  ball) config=configs/moving_ball_cpu.yaml; context=10; horizon=50 ;;
  fmnist) config=configs/moving_fashion_mnist_cpu.yaml; context=10; horizon=90 ;;
  *) echo "DATA must be ball or fmnist" >&2; exit 2 ;;
esac
MODES=${MODES:-dynamic clockwork every_step}
for mode in $MODES; do
  dir="$OUT/${DATA}_steps${STEPS}_$mode"
  train_run "$dir" "$config" --set model.timescale=$mode
  eval_run "$dir" $context $horizon
done
python benchmarks/reproduce/collect.py "$OUT" > "$OUT/tables.md"
