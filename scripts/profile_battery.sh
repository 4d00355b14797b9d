#!/usr/bin/env bash
# Profile each step of the analysis battery on untrained pilot and 10M models (what BENCHMARKS.md's
# "after profiling" section ran on an H100). Each step runs in its own process under cProfile; the
# profiles, logs and wall times go to PROFILE_DIR (default /tmp/battery_profile).
#   bash scripts/profile_battery.sh                        # both scales, every step, on cuda
#   DEVICE=cpu STEPS="ablate patching" RUNSETS=pilot bash scripts/profile_battery.sh
# Read a profile: python -c "import pstats; pstats.Stats('PROFILE_DIR/10m_probe.prof').sort_stats('tottime').print_stats(20)"
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${PROFILE_DIR:-/tmp/battery_profile}
DEVICE=${DEVICE:-cuda}
mkdir -p "$DIR"
declare -A config=([pilot]=configs/pilot.yaml [10m]=configs/scale_10m.yaml)
for r in ${RUNSETS:-pilot 10m}; do
  python scripts/random_run.py "${config[$r]}" "$DIR/run_$r" > /dev/null || exit 1
  for step in ${STEPS:-ablate roles probe patching value_probe}; do
    start=$(date +%s.%N)
    timeout "${STEP_TIMEOUT:-300}" python -m cProfile -o "$DIR/${r}_${step}.prof" -m "src.analysis.$step" --run "$DIR/run_$r" \
      --device "$DEVICE" > "$DIR/${r}_${step}.log" 2>&1
    rc=$?
    echo "$r $step rc=$rc wall=$(python -c "print(round($(date +%s.%N) - $start, 1))") s" | tee -a "$DIR/times.txt"
  done
done
