"""A tiny run directory for the analysis tests, in the format src.train writes.

A briefly trained 2-layer model in which L0-H1 is the only head of layer 0 that writes to the
residual stream (the out-projection slices of L0-H0, L0-H2 and L0-H3 are held at zero through
training): it carries the first layer's context, so ablating it must raise answer_loss, while
ablating the silent L0-H0 must change nothing at all.
"""

import hashlib
import json
from pathlib import Path

import torch
import yaml

from src.config import config_from_dict
from src.rundir.checkpoint import make_checkpoint
from src.analysis.common import load_split_batches
from src.model import CompactTransformer

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLIT_SIZES = {"train": 80, "val": 16, "test_flat": 40, "test_paren": 40, "test_paren_matched": 40, "test_depth3": 40}
SIGNAL, SILENT = (0, 1), (0, 0)


def write_data(data_dir: Path) -> None:
    """The first lines of each shipped split (matched pairs stay paired: line i with line i)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in SPLIT_SIZES.items():
        lines = (REPO_ROOT / "data" / f"pilot_{split}.jsonl").read_text().splitlines()[:n]
        (data_dir / f"pilot_{split}.jsonl").write_text("\n".join(lines) + "\n")


def tiny_config(data_dir: Path) -> dict:
    raw = yaml.safe_load((REPO_ROOT / "configs" / "pilot.yaml").read_text())
    raw["name"] = "tiny"
    raw["model"].update(d_model=32, num_layers=2, num_heads=4, d_ff=64)
    raw["training"].update(compile=False, cuda_graph=False)
    raw["data"] = {split: str(data_dir / f"pilot_{split}.jsonl") for split in SPLIT_SIZES}
    return raw


# trained weights by what determines them (seed, config without its paths, training data): many test
# modules build the same tiny run, and training it is most of what their fixtures cost
_TRAINED: dict[str, dict] = {}


def _training_key(raw: dict, seed: int) -> str:
    train_bytes = Path(raw["data"]["train"]).read_bytes()
    settings = {key: value for key, value in raw.items() if key != "data"}
    return json.dumps([seed, settings, hashlib.sha256(train_bytes).hexdigest()], sort_keys=True, default=str)


def write_run(run: Path, raw: dict, seed: int = 0) -> None:
    """A run directory as src.train leaves it, around a briefly trained model with a signal head."""
    cfg = config_from_dict(raw)
    torch.manual_seed(seed)
    model = CompactTransformer(cfg.model)
    key = _training_key(raw, seed)
    if key in _TRAINED:  # the same weights (and random state after) the loop below made for an earlier run
        model.load_state_dict(_TRAINED[key]["model"])
        torch.set_rng_state(_TRAINED[key]["rng"])
    else:
        train = load_split_batches(cfg, ("train",))["train"]
        hd = cfg.model.head_dim
        live = torch.zeros(cfg.model.d_model)  # out-projection input columns h*hd:(h+1)*hd belong to head h
        live[SIGNAL[1] * hd:(SIGNAL[1] + 1) * hd] = 1.0
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(40):  # a few full-batch steps: the answer is predicted better than chance
            opt.zero_grad()
            model(train.inputs, train.labels).loss.backward()
            opt.step()
            with torch.no_grad():
                model.blocks[0].attn.out.weight.mul_(live)
        _TRAINED[key] = {"model": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
                         "rng": torch.get_rng_state()}
    run.mkdir(parents=True)
    best = {"val_loss": 2.0, "epoch": 1, "metrics": None}
    ckpt = make_checkpoint(cfg, model, epoch=1, step=40, best=best, seed=seed)
    torch.save(ckpt, run / "checkpoint_best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "metrics.jsonl").write_text(json.dumps({"schema": "metrics/1", "epoch": 1, "step": 40, "train_loss": 2.5,
                                                   "val": {"loss": 2.0, "exact_match": 0.0, "end_of_answer_acc": 0.5}}) + "\n")
    summary = {"schema": "summary/1", "config": "tiny", "seed": seed, "device": "cpu", "device_fallback": False,
               "gpu_name": None, "precision": "fp32", "peak_gpu_memory_mb": None, "parameters": model.num_parameters(),
               "epochs": 1, "steps": 40, "wall_time_s": 3.0, "train_steps_per_s": 20.0, "best_epoch": 1,
               "best_val_metrics": {"loss": 2.0}}
    (run / "summary.json").write_text(json.dumps(summary))


def drop_limit_tag(run: Path, limit: int) -> None:
    """Rename RUN's NAME.limitN.* result files to NAME.*: a quick --limit run stands in for the full-data
    files that readers (the report, rolematch) look for, in tests of those readers."""
    for path in run.glob(f"*.limit{limit}*"):
        path.rename(path.with_name(path.name.replace(f".limit{limit}", "")))
