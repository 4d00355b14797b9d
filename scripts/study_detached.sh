#!/usr/bin/env bash
# scripts/study.sh detached from the terminal, for a remote GPU machine whose connection may drop while a
# group trains (a 10M seed takes about 12 minutes; results/study/PLAN.md):
#   bash scripts/study_detached.sh start
#       starts scripts/study.sh in a session of its own (setsid), so that it outlives this shell; the
#       environment it reads (SEEDS, SCALES, BUDGET_S, RUNS, RESULTS, MODELS, DRY_RUN) passes through.
#       Refuses while an earlier start is still running. With ONE_BY_ONE=1, one study.sh per seed of SEEDS,
#       in order, each started once the one before has ended with its group done (a 10M seed alone trains
#       as fast as two side by side, and its files are ready sooner). With QUEUE="SCALE:SEEDS ...", e.g.
#       QUEUE="10m:2 pilot:3", one study.sh per item, in order, the same way (SCALES=SCALE SEEDS=SEEDS):
#       a 10M seed and then a pilot seed alone from one start, never side by side.
#   bash scripts/study_detached.sh wait [SECONDS] [DIR]
#       waits up to SECONDS (default 540) for it to end, then prints where it is: the log's last lines and
#       each run's last metrics row. With DIR, also copies what it has made so far into DIR: results.tgz
#       (RESULTS), logs.tgz (the log, and each run's metrics.jsonl and battery.log) and models.tar.part_*
#       (MODELS, in parts of 15 MB; join them with cat). Exit status: 0 once study.sh ended with its group
#       done (the log's last line says what the study has left), 75 while it runs or when it ended with work
#       left (start it again), else study.sh's own.
#   LOG_DIR (default runs/study_detached): study.log, pid and exit_status.
set -u
cd "$(dirname "$0")/.." || exit 1
LOG_DIR="${LOG_DIR:-runs/study_detached}"; RUNS="${RUNS:-runs/study}"; RESULTS="${RESULTS:-results/study}"
MODELS="${MODELS:-models}"

running() { [ -f "$LOG_DIR/pid" ] && [ ! -f "$LOG_DIR/exit_status" ] && kill -0 "$(cat "$LOG_DIR/pid")" 2>/dev/null; }

start() {
  if running; then
    echo "study_detached.sh: a study started earlier is still running (pid $(cat "$LOG_DIR/pid")); wait for it" >&2
    return 1
  fi
  mkdir -p "$LOG_DIR"
  rm -f "$LOG_DIR/exit_status"
  export RUNS RESULTS MODELS
  : > "$LOG_DIR/study.log"
  local groups="${SEEDS:-default}"  # one study.sh for SEEDS ("default": study.sh's own, all 8) ...
  if [ -n "${QUEUE:-}" ]; then
    local item
    for item in $QUEUE; do  # ... or one per SCALE:SEEDS item
      [[ "$item" =~ ^(pilot|10m):[0-9]+(,[0-9]+)*$ ]] || {
        echo "study_detached.sh: QUEUE item '$item' is not SCALE:SEEDS (SCALE pilot or 10m, SEEDS e.g. 2 or 2,3), e.g. QUEUE=\"10m:2 pilot:3\"" >&2
        return 1; }
    done
    groups="$QUEUE"
  elif [ "${ONE_BY_ONE:-0}" = 1 ]; then
    [ -n "${SEEDS:-}" ] || { echo "study_detached.sh: ONE_BY_ONE=1 needs SEEDS, e.g. SEEDS=7,1" >&2; return 1; }
    groups="${SEEDS//,/ }"  # ... or one per seed, in order
  fi
  # the exit status is written by the detached shell itself once the last study.sh has ended: that of the
  # first one that did not end with its group done, else 0
  setsid nohup bash -c 'status=0
    for group in $2; do
      case "$group" in
        default) bash scripts/study.sh >> "$1/study.log" 2>&1 ;;
        *:*) SCALES="${group%%:*}" SEEDS="${group#*:}" bash scripts/study.sh >> "$1/study.log" 2>&1 ;;
        *) SEEDS="$group" bash scripts/study.sh >> "$1/study.log" 2>&1 ;;
      esac
      status=$?; [ "$status" = 0 ] || break
    done
    echo "$status" > "$1/exit_status"' _ "$LOG_DIR" "$groups" > /dev/null 2>&1 < /dev/null &
  echo $! > "$LOG_DIR/pid"
  echo "study_detached.sh: started scripts/study.sh (pid $!, log $LOG_DIR/study.log)"
}

copy_to() {  # copy_to DIR: what the study has made so far
  local dir="$1"
  mkdir -p "$dir"
  [ -d "$RESULTS" ] && tar czf "$dir/results.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
  local logs=("$LOG_DIR")
  for f in "$RUNS"/*/seed*/metrics.jsonl "$RUNS"/*/seed*/battery.log; do [ -f "$f" ] && logs+=("$f"); done
  tar czf "$dir/logs.tgz" "${logs[@]}" 2>/dev/null
  rm -f "$dir"/models.tar.part_*
  [ -d "$MODELS" ] && tar cf - -C "$(dirname "$MODELS")" "$(basename "$MODELS")" | split -b 15M - "$dir/models.tar.part_"
  return 0
}

wait_for() {  # wait_for SECONDS [DIR]
  if [ ! -f "$LOG_DIR/pid" ]; then
    echo "study_detached.sh: nothing was started (no $LOG_DIR/pid); run: bash scripts/study_detached.sh start" >&2
    return 1
  fi
  local end=$((SECONDS + ${1:-540}))
  while running && [ "$SECONDS" -lt "$end" ]; do sleep 1; done
  tail -n 12 "$LOG_DIR/study.log" 2>/dev/null | cut -c1-300
  for f in "$RUNS"/*/seed*/metrics.jsonl; do
    [ -f "$f" ] && echo "$f: $(wc -l < "$f") rows; last: $(tail -n 1 "$f" | cut -c1-200)"
  done
  [ -n "${2:-}" ] && copy_to "$2"
  if running; then
    echo "study_detached.sh: still running"
    return 75
  fi
  local status; status="$(cat "$LOG_DIR/exit_status" 2>/dev/null || echo 1)"
  echo "study_detached.sh: scripts/study.sh ended with exit status $status"
  return "$status"
}

case "${1:-}" in
  start) start ;;
  wait) shift; wait_for "$@" ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; [ "${1:-}" = -h ] || [ "${1:-}" = --help ] ;;
esac
