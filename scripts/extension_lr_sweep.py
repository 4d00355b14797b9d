"""The learnability extension's short learning-rate sweep, on validation only.

    python scripts/extension_lr_sweep.py --out DIR [--scales pilot 10m] [--lrs 5e-4 1e-3 2e-3] [--epochs 2]

For each scale and learning rate: the N = 2,000,000 config of configs/extension/ with that learning
rate and a short schedule (`--epochs` epochs of 7,813 steps, warm-up and decay scaled with it), seed
42, trained with `python -m src.train` in a fresh process. The choice reads validation exact_match
(and, for ties, validation answer loss) from each run's metrics.jsonl: the test sets are not read.
Writes DIR/sweep.json and prints a Markdown table; run directories go to DIR/runs/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for configs, runs and sweep.json")
    p.add_argument("--scales", nargs="+", default=["pilot", "10m"], choices=["pilot", "10m"])
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-4, 1e-3, 2e-3], help="peak learning rates")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the 2,000,000-expression set per run")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for scale in args.scales:
        base = yaml.safe_load((REPO_ROOT / "configs" / "extension" / f"ext_{scale}_n2000000.yaml").read_text())
        for lr in args.lrs:
            name = f"sweep_{scale}_lr{lr:g}"
            raw = {**base, "name": name}
            raw["training"] = {**base["training"], "learning_rate": lr, "epochs": args.epochs,
                               "eval_interval": 1, "save_interval": args.epochs}
            config = args.out / f"{name}.yaml"
            config.write_text(yaml.safe_dump(raw, sort_keys=False))
            run = args.out / "runs" / name
            tic = time.time()
            result = subprocess.run([sys.executable, "-m", "src.train", "--config", str(config), "--output-dir", str(run),
                                     "--seed", "42", "--device", args.device, "--no-progress"], cwd=REPO_ROOT,
                                    capture_output=True, text=True)
            wall = time.time() - tic
            (args.out / f"{name}.log").write_text(result.stdout + result.stderr)
            metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] \
                if (run / "metrics.jsonl").is_file() else []
            vals = [(m["epoch"], m["step"], m["val"]["exact_match"], m["val"]["answer_loss"]) for m in metrics if "val" in m]
            summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
            rows.append({"scale": scale, "learning_rate": lr, "exit": result.returncode, "wall_s": round(wall, 1),
                         "train_steps_per_s": summary.get("train_steps_per_s"), "val_by_epoch": vals,
                         "best_val_exact_match": max((v[2] for v in vals), default=None)})
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| scale | learning rate | val exact_match by epoch | best | steps/s | wall s |\n|---|---:|---|---:|---:|---:|")
    for r in rows:
        by_epoch = ", ".join(f"{v[2]:.3f}" for v in r["val_by_epoch"])
        steps = f"{r['train_steps_per_s']:.0f}" if r["train_steps_per_s"] else "failed"
        best = f"{r['best_val_exact_match']:.3f}" if r["best_val_exact_match"] is not None else "-"
        print(f"| {r['scale']} | {r['learning_rate']:g} | {by_epoch} | {best} | {steps} | {r['wall_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
