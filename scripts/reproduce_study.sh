#!/usr/bin/env bash
# The whole study on one GPU box: GPU tests, three seeds of each config trained with the project's
# commands, every analysis on every run, the training benchmark, and the report.
#
#   bash scripts/reproduce_study.sh                       # everything
#   STAGES="train analyse" SEEDS="42" bash scripts/...    # a part of it
#
# STAGES (default "tests train analyse bench report"); SEEDS (default "42 123 7"); CONFIGS (default
# "scale_10m pilot"); RESULTS (default
# results). Run directories go to runs/ (ignored by git); each run's small files (summary, metrics,
# eval/ablation/probe JSON, figures, log, fresh-process wall time) are copied to
# $RESULTS/<config>/seed<N>/ as soon as they exist, so a stopped script loses nothing it finished.
# The report is built from those copies, so it can be rebuilt on any machine.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"42 123 7"}
CONFIGS=${CONFIGS:-"scale_10m pilot"}
STAGES=${STAGES:-"tests train analyse bench report"}
RESULTS=${RESULTS:-results}
export PYTHONUNBUFFERED=1
mkdir -p runs "$RESULTS"
has() { [[ " $STAGES " == *" $1 "* ]]; }

run_dir() {  # config seed -> the run directory (the 10M seed-42 run is the launcher's runs/scale_10m)
  if [ "$1" = scale_10m ] && [ "$2" = 42 ]; then echo runs/scale_10m; else echo "runs/$1_seed$2"; fi
}

keep() {  # run_dir dest: copy the run's small outputs
  mkdir -p "$2"
  for f in summary.json metrics.jsonl config.yaml eval.json ablation.json ablation_mean.json probe.json train.log \
           wall_time.txt training_curve.png ablation_heatmap.png ablation_mean_heatmap.png probe_layers.png; do
    if [ -f "$1/$f" ]; then cp "$1/$f" "$2/"; fi
  done
}

train() {  # config seed: train with the project's command, timing the whole fresh process
  local config=$1 seed=$2 run start
  run=$(run_dir "$config" "$seed")
  rm -rf "$run"
  start=$(date +%s.%N)
  if [ "$run" = runs/scale_10m ]; then
    bash train_10m_scale.sh --no-progress > runs/.train.log 2>&1        # the experiment's own launcher
  elif [ "$config" = scale_10m ]; then
    $PYTHON -m src.train --config configs/scale_10m.yaml --output-dir "$run" --seed "$seed" --device cuda \
      --fp16 --gpu-only --no-progress > runs/.train.log 2>&1
  else
    $PYTHON -m src.train --config "configs/$config.yaml" --output-dir "$run" --seed "$seed" --device cuda \
      --no-progress > runs/.train.log 2>&1
  fi
  local status=$?
  awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", e - s }' > runs/.wall
  mkdir -p "$run" && mv runs/.train.log "$run/train.log" && mv runs/.wall "$run/wall_time.txt"
  echo "trained $run: exit $status, $(cat "$run/wall_time.txt") s in a fresh process (start-up and compilation included)"
  $PYTHON -m src.report "$run" --curves-only
}

analyse() {  # config seed
  local run flags=()
  run=$(run_dir "$1" "$2")
  [ "$1" = scale_10m ] && flags=(--fp16)   # evaluate as it trained
  $PYTHON -m src.evaluate --run "$run" --device cuda "${flags[@]}"
  $PYTHON -m src.ablate --run "$run" --device cuda "${flags[@]}"
  $PYTHON -m src.ablate --run "$run" --device cuda --mode mean --out "$run/ablation_mean.json" "${flags[@]}"
  $PYTHON -m src.probe --run "$run" --device cuda "${flags[@]}"
}

if has tests; then
  $PYTHON verify_10m_config.py --require-cuda
  $PYTHON -m pytest -m gpu -q 2>&1 | tee "$RESULTS/gpu_tests.txt"
fi
for seed in $SEEDS; do
  for config in $CONFIGS; do
    if has train; then train "$config" "$seed"; fi
    if has analyse; then analyse "$config" "$seed"; fi
    keep "$(run_dir "$config" "$seed")" "$RESULTS/$config/seed$seed"
  done
done
if has bench; then
  $PYTHON benchmarks/train_speed.py --json "$RESULTS/benchmark.json" 2>&1 | tee "$RESULTS/benchmark.txt"
fi
if has report; then
  runs=()
  for config in pilot scale_10m; do for seed in $SEEDS; do runs+=("$RESULTS/$config/seed$seed"); done; done
  $PYTHON -m src.report "${runs[@]}" --out "$RESULTS/REPORT.md"
fi
