"""Train a CompactTransformer: the entrypoint of both runs.

    python -m src.train --config configs/scale_10m.yaml --output-dir runs/scale_10m \
        --seed 42 --device cuda --fp16 --gpu-only


The training step itself lives in src/training/trainer.py; this module is the command line:
run directories, resuming, several seeds side by side, summaries.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import platform
import sys
import time
import warnings
from pathlib import Path

from src.cli import interrupted  # light: ready before torch is
from src.errors import UserError, run_main


try:  # importing torch takes seconds: a Ctrl-C then ends as one at any later moment does (run_main)
    import torch
    import yaml
    from tqdm import tqdm

    from src.cli import seed_value, MAX_SEED, comma_list, int_in
    from src.rundir.checkpoint import load_training_checkpoint, make_checkpoint, model_from_checkpoint
    from src.config import flat, Config, check_data_paths, config_from_dict, load_config
    from src.data import load_jsonl, make_batch
    from src.device import (DESCRIPTION, check_precision, resolve_device, run_precision, set_cpu_threads,
                            set_deterministic)
    from src.metrics import EVAL_SPLITS, evaluate_batch
    from src.model import CompactTransformer
    from src.rundir.paths import check_output_dir
    from src.rundir.directory import RUN_FILES, RunDir
    from src.rundir.results import SCHEMAS
    from src.data.trainsets import check_training_set, ensure_training_set
    from src.signals import StopSignals
    from src.training.trainer import (OOM_ADVICE, DeviceData, SeedRNG, Trainer, TrainingStopped, run_epochs)
except KeyboardInterrupt:
    if __name__ != "__main__":
        raise
    raise SystemExit(run_main(interrupted)) from None

# ---------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m src.train",
                                description="Train a CompactTransformer (docs/DESIGN.md sections 2, 3, 7).")
    p.add_argument("--config", help="YAML config, e.g. configs/pilot.yaml or configs/scale_10m.yaml (required unless "
                   "--resume, which takes the run's own config; given with --resume, it may differ from the run's "
                   "only in training.epochs)")
    p.add_argument("--output-dir", required=True, help="run directory: config, metrics, checkpoints, summary "
                   "(one training at a time: the directory is locked while a run writes into it)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED),  # torch seeds are 64-bit; seed + 1 seeds shuffling
                   default=None, help="seed of weights, dropout and shuffling (default: 42; on --resume the run's own)")
    p.add_argument("--seeds", type=comma_list(item=seed_value, what="distinct seeds separated by commas, e.g. 42,123,7"),
                   default=None, metavar="S1,S2,...", help="train several seeds in one process, side by side (on CUDA "
                   "their captured steps overlap on the GPU): seed S writes the run directory OUTPUT_DIR/seedS, in "
                   "exactly the format of a single run, each equal to training that seed alone. With --resume, "
                   "continues those seeds' runs (finished ones are skipped); each can also be resumed on its own with "
                   "--output-dir OUTPUT_DIR/seedS --resume. Not with --seed")
    p.add_argument("--device", default="cuda", help="cuda or cpu (default: cuda; without --gpu-only a missing "
                   "CUDA falls back to the CPU with a warning recorded in summary.json)")
    p.add_argument("--fp16", action="store_true", help="float16 autocast in training and evaluation with dynamic "
                   "loss scaling; requires CUDA. Sets training.precision to fp16 (the config may also say fp32 or bf16)")
    p.add_argument("--gpu-only", action="store_true", help="abort (RuntimeError) unless --device cuda and CUDA is "
                   "available; checked before anything is read or written")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its checkpoint_latest.pt, "
                   "with its own config, seed and precision; a run killed after its last epoch is finished (summary) "
                   "without training again")
    p.add_argument("--stop-after-epoch", type=int_in(1, 10**9), default=None, metavar="N", help="end this invocation after epoch "
                   "N, with checkpoint_latest.pt written (the schedule still spans the configured epochs; continue "
                   "with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    args = p.parse_args(argv)
    if args.seeds is not None and args.seed is not None:
        p.error("--seed and --seeds: give one seed with --seed, or several with --seeds, not both")
    if args.config is None and not args.resume:
        p.error("the following arguments are required: --config (only --resume may leave it out: it takes the "
                "run's own config)")
    return args



def with_precision(cfg: Config, precision: str) -> Config:
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, precision=precision))



def resumed_settings(args, ckpt: dict, run: RunDir, given_seed: int | None) -> tuple[Config, int, list[dict]]:
    """The run's own config and seed. A --config or --seed that differs from them is an error
    listing the differences, except training.epochs: changing it is allowed, and recorded."""
    where = run.path / "checkpoint_latest.pt"
    own = with_precision(config_from_dict(ckpt["config"], f"{where} (its config)"), run_precision(ckpt, run.path))
    diffs, given = [], None
    if args.config is not None:
        given = load_config(args.config)
        if args.fp16:
            given = with_precision(given, "fp16")
        theirs = flat(given.to_dict())
        diffs += [f"{key}: run {value!r}, {args.config} {theirs.get(key)!r}" for key, value in flat(own.to_dict()).items()
                  if key != "training.epochs" and theirs.get(key) != value]
    elif args.fp16 and own.training.precision != "fp16":
        diffs.append(f"training.precision: run {own.training.precision!r}, --fp16")
    seed = ckpt["seed"]
    if given_seed is not None and given_seed != seed:
        diffs.append(f"seed: run {seed}, {'--seeds' if args.seeds else '--seed'} {given_seed}")
    if diffs:
        raise UserError(f"--resume: a resumed run keeps its own config and seed, and these differ from the run in "
                        f"{run.path}: {'; '.join(diffs)}. Resume without them (only training.epochs may change), "
                        "or start a new run in another --output-dir")
    changes = list(ckpt["epoch_changes"])
    if given is not None and given.training.epochs != own.training.epochs:
        if given.training.epochs < ckpt["epoch"]:
            raise UserError(f"--resume: {args.config} has training.epochs = {given.training.epochs}, but the run in "
                            f"{run.path} is already at epoch {ckpt['epoch']}")
        changes.append({"at_epoch": ckpt["epoch"], "from": own.training.epochs, "to": given.training.epochs})
        print(f"note: training.epochs changes from {own.training.epochs} to {given.training.epochs} at epoch "
              f"{ckpt['epoch']} (recorded in summary.json and the checkpoints; the learning-rate schedule is "
              "stretched to the new length)", file=sys.stderr)
        own = dataclasses.replace(own, training=dataclasses.replace(own.training, epochs=given.training.epochs))
    return own, seed, changes


def run_paths(args) -> list[str]:
    """The run directory of each seed: --output-dir itself, or OUTPUT_DIR/seedS for each of --seeds
    (as typed: src.rundir.paths rejects an empty --output-dir, which a Path would read as ".")."""
    if args.seeds is None:
        return [args.output_dir]
    check_output_dir(args.output_dir, "--output-dir")
    return [str(Path(args.output_dir) / f"seed{seed}") for seed in args.seeds]


def resume_command(args) -> str:
    seeds = f" --seeds {','.join(map(str, args.seeds))}" if args.seeds is not None else ""
    return f"python -m src.train --output-dir {args.output_dir}{seeds} --resume"


def open_runs(paths: list[str], resume: bool, cleanup: contextlib.ExitStack) -> list[RunDir]:
    """Lock the run directory of every seed, or of none: each is checked before any is created, and a
    failure on one releases the others and removes the directories this call created."""
    if not resume:
        for path in paths:
            check_output_dir(path, "--output-dir")
            path = Path(path)
            if any((path / name).exists() for name in RUN_FILES):
                raise UserError(f"--output-dir {path} already holds a run; pass --resume to continue it, or choose "
                                "another directory (nothing is overwritten)")
    created = [d for d in dict.fromkeys(a for p in map(Path, paths) for a in [*reversed(p.parents), p])
               if not d.exists()]
    runs = []
    try:
        for path in paths:
            runs.append(RunDir(path, resume=resume))
    except BaseException:
        for run in runs:
            run.release()
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: what this call made, nothing else
        raise
    for run in runs:
        cleanup.callback(run.release)
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    # The checklist's hard constraint: nothing is read, built or written before this check.
    device, fallback = resolve_device(args.device, args.gpu_only, "fp16" if args.fp16 else "fp32")
    paths = run_paths(args)
    given_seeds = args.seeds if args.seeds is not None else [args.seed]
    hint = (f"Continue with: {resume_command(args)}" if args.resume else
            "A run that wrote a checkpoint continues with --resume")
    with StopSignals(hint) as stop, contextlib.ExitStack() as cleanup:
        if args.resume:
            runs = open_runs(paths, resume=True, cleanup=cleanup)
            settings, configs = [], {}
            for run, given in zip(runs, given_seeds):
                ckpt = load_training_checkpoint(run.path / "checkpoint_latest.pt")
                cfg, seed, epoch_changes = resumed_settings(args, ckpt, run, given)
                settings.append((seed, ckpt, epoch_changes))
                configs[run.path] = cfg
            if len({yaml.safe_dump(c.to_dict()) for c in configs.values()}) > 1:
                raise UserError("--resume --seeds: the runs in " + ", ".join(map(str, configs)) + " have different "
                                "configs, so they cannot train side by side; resume each on its own with "
                                "--output-dir OUTPUT_DIR/seedS --resume")
            source = f"{runs[0].path / 'config.yaml'}"
        else:
            cfg = load_config(args.config)
            cfg = with_precision(cfg, "fp16") if args.fp16 else cfg
            settings = [(42 if seed is None else seed, None, []) for seed in given_seeds]
            runs, source = None, args.config
        return train(cfg, args, device, fallback, settings, source, runs, paths, stop, cleanup)


@dataclasses.dataclass
class SeedRun:
    """One seed's run: its directory, its trainer and the bookkeeping of its epochs."""

    seed: int
    run: RunDir
    trainer: Trainer
    run_info: dict
    best: dict
    epoch: int  # the last epoch done
    label: str  # "" for a run alone, "[seed S] " beside others
    first_step: int = 0
    train_time: float = 0.0
    timing: dict = dataclasses.field(default_factory=lambda: {"compile_and_capture_s": 0.0, "eval_s": 0.0,
                                                              "checkpoint_s": 0.0})
    stopped: TrainingStopped | None = None

    def so_far(self) -> dict:
        return {"epoch": self.epoch, "best": self.best, "train_time": self.train_time,
                "steps": int(self.trainer.step) - self.first_step, "timing": self.timing}

    def checkpoint(self, names: list[str]) -> None:
        """Serialize the state now; the files are written while training goes on (finish_writes)."""
        trainer = self.trainer
        with trainer.rng:  # the seed's own random state goes into its checkpoint
            ckpt = make_checkpoint(trainer.cfg, trainer.model, epoch=self.epoch, best=self.best, **self.run_info,
                                   **trainer.state_dict())
        tic = time.perf_counter()
        self.run.save_checkpoint(names, ckpt, behind=True)
        self.timing["checkpoint_s"] += time.perf_counter() - tic

    def finish_writes(self) -> None:
        """Wait for the checkpoints handed to the writer; a failed write (a full disk) is raised here.
        The wait counts as checkpoint time: the time training spent on checkpoints."""
        tic = time.perf_counter()
        self.run.writes.wait()
        self.timing["checkpoint_s"] += time.perf_counter() - tic


