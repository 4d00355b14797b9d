#!/usr/bin/env bash
# Does a whole training repeat bit for bit? Each extension config of CONFIGS (N = 20,000, shortened to
# EPOCHS epochs: 23,226 steps of batch 256 at the default 294) is trained twice with seed 123 through
# src.train (compile, CUDA graph, evaluations, model selection, checkpoints), and the two runs are
# compared: every metrics.jsonl row (peak memory aside), the weights and optimizer state of
# checkpoint_latest.pt and checkpoint_best.pt, the selected epoch. Needs CUDA; the comparison goes to
# OUT/e2e/<config>.compare.txt with both runs' metrics.jsonl and one summary.json (BENCHMARKS.md,
# "Two trainings of one seed": H100, equal in every respect for both scales).
#
#   OUT=runs/repeat_check bash scripts/repeat_check.sh
#   CONFIGS=ext_pilot_n20000 EPOCHS=1 DEVICE=cpu bash scripts/repeat_check.sh    # a quick try on the CPU
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=.
OUT=${OUT:-runs/repeat_check}
CONFIGS=${CONFIGS:-"ext_pilot_n20000 ext_10m_n20000"}
WORK=$(mktemp -d)  # the two runs of each config (checkpoints included), removed at the end
trap 'rm -rf "$WORK"' EXIT
EPOCHS=${EPOCHS:-294}
DEVICE=${DEVICE:-cuda}  # cpu only to try the script (the CPU's kernels repeat anyway)
t0=$(date +%s); nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
python -m src.data --train-size 20000 > "$WORK/gen.log" 2>&1; echo "gen $(( $(date +%s) - t0 )) s"
mkdir -p "$OUT/e2e"
for c in $CONFIGS; do
  python - "$c" "$EPOCHS" "$WORK" <<'PY'
import sys, yaml
c, epochs, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
raw = yaml.safe_load(open(f"configs/extension/{c}.yaml"))
raw["training"].update(epochs=epochs, eval_interval=max(1, epochs // 6), save_interval=max(1, epochs // 3))
yaml.safe_dump(raw, open(f"{work}/{c}.yaml", "w"), sort_keys=False)
PY
  for r in a b; do
    python -m src.train --config "$WORK/$c.yaml" --output-dir "$WORK/$c/$r" --seed 123 --device "$DEVICE" --no-progress \
      > "$WORK/${c}_$r.log" 2>&1; echo "$c $r rc $? at $(( $(date +%s) - t0 )) s"; tail -1 "$WORK/${c}_$r.log"
  done
  python - "$c" "$WORK" <<'PY' | tee "$OUT/e2e/$c.compare.txt"
import json, sys, torch
from src.rundir.checkpoint import load_training_checkpoint
from src.rundir.results import read_metrics
c, work = sys.argv[1], sys.argv[2]; a, b = f"{work}/{c}/a", f"{work}/{c}/b"
def rows(d):
    return [{k: v for k, v in row.items() if k != "peak_gpu_memory_mb"} for row in read_metrics(f"{d}/metrics.jsonl")[0]]
ra, rb = rows(a), rows(b)
print(c, "metrics rows", len(ra), "equal (every key but peak memory):", ra == rb)
for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):
    x, y = (load_training_checkpoint(f"{d}/{name}") for d in (a, b))
    same = all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])
    opt = all(torch.equal(u, v) for s1, s2 in zip(x["optimizer"]["state"].values(), y["optimizer"]["state"].values())
              for u, v in zip(s1.values(), s2.values()) if isinstance(u, torch.Tensor))
    print(c, name, "epoch", x["epoch"], y["epoch"], "weights equal:", same, "optimizer state equal:", opt)
sa, sb = (json.load(open(f"{d}/summary.json")) for d in (a, b))
print(c, "best_epoch", sa["best_epoch"], sb["best_epoch"], "best_val_metrics equal:", sa["best_val_metrics"] == sb["best_val_metrics"],
      "steps", sa["steps"], "steps/s", round(sa["train_steps_per_s"]), round(sb["train_steps_per_s"]), sa["gpu_name"], sa["torch_version"])
PY
  cp "$WORK/$c/a/metrics.jsonl" "$OUT/e2e/$c.a.metrics.jsonl"; cp "$WORK/$c/b/metrics.jsonl" "$OUT/e2e/$c.b.metrics.jsonl"
  cp "$WORK/$c/a/summary.json" "$OUT/e2e/$c.a.summary.json"
done
echo "total $(( $(date +%s) - t0 )) s"
