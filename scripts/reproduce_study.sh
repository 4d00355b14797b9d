#!/usr/bin/env bash
# The whole replication on one GPU box: GPU tests, three seeds of each config trained with the
# project's commands, every analysis on every run, the training benchmark, and the report.
#
#   bash scripts/reproduce_study.sh                       # everything
#   STAGES="train analyse" SEEDS="42" bash scripts/...    # a part of it
#
# STAGES (default "tests train analyse bench report"); SEEDS (default "42 123 7"); CONFIGS (default
# "scale_10m pilot"); RESULTS (default results); JOBS (default 1): how many runs are analysed at
# once (the models are small: one run leaves the GPU mostly idle). TOGETHER (default 1): the seeds of
# a config that are left to train go into one process, side by side (python -m src.train --seeds:
# 1.7x the seed-steps/s of one seed at a time for 10M at batch 8, 3.0x for the pilot with 8 seeds,
# BENCHMARKS.md), each seed's run identical to training it alone; the 10M seed-42 run is still the
# checklist's own launcher, alone. TOGETHER=0 trains one run at a time, so that no run's timings are
# shared with another's.
#
# Run directories go to runs/ (ignored by git); each run's small files (summary, metrics, eval /
# ablation / probe / roles JSON, gzip-compressed above 300 KB, figures, logs, fresh-process wall time) are
# copied to $RESULTS/<config>/seed<N>/ as soon as they exist, so a stopped script loses nothing it finished.
# The report is built from those copies, so it can be rebuilt on any machine.
#
# Resumable: a run whose summary.json exists is not trained again, and a run analysed to the end
# (marker runs/<run>/.analysed) is not analysed again; delete runs/ (or the run) to start afresh.
#
# Like with like: besides its selected checkpoint, each run is evaluated at the periodic checkpoint
# nearest EQUAL_STEPS optimizer steps (default 2500: pilot epoch 40 = 2,520 steps, 10M epoch 10 =
# 2,500 steps), written as eval_equal_steps.json.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/result_files.sh
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-"42 123 7"}
CONFIGS=${CONFIGS:-"scale_10m pilot"}
STAGES=${STAGES:-"tests train analyse bench report"}
RESULTS=${RESULTS:-results}
JOBS=${JOBS:-1}
TOGETHER=${TOGETHER:-1}
EQUAL_STEPS=${EQUAL_STEPS:-2500}
export PYTHONUNBUFFERED=1
mkdir -p runs "$RESULTS"
has() { [[ " $STAGES " == *" $1 "* ]]; }

run_dir() {  # config seed -> the run directory (the 10M seed-42 run is the launcher's runs/scale_10m)
  if [ "$1" = scale_10m ] && [ "$2" = 42 ]; then echo runs/scale_10m
  elif [ "$TOGETHER" = 1 ]; then echo "runs/$1_seeds/seed$2"   # src.train --seeds writes OUTPUT_DIR/seedS
  else echo "runs/$1_seed$2"; fi
}

keep() {  # run_dir dest: copy the run's small outputs (copy_result: a JSON file above 300 KB gzip-compressed)
  mkdir -p "$2"
  for f in summary.json metrics.jsonl config.yaml eval.json eval_equal_steps.json ablation.json probe.json roles.json \
           train.log analyse.log wall_time.txt training_curve.png ablation_heatmap.png probe_layers.png roles.png; do
    copy_result "$1/$f" "$2"
  done
}

train() {  # config seed: train with the project's command, timing the whole fresh process
  local config=$1 seed=$2 run start log wall
  run=$(run_dir "$config" "$seed")
  if [ -f "$run/summary.json" ]; then echo "kept $run: already trained (summary.json exists)"; return; fi
  rm -rf "$run"
  log="runs/.train_${config}_${seed}.log"
  wall="runs/.wall_${config}_${seed}"
  start=$(date +%s.%N)
  if [ "$run" = runs/scale_10m ]; then
    bash train_10m_scale.sh --no-progress > "$log" 2>&1        # the experiment's own launcher
  elif [ "$config" = scale_10m ]; then
    $PYTHON -m src.train --config configs/scale_10m.yaml --output-dir "$run" --seed "$seed" --device cuda \
      --fp16 --gpu-only --no-progress > "$log" 2>&1
  else
    $PYTHON -m src.train --config "configs/$config.yaml" --output-dir "$run" --seed "$seed" --device cuda \
      --no-progress > "$log" 2>&1
  fi
  local status=$?
  awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", e - s }' > "$wall"
  mkdir -p "$run" && mv "$log" "$run/train.log" && mv "$wall" "$run/wall_time.txt"
  echo "trained $run: exit $status, $(cat "$run/wall_time.txt") s in a fresh process (start-up and compilation included)"
  $PYTHON -m src.report "$run" --curves-only
}

