#!/usr/bin/env bash
# One call on one GPU: the 10M launcher from a cold start (new Inductor and Triton caches each run, torch's
# bytecode cached), alternating the shipped config (each block compiled) with the same config compiling
# the whole loss (training.compile_scope: model, set in the machine's copy only). Files land in $OUT.
#   OUT=<dir> bash results/benchmarks/h100_step/launcher_scope.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pyc
python -c "import torch, torch._dynamo, torch._inductor.compile_fx, src.train" 2>/dev/null   # fills the bytecode cache
cp configs/scale_10m.yaml /tmp/blocks.yaml
sed 's/^  compile: true$/  compile: true\n  compile_scope: model/' /tmp/blocks.yaml > /tmp/model.yaml
grep -q "compile_scope: model" /tmp/model.yaml || { echo "no compile_scope line"; exit 1; }
for i in 1 2; do
  for scope in blocks model; do
    cp /tmp/$scope.yaml configs/scale_10m.yaml
    export TORCHINDUCTOR_CACHE_DIR=/tmp/ind_${scope}$i TRITON_CACHE_DIR=/tmp/tri_${scope}$i
    rm -rf runs/scale_10m; s=$(date +%s.%N)
    timeout 150 bash train_10m_scale.sh --no-progress > "$OUT/launcher_${scope}$i.log" 2>&1; rc=$?
    e=$(date +%s.%N); echo "launcher $scope $i: rc=$rc $(python3 -c "print(f'{$e - $s:.1f}')") s"
    python3 -c "import json; s=json.load(open('runs/scale_10m/summary.json')); print('  wall_time_s', round(s['wall_time_s'], 1), 'steps/s', round(s['train_steps_per_s'], 1), s['timing'], s['accelerations']['compile'])"
  done
done
cp /tmp/blocks.yaml configs/scale_10m.yaml