def train(cfg: Config, args, device, fallback, settings: list, source: str, runs: list[RunDir] | None,
          paths: list[str], stop: StopSignals, cleanup: contextlib.ExitStack) -> int:
    """Check the inputs, then train (or finish) the run of each seed in `settings` ((seed, checkpoint
    or None, epoch changes), one per directory of `paths`), side by side when there are several.
    `runs` is None for new runs, whose directories are created and locked only once every input has
    passed its checks."""
    precision = cfg.training.precision
    check_precision(precision, device)
    if device.type == "cpu":
        set_cpu_threads()  # one thread unless OMP_NUM_THREADS says otherwise (src/device.py says why)
    set_deterministic(cfg.training.deterministic)  # before any CUDA work: it sets cuBLAS's workspace
    if args.stop_after_epoch is not None and args.stop_after_epoch > cfg.training.epochs:
        raise UserError(f"--stop-after-epoch {args.stop_after_epoch} is beyond training.epochs "
                        f"({cfg.training.epochs}) of {source}")
    t0 = time.time()
    if cfg.data.train_size:  # a generated set: made if missing, verified against its manifest if present
        ensure_training_set(cfg.data.train_size, progress=False if args.no_progress else None, kind=cfg.data.train_kind)
    check_data_paths(cfg, source)
    max_len = cfg.model.max_seq_len
    held_out = [path for split in EVAL_SPLITS if (path := cfg.data.path(split)).is_file()]
    # each record sound: checked line by line, or, for a generated set, by its verified checksum
    train_records = load_jsonl(cfg.data.path("train"), max_len, verified=bool(cfg.data.train_size))
    answers = cfg.data.answer_format
    val_batch = make_batch(load_jsonl(cfg.data.path("val"), max_len), max_len, answers).to(device)
    check_training_set(cfg.data.path("train"), max_len, held_out=held_out)  # the set: no repeats, nothing held out
    if runs is None:
        runs = open_runs(paths, resume=False, cleanup=cleanup)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; fp16 and bf16 come from autocast
        warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores")
    data = DeviceData(make_batch(train_records, max_len, answers), cfg, device)  # one copy, read by every seed
    side_by_side = args.seeds is not None
    seed_runs = []
    for run, (seed, ckpt, epoch_changes) in zip(runs, settings):
        seed_run = start_seed(cfg, args, run, seed, ckpt, epoch_changes, data, device, val_batch,
                              label=f"[seed {seed}] " if side_by_side else "")
        if seed_run is not None:
            seed_runs.append(seed_run)
    if not seed_runs:
        raise UserError(f"--resume: every run of --seeds in {args.output_dir} already finished; nothing to resume")

    print_header(cfg, args, [r.seed for r in seed_runs], device, fallback, seed_runs[0].trainer.model,
                 train_records, val_batch)
    try:
        train_loop(cfg, args, seed_runs, val_batch, stop)
    except BaseException as err:
        for r in seed_runs:  # the checkpoints handed over reach the disk; this error is the one reported
            r.run.writes.drain()
        if isinstance(err, torch.cuda.OutOfMemoryError):
            detail = str(err).splitlines()[0][:200] if str(err) else "no detail"
            raise UserError(f"{OOM_ADVICE} (PyTorch said: {detail})") from None
        raise
    for r in seed_runs:  # every checkpoint on the disk before the summary says the run is done
        r.finish_writes()
    wall = time.time() - t0
    for r in seed_runs:
        status = None if r.stopped is None else r.stopped.status
        summary = make_summary(r.trainer.cfg, r.run_info, args, device, fallback, r.trainer, r.so_far(), wall,
                               status=status, side_by_side=[x.seed for x in seed_runs])
        r.run.write_json("summary.json", summary)
        if r.stopped is None:
            rate = f" ({summary['train_steps_per_s']:.0f} steps/s while training)" if summary["train_steps_per_s"] else ""
            print(f"{r.label}Done: {summary['steps']} steps in {summary['wall_time_s']:.1f} s{rate}; "
                  f"best epoch {summary['best_epoch']}")
    stopped = [r for r in seed_runs if r.stopped is not None]
    if len(seed_runs) == 1 and stopped:
        raise stopped[0].stopped
    if stopped:
        went_on = [str(r.seed) for r in seed_runs if r.stopped is None]
        raise TrainingStopped(f"{len(stopped)} of {len(seed_runs)} seeds stopped: "
                              + "; ".join(f"seed {r.seed} ({r.stopped.status}, {r.run.path})" for r in stopped)
                              + (f"; the others ({', '.join(went_on)}) trained to the end" if went_on else "")
                              + ". Each stopped seed's message is above and in its summary.json",
                              status="stopped_some_seeds")
    return 0


