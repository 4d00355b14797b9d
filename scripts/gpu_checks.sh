#!/usr/bin/env bash
# The GPU-side checks of the reliability work, in one command on a CUDA machine:
#   1. the GPU-marked tests (python -m pytest -m gpu);
#   2. a real 10M run stopped by SIGTERM once it is training (compiled + CUDA graph), then resumed:
#      the first exits 143 with checkpoint_latest.pt saved, the resume completes the run.
# Logs go to ${OUT:-runs/gpu_checks}.
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON="${PYTHON:-python}"
OUT="${OUT:-runs/gpu_checks}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PYTHON -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

echo "== 1. python -m pytest -m gpu"
[ "${SKIP_TESTS:-0}" = 1 ] || $PYTHON -m pytest -m gpu -q -rs 2>&1 | tee "$OUT/gpu_tests.txt"

echo "== 2. SIGTERM during a 10M run, then --resume"
run=runs/gpu_checks_sigterm
rm -rf "$run"
$PYTHON -m src.train --config configs/scale_10m.yaml --output-dir "$run" --seed 42 --device cuda --fp16 --gpu-only \
  --no-progress > "$OUT/sigterm_first.log" 2>&1 &
pid=$!
# wait for epoch 10's metrics row (compilation and capture are over, training is running), then stop it
for _ in $(seq 600); do
  if [ -f "$run/metrics.jsonl" ] && [ "$(wc -l < "$run/metrics.jsonl")" -ge 2 ]; then break; fi
  sleep 0.1
done
sleep "${SIGTERM_DELAY:-0.15}"  # 0.15 s: during the evaluation after epoch 10; 1 s: in the middle of a later epoch
kill -TERM "$pid"
wait "$pid"
echo "first exit status: $? (143 expected)" | tee "$OUT/sigterm.txt"
tail -n 2 "$OUT/sigterm_first.log" | tee -a "$OUT/sigterm.txt"
$PYTHON -c "import torch; c = torch.load('$run/checkpoint_latest.pt', weights_only=True); print('checkpoint_latest: epoch', c['epoch'], 'epoch_step', c['epoch_step'], 'step', c['step'], 'precision', c['precision'])" | tee -a "$OUT/sigterm.txt"
$PYTHON -m src.train --output-dir "$run" --resume --device cuda --no-progress > "$OUT/sigterm_resume.log" 2>&1
echo "resume exit status: $? (0 expected)" | tee -a "$OUT/sigterm.txt"
grep -E "Resuming|Done" "$OUT/sigterm_resume.log" | tee -a "$OUT/sigterm.txt"
$PYTHON -c "import json; s = json.load(open('$run/summary.json')); print('summary:', s['status'], s['epochs'], 'epochs', s['steps'], 'steps', s['precision'], s['accelerations'])" | tee -a "$OUT/sigterm.txt"
