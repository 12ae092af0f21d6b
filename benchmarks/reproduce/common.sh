# Shared by the reproduction scripts: train one run (skipped when it already finished), then
# analyse and evaluate it. Environment: STEPS, SEED, OUT, THREADS, SEQS, SAMPLES.
set -euo pipefail
STEPS=${STEPS:-2000}
SEED=${SEED:-0}
THREADS=${THREADS:-1}
SEQS=${SEQS:-32}
SAMPLES=${SAMPLES:-20}

train_run() {  # train_run DIR CONFIG [--set ...]
  local dir=$1 config=$2; shift 2
  mkdir -p "$(dirname "$dir")"
  exec 9>"$dir.lock"
  flock 9  # two scripts may share a run (e.g. the 2-level λ=0 run): train it once
  if [ -f "$dir/summary.json" ]; then echo "== $dir already trained"; flock -u 9; return; fi
  local resume=()
  [ -d "$dir/checkpoints" ] && resume=(--resume)
  echo "== training $dir"
  dlh train --config "$config" --set steps="$STEPS" --set seed="$SEED" --set threads="$THREADS" \
    --set out_dir="$dir" --no-progress "$@" "${resume[@]}"
  flock -u 9
}

analyze_run() {  # analyze_run DIR [extra args]
  local dir=$1; shift
  dlh analyze --checkpoint "$dir" --sequences "$SEQS" --out "$dir/analysis" "$@"
}

eval_run() {  # eval_run DIR CONTEXT HORIZON
  dlh eval --checkpoint "$1" --context "$2" --horizon "$3" --samples "$SAMPLES" --sequences "$SEQS" \
    --seed "$SEED" --out "$1/eval"
}
