#!/usr/bin/env bash
# The study on one CUDA GPU (docs/PREREGISTRATION.md): both scales on the near-twin-free set of 2,000,000
# expressions, the 8 preregistered seeds of a scale side by side, each command resuming where the last one
# stopped. Run the same command again until it prints "group done" (SEEDS of SCALES all committed or finished
# with their batteries; exit 0), and "all done" once the whole study is; it exits 75 while the group has work left.
#   1. the near-twin-free set (python -m src.data --train-size 2000000 --near-twin-free), made or verified
#   2. the first scale with a seed left: its seeds left (of SEEDS) trained side by side for at most BUDGET_S
#      seconds (scripts/resumable_train.py); a run is finished when its run directory has summary.json, and a
#      seed is done when its files are in RESULTS (so a later command, on another machine, skips it)
#   3. the battery (python -m src.analysis.run_all) on every finished seed without battery.json, side by side
#      (each seed's output in its run directory's battery.log)
#   4. each finished seed's eval.json, summary.json, metrics.jsonl, config.yaml and the battery's JSON into
#      results/study/<config>/seed<S>/, gzip-compressed (X.json.gz, read by src/rundir/results.py) above 300 KB
#   5. seed 42 of each finished scale exported (python -m src.export; the 10M model in float16) into models/<config>/
# Every step skips what is already done, so the command is safe to stop and rerun at any point.
#   BUDGET_S   wall-clock budget of one command's training (default 540)
#   SEEDS      the seeds this command works on (default all 8: 42,123,7,1,2,3,4,5); a group that fits the GPU
#              time at hand, e.g. SEEDS=42,123 SCALES=10m (results/study/PLAN.md gives the groups)
#   RUNS       run directories (default runs/study); RESULTS (default results/study); MODELS (default models)
#   DRY_RUN=1  print the plan (the commands that would run, given what is done) and run nothing
set -u
cd "$(dirname "$0")/.." || exit 1
BUDGET_S="${BUDGET_S:-540}"; RUNS="${RUNS:-runs/study}"; RESULTS="${RESULTS:-results/study}"; MODELS="${MODELS:-models}"
DRY_RUN="${DRY_RUN:-0}"; SCALES="${SCALES:-pilot 10m}"; ALL_SEEDS="42,123,7,1,2,3,4,5"; SEEDS="${SEEDS:-$ALL_SEEDS}"
BATTERY_FILES="battery.json ablation.json roles.json probe.json patching.json value_probe.json interchange.json"
. scripts/result_files.sh  # copy_result: a JSON result above 300 KB goes in gzip-compressed
RUN_PREFIX=run

run() {  # a command of the plan: printed, and run unless DRY_RUN=1
  echo "+ $*"
  [ "$DRY_RUN" = 1 ] || "$@"
}

finished() { [ -f "$1/summary.json" ]; }

committed() {  # committed CONFIG SEED: the seed's run and battery are in RESULTS
  local d="$RESULTS/$1/seed$2"
  [ -f "$d/summary.json" ] && { [ -f "$d/battery.json" ] || [ -f "$d/battery.json.gz" ]; }
}

run python -m src.data --train-size 2000000 --near-twin-free
left=0  # 1 while a seed of this group (SEEDS of SCALES) is not done
study_left=""  # the seeds of the whole study not done, by config
trained=0
for scale in $SCALES; do
  config="study_$scale"; out="$RUNS/$scale"
  todo=""
  for s in ${SEEDS//,/ }; do
    finished "$out/seed$s" || committed "$config" "$s" || todo="$todo${todo:+,}$s"
  done
  if [ -n "$todo" ] && [ "$trained" = 0 ]; then  # one scale's training per command: the budget is the command's
    trained=1
    run python scripts/resumable_train.py --budget-s "$BUDGET_S" -- --config "configs/study/$config.yaml" \
      --output-dir "$out" --seeds "$todo" --device cuda --gpu-only --no-progress
  fi
  batteries=()  # the finished seeds without a battery: run side by side, as one battery leaves the GPU mostly idle
  for s in ${SEEDS//,/ }; do
    d="$out/seed$s"
    finished "$d" && [ ! -f "$d/battery.json" ] && batteries+=("$d")
  done
  for d in ${batteries[@]+"${batteries[@]}"}; do
    echo "+ python -m src.analysis.run_all --run $d --device cuda --quiet --no-progress > $d/battery.log"
    [ "$DRY_RUN" = 1 ] || python -m src.analysis.run_all --run "$d" --device cuda --quiet --no-progress > "$d/battery.log" 2>&1 &
  done
  wait
  for d in ${batteries[@]+"${batteries[@]}"}; do [ "$DRY_RUN" = 1 ] || tail -n 1 "$d/battery.log"; done
  for s in ${SEEDS//,/ }; do
    d="$out/seed$s"
    finished "$d" || continue
    dest="$RESULTS/$config/seed$s"
    run mkdir -p "$dest"
    for f in eval.json summary.json metrics.jsonl config.yaml $BATTERY_FILES; do copy_result "$d/$f" "$dest"; done
  done
  if finished "$out/seed42" && [ ! -f "$MODELS/$config/model.safetensors" ]; then
    dtype=float32; [ "$scale" = 10m ] && dtype=float16  # about 21 MB instead of 43 for the 10M model
    run python -m src.export --run "$out/seed42" --out "$MODELS/$config" --dtype "$dtype"
  fi
  rest=""
  for s in ${ALL_SEEDS//,/ }; do
    committed "$config" "$s" || { finished "$out/seed$s" && [ -f "$out/seed$s/battery.json" ]; } && continue
    rest="$rest${rest:+,}$s"
    case ",$SEEDS," in *",$s,"*) left=1 ;; esac
  done
  [ -n "$rest" ] && study_left="$study_left $config: $rest;"
done
if [ "$left" = 1 ]; then echo "not done: run the same command again"; exit 75; fi
if [ -z "$study_left" ]; then echo "all done"; else echo "group done; seeds not yet in $RESULTS here:$study_left"; fi
