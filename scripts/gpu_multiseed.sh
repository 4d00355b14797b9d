#!/usr/bin/env bash
# On one CUDA machine, in one command: the GPU-marked tests, then the throughput table
# (seeds side by side, batch 8 and batch 256, both scales). Writes under ${OUT:-runs/gpu_multiseed}.
set -u
cd "$(dirname "$0")/.." || exit 1
PYTHON="${PYTHON:-python}"
OUT="${OUT:-runs/gpu_multiseed}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
[ "${SKIP_TESTS:-0}" = 1 ] || $PYTHON -m pytest -m gpu -q -rs -s 2>&1 | tail -n 30 | tee "$OUT/gpu_tests.txt"
bench() { name=$1; shift; echo "== $name: $*"; $PYTHON benchmarks/train_speed.py --json "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.txt"; }
bench b8_10m --configs configs/scale_10m.yaml --plain-steps 100 --epochs 3 --variants compiled+graph --seeds 1 3 8
bench b32_pilot --configs configs/pilot.yaml --batch-size 32 --plain-steps 100 --epochs 3 --variants compiled+graph --seeds 1 8
bench b256 --batch-size 256 --dropout 0 --repeat-data 100 --epochs 2 --no-plain --variants compiled+graph \
  model-compiled+graph --seeds 1 3
