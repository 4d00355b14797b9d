"""What every analysis command shares: its flags, opening a run, the run's data, output names, progress bars,
naming heads and layers."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from src.rundir.checkpoint import check_own_checkpoint, load_model, resolve_checkpoint
from src.rundir.directory import hold_run_shared
from src.cli import MAX_EXAMPLES, int_in, path_arg
from src.config import Config, config_from_dict
from src.data import Batch, load_jsonl, make_batch
from src.data.integrity import check_pairs
from src.device import PRECISIONS, resolve_device, run_precision
from src.errors import UserError
from src.model import CompactTransformer, is_export_dir

from src.metrics import EVAL_SPLITS, per_example_scores


ANALYSIS_TRAIN_MAX = 2_000


def split_records(cfg, split: str, train_max: int | None = None) -> list:
    """The validated records of one split; of the training set only the first `train_max`, when given."""
    path = cfg.data.path(split)
    if split == "train" and cfg.data.train_size and not path.is_file():
        raise UserError(f"{path}: the training set of this run is not there; generate it with "
                        f"`python -m src.data --train-size {cfg.data.train_size}"
                        f"{' --near-twin-free' if cfg.data.train_kind == 'near_twin_free' else ''}`")
    return load_jsonl(path, cfg.model.max_seq_len, max_records=train_max if split == "train" else None)


def load_split_batches(cfg, splits=EVAL_SPLITS, train_max: int | None = None) -> dict[str, Batch]:
    """Validated data of each split as one padded batch; of the training set only the first
    `train_max` expressions, when given."""
    return {s: make_batch(split_records(cfg, s, train_max), cfg.model.max_seq_len, cfg.data.answer_format)
            for s in splits}


def run_seed(ckpt: dict, path) -> int:
    """The training seed a checkpoint records (src.train writes it into every checkpoint it saves)."""
    seed = ckpt.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        found = "records no seed" if seed is None else f"records the seed {str(seed)[:40]!r}, not a whole number >= 0"
        raise UserError(f"{path}: the checkpoint {found}, so the run's seed (and the untrained control of the probes, "
                        "built from it) is unknown; analyse a checkpoint that python -m src.train wrote, or retrain "
                        "the run with it")
    return seed


def head_label(layer: int, head: int) -> str:
    return f"L{layer}-H{head}"


def relative_layer(layer: int, num_layers: int) -> float:
    """layer / (num_layers - 1): 0 for the first layer, 1 for the last, comparable across depths."""
    return layer / (num_layers - 1) if num_layers > 1 else 0.0


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=path_arg, help="run directory written by src.train")
    parser.add_argument("--checkpoint", default="best",
                        help="best (the run's best checkpoint, once the training has finished), latest (its last "
                        "checkpoint, e.g. of an interrupted run), or a checkpoint path (default: best)")
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
                        "runs; results are then not the study's figures, and go to files named NAME.limitN.json "
                        "beside the full-data ones, never over them)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are shown only where stderr is a terminal)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on error")


# ---------------------------------------------------------------------------- opening a run


@dataclasses.dataclass
class Run:
    """An opened run: its model in eval mode on the device, its checkpoint and config, and how it is analysed."""

    path: Path                 # the run directory
    checkpoint: str            # the --checkpoint flag as given: best, latest or a path
    model: CompactTransformer
    ckpt: dict
    cfg: Config
    device: torch.device
    precision: str             # of the forward passes
    limit: int | None          # the first `limit` examples of every split, or all
    seed: int                  # the training seed, from the checkpoint
    progress: bool = True      # progress bars on stderr

    def output(self, name: str, out: Path | None = None) -> Path:
        """The path of an output file: `out` where given, else RUN/name, with `.limitN` before the suffix
        under --limit (RUN/eval.limit200.json), so that a smoke run never replaces a full-data file."""
        return out if out is not None else self.path / limited_name(name, self.limit)

    def scope(self) -> str:
        """What the figures cover, for titles and terminal tables: '' for the full data."""
        return "" if self.limit is None else f"first {self.limit} examples of each split"

    def titled(self, text: str) -> str:
        """A figure title or table heading that says what a --limit run covers."""
        return text if self.limit is None else f"{text} [{self.scope()}; not the study's figures]"

    def bar(self, iterable=None, disable: bool = False, **kwargs):
        """A progress bar on stderr (tqdm), off with --no-progress."""
        return progress(iterable, disable=disable or not self.progress, **kwargs)


def limited_name(name: str, limit: int | None) -> str:
    """`eval.json` -> `eval.limit200.json` under --limit 200; the name itself without a limit."""
    if limit is None:
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.limit{limit}.{suffix}" if dot else f"{name}.limit{limit}"


def progress(iterable=None, *, disable: bool = False, **kwargs):
    """tqdm on stderr, updated at most twice a second, gone from the terminal once done; only where stderr
    is a terminal, so that logs and captured error messages hold no bar."""
    off = disable or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(iterable, file=sys.stderr, disable=off, mininterval=0.5, leave=False, dynamic_ncols=True, **kwargs)


_LOCK_LINE = re.compile(r"PID (\d+) on (\S+)")


def lock_holder(run: Path) -> str | None:
    """'PID n on HOST' of the training that holds the run directory, else None.

    src.rundir.directory writes that line into RUN/.lock while it trains and removes the file when the
    training ends; a `.lock` left behind by a killed training names a process that no longer exists
    (on this host that is checked; the lock of another host is taken as held)."""
    try:
        text = (run / ".lock").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    found = _LOCK_LINE.search(text)
    if found is None:
        return None
    pid, host = int(found.group(1)), found.group(2)
    if host != socket.gethostname():
        return found.group(0)
    if os.name != "posix" or pid == os.getpid():
        return None  # no safe liveness check here (os.kill ends the process on Windows)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    return found.group(0)


def check_run_state(run: Path, which: str) -> None:
    """A UserError naming the state of a run that cannot be analysed as asked, and what to do: a
    training still writes into it, it was interrupted, or it has no checkpoint yet."""
    holder = lock_holder(run)
    if holder is not None:
        local = holder.endswith(f" on {socket.gethostname()}")
        raise UserError(f"--run {run}: locked by {holder}, a training that still writes into it; wait for it to finish "
                        "(its summary.json appears) and analyse the run then"
                        + ("" if local else f" (if that process has ended, delete {run / '.lock'})"))
    if which not in ("best", "latest"):
        return  # a checkpoint named by its path
    if is_export_dir(run) and not (run / "checkpoint_best.pt").is_file():
        return  # an exported model (src.export): its one checkpoint is the export itself
    best, latest, summary = (run / name for name in ("checkpoint_best.pt", "checkpoint_latest.pt", "summary.json"))
    if not best.is_file() and not latest.is_file():
        raise UserError(f"{run / f'checkpoint_{which}.pt'}: no {which} checkpoint in run directory {run}, and no "
                        f"checkpoint at all: the run has not trained yet; train it with "
                        f"`python -m src.train --config CONFIG --output-dir {run}`")
    if which == "latest":
        if not latest.is_file():
            raise UserError(f"--checkpoint latest: no latest checkpoint in run directory {run} (no "
                            "checkpoint_latest.pt); analyse its best one with --checkpoint best")
        return
    if latest.is_file() and (not best.is_file() or not summary.is_file()):
        missing = "no checkpoint_best.pt" if not best.is_file() else "no summary.json"
        so_far = f", or the best so far with --checkpoint {best}" if best.is_file() else ""
        raise UserError(f"--run {run}: the training was interrupted ({missing}, but a checkpoint_latest.pt); resume it "
                        f"with `python -m src.train --output-dir {run} --resume`, or analyse the checkpoint it reached "
                        f"with --checkpoint latest{so_far}")


def open_run(args) -> Run:
    """The run the parsed flags name, opened: model, checkpoint, config, device, precision, seed.

    Every analysis command opens its run here, before it reads data or writes anything: a missing
    run, a run still training, interrupted or never trained (check_run_state), an unreadable
    checkpoint, weights that are not finite (src.rundir.checkpoint.check_weights), a checkpoint without
    its seed and a precision the device cannot run are all refused at this point."""
    if not args.run.is_dir():
        raise UserError(f"--run {args.run}: not a directory; pass a run directory written by src.train")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be a positive number of examples")
    check_run_state(args.run, args.checkpoint)
    hold_run_shared(args.run)  # refused while a training writes into the run (docs/RELIABILITY.md)
    device, _ = resolve_device(args.device, gpu_only=False, precision=args.precision or "fp32")
    model, ckpt = load_model(args.run, args.checkpoint, device)
    args.foreign_checkpoint = check_own_checkpoint(args.run, ckpt, args.checkpoint, args.checkpoint,
                                                   getattr(args, "out", None) is not None)
    exported = is_export_dir(args.run) and not (args.run / "checkpoint_best.pt").is_file()
    seed = run_seed(ckpt, args.run / "config.json" if exported else resolve_checkpoint(args.run, args.checkpoint))
    if args.precision is None:  # the run's own precision, unless this device cannot run it
        args.precision = run_precision(ckpt, args.run)
        if args.precision != "fp32" and device.type != "cuda":
            print(f"note: the run trained in {args.precision}; evaluating in fp32 on the CPU", file=sys.stderr)
            args.precision = "fp32"
    cfg = config_from_dict(ckpt["config"], f"{args.run} checkpoint")
    return Run(args.run, args.checkpoint, model, ckpt, cfg, device, args.precision, args.limit, seed,
               progress=not getattr(args, "no_progress", False))


def analysis_main(build_parser, analyse, argv=None, check=None) -> int:
    """The main(argv) of an analysis command: its flags parsed (and `check`ed, before anything is read),
    its run opened, its data read, then `analyse(run, data, args)`, the function src.analysis.run_all
    calls with the run and data it opened once."""
    args = build_parser().parse_args(argv)
    if check is not None:
        check(args)
    run = open_run(args)
    analyse(run, RunData(run.cfg, run.limit, run.device), args)
    return 0


def untrained_control(cfg, seed: int, device) -> CompactTransformer:
    """The untrained model of the run's architecture and seed, as src.train builds it before its first
    step (torch.manual_seed(seed), then CompactTransformer): the probes' control."""
    torch.manual_seed(seed)
    return CompactTransformer(cfg.model).to(device).eval()


