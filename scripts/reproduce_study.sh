#!/usr/bin/env bash
# The whole study on one GPU box: train both configs for three seeds with the project's commands,
# run every analysis on every run, benchmark the training path, and write the report.
#
#   bash scripts/reproduce_study.sh            # runs/ gets the run directories, results/ the summaries
#
# Each run's small files (summary, metrics, eval/ablation/probe JSON and figures) are copied to
# results/<config>/seed<N>/ as soon as that run is analysed, so a stopped script loses nothing done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"42 123 7"}
RESULTS=${RESULTS:-results}
export PYTHONUNBUFFERED=1
mkdir -p runs "$RESULTS"

keep() {  # copy a run's small outputs into results/
  local run=$1 dest=$2
  mkdir -p "$dest"
  for f in summary.json metrics.jsonl config.yaml eval.json ablation.json ablation_mean.json probe.json \
           train.log wall_time.txt ablation_heatmap.png probe_layers.png training_curve.png; do
    [ -f "$run/$f" ] && cp "$run/$f" "$dest/"
  done
  return 0
}

train() {  # config seed run_dir [extra flags]: time the whole fresh process, log to the run dir
  local config=$1 seed=$2 run=$3; shift 3
  local start end
  start=$(date +%s.%N)
  if [ "$config" = scale_10m ] && [ "$seed" = 42 ]; then
    bash train_10m_scale.sh --no-progress > "runs/.train.log" 2>&1   # the experiment's own launcher
  else
    $PYTHON -m src.train --config "configs/$config.yaml" --output-dir "$run" --seed "$seed" --device cuda "$@" \
      --no-progress > "runs/.train.log" 2>&1
  fi
  end=$(date +%s.%N)
  mv runs/.train.log "$run/train.log"
  echo "$end - $start" | bc > "$run/wall_time.txt"
  echo "trained $run in $(cat "$run/wall_time.txt") s (fresh process, start-up and compilation included)"
}

analyse() {  # run_dir fp16_flag
  local run=$1; shift
  $PYTHON -m src.evaluate --run "$run" --device cuda "$@"
  $PYTHON -m src.ablate --run "$run" --device cuda "$@"
  $PYTHON -m src.ablate --run "$run" --device cuda --mode mean --out "$run/ablation_mean.json" "$@"
  $PYTHON -m src.probe --run "$run" --device cuda "$@"
  $PYTHON -m src.report "$run" --curve-only 2>/dev/null || true
}

$PYTHON verify_10m_config.py --require-cuda
$PYTHON -m pytest -m gpu -q
$PYTHON benchmarks/train_speed.py --json "$RESULTS/benchmark.json" | tee "$RESULTS/benchmark.txt"

runs=()
for seed in $SEEDS; do
  for config in scale_10m pilot; do
    run="runs/${config}_seed${seed}"
    [ "$config" = scale_10m ] && [ "$seed" = 42 ] && run=runs/scale_10m
    flags=(); [ "$config" = scale_10m ] && flags=(--fp16)
    rm -rf "$run"
    train "$config" "$seed" "$run" "${flags[@]}"
    analyse "$run" "${flags[@]}"
    keep "$run" "$RESULTS/${config}/seed${seed}"
    runs+=("$run")
  done
done
$PYTHON -m src.report "${runs[@]}" --out "$RESULTS/REPORT.md"
