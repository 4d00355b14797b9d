#!/usr/bin/env bash
# The 10M launcher (train_10m_scale.sh) from a cold start, as a user's first run on a GPU machine: new, empty
# Inductor and Triton caches for every run, torch's bytecode cached (as pip leaves it; filled once before the
# first run). Prints each run's wall seconds from start to exit, and from its summary.json the training's
# own clock, its steps/s and its compile-and-capture seconds. Each run trains into a temporary directory
# (a second --output-dir, which overrides the launcher's), so a run in runs/scale_10m is left alone.
#   OUT=<dir> bash scripts/cold_start.sh [RUNS]      # RUNS launchers one after another (default 2)
# Each run's log and summary land in OUT (default runs/cold_start).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-runs/cold_start}"; RUNS="${1:-2}"
mkdir -p "$OUT"
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-/tmp/pyc}"
python -c "import torch, torch._dynamo, torch._inductor.compile_fx, src.train" || exit 1   # the bytecode cache
status=0
for i in $(seq 1 "$RUNS"); do
  scratch=$(mktemp -d)
  export TORCHINDUCTOR_CACHE_DIR="$scratch/inductor" TRITON_CACHE_DIR="$scratch/triton"
  start=$(date +%s.%N)
  bash train_10m_scale.sh --no-progress --output-dir "$scratch/run" > "$OUT/launcher$i.log" 2>&1; rc=$?
  end=$(date +%s.%N)
  [ "$rc" = 0 ] || status=$rc
  cp "$scratch/run/summary.json" "$OUT/launcher${i}_summary.json" 2>/dev/null
  python - "$i" "$rc" "$start" "$end" "$OUT/launcher${i}_summary.json" <<'EOF'
import json, sys
i, rc, start, end, path = sys.argv[1:]
line = f"launcher {i}: exit {rc}, {float(end) - float(start):.1f} s start to exit"
try:
    s = json.load(open(path))
    line += (f"; src.train wall_time_s {s['wall_time_s']:.1f}, {s['train_steps_per_s']:.1f} steps/s, "
             f"compile and capture {s['timing']['compile_and_capture_s']:.1f} s, {s['gpu_name']}")
except (OSError, KeyError, ValueError) as e:
    line += f"; no summary ({e})"
print(line, flush=True)
EOF
  rm -rf "$scratch"
done
exit "$status"