train_together() {  # config seed...: the seeds not yet trained, side by side in one fresh process
  local config=$1 seed run todo=() start log wall flags
  shift
  for seed in "$@"; do
    run=$(run_dir "$config" "$seed")
    if [ -f "$run/summary.json" ]; then echo "kept $run: already trained (summary.json exists)"; else rm -rf "$run"; todo+=("$seed"); fi
  done
  [ "${#todo[@]}" -gt 0 ] || return 0
  log="runs/.train_${config}_seeds.log"
  flags="--device cuda"
  [ "$config" = scale_10m ] && flags="--device cuda --fp16 --gpu-only"
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  $PYTHON -m src.train --config "configs/$config.yaml" --output-dir "runs/${config}_seeds" \
    --seeds "$(IFS=,; echo "${todo[*]}")" $flags --no-progress > "$log" 2>&1
  local status=$?
  wall=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  for seed in "${todo[@]}"; do
    run=$(run_dir "$config" "$seed")
    mkdir -p "$run" && cp "$log" "$run/train.log"
    echo "$wall (one process for seeds ${todo[*]}, side by side)" > "$run/wall_time.txt"
    $PYTHON -m src.report "$run" --curves-only
  done
  rm -f "$log"
  echo "trained seeds ${todo[*]} of $config side by side: exit $status, $wall s in a fresh process"
}

equal_steps_checkpoint() {  # run_dir: the periodic checkpoint whose step is nearest EQUAL_STEPS
  $PYTHON - "$1" "$EQUAL_STEPS" <<'EOF'
import sys
from pathlib import Path
from src.rundir.results import read_metrics
run, target = Path(sys.argv[1]), int(sys.argv[2])
rows, _ = read_metrics(run / "metrics.jsonl")
steps = {r["epoch"]: r["step"] for r in rows}
have = [e for e in steps if (run / f"checkpoint_epoch_{e}.pt").is_file()]
if have:
    print(run / f"checkpoint_epoch_{min(have, key=lambda e: abs(steps[e] - target))}.pt")
EOF
}

analyse() {  # config seed: every analysis of one run, each in the precision the run trained in (its checkpoint says)
  local run ckpt
  run=$(run_dir "$1" "$2")
  if [ -f "$run/.analysed" ]; then echo "kept $run: already analysed"; keep "$run" "$RESULTS/$1/seed$2"; return; fi
  local failed=0   # a run is marked analysed only when every analysis succeeded
  {
    $PYTHON -m src.analysis.evaluate --run "$run" --device cuda || failed=1
    ckpt=$(equal_steps_checkpoint "$run")
    if [ -n "$ckpt" ]; then
      $PYTHON -m src.analysis.evaluate --run "$run" --device cuda --checkpoint "$ckpt" --out "$run/eval_equal_steps.json" || failed=1
    fi
    $PYTHON -m src.analysis.ablate --run "$run" --device cuda || failed=1
    $PYTHON -m src.analysis.roles --run "$run" --device cuda || failed=1
    $PYTHON -m src.analysis.probe --run "$run" --device cuda || failed=1
  } > "$run/analyse.log" 2>&1
  echo "analysed $run: $([ "$failed" = 0 ] && echo ok || echo 'a step failed') (log: $run/analyse.log)"
  [ "$failed" = 0 ] && touch "$run/.analysed"
  keep "$run" "$RESULTS/$1/seed$2"
}

if has tests; then
  $PYTHON verify_10m_config.py --require-cuda
  $PYTHON -m pytest -m gpu -q 2>&1 | tee "$RESULTS/gpu_tests.txt"
fi
if has train; then
  if [ "$TOGETHER" = 1 ]; then
    for config in $CONFIGS; do
      rest=()
      for seed in $SEEDS; do
        if [ "$(run_dir "$config" "$seed")" = runs/scale_10m ]; then train "$config" "$seed"; else rest+=("$seed"); fi
      done
      [ "${#rest[@]}" -gt 0 ] && train_together "$config" "${rest[@]}"
      for seed in $SEEDS; do keep "$(run_dir "$config" "$seed")" "$RESULTS/$config/seed$seed"; done
    done
  else
    for seed in $SEEDS; do
      for config in $CONFIGS; do
        train "$config" "$seed"
        keep "$(run_dir "$config" "$seed")" "$RESULTS/$config/seed$seed"
      done
    done
  fi
fi
if has analyse; then
  for seed in $SEEDS; do
    for config in $CONFIGS; do
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
      (export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}; analyse "$config" "$seed") &
    done
  done
  wait
fi
if has bench; then
  $PYTHON benchmarks/train_speed.py --json "$RESULTS/benchmark.json" 2>&1 | tee "$RESULTS/benchmark.txt"
fi
if has report; then
  runs=()
  for config in pilot scale_10m; do for seed in $SEEDS; do runs+=("$RESULTS/$config/seed$seed"); done; done
  extension=()  # the learnability extension's section, where its runs were aggregated (python -m src.report.scaling)
  [ -f "$RESULTS/extension/extension.json" ] && extension=(--extension "$RESULTS/extension")
  $PYTHON -m src.report "${runs[@]}" --out "$RESULTS/REPORT.md" ${extension[@]+"${extension[@]}"}
fi
