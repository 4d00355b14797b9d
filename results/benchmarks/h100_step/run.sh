#!/usr/bin/env bash
# One call on one GPU: the training step with its bookkeeping in fewer kernels, against the step before
# it (the source tree of commit f2942c1, unpacked into _baseline/ beside this one), runs alternated; then
# the 10M launcher from a cold compiler cache; then the GPU-marked tests. Everything lands in $OUT.
#   git archive f2942c1 src benchmarks configs | tar -x -C _baseline    # before the call
#   OUT=<dir> bash results/benchmarks/h100_step/run.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/r"
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pyc   # a bytecode cache (BENCHMARKS.md)
here=$(pwd)
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python -c "import torch; print(torch.__version__)"; } \
  > "$OUT/r/gpu.txt"
mkdir -p _baseline/data && cp data/*.jsonl _baseline/data/
B8="--configs configs/scale_10m.yaml --paths padded --seeds 1 --steps 4000 --warmup-steps 200"
B256="--configs configs/extension/ext_10m_n2000000.yaml --paths packed --seeds 1 --steps 1000 --warmup-steps 50 --train-size 200000"
bench() {  # tree name args...
  local tree=$1 name=$2; shift 2
  (cd "$tree" && timeout 120 python benchmarks/train_speed.py "$@" --json "$OUT/r/$name.json") > "$OUT/r/$name.log" 2>&1
  echo "$name rc=$? $(grep -o '"steps_per_s": [0-9.]*' "$OUT/r/$name.json" | head -1)"
}
bench _baseline b8_before_1 $B8; bench . b8_after_1 $B8; bench _baseline b8_before_2 $B8; bench . b8_after_2 $B8
bench . b256_after_1 $B256
mkdir -p _baseline/data/generated && cp -r data/generated/. _baseline/data/generated/
bench _baseline b256_before_1 $B256
for i in 1 2; do   # the launcher with new compiler caches, as a user's first run
  export TORCHINDUCTOR_CACHE_DIR=/tmp/ind_l$i TRITON_CACHE_DIR=/tmp/tri_l$i
  rm -rf runs/scale_10m; s=$(date +%s.%N)
  timeout 120 bash train_10m_scale.sh --no-progress > "$OUT/r/launcher$i.log" 2>&1; rc=$?
  e=$(date +%s.%N); echo "launcher $i: rc=$rc $(python3 -c "print(f'{$e - $s:.1f}')") s"
  cp runs/scale_10m/summary.json "$OUT/r/launcher${i}_summary.json" 2>/dev/null
done
unset TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR
bench . b8_after_model $B8 --compile-scope model
timeout 200 python -m pytest -m gpu -q -x -p no:cacheprovider > "$OUT/r/gpu_tests.txt" 2>&1; echo "gpu tests rc=$?"
tail -3 "$OUT/r/gpu_tests.txt"
tar -czf "$OUT/results.tar.gz" -C "$OUT" r && rm -rf "$OUT/r"
