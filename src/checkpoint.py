"""Checkpoints: written atomically (src.atomic.atomic_save), read with `weights_only=True`, one reader for every tool.

A checkpoint is a plain dict of tensors and Python scalars, so it loads without unpickling code:
    model_config, config, model, optimizer, scaler, epoch, step, rng, best_val_loss, ...
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from src.config import ModelConfig
from src.errors import UserError
from src.model import CompactTransformer


def load_checkpoint(path, map_location="cpu") -> dict:
    """The checkpoint dict at `path`; a UserError that says why when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is long and suggests weights_only=False; keep only what the file holds
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"an object of class {found.group(1)}" if found else "objects"
        raise UserError(
            f"{path}: refused by torch.load(weights_only=True): the file holds {what}, which only "
            "unpickling code could rebuild; load only checkpoints written by src.train"
        ) from None
    except Exception as err:  # a damaged file fails in many ways: EOFError, KeyError, RuntimeError, ...
        detail = " ".join([type(err).__name__] + str(err).split(". ")[0].splitlines()[:1])[:160]
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt: {detail})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project (no 'model' and 'model_config' entries)")
    return ckpt


def model_from_checkpoint(ckpt: dict, path="checkpoint", expect: ModelConfig | None = None) -> CompactTransformer:
    """Rebuild the model a checkpoint describes and load its weights.

    With `expect`, a checkpoint of another architecture is an error that names the difference.
    """
    try:
        cfg = ModelConfig(**ckpt["model_config"])
    except TypeError as err:
        raise UserError(f"{path}: model_config does not describe a CompactTransformer ({err})") from None
    if expect is not None and cfg != expect:
        diffs = [f"{k}: checkpoint {getattr(cfg, k)} vs config {getattr(expect, k)}"
                 for k in ModelConfig.__dataclass_fields__ if getattr(cfg, k) != getattr(expect, k)]
        raise UserError(f"{path}: checkpoint is from another architecture ({'; '.join(diffs)})")
    model = CompactTransformer(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:  # torch's first line only names the class; the next ones say what differs
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise UserError(f"{path}: weights do not fit the model ({(lines[1:] or lines)[0][:200]})") from None
    return model


def resolve_checkpoint(run_dir, which: str = "best") -> Path:
    """`best`, `latest` or a path -> the checkpoint file of a run directory."""
    if which in ("best", "latest"):
        path = Path(run_dir) / f"checkpoint_{which}.pt"
        if not path.is_file():
            raise UserError(f"{path}: no {which} checkpoint in run directory {run_dir}; train it with python -m src.train")
        return path
    return Path(which)


def load_model(run_dir, which: str = "best", device="cpu") -> tuple[CompactTransformer, dict]:
    """The trained model of a run directory in eval mode on `device`, and its checkpoint dict."""
    path = resolve_checkpoint(run_dir, which)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    return model, ckpt
