#!/usr/bin/env bash
# The learnability extension, part 2: retrain the models to take apart, run the whole
# battery on each (src.analysis.run_all), then match the pilot's roles to the 10M model's (src.analysis.rolematch).
#
#   bash scripts/extension_mechanisms.sh                     # the N = 2,000,000 models, seeds 42 123 7
#   RUNS="ext_pilot_n2000000:42 ext_10m_n2000000:42" bash scripts/extension_mechanisms.sh
#   RUNS="pilot:42 scale_10m:42" bash scripts/extension_mechanisms.sh   # the replication's models (item 5)
#   GPUS="0 1 2 3" bash scripts/extension_mechanisms.sh     # one queue per GPU
#   GPUS="0 1" QUEUES="ext_10m_n2000000:42;ext_pilot_n2000000:42 pilot:42" bash scripts/extension_mechanisms.sh
#                                                            # queue i (items split at ';') on GPU i
#
# Checkpoints are not kept in the repository, so each model is trained again (the commands of
# results/extension/RUNS.md; bit for bit on one GPU kind since src.model.embed_lookup, a new draw of the
# runs trained before it) into RUNS_DIR,
# with its results in RETRAIN_DIR (never results/extension, whose finished runs the sweep would skip).
# Each run's retrained eval.json goes beside the battery's files, so that the retrained model can be
# held against the committed one. Small outputs are copied to OUT/<config>/seed<S>/; the role
# matching (OUT/rolematch.json) and the report section (OUT/MECHANISMS.md) are written last.
#
# Each model is also evaluated on fresh test files (python -m src.data --fresh-test FRESH_SEED: no
# expression of any shipped file or training set) -> eval_fresh_<FRESH_SEED>.json.
#
# The battery's files go to RAW/<config>/seed<S>/ (all of them) and, up to SMALL_KB each, to
# OUT/<config>/seed<S>/ with a FILES.txt listing every file (size, sha256, kept or not): the head scans
# and patching of a 10M model run to megabytes, which results/ does not hold; mechanisms.json does.
#
# Weights can travel instead of being trained again (python -m scripts.carry_weights): with WEIGHTS_OUT, each
# run's weights and small files are packed there after its battery (pieces under 16 MiB; a run trained
# in fp16 stored in fp16); with WEIGHTS_IN, the packs there are unpacked into RUNS_DIR (and the small
# files into RETRAIN_DIR) before the queues start, so those items go straight to the battery.
#
# Environment: RUNS (config:seed items, dealt round-robin to the GPUs), QUEUES (instead of RUNS: one
# list of items per GPU, the lists separated by ';'), OMP_NUM_THREADS (default: the cores shared out
# among the queues, so that the steps' CPU work does not oversubscribe the host), FRESH_SEED (default 2026), FRESH_EXCLUDE (default 2000000),
# EXT_CONFIGS (default configs/extension), REP_CONFIGS (default configs), MATCH_N (default 2000000),
# LIMIT (smoke runs: --limit for every evaluation and the battery), RAW, SMALL_KB, FRESH, GPUS (CUDA
# device indices; default: all visible, or the CPU when there is none), RUNS_DIR (default runs/extension), RETRAIN_DIR (default runs/extension_retrain),
# OUT (default results/extension/mechanisms).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-"ext_10m_n2000000:42 ext_10m_n2000000:123 ext_10m_n2000000:7 ext_pilot_n2000000:42 ext_pilot_n2000000:123 ext_pilot_n2000000:7"}
RUNS_DIR=${RUNS_DIR:-runs/extension}
RETRAIN_DIR=${RETRAIN_DIR:-runs/extension_retrain}
OUT=${OUT:-results/extension/mechanisms}
RAW=${RAW:-runs/extension_mechanisms}  # every file of the battery, whatever its size (git-ignored)
SMALL_KB=${SMALL_KB:-300}              # files up to this size are copied into OUT (committed)
MATCH_N=${MATCH_N:-2000000}            # the extension's roles are matched between ext_pilot_nN and ext_10m_nN
EXT_CONFIGS=${EXT_CONFIGS:-configs/extension}  # the extension's configs
REP_CONFIGS=${REP_CONFIGS:-configs}            # the replication's (pilot.yaml, scale_10m.yaml)
FRESH_EXCLUDE=${FRESH_EXCLUDE:-2000000}        # the training set the fresh test files avoid
LIMIT=${LIMIT:-}                               # smoke runs only: the first LIMIT examples of every split
FRESH_SEED=${FRESH_SEED:-2026}
WEIGHTS_IN=${WEIGHTS_IN:-}                     # packed weights to analyse instead of retraining (scripts.carry_weights)
WEIGHTS_OUT=${WEIGHTS_OUT:-}                   # pack each run's weights here after its battery
if [ -z "${GPUS:-}" ]; then
  GPUS=$(python -c "import torch; print(' '.join(map(str, range(torch.cuda.device_count()))) or 'cpu')")
