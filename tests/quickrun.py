"""An untrained run directory in the format src.train writes, made in well under a second: for the tests
of what commands do around the model (locks, identities, refusals), not of what the model computes."""

import json
from pathlib import Path

import torch
import yaml

from src.config import config_from_dict
from src.model import CompactTransformer
from src.rundir.checkpoint import make_checkpoint

from tests.tiny import tiny_config, write_data


def quick_run(run: Path, data_dir: Path, seed: int = 0, name: str = "tiny", width: int = 32) -> Path:
    """RUN with checkpoint_best.pt, config.yaml, metrics.jsonl and summary.json; the data in `data_dir`
    (written if missing)."""
    if not (data_dir / "pilot_train.jsonl").is_file():
        write_data(data_dir)
    raw = tiny_config(data_dir)
    raw["name"] = name
    raw["model"]["d_model"] = width
    cfg = config_from_dict(raw)
    torch.manual_seed(seed)
    model = CompactTransformer(cfg.model)
    run.mkdir(parents=True)
    ckpt = make_checkpoint(cfg, model, epoch=1, step=1, best={"val_loss": 2.0, "epoch": 1, "metrics": None}, seed=seed)
    torch.save(ckpt, run / "checkpoint_best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "metrics.jsonl").write_text(json.dumps({"schema": "metrics/1", "epoch": 1, "step": 1, "train_loss": 2.5,
                                                   "val": {"loss": 2.0, "exact_match": 0.0,
                                                           "end_of_answer_acc": 0.5}}) + "\n")
    summary = {"schema": "summary/1", "config": name, "seed": seed, "device": "cpu", "device_fallback": False,
               "gpu_name": None, "precision": "fp32", "peak_gpu_memory_mb": None,
               "parameters": model.num_parameters(), "epochs": 1, "steps": 1, "wall_time_s": 1.0,
               "train_steps_per_s": 1.0, "best_epoch": 1, "best_val_metrics": {"loss": 2.0}}
    (run / "summary.json").write_text(json.dumps(summary))
    return run