# ---------------------------------------------------------------------------- the run's data


class RunData:
    """The data of a run's config, each split read and validated once however many analyses use it.

    `records(split)` and `batches(splits)` are cut to the first `limit` examples; the training set is
    read up to ANALYSIS_TRAIN_MAX expressions (the extension's sets hold millions), its first lines."""

    def __init__(self, cfg, limit: int | None, device):
        self.cfg, self.limit, self.device = cfg, limit, device
        self._records: dict[str, list] = {}
        self._batches: dict[str, Batch] = {}

    def all_records(self, split: str) -> list:
        """Every record of the split's file (of the training set, its first ANALYSIS_TRAIN_MAX)."""
        if split not in self._records:
            self._records[split] = split_records(self.cfg, split, ANALYSIS_TRAIN_MAX)
        return self._records[split]

    def records(self, split: str) -> list:
        records = self.all_records(split)
        return records if self.limit is None else records[: self.limit]

    def batches(self, splits) -> dict[str, Batch]:
        """Each split as one padded batch on the device; test_flat and test_paren_matched checked pair by
        pair first when both are asked for (line i of one is the twin of line i of the other)."""
        if {"test_flat", "test_paren_matched"} <= set(splits) - set(self._batches):
            check_pairs(self.cfg.data.path("test_flat"), self.cfg.data.path("test_paren_matched"), self.limit)
        for split in splits:
            if split not in self._batches:
                batch = make_batch(self.records(split), self.cfg.model.max_seq_len, self.cfg.data.answer_format)
                self._batches[split] = batch.to(self.device)
        return {split: self._batches[split] for split in splits}


