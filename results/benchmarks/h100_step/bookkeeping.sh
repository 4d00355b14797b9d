#!/usr/bin/env bash
# One call on one GPU: what compiling the step's bookkeeping (check_step, count_step) costs and gives.
# 1. its compilation from cold caches, in two fresh processes, after a first compilation has paid the
#    compiler's one-time start (as in training, where each block compiles first);
# 2. the 10M batch-8 benchmark with the bookkeeping eager and compiled, alternated.
#   OUT=<dir> bash results/benchmarks/h100_step/bookkeeping.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pyc
for i in 1 2; do
  TORCHINDUCTOR_CACHE_DIR=/tmp/ind_bk$i TRITON_CACHE_DIR=/tmp/tri_bk$i python - <<'PY'
import time, torch
from src.training.trainer import check_step, count_step, lr_table
cuda = torch.device("cuda")
x = torch.randn(1000, device=cuda)
torch.compile(lambda t: (t * 2 + 1).relu(), dynamic=False)(x); torch.cuda.synchronize()
z = lambda dtype=torch.long: torch.zeros((), dtype=dtype, device=cuda)
loss, norm, found_inf, lr = torch.tensor(1.5, device=cuda), torch.tensor(2.0, device=cuda), z(torch.float32), z(torch.float32)
table = lr_table(1e-3, 10, 100, cuda)
t = time.perf_counter()
torch.compile(check_step, dynamic=False, fullgraph=True)(loss, norm, found_inf, z(), lr, table)
torch.compile(count_step, dynamic=False, fullgraph=True)(loss, found_inf, z(torch.float64), z(), z(), z(), z(), z(), z())
torch.cuda.synchronize()
print(f"bookkeeping compiled from cold caches: {time.perf_counter() - t:.2f} s")
PY
done
B8="--configs configs/scale_10m.yaml --paths padded --seeds 1 --steps 4000 --warmup-steps 200"
for i in 1 2; do
  for mode in eager compiled; do
    python -c "
import runpy, sys
import src.training.trainer as t
if '$mode' == 'eager':
    t.compiled_step_bookkeeping = lambda: (t.check_step, t.count_step)
sys.argv = ['benchmarks/train_speed.py'] + '$B8'.split() + ['--json', '$OUT/b8_bookkeeping_${mode}$i.json']
runpy.run_path('benchmarks/train_speed.py', run_name='__main__')
" > "$OUT/b8_bookkeeping_${mode}$i.log" 2>&1
    echo "b8 bookkeeping $mode $i: rc=$? $(grep -o '"steps_per_s": [0-9.]*' "$OUT/b8_bookkeeping_${mode}$i.json" | head -1) $(grep -o '"final_train_loss": [0-9.]*' "$OUT/b8_bookkeeping_${mode}$i.json" | head -1)"
  done
done
