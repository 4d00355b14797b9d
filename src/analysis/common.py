"""What every analysis command shares: opening a run, its flags, its data, naming heads and layers."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import json
from pathlib import Path

import torch

from src.rundir.checkpoint import check_own_checkpoint, load_model
from src.rundir.directory import hold_run_shared
from src.cli import MAX_EXAMPLES, int_in, path_arg
from src.config import config_from_dict
from src.data import Batch, load_jsonl, make_batch
from src.data.integrity import check_pairs
from src.device import PRECISIONS, resolve_device, run_precision
from src.errors import UserError
from src.model import CompactTransformer

from src.metrics import EVAL_SPLITS


ANALYSIS_TRAIN_MAX = 2_000


def split_records(cfg, split: str, train_max: int | None = None) -> list:
    """The validated records of one split; of the training set only the first `train_max`, when given."""
    path = cfg.data.path(split)
    if split == "train" and cfg.data.train_size and not path.is_file():
        raise UserError(f"{path}: the training set of this run is not there; generate it with "
                        f"`python -m src.data --train-size {cfg.data.train_size}`")
    return load_jsonl(path, cfg.model.max_seq_len, max_records=train_max if split == "train" else None)


def load_split_batches(cfg, splits=EVAL_SPLITS, train_max: int | None = None) -> dict[str, Batch]:
    """Validated data of each split as one padded batch; of the training set only the first
    `train_max` expressions, when given."""
    return {s: make_batch(split_records(cfg, s, train_max), cfg.model.max_seq_len, cfg.data.answer_format)
            for s in splits}


def run_seed(run: Path, default: int = 42) -> int:
    """The training seed recorded in summary.json (checkpoints do not carry it)."""
    try:
        return int(json.loads((Path(run) / "summary.json").read_text())["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def head_label(layer: int, head: int) -> str:
    return f"L{layer}-H{head}"


def relative_layer(layer: int, num_layers: int) -> float:
    """layer / (num_layers - 1): 0 for the first layer, 1 for the last, comparable across depths."""
    return layer / (num_layers - 1) if num_layers > 1 else 0.0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=path_arg, help="run directory written by src.train")
    parser.add_argument("--checkpoint", default="best", help="best, latest, or a checkpoint path (default: best)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available); a missing CUDA falls back to the CPU "
                        "with a warning")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="arithmetic of the forward passes (default: the precision the run trained in, as its "
                        "checkpoint records; fp32 on the CPU)")
    parser.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                        help="the same as --precision fp16 (float16 autocast on CUDA, as the 10M run trained)")
    parser.add_argument("--limit", type=int_in(1, MAX_EXAMPLES), default=None, metavar="N",
                        help="use only the first N examples of every split, the training set included (CPU smoke "
                        "runs; results are then not the study's figures)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")


def open_run(args) -> tuple[CompactTransformer, dict, object, torch.device]:
    """(model in eval mode on the device, checkpoint dict, Config, device) for the parsed flags.

    Every analysis command opens its run here, before it reads data or writes anything: a missing
    run, an unreadable checkpoint, weights that are not finite (src.rundir.checkpoint.check_weights) and a
    precision the device cannot run are all refused at this point."""
    if not args.run.is_dir():
        raise UserError(f"--run {args.run}: not a directory; pass a run directory written by src.train")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be a positive number of examples")
    hold_run_shared(args.run)  # refused while a training writes into the run (docs/RELIABILITY.md)
    device, _ = resolve_device(args.device, gpu_only=False, precision=args.precision or "fp32")
    model, ckpt = load_model(args.run, args.checkpoint, device)
    args.foreign_checkpoint = check_own_checkpoint(args.run, ckpt, args.checkpoint, args.checkpoint,
                                                   getattr(args, "out", None) is not None)
    if args.precision is None:  # the run's own precision, unless this device cannot run it
        args.precision = run_precision(ckpt, args.run)
        if args.precision != "fp32" and device.type != "cuda":
            print(f"note: the run trained in {args.precision}; evaluating in fp32 on the CPU", file=sys.stderr)
            args.precision = "fp32"
    cfg = config_from_dict(ckpt["config"], f"{args.run} checkpoint")
    return model, ckpt, cfg, device


def load_batches(cfg, splits, limit: int | None, device) -> dict[str, Batch]:
    """Each split as one padded batch on the device, cut to its first `limit` examples; the training
    set to its first ANALYSIS_TRAIN_MAX expressions at most (the extension's sets hold millions)."""
    train_max = min(limit or ANALYSIS_TRAIN_MAX, ANALYSIS_TRAIN_MAX)
    if {"test_flat", "test_paren_matched"} <= set(splits):  # the pairs are checked pair by pair before use
        check_pairs(cfg.data.path("test_flat"), cfg.data.path("test_paren_matched"), limit)
    batches = load_split_batches(cfg, tuple(splits), train_max=train_max)
    if limit is not None:
        batches = {s: b.select(torch.arange(min(limit, len(b)))) for s, b in batches.items()}
    return {s: b.to(device) for s, b in batches.items()}



def with_data_dir(cfg, directory: Path):
    """`cfg` with each evaluation split read from DIRECTORY/pilot_<split>.jsonl where that file exists."""
    if not directory.is_dir():
        raise UserError(f"--data-dir {directory}: not a directory")
    found = {split: str(directory.resolve() / f"pilot_{split}.jsonl") for split in EVAL_SPLITS
             if (directory / f"pilot_{split}.jsonl").is_file()}
    if not found:
        raise UserError(f"--data-dir {directory}: holds none of {', '.join(f'pilot_{s}.jsonl' for s in EVAL_SPLITS)}; "
                        "write fresh test files with `python -m src.data --fresh-test SEED --out DIR`")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **found))