fi
read -r -a gpus <<< "$GPUS"
if [ -n "${QUEUES:-}" ]; then  # one list per GPU
  IFS=';' read -r -a queues <<< "$QUEUES"
  if [ "${#queues[@]}" -gt "${#gpus[@]}" ]; then
    echo "QUEUES has ${#queues[@]} lists but GPUS names ${#gpus[@]} device(s): one list per device" >&2; exit 2
  fi
  RUNS="${queues[*]}"
fi
read -r -a items <<< "$RUNS"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / ${#gpus[@]} > 0 ? $(nproc) / ${#gpus[@]} : 1 ))}

# every training set the items need, generated once before the queues start (otherwise the first queue
# to need one generates it, with every core, while the others wait on its lock)
for size in $(for item in "${items[@]}"; do
                c=${item%%:*}; [[ $c =~ ^ext_.+_n([0-9]+) ]] && echo "${BASH_REMATCH[1]}"; done | sort -u); do
  python -m src.data --train-size "$size"
done
# fresh test files: drawn like the test sets with another seed, none of their expressions in any shipped
# file or training set (the results are also read on expressions no model has seen)
FRESH=${FRESH:-data/generated/fresh_$FRESH_SEED}
python -m src.data --fresh-test "$FRESH_SEED" --exclude-train "$FRESH_EXCLUDE" --out "$FRESH"
FRESH_EVAL="eval_$(basename "$FRESH").json"  # the name src.analysis.evaluate --data-dir gives its output
limit=()
[ -n "$LIMIT" ] && limit=(--limit "$LIMIT")
# carried weights: run directories (and the results the sweep counts as finished) before any queue starts
[ -n "$WEIGHTS_IN" ] && python -m scripts.carry_weights unpack "$WEIGHTS_IN" --runs-dir "$RUNS_DIR" --results-dir "$RETRAIN_DIR" \
  --skip-existing

one() {  # one config:seed on one device: train (or finish) it, evaluate it, run the battery, copy the results
  local config=${1%%:*} seed=${1##*:} device=$2 run
  local dest="$RAW/$config/seed$seed"
  local where=(--device cuda)
  [ "$device" = cpu ] && where=(--device cpu)
  if [ -f "$EXT_CONFIGS/$config.yaml" ]; then
    run="$RUNS_DIR/$config/seed$seed"
    python -m src.sweep "$EXT_CONFIGS" --only "$config" --seeds "$seed" --runs-dir "$RUNS_DIR" \
      --results-dir "$RETRAIN_DIR" --no-progress "${where[@]}"
  else  # a replication config, REP_CONFIGS/<config>.yaml, trained as scripts/reproduce_study.sh trains it
    run="$RUNS_DIR/replication/$config/seed$seed"
    if [ ! -f "$run/summary.json" ]; then
      local resume=()
      [ -f "$run/checkpoint_latest.pt" ] && resume=(--resume)
      python -m src.train --config "$REP_CONFIGS/$config.yaml" --output-dir "$run" --seed "$seed" "${where[@]}" \
        --no-progress "${resume[@]}"
    fi
    python -m src.analysis.evaluate --run "$run" "${where[@]}" ${limit[@]+"${limit[@]}"}
  fi
  python -m src.analysis.run_all --run "$run" "${where[@]}" --quiet --only ablate,roles,probe,patching,value_probe \
    ${limit[@]+"${limit[@]}"}  # the evaluations are the lines around it
  python -m src.analysis.evaluate --run "$run" "${where[@]}" --data-dir "$FRESH" ${limit[@]+"${limit[@]}"} > /dev/null
  mkdir -p "$dest"
  # a --limit run names its files NAME.limitN.json (each records its limit); RAW keeps the plain names
  local tag=${LIMIT:+.limit$LIMIT}
  for f in battery.json ablation.json roles.json probe.json patching.json value_probe.json eval.json \
           "$FRESH_EVAL"; do
    src="$run/${f%.json}$tag.json"
    [ -f "$src" ] || src="$run/$f"  # the sweep's own evaluation of an extension run is never limited
    [ -f "$src" ] && cp "$src" "$dest/$f"
  done
  [ -f "$run/summary.json" ] && cp "$run/summary.json" "$dest/summary.json"
  if [ -n "$WEIGHTS_OUT" ]; then python -m scripts.carry_weights pack "$run" --root "$RUNS_DIR" --out "$WEIGHTS_OUT"; fi
  echo "== $config seed $seed: done on $device -> $dest"
}

pids=()
for i in "${!gpus[@]}"; do
  (
    device=${gpus[$i]}
    [ "$device" != cpu ] && export CUDA_VISIBLE_DEVICES=$device
    if [ -n "${QUEUES:-}" ]; then
      read -r -a mine <<< "${queues[$i]:-}"
      for item in ${mine[@]+"${mine[@]}"}; do one "$item" "$device"; done
    else
      for j in "${!items[@]}"; do
        if [ $((j % ${#gpus[@]})) -eq "$i" ]; then one "${items[$j]}" "$device"; fi
      done
    fi
  ) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

# roles matched across scales, within each study where both scales have runs (every run in RAW: this
# call's and any earlier call's)
declare -A pilot large
for raw in "$RAW"/*/seed*; do
  [ -f "$raw/roles.json" ] && [ -f "$raw/ablation.json" ] || continue
  config=$(basename "$(dirname "$raw")")
  case $config in
    "ext_pilot_n$MATCH_N") pilot[extension]+=" $raw" ;;
    "ext_10m_n$MATCH_N") large[extension]+=" $raw" ;;
    pilot) pilot[replication]+=" $raw" ;;
    scale_10m) large[replication]+=" $raw" ;;
  esac
done
for study in extension replication; do
  if [ -n "${pilot[$study]:-}" ] && [ -n "${large[$study]:-}" ]; then
    dir="$OUT"; [ "$study" = replication ] && dir="$OUT/replication"
    # shellcheck disable=SC2086  # the lists are space-separated run directories
    python -m src.analysis.rolematch --pilot ${pilot[$study]} --large ${large[$study]} --out "$dir" || status=1
  fi
done
match=()  # every study's table there is, this call's or an earlier one's
for dir in "$OUT" "$OUT/replication"; do [ -f "$dir/rolematch.json" ] && match+=("$dir"); done
# the section "Extension: mechanisms" (python -m src.report ... --extension results/extension includes it)
python -m src.report.analyses "$RAW"/*/seed* ${match[@]+--rolematch "${match[@]}"} --out "$OUT" > /dev/null || status=1
# the small files of each run into OUT, and the list of all of them
for raw in "$RAW"/*/seed*; do
  dest="$OUT/${raw#"$RAW"/}"
  mkdir -p "$dest"
  : > "$dest/FILES.txt"
  for f in "$raw"/*; do
    size=$(stat -c %s "$f")
    if [ "$size" -le $((SMALL_KB * 1024)) ]; then cp "$f" "$dest/"; kept=kept; else kept="left out (over ${SMALL_KB} KB)"; fi
    echo "$(basename "$f") $size bytes sha256 $(sha256sum "$f" | cut -c1-64) $kept" >> "$dest/FILES.txt"
  done
done
exit $status