def write_config(run: RunDir, cfg: Config) -> None:
    """The run's config.yaml: the whole config, every key written out."""
    run.write_text("config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def start_seed(cfg: Config, args, run: RunDir, seed: int, ckpt: dict | None, epoch_changes: list, data: DeviceData,
               device, val_batch, label: str) -> SeedRun | None:
    """A seed's model, trainer and run directory, new or resumed from `ckpt`; None for a resumed seed
    whose run already finished (beside other seeds; alone that is an error)."""
    rng = SeedRNG(seed, device)
    with rng:  # the weights are drawn from the seed's own generator, as in a process of its own
        model = CompactTransformer(cfg.model).to(device)
    trainer = Trainer(cfg, model, data, device, cfg.training.precision, seed, rng=rng)
    run_info = {"seed": seed, "precision": cfg.training.precision, "epoch_changes": epoch_changes}
    epoch, best = 0, {"val_loss": float("inf"), "epoch": None, "metrics": None}
    if ckpt is None:
        write_config(run, cfg)
        return SeedRun(seed, run, trainer, run_info, best, epoch, label)
    latest = run.path / "checkpoint_latest.pt"
    model.load_state_dict(model_from_checkpoint(ckpt, latest, cfg.model).state_dict())
    summary = run.read_summary()
    if ckpt["epoch"] >= cfg.training.epochs and summary is not None and summary.get("status") == "completed":
        if label:
            print(f"{label}the run in {run.path} already finished all {ckpt['epoch']} epochs; skipped")
            run.release()
            return None
        raise UserError(f"--resume: the run in {run.path} already finished all {ckpt['epoch']} epochs "
                        f"(training.epochs = {cfg.training.epochs}); nothing to resume")
    if args.stop_after_epoch is not None and args.stop_after_epoch <= ckpt["epoch"]:
        raise UserError(f"--stop-after-epoch {args.stop_after_epoch}: the run in {run.path} is already at "
                        f"epoch {ckpt['epoch']}; give a later epoch")
    with rng:
        trainer.load_state_dict(ckpt)
    epoch, best = ckpt["epoch"], ckpt["best"]
    run.keep_metrics_until(epoch)
    if epoch_changes != ckpt["epoch_changes"]:
        write_config(run, cfg)
    if epoch >= cfg.training.epochs:
        print(f"{label}Finishing the run: epoch {epoch} (step {ckpt['step']}) is its last; no training is left")
        finish_last_epoch(run, ckpt, trainer, val_batch)
    else:
        print(f"{label}Resuming from epoch {epoch} (step {ckpt['step']})"
              + (f", {ckpt['epoch_step']} steps into epoch {epoch + 1}" if ckpt.get("epoch_step") else ""))
    return SeedRun(seed, run, trainer, run_info, best, epoch, label, first_step=int(trainer.step))