def scores_by_split(run: Run, batches: dict[str, Batch], what: str, ablation=None, exact_match: str | None = "greedy",
                    ) -> dict[str, dict]:
    """per_example_scores (src.metrics) of each split, a chunk of examples at a time under one progress
    bar over all the examples (greedy decoding of a full split takes tens of seconds on a CPU)."""
    chunk = 2048 if run.device.type == "cuda" else 256  # the GPU wants large passes; the CPU a bar that moves
    total = sum(len(b) for b in batches.values())
    out = {}
    with run.bar(total=total, desc=what, unit="ex") as bar:
        for split, batch in batches.items():
            bar.set_postfix_str(split)
            parts = []
            for start in range(0, len(batch), chunk):
                part = batch.select(torch.arange(start, min(start + chunk, len(batch))))
                parts.append(per_example_scores(run.model, part, ablation, run.precision, exact_match=exact_match))
                bar.update(len(part))
            out[split] = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else \
                per_example_scores(run.model, batch, ablation, run.precision, exact_match=exact_match)
    return out


def load_batches(cfg, splits, limit: int | None, device) -> dict[str, Batch]:
    """Each split as one padded batch on the device, cut to its first `limit` examples; the training
    set to its first ANALYSIS_TRAIN_MAX expressions at most."""
    return RunData(cfg, limit, device).batches(splits)


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
