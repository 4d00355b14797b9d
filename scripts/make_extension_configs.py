"""Write configs/extension/: the learnability extension's grid (docs/DESIGN.md section 8).

    python scripts/make_extension_configs.py [--out configs/extension] [--check]

One config per scale x training-set size N, plain answers and answer-only loss, and at the largest N
two labelled variants (`loss_on: all`; reversed answers). Every config of a curve has the same
optimizer-step budget, so a curve compares data, not compute: the number of epochs is the budget over
the steps of one epoch (ceil(N / batch)), rounded to whole epochs (the step counts differ by at most
0.12%: 124,978 to 125,120). Evaluation and checkpoints are spaced to the same number of steps at every N.

The shared settings (batch, warm-up, weight decay, dropout) come from the calibration in DESIGN.md section 8,
the learning rate of each scale from the sweep recorded in results/extension/SWEEP.md; they are set
here, once. `--check` exits 1 when a committed config differs from what this script writes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from src.config import config_from_dict  # noqa: E402

SIZES = (2_000, 20_000, 200_000, 2_000_000)
BATCH = 256
EPOCHS_AT_LARGEST = 16              # 16 x 7,813 = 125,008 steps: one 10-minute GPU command for 10M
STEPS = EPOCHS_AT_LARGEST * math.ceil(SIZES[-1] / BATCH)
EVALS = 16                           # validation exact_match this many times per run
CHECKPOINTS = 4                      # periodic checkpoints per run (besides latest and best)
SHARED = {                           # the calibration's recipe (DESIGN.md section 8)
    "batch_size": BATCH,
    "warmup_steps": 1000,
    "weight_decay": 0.1,
    "beta1": 0.9,
    "beta2": 0.95,
    "grad_clip": 1.0,
    "loss_on": "answer",
    "select_on": "val_exact_match",
    "compile": True,
    "cuda_graph": True,
    "max_bad_steps": 50,
}
SCALES = {"pilot": "configs/pilot.yaml", "10m": "configs/scale_10m.yaml"}  # architecture and precision from these
# peak learning rate per scale: the best validation exact_match of the sweep in results/extension/SWEEP.md
LEARNING_RATE = {"pilot": 4.0e-3, "10m": 1.0e-3}
VARIANTS = {"": {}, "_lossall": {"training": {"loss_on": "all"}}, "_reversed": {"data": {"answer_format": "reversed"}}}


def epochs_for(n: int) -> int:
    return max(1, round(STEPS / math.ceil(n / BATCH)))


def config(scale: str, n: int, variant: str) -> dict:
    base = yaml.safe_load((REPO_ROOT / SCALES[scale]).read_text(encoding="utf-8"))
    epochs = epochs_for(n)
    every = max(1, epochs // EVALS)
    raw = {
        "name": f"ext_{scale}_n{n}{variant}",
        "target_parameters": base["target_parameters"],
        "model": {**base["model"], "dropout": 0.0},
        "training": {**SHARED, "learning_rate": LEARNING_RATE[scale], "epochs": epochs, "eval_interval": every, "save_interval": every * (EVALS // CHECKPOINTS),
                     "precision": base["training"]["precision"]},
        "data": {**{k: v for k, v in base["data"].items() if k != "train"}, "train_size": n, "answer_format": "plain"},
    }
    for section, values in VARIANTS[variant].items():
        raw[section].update(values)
    config_from_dict(raw, raw["name"])  # every config this script writes is valid
    return raw


def grid() -> dict[str, dict]:
    configs = {}
    for scale in SCALES:
        for n in SIZES:
            for variant in VARIANTS if n == SIZES[-1] else [""]:
                raw = config(scale, n, variant)
                configs[raw["name"]] = raw
    return configs


def text(raw: dict) -> str:
    steps = raw["training"]["epochs"] * math.ceil(raw["data"]["train_size"] / BATCH)
    head = (f"# Learnability extension (DESIGN.md section 8), written by scripts/make_extension_configs.py: do not edit.\n"
            f"# {raw['data']['train_size']:,} training expressions, {raw['training']['epochs']} epochs = {steps:,} steps "
            f"of batch {BATCH} (the curve's budget: {STEPS:,}).\n")
    return head + yaml.safe_dump(raw, sort_keys=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "configs" / "extension", help="directory to write into")
    p.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = p.parse_args(argv)
    stale = []
    for name, raw in grid().items():
        path = args.out / f"{name}.yaml"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text(raw):
                stale.append(str(path))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text(raw), encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date (run python scripts/make_extension_configs.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