def finish_last_epoch(run: RunDir, ckpt: dict, trainer: Trainer, val_batch) -> None:
    """A run killed after its last checkpoint_latest.pt but before its summary: put back what the
    end of its last epoch writes after that checkpoint (checkpoint_best.pt, a lost metrics row)."""
    epoch = ckpt["epoch"]
    if not any(r["epoch"] == epoch for r in run.metrics()):
        print(f"warning: metrics.jsonl has no row for epoch {epoch}; evaluating the checkpoint on the validation "
              "set again (the epoch's mean training loss is not recoverable)", file=sys.stderr)
        val = evaluate_batch(trainer.model, val_batch, precision=trainer.precision, with_intervals=False)
        run.append_metrics({"schema": SCHEMAS["metrics"], "epoch": epoch, "step": ckpt["step"], "train_loss": None,
                            "lr": float(trainer.lr), "skipped_steps": ckpt["skipped_steps"], "val": val})
    if ckpt["best"]["epoch"] == epoch:
        run.link("checkpoint_latest.pt", "checkpoint_best.pt")


def print_header(cfg, args, seeds: list[int], device, fallback, model, train_records, val_batch) -> None:
    line = "=" * 70
    print(line)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"GPU: {props.name}")
        print(f"GPU memory: {props.total_memory / 1024**3:.1f} GB")
    else:
        print(f"Device: CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s)"
              + (f"  [FALLBACK: {fallback}]" if fallback else ""))
    print(f"FP16 Mixed Precision: {'ENABLED' if cfg.training.precision == 'fp16' else 'DISABLED'}")
    print(f"Precision: {DESCRIPTION[cfg.training.precision]}")
    print(f"Parameters: {model.num_parameters():,}")
    print(f"Train data: {cfg.data.path('train')} ({len(train_records)} examples)")
    print(f"Val data:   {cfg.data.path('val')} ({len(val_batch)} examples)")
    if args.seeds is None:
        print(f"Seed: {seeds[0]}   Output: {args.output_dir}")
    else:
        print(f"Seeds: {', '.join(map(str, seeds))}, side by side   Output: {args.output_dir}/seedS")
    print("Config:")
    print("  " + yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip().replace("\n", "\n  "))
    print(line, flush=True)


