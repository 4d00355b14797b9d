#!/usr/bin/env bash
# Schedule curves on one CUDA GPU: the N = 2,000,000 extension runs of both scales at a longer step
# budget (configs/schedules/), trained side by side in two processes, each resumed where an earlier
# command stopped it (scripts/resumable_train.py), then evaluated once finished. Run the same command
# again until it prints "all finished". Run directories live in RUNS (default runs/schedules); the
# validation curves (metrics.jsonl), summaries and eval.json go to OUT (default runs/schedules_out).
#   BUDGET_S: wall-clock budget of this command's training (default 540)
set -u
cd "$(dirname "$0")/.." || exit 1
RUNS="${RUNS:-runs/schedules}"; OUT="${OUT:-runs/schedules_out}"; BUDGET_S="${BUDGET_S:-540}"
CONFIGS="${CONFIGS:-ext_10m_n2000000_x2 ext_pilot_n2000000_x2}"
mkdir -p "$RUNS" "$OUT"
python -m src.data --train-size 2000000 | tail -n 1
pids=()
for c in $CONFIGS; do
  python scripts/resumable_train.py --budget-s "$BUDGET_S" -- --config "configs/schedules/$c.yaml" \
    --output-dir "$RUNS/$c" --seed 42 --device cuda --gpu-only --no-progress > "$OUT/train_$c.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
finished=1
for c in $CONFIGS; do
  d="$RUNS/$c"
  cp "$d/metrics.jsonl" "$OUT/${c}_metrics.jsonl" 2>/dev/null
  if [ -f "$d/summary.json" ]; then
    cp "$d/summary.json" "$OUT/${c}_summary.json"
    [ -f "$d/eval.json" ] || python -m src.analysis.evaluate --run "$d" --device cuda > "$d/eval.log" 2>&1
    cp "$d/eval.json" "$OUT/${c}_eval.json" 2>/dev/null
  else
    finished=0
  fi
  tail -n 2 "$OUT/train_$c.log"
done
[ "$finished" = 1 ] && echo "all finished" || echo "not finished: run the same command again (exit $status)"
