#!/usr/bin/env bash
# On one CUDA GPU, in one command of at most about 8 minutes: the GPU-marked packing tests, then the
# training-path benchmark (padded, packed and packed-bf16; 1, 3 and 8 seeds side by side; the
# extension's batch-256 runs of both scales and the checklist's 10M run at batch 8). Writes four files
# under ${OUT:-runs/gpu_throughput}: gpu.txt, gpu_tests.txt, train_speed.json, train_speed.log.
#   TEST_TIMEOUT_S, BENCH_TIMEOUT_S: the phases' limits (120, 330); BENCH_BUDGET_S: rows that would start
#   later are skipped and listed (270); STEPS: timed steps of each seed in each row (300).
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON="${PYTHON:-python}"
OUT="${OUT:-runs/gpu_throughput}"
mkdir -p "$OUT"
start=$SECONDS
stamp() { echo "[$((SECONDS - start)) s] $*"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } 2>&1 | tee "$OUT/gpu.txt"

stamp "1. the generated training set the batch-256 rows are timed on (python -m src.data --train-size 200000)"
timeout 120 $PYTHON -m src.data --train-size 200000 2>&1 | tail -n 1

stamp "2. python -m pytest -q -m gpu tests/test_packing.py"
timeout "${TEST_TIMEOUT_S:-120}" $PYTHON -m pytest -q -m gpu -rs tests/test_packing.py 2>&1 | tee "$OUT/gpu_tests.txt"
echo "pytest exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_tests.txt"

stamp "3. benchmarks/train_speed.py --paths padded packed packed-bf16 --seeds 1 3 8"
timeout "${BENCH_TIMEOUT_S:-330}" $PYTHON benchmarks/train_speed.py --paths padded packed packed-bf16 --seeds 1 3 8 \
  --steps "${STEPS:-300}" --warmup-steps 30 --train-size 200000 --budget-s "${BENCH_BUDGET_S:-270}" \
  --json "$OUT/train_speed.json" 2>&1 | tee "$OUT/train_speed.log"
echo "benchmark exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/train_speed.log"
stamp "done; results in $OUT"