def diverged(val: dict) -> bool:
    """A validation loss that is not finite, or whose perplexity overflows, means the weights diverged."""
    return not math.isfinite(val["loss"]) or not math.isfinite(val["perplexity"])


def train_loop(cfg: Config, args, seed_runs: list[SeedRun], val_batch, stop: StopSignals) -> None:
    """Train every seed to its last epoch (or --stop-after-epoch), their epochs side by side; each
    seed evaluates and checkpoints on its own. A seed that stops (non-finite loss, divergence) is
    marked in its SeedRun and leaves the others going; a signal checkpoints them all and raises."""
    t = cfg.training
    device = seed_runs[0].trainer.device
    active = [r for r in seed_runs if r.epoch < t.epochs]  # a resume that only finishes a run trains nothing
    for r in active:
        tic = time.perf_counter()
        if len(active) > 1 and device.type == "cuda":
            r.trainer.stream = torch.cuda.Stream(device)  # captured and replayed there: the seeds' graphs overlap
        with r.trainer.rng:
            r.trainer.accelerate()
        r.timing["compile_and_capture_s"] = time.perf_counter() - tic
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stop.deferring = True
    while active:
        epochs = sorted({r.epoch + 1 for r in active})
        desc = f"epoch {epochs[0]}/{t.epochs}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}/{t.epochs}"
        if len(seed_runs) > 1:
            desc += f", {len(active)} seeds"
        bar = tqdm(total=active[0].trainer.data.steps_per_epoch, desc=desc, disable=args.no_progress, leave=False,
                   dynamic_ncols=True)
        tic = time.perf_counter()
        try:
            finished, stopped = run_epochs([r.trainer for r in active], bar, stop)
        finally:
            bar.close()
        for r in active:
            r.train_time += time.perf_counter() - tic
            if r.trainer in stopped:
                stop_seed(r, stopped[r.trainer])
        active = [r for r in active if r.stopped is None]
        if not finished:  # SIGINT or SIGTERM in the middle of the epoch
            for r in active:
                r.checkpoint(["checkpoint_latest.pt"])
                r.finish_writes()
            if active:
                raise stop.interrupted(active, active[0].epoch + 1, int(active[0].trainer.step), epoch_done=False,
                                       resume=resume_command(args))
            break
        for r in active:
            r.epoch += 1
            end_epoch(r, args, val_batch, stop)
        if stop.signum is not None:  # a signal during an evaluation or a checkpoint
            done = [r for r in active if r.stopped is None]
            for r in done:
                r.finish_writes()
            if done:
                raise stop.interrupted(done, done[0].epoch, int(done[0].trainer.step), epoch_done=True,
                                       resume=resume_command(args))
        active = [r for r in active if r.stopped is None and r.epoch < t.epochs and r.epoch != args.stop_after_epoch]
    stop.deferring = False


