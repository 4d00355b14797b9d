"""A run directory around an untrained model of a config, for timing or profiling the analyses.

    python scripts/random_run.py CONFIG OUT [--seed S]

Writes OUT/checkpoint_best.pt (the model as src.train builds it for seed S, untrained; compile and
CUDA graphs off) and OUT/summary.json, which is what every analysis command reads from a run. The
figures of an untrained model mean nothing; its forward passes cost what a trained one's do (the
probes' L-BFGS may take a different number of steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import yaml  # noqa: E402

from src.rundir.atomic import atomic_save  # noqa: E402
from src.config import config_from_dict  # noqa: E402
from src.model import CompactTransformer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path, help="a config YAML, e.g. configs/scale_10m.yaml")
    p.add_argument("out", type=Path, help="the run directory to write (created)")
    p.add_argument("--seed", type=int, default=42, help="torch.manual_seed before the model is built (default 42)")
    args = p.parse_args(argv)
    raw = yaml.safe_load(args.config.read_text())
    raw["training"].update(compile=False, cuda_graph=False)
    cfg = config_from_dict(raw)
    torch.manual_seed(args.seed)
    model = CompactTransformer(cfg.model)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_save({"model_config": dataclasses.asdict(cfg.model), "config": cfg.to_dict(), "model": model.state_dict(),
                "epoch": 0, "step": 0, "best": {"val_loss": float("nan"), "epoch": 0, "metrics": None}, "seed": args.seed},
                args.out / "checkpoint_best.pt")
    (args.out / "summary.json").write_text(json.dumps({"config": cfg.name, "seed": args.seed}) + "\n")
    print(f"wrote {args.out / 'checkpoint_best.pt'} (untrained {cfg.name}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