def selection_key(val: dict, select_on: str) -> tuple:
    """What training.select_on ranks validation results by, larger being better: the loss (lower is
    better), or exact_match with ties broken by the lower answer loss (DESIGN.md section 8)."""
    if select_on == "val_exact_match":
        return (val["exact_match"], -val["answer_loss"])
    return (-val["loss"],)


def stop_seed(r: SeedRun, stopped: TrainingStopped) -> None:
    """Mark a seed as stopped; beside other seeds, say so now (alone, main reports it as the error)."""
    r.stopped = stopped
    if r.label:
        print(f"{r.label}error: {stopped}", file=sys.stderr, flush=True)


def end_epoch(r: SeedRun, args, val_batch, stop: StopSignals) -> None:
    """The end of one seed's epoch: its metrics row, validation, checkpoints."""
    trainer, epoch = r.trainer, r.epoch
    t, device = trainer.cfg.training, trainer.device
    r.finish_writes()  # the last epoch's checkpoints are whole before this epoch's row says it ended
    record = {"schema": SCHEMAS["metrics"], "epoch": epoch, "step": int(trainer.step), "train_loss": trainer.mean_loss(),
              "lr": float(trainer.lr), "skipped_steps": int(trainer.skipped_steps)}
    if device.type == "cuda":
        record["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    improved = False
    if epoch % t.eval_interval == 0 or epoch == t.epochs:
        tic = time.perf_counter()
        val = evaluate_batch(trainer.model, val_batch, precision=trainer.precision, with_intervals=False)
        r.timing["eval_s"] += time.perf_counter() - tic
        if diverged(val):
            r.epoch -= 1  # nothing of this epoch is kept
            stop_seed(r, TrainingStopped(
                f"stopped: the model diverged: its validation loss after epoch {epoch} is {val['loss']:.4g} "
                f"(perplexity {val['perplexity']:.4g}). Nothing of epoch {epoch} was saved; the last good checkpoint "
                f"is intact. Lower training.learning_rate (now {t.learning_rate:g}) in the config and start a new "
                "run (a resumed run keeps its config)", status="stopped_diverged"))
            return
        record["val"] = val
        improved = r.best["metrics"] is None or selection_key(val, t.select_on) > selection_key(r.best["metrics"], t.select_on)
        if improved:
            r.best = {"val_loss": val["loss"], "epoch": epoch, "metrics": val}
    r.run.append_metrics(record)  # every epoch: its training figures, and its validation where it was evaluated
    val = record.get("val")
    print(f"{r.label}epoch {epoch:3d}  train_loss {record['train_loss']:.4f}"
          + (f"  val_loss {val['loss']:.4f}  exact_match {val['exact_match']:.3f}  end_of_answer_acc "
             f"{val['end_of_answer_acc']:.3f}" if val else "")
          + (f"  peak_mem {record['peak_gpu_memory_mb']:.0f} MB" if "peak_gpu_memory_mb" in record else ""),
          flush=True)
    stop_here = epoch == args.stop_after_epoch
    names = [f"checkpoint_epoch_{epoch}.pt"] if epoch % t.save_interval == 0 else []
    if epoch % t.save_interval == 0 or epoch == t.epochs or stop_here or stop.signum is not None:
        names.append("checkpoint_latest.pt")
    if improved:
        names.append("checkpoint_best.pt")
    if names:
        r.checkpoint(names)


def make_summary(cfg, run_info: dict, args, device, fallback, trainer: Trainer, result: dict, wall: float,
                 status=None, side_by_side: list[int] | None = None) -> dict:
    steps = int(trainer.step)
    if status is None:
        status = "completed" if result["epoch"] == cfg.training.epochs else "stopped_after_epoch"
    precision = cfg.training.precision
    summary = {
        "schema": SCHEMAS["summary"],
        "status": status,
        "config": cfg.name,
        "seed": run_info["seed"],
        "device": device.type,
        "requested_device": args.device,
        "device_fallback": fallback is not None,
        "fallback_reason": fallback,
        "gpu_name": None,
        "gpu_memory_gb": None,
        "precision": DESCRIPTION[precision],
        "fp16": precision == "fp16",
        "peak_gpu_memory_mb": None,
        "parameters": trainer.model.num_parameters(),
        "epochs": result["epoch"],
        "epoch_changes": run_info["epoch_changes"],
        "steps": steps,
        "skipped_steps": int(trainer.skipped_steps),
        "wall_time_s": wall,
        "train_time_s": result["train_time"],
        "train_steps_per_s": result["steps"] / result["train_time"] if result["train_time"] else None,
        "accelerations": trainer.accelerations,
        "seeds_side_by_side": side_by_side or [run_info["seed"]],  # the seeds trained together in one process
        "timing": result["timing"],
        "best_epoch": result["best"]["epoch"],
        "best_val_metrics": result["best"]["metrics"],
        "torch_version": torch.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        summary.update(gpu_name=props.name, gpu_memory_gb=round(props.total_memory / 1024**3, 1),
                       peak_gpu_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20)
    return summary


if __name__ == "__main__":
    raise SystemExit(run_main(main))
