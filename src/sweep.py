"""Run a directory of configs x seeds to the end: train, resume, evaluate, collect.

    python -m src.sweep configs/extension/ --seeds 42,123,7              # everything not finished
    python -m src.sweep configs/extension/ --seeds 42,123,7 --dry-run    # the plan and its GPU time
    python -m src.sweep configs/extension/ --seeds 42,123,7 --list       # one command per config, for a cluster

Every YAML file of the sweep directory (`*.yaml`, `*.yml`) is a config for src.train, named by its file
stem. Seed S of config C trains into the run directory RUNS/C/seedS (RUNS: --runs-dir, default
runs/extension) and its results go to RESULTS/C/seedS (--results-dir, default runs/extension_results;
the committed results are in results/extension, written only when --results-dir names it):
eval.json, summary.json, metrics.jsonl and config.yaml, never a checkpoint. A run is finished when,
and only when, RESULTS/C/seedS/eval.json exists: it is written last, atomically.

Each seed is, at the moment its config's turn comes:
    finished   RESULTS/C/seedS/eval.json exists: skipped
    evaluate   its summary.json says "completed": evaluated and collected
    resume     checkpoint_latest.pt without a summary (killed, interrupted), or stopped by
               --stop-after-epoch, or completed with fewer epochs than the config now asks for
    train      its run directory holds no run yet
    blocked    the sweep cannot continue it on its own, and says why: the run stopped on a non-finite
               loss or diverged (a resumed run keeps its config, so resuming would repeat it), it stopped
               before its first checkpoint, or it was trained with a config that now differs in more than
               training.epochs. Reported as a failure; fix it and run the sweep again
Per config, the seeds to train go into ONE process (`python -m src.train --config C --output-dir
RUNS/C --seeds a,b`, side by side), the seeds to resume into another (`... --seeds c,d --resume`, with
--config C, so that a config edited since is refused and a longer training.epochs is honoured). Then
each seed is evaluated (`python -m src.analysis.evaluate --run RUNS/C/seedS --out RUNS/C/seedS/eval.json`,
in the precision it trained in) and its files are copied to RESULTS/C/seedS, eval.json last. The
subprocesses write to RUNS/C/train_<seeds>.log (one log per set of seeds trained together, e.g.
train_42+7.log, so that sweeps of disjoint seeds of one config never write to one file) and
RUNS/C/seedS/evaluate.log (appended, each command under a header line); a progress bar over these
steps goes to stderr.

A failed training or evaluation is reported (exit status, its last error line, the log) and the
sweep goes on with the other configs; it exits 1 at the end if anything failed or was blocked.

Workers: with --device cuda, one worker per visible GPU (torch.cuda.device_count(), which respects
CUDA_VISIBLE_DEVICES); each worker takes one config at a time and runs its subprocesses with
CUDA_VISIBLE_DEVICES set to its own GPU. With one GPU, or --device cpu, one worker, and the
environment is passed on unchanged. --workers N overrides the count (workers then share the GPUs
in turn).

One writer per run: src.train locks each run directory (src.rundir.directory); the sweep also holds
RUNS/C/.seedS.lock for each seed S of config C it works on, and skips, with a note, a config one of
whose seeds' .seedS.lock or run directories' .lock is held by another process (another sweep, a
training started by hand). Sweeps of disjoint seeds of one config (one per GPU) run side by side. Such a
skip is not a failure (exit 0): run the sweep again once the other process ends.

--list prints, for each config with something left to do, one self-contained command that does it:

    python -m src.sweep configs/extension --seeds 42,7 --only pilot_200k --runs-dir runs/extension \
        --results-dir results/extension --device cuda

Each line is idempotent (it skips what is finished and resumes what is partial), so the lines can
go to any job runner, one GPU per line:
    GNU parallel, 4 GPUs:  python -m src.sweep DIR --seeds S --list > jobs.txt
                           parallel -j 4 'CUDA_VISIBLE_DEVICES=$(({%} - 1)) {}' :::: jobs.txt
    Slurm job array:       sbatch --array=1-$(wc -l < jobs.txt) --gres=gpu:1 --wrap \
                               'cd REPO && sed -n "${SLURM_ARRAY_TASK_ID}p" jobs.txt | bash'
A command for one config runs one worker and leaves CUDA_VISIBLE_DEVICES as the job runner set it.

--dry-run prints the plan (each config x seed: train, resume, evaluate, finished, blocked, in use) and
an estimate of the training time: a seed trains epochs x ceil(training expressions / batch size)
optimizer steps; a config's steps/s comes from a completed run of it in RUNS, or else in RESULTS, on the
same device type (summary.json: train_steps_per_s x the seeds trained side by side, i.e. the process's
seed-steps/s), else from --steps-per-s (default 300 seed-steps/s: the 10M model at batch 256 on one H100, per
BENCHMARKS.md; the pilot is faster). Startup, compilation and evaluation are not counted.

Bad inputs are one-line errors before anything starts (exit 2): a missing sweep directory, one
without configs, bad --seeds or --only, a config that does not load (the loader's message, naming the
file) or that check_config refuses. Ctrl-C (or SIGTERM) starts no new step; the running ones
checkpoint when the signal reaches them too (the terminal, like Slurm, signals the whole process
group); the sweep then exits 128 + the signal's number (130 for Ctrl-C), and the same command continues.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from src.rundir.atomic import atomic_write_bytes
from src.cli import ArgumentParser, comma_list, float_in, int_in, seed_value
from src.config import REPO_ROOT, Config, check_data_paths, config_from_dict, find_configs, flat, load_config
from src.errors import UserError, run_main
from src.rundir.paths import check_name, check_output_dir
from src.rundir.atomic import NOFOLLOW
from src.rundir.directory import RUN_FILES, _try_lock
from src.rundir.results import read_metrics
from src.signals import Interrupted

COLLECTED = ("summary.json", "metrics.jsonl", "config.yaml")  # copied to RESULTS/C/seedS, then eval.json
DEFAULT_STEPS_PER_S = 300.0  # seed-steps/s of one training process: 10M at batch 256 on an H100 (BENCHMARKS.md)
RESUMABLE = (None, "stopped_after_epoch")  # summary status of a run the sweep resumes (None: no summary yet)


# ---------------------------------------------------------------------------- configs


def check_config(cfg: Config, path: Path) -> None:
    """A UserError naming `path` for a config the trainer would refuse, found before any run starts:
    a data file that does not exist (a generated training set, data.train_size, is made on demand by
    src.train), or a config whose name gives a training-set size (`..._n200000...`) that its training
    data does not have."""
    generated = bool(cfg.data.train_size)
    check_data_paths(cfg, str(path), ("val",) if generated else ("train", "val"))
    named = re.search(r"_n(\d+)(?:_|$)", path.stem)
    if named:
        n, size = int(named.group(1)), train_size(cfg)
        source = f"data.train_size {size}" if generated else f"data.train {cfg.data.train} ({size} lines)"
        if size is not None and size != n:
            raise UserError(f"{path}: its name says N = {n:,} training expressions, but {source}; rename the "
                            "config or fix its data section (scripts/make_extension_configs.py writes both)")


def train_size(cfg: Config) -> int | None:
    """The number of training expressions (for the estimate): `data.train_size` where the config sets
    it, else the lines of the training file; None when neither is known (no file yet)."""
    size = getattr(cfg.data, "train_size", 0)
    if size:
        return int(size)
    try:
        with open(cfg.data.path("train"), "rb") as fh:
            lines, last = 0, b"\n"
            while chunk := fh.read(1 << 24):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
            return lines + (last != b"\n")
    except OSError:
        return None


# ---------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class SeedPlan:
    seed: int
    action: str  # train | resume | evaluate | finished | blocked
    why: str = ""  # what the action rests on (resume: from where; blocked: the reason and the way out)


@dataclasses.dataclass
class Group:
    """One config and its seeds: the unit a worker takes."""

    name: str
    path: Path
    cfg: Config
    runs: Path  # RUNS/<config>
    results: Path  # RESULTS/<config>
    seeds: list[SeedPlan]
    done_steps: int = 0  # run steps taken while the sweep works on it (for the progress bar)
    reported: set = dataclasses.field(default_factory=set)  # seeds whose training failure is already reported

    def run(self, seed: int) -> Path:
        return self.runs / f"seed{seed}"

    def result(self, seed: int) -> Path:
        return self.results / f"seed{seed}"

    def doing(self, *actions: str) -> list[int]:
        return [s.seed for s in self.seeds if s.action in actions]

    def steps(self) -> int:
        """Run steps left: a training process per kind, then one evaluation per seed."""
        return bool(self.doing("train")) + bool(self.doing("resume")) + len(self.doing("train", "resume", "evaluate"))


def read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def run_config(run: Path) -> Config | None:
    """The config a run was trained with (its config.yaml), or None where it cannot be read (the
    trainer then says what is wrong)."""
    try:
        return config_from_dict(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")),
                                str(run / "config.yaml"))
    except (OSError, ValueError, yaml.YAMLError, UserError, TypeError):
        return None


def seed_plan(cfg: Config, seed: int, run: Path, result: Path) -> SeedPlan:
    """What the sweep does for one seed, from the files of its run and results directories."""
    if (result / "eval.json").is_file():
        return SeedPlan(seed, "finished")
    summary = read_json(run / "summary.json")
    status = summary.get("status") if summary is not None else None
    has_checkpoint = (run / "checkpoint_latest.pt").is_file()
    if summary is None and not has_checkpoint:
        if any((run / name).exists() for name in RUN_FILES):
            return SeedPlan(seed, "blocked", f"{run} holds a run without checkpoint_latest.pt (it stopped before "
                            f"its first checkpoint, or the file was removed); `python -m src.train --output-dir {run} "
                            "--resume` says how to continue it, or remove the directory to train the seed again")
        return SeedPlan(seed, "train")
    own = run_config(run)
    if own is not None:
        theirs, ours = flat(own.to_dict()), flat(cfg.to_dict())
        differ = sorted(k for k in ours if k != "training.epochs" and theirs.get(k) != ours[k])
        if differ:
            return SeedPlan(seed, "blocked", f"{run} was trained with a config that differs from the sweep's in "
                            f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}; restore the config, or "
                            "remove the run directory to train the seed again with it")
    epochs = cfg.training.epochs
    if status == "completed":
        done = summary.get("epochs")
        if isinstance(done, int) and done < epochs:
            return SeedPlan(seed, "resume", f"completed {done} epochs; the config asks for {epochs}")
        if isinstance(done, int) and done > epochs:
            return SeedPlan(seed, "blocked", f"{run} trained {done} epochs and the config asks for {epochs}; "
                            "restore training.epochs, or remove the run directory to train the seed again")
        return SeedPlan(seed, "evaluate", "training completed")
    if status not in RESUMABLE:
        return SeedPlan(seed, "blocked", f"{run} stopped with status {status!r} (its summary.json and "
                        f"{run.parent}/train_*.log say why); a resumed run keeps its config, so fix the config "
                        "and remove the run directory to train the seed again")
    if not has_checkpoint:
        return SeedPlan(seed, "blocked", f"{run}: summary.json says {status!r} but checkpoint_latest.pt is "
                        "missing; remove the run directory to train the seed again")
    return SeedPlan(seed, "resume", "stopped after an epoch" if status else "interrupted (no summary.json)")


def make_plan(args) -> list[Group]:
    """Every config of the sweep (those of --only), loaded and checked, with each seed's plan;
    any bad input is a UserError here, before anything is started."""
    files = find_configs(args.sweep_dir, "sweep directory")
    by_name = {p.stem: p for p in files}
    if args.only is not None:
        unknown = [name for name in args.only if name not in by_name]
        if unknown:
            raise UserError(f"--only {','.join(args.only)}: no config {unknown[0]!r} in {args.sweep_dir}; its configs "
                            f"are {', '.join(by_name)}")
        files = [by_name[name] for name in args.only]
    check_output_dir(args.runs_dir, "--runs-dir")
    check_output_dir(args.results_dir, "--results-dir")
    groups = []
    for path in files:
        check_name(path.stem, f"{path}: its stem")  # RUNS/<stem> and RESULTS/<stem> stay inside their directories
        cfg = load_config(path)
        check_config(cfg, path)
        if args.device == "cpu" and cfg.training.precision != "fp32":
            raise UserError(f"{path}: training.precision {cfg.training.precision} needs a CUDA device; "
                            "use --device cuda, or precision fp32 in the config")
        groups.append(Group(path.stem, path, cfg, Path(args.runs_dir) / path.stem,
                            Path(args.results_dir) / path.stem, []))
    for g in groups:
        g.seeds = [seed_plan(g.cfg, seed, g.run(seed), g.result(seed)) for seed in args.seeds]
    return groups


# ---------------------------------------------------------------------------- locks


def holder(lock: Path) -> str | None:
    """Who holds the flock on `lock` ("PID n on host"), or None when nobody does. The lock is taken
    for an instant to find out and dropped at once."""
    try:
        fd = os.open(lock, os.O_RDWR | NOFOLLOW)
    except OSError:
        return None  # no lock file (or a link, never followed: src.train refuses it): nobody has locked it
    try:
        if _try_lock(fd):
            return None
        return os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)  # drops the lock if this call took it


def seed_lock(runs: Path, seed: int) -> Path:
    return runs / f".seed{seed}.lock"


def in_use(group: Group, sweep_lock: bool = False) -> str | None:
    """Why the group cannot be worked on now (a run directory locked by another process; with
    `sweep_lock`, also one of its seeds locked by another sweep), or None."""
    if sweep_lock:
        for p in group.seeds:
            if who := holder(seed_lock(group.runs, p.seed)):
                return f"{group.runs} seed {p.seed} is in use by {who}"
    for seed in group.doing("train", "resume", "evaluate"):
        who = holder(group.run(seed) / ".lock")
        if who:
            return f"{group.run(seed)} is in use by {who}"
    return None


class GroupLock:
    """RUNS/<config>/.seedS.lock for each seed, held while a sweep works on those seeds of the config
    (the flock of src.rundir.directory): all of them, or none and a BlockingIOError naming the holder."""

    def __init__(self, runs: Path, seeds):
        runs.mkdir(parents=True, exist_ok=True)
        self.held: list[tuple[Path, int]] = []
        for seed in sorted(seeds):
            path = seed_lock(runs, seed)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
            except OSError as err:  # a symbolic link (ELOOP) is never followed, nor is anything written through it
                self.release()
                raise UserError(f"{path}: cannot be opened as a lock file ({err.strerror or err}); a sweep's seed "
                                f"lock is a plain file: remove it (rm {path}) and run again") from None
            if not _try_lock(fd):
                who = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                self.release()
                raise BlockingIOError(f"{runs} seed {seed} is in use by {who}")
            os.ftruncate(fd, 0)
            os.write(fd, f"PID {os.getpid()} on {socket.gethostname()} (src.sweep)\n".encode())
            self.held.append((path, fd))

    def release(self) -> None:
        for path, fd in self.held:
            path.unlink(missing_ok=True)
            os.close(fd)
        self.held = []


# ---------------------------------------------------------------------------- commands


def sweep_command(args, group: Group) -> str:
    """The self-contained command of --list that finishes one config's seeds."""
    seeds = ",".join(map(str, group.doing("train", "resume", "evaluate")))
    cmd = ["python", "-m", "src.sweep", args.sweep_dir, "--seeds", seeds, "--only", group.name,
           "--runs-dir", args.runs_dir, "--results-dir", args.results_dir, "--device", args.device]
    return shlex.join(cmd + (["--gpu-only"] if args.gpu_only else []))


def train_log(runs: Path, seeds) -> Path:
    """RUNS/C/train_<seeds>.log: the log of the seeds trained together in one command. A long list
    (60 seeds, or seeds of many digits) is named by its first and last seed, its size and a hash of
    the whole list, so that the name stays within the file system's limit and still differs for
    every set of seeds."""
    seeds = [str(s) for s in seeds]
    name = f"train_{'+'.join(seeds)}.log"
    if len(name) <= 100:
        return runs / name
    digest = hashlib.sha256(",".join(seeds).encode()).hexdigest()[:16]
    return runs / f"train_{seeds[0][:20]}..{seeds[-1][:20]}_{len(seeds)}seeds_{digest}.log"


def train_command(args, group: Group, seeds: list[int], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "src.train", "--config", str(group.path), "--output-dir", str(group.runs),
           "--seeds", ",".join(map(str, seeds)), "--device", args.device, "--no-progress"]
    return cmd + (["--resume"] if resume else []) + (["--gpu-only"] if args.gpu_only else [])


def evaluate_command(args, run: Path) -> list[str]:
    return [sys.executable, "-m", "src.analysis.evaluate", "--run", str(run), "--out", str(run / "eval.json"),
            "--device", args.device]


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES names them for a child process."""
    import torch

    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in given.split(",")] if given is not None else [str(i) for i in range(count)]
    return names[:count]


# ---------------------------------------------------------------------------- --dry-run


def rate_of(group: Group, args) -> tuple[float, str]:
    """Seed-steps/s of one training process of this config, and where the figure comes from: a
    completed run of it in RUNS, else one already collected in RESULTS, else --steps-per-s."""
    found = sorted(group.runs.glob("seed*/summary.json")) + sorted(group.result(0).parent.glob("seed*/summary.json"))
    for summary_path in found:
        s = read_json(summary_path)
        rate = s.get("train_steps_per_s") if s else None
        if s and s.get("status") == "completed" and s.get("device") == args.device and isinstance(rate, (int, float)) \
                and rate > 0:
            together = len(s.get("seeds_side_by_side") or [0])
            return rate * together, f"measured, {summary_path}"
    return args.steps_per_s, "--steps-per-s"


def steps_left(group: Group, plan: SeedPlan, per_epoch: int | None) -> int | None:
    """Optimizer steps the seed still has to train, from the last epoch its metrics.jsonl records."""
    if per_epoch is None:
        return None
    total = group.cfg.training.epochs * per_epoch
    if plan.action == "train":
        return total
    if plan.action != "resume":
        return 0
    rows, _ = read_metrics(group.run(plan.seed) / "metrics.jsonl")
    done = max((r["step"] for r in rows if isinstance(r.get("step"), int)), default=0)
    return max(total - done, 0)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_plan(groups: list[Group], args, workers: int) -> None:
    print(f"sweep {args.sweep_dir}: {len(groups)} config(s) x seeds {','.join(map(str, args.seeds))}; "
          f"runs in {args.runs_dir}, results in {args.results_dir}, --device {args.device}")
    print(f"{'config':<24} {'seed':>8}  {'action':<9} {'steps left':>12}  note")
    total_s, unknown = 0.0, []
    counts = {}
    for g in groups:
        size = train_size(g.cfg)
        per_epoch = math.ceil(size / g.cfg.training.batch_size) if size is not None else None
        busy = in_use(g, sweep_lock=True)
        left = 0
        for p in g.seeds:
            counts[p.action] = counts.get(p.action, 0) + 1
            n = steps_left(g, p, per_epoch)
            left += n or 0
            shown = "?" if n is None else (f"{n:,}" if p.action in ("train", "resume") else "-")
            print(f"{g.name:<24} {p.seed:>8}  {p.action:<9} {shown:>12}  {p.why}")
        rate, source = rate_of(g, args)
        if per_epoch is None and g.doing("train", "resume"):
            unknown.append(g.name)
        if left:
            total_s += left / rate
            print(f"  {g.name}: {size:,} training expressions, batch {g.cfg.training.batch_size}, "
                  f"{g.cfg.training.epochs} epochs x {per_epoch:,} steps; {left:,} seed-steps at {rate:,.0f} "
                  f"seed-steps/s ({source}): {duration(left / rate)}")
        if busy:
            print(f"  {g.name}: in use now ({busy}); the sweep would skip it")
    print("plan: " + ", ".join(f"{n} {a}" for a, n in counts.items()))
    what = "GPU time" if args.device == "cuda" else "CPU time"
    line = f"estimated {what} (training only): {duration(total_s)}"
    if workers > 1:
        line += f"; about {duration(total_s / workers)} of wall time on {workers} workers"
    if unknown:
        line += f"; not counted: {', '.join(unknown)} (training file not there yet)"
    print(line)


# ---------------------------------------------------------------------------- running


class Sweep:
    """The workers, the progress bar and the record of what happened."""

    def __init__(self, args, groups: list[Group], gpus: list[str], workers: int):
        self.args, self.groups, self.gpus, self.workers = args, groups, gpus, workers
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self.finished = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.signum = signal.SIGINT  # the signal that set `stopping`
        self.bar = tqdm(total=sum(g.steps() for g in groups), desc="sweep", unit="step", file=sys.stderr,
                        disable=args.no_progress, dynamic_ncols=True)
        self.env = dict(os.environ)
        # the subprocesses import src/ from this repository, wherever the sweep was started from
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), self.env.get("PYTHONPATH")]))

    def note(self, message: str) -> None:
        with self.lock:
            self.bar.write(message, file=sys.stderr)

    def fail(self, message: str) -> None:
        with self.lock:
            self.failed.append(message)
            self.bar.write(f"FAILED {message}", file=sys.stderr)

    def advance(self, n: int = 1, what: str = "") -> None:
        with self.lock:
            self.bar.update(n)
            if what:
                self.bar.set_postfix_str(what, refresh=True)

    # -- the workers -----------------------------------------------------------------------

    def run(self) -> None:
        todo = queue.Queue()
        for g in self.groups:
            todo.put(g)
        threads = [threading.Thread(target=self.worker, args=(i, todo), daemon=True) for i in range(self.workers)]
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self.on_signal)
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.bar.close()

    def on_signal(self, signum, frame) -> None:
        if self.stopping.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.stopping.set()
        self.note(f"{signal.Signals(signum).name}: no new step starts; waiting for the running ones (a training "
                  "saves checkpoint_latest.pt when the signal reaches it). Again to leave at once")

    def worker(self, index: int, todo: queue.Queue) -> None:
        env = dict(self.env)
        if self.workers > 1 and len(self.gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]
        while not self.stopping.is_set():
            try:
                group = todo.get_nowait()
            except queue.Empty:
                return
            planned = group.steps()
            try:
                self.run_group(group, env)
            except Exception as err:  # one config's surprise must not end the others
                self.fail(f"{group.name}: {type(err).__name__}: {err}")
            with self.lock:
                self.bar.update(max(planned - group.done_steps, 0))

    def run_group(self, group: Group, env: dict) -> None:
        group.done_steps = 0
        try:
            lock = GroupLock(group.runs, [p.seed for p in group.seeds])
        except BlockingIOError as err:
            self.skip(group, str(err))
            return
        try:
            # again, now that the config is ours: another sweep may have finished some of it since the plan
            group.seeds = [seed_plan(group.cfg, p.seed, group.run(p.seed), group.result(p.seed)) for p in group.seeds]
            busy = in_use(group)
            if busy:
                self.skip(group, busy)
                return
            for p in group.seeds:
                if p.action == "blocked":
                    self.fail(f"{group.name} seed {p.seed}: {p.why}")
            for resume in (False, True):
                seeds = group.doing("resume" if resume else "train")
                if seeds and not self.stopping.is_set():
                    self.train(group, seeds, resume, env)
            for seed in group.doing("train", "resume", "evaluate"):
                if self.stopping.is_set():
                    return
                self.evaluate(group, seed, env)
        finally:
            lock.release()

    def skip(self, group: Group, why: str) -> None:
        with self.lock:
            self.skipped.append(group.name)
        self.note(f"note: {group.name} skipped: {why}; run the sweep again once that process ends")

    # -- the steps -------------------------------------------------------------------------

    def execute(self, cmd: list[str], log: Path, env: dict) -> tuple[int, str]:
        """Run `cmd` with its output appended to `log`; (exit status, its last error line)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} src.sweep: {shlex.join(cmd)}\n".encode())
            fh.flush()
            start = fh.tell()
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env).returncode
        if rc == 0:
            return 0, ""
        with open(log, "rb") as fh:
            fh.seek(start)
            lines = [ln.strip() for ln in fh.read()[-20000:].decode("utf-8", "replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
        return rc, (errors or lines or ["(no output)"])[-1][:300]

    def train(self, group: Group, seeds: list[int], resume: bool, env: dict) -> None:
        what = f"{group.name}: {'resuming' if resume else 'training'} seeds {','.join(map(str, seeds))}"
        self.note(what)
        self.advance(0, what)
        log = train_log(group.runs, seeds)
        rc, error = self.execute(train_command(self.args, group, seeds, resume), log, env)
        group.done_steps += 1
        self.advance()
        if rc != 0 and not self.stopping.is_set():
            self.fail(f"{what}: exit status {rc}: {error} (log: {log})")
            group.reported.update(seeds)

    def evaluate(self, group: Group, seed: int, env: dict) -> None:
        run, result = group.run(seed), group.result(seed)
        what = f"{group.name} seed {seed}: evaluating"
        group.done_steps += 1
        summary = read_json(run / "summary.json")
        status = summary.get("status") if summary else None
        if status != "completed":  # its training failed (reported above) or was interrupted
            self.advance()
            if not self.stopping.is_set() and seed not in group.reported:
                self.fail(f"{group.name} seed {seed}: not evaluated: its training did not complete (summary.json "
                          f"status {status!r}; log: {train_log(group.runs, [seed])} or the train_*.log that holds it)")
            return
        log = run / "evaluate.log"
        self.advance(0, what)
        rc, error = self.execute(evaluate_command(self.args, run), log, env)
        self.advance()
        if rc != 0:
            if not self.stopping.is_set():
                self.fail(f"{what} failed: exit status {rc}: {error} (log: {log})")
            return
        result.mkdir(parents=True, exist_ok=True)
        for name in COLLECTED:
            atomic_write_bytes(result / name, (run / name).read_bytes())
        atomic_write_bytes(result / "eval.json", (run / "eval.json").read_bytes())  # last: now it is finished
        with self.lock:
            self.finished += 1


# ---------------------------------------------------------------------------- main


def parse_args(argv):
    p = ArgumentParser(prog="python -m src.sweep", description="Train, resume and evaluate every config x seed of a "
                       "sweep directory that is not finished (see the module docstring).")
    p.add_argument("sweep_dir", help="directory of src.train configs (*.yaml), e.g. configs/extension/")
    p.add_argument("--seeds", required=True, metavar="S1,S2,...",
                   type=comma_list(item=seed_value, what="distinct seeds separated by commas, e.g. 42,123,7"),
                   help="the seeds of every config")
    p.add_argument("--runs-dir", default="runs/extension", help="run directories RUNS/CONFIG/seedS (default: %(default)s)")
    p.add_argument("--results-dir", default="runs/extension_results",
                   help="results RESULTS/CONFIG/seedS: eval.json, summary.json, metrics.jsonl, config.yaml "
                   "(default: %(default)s; the committed ones are in results/extension)")
    p.add_argument("--only", type=comma_list(what="config names (file stems) separated by commas"), default=None,
                   metavar="CONFIG,...", help="only these configs of the directory")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="for training and evaluation (default: cuda)")
    p.add_argument("--gpu-only", action="store_true", help="passed to src.train; the sweep itself aborts first "
                   "unless CUDA is available")
    p.add_argument("--workers", type=int_in(1, 256), default=None, metavar="N", help="configs worked on at once "
                   "(default: one per visible GPU with --device cuda, else 1)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="print one self-contained command per config with work "
                      "left (for GNU parallel or a Slurm array), start nothing")
    what.add_argument("--dry-run", action="store_true",
                      help="print the plan and its estimated training time, start nothing")
    p.add_argument("--steps-per-s", type=float_in(1e-6, None), default=DEFAULT_STEPS_PER_S, metavar="X",
                   help="seed-steps/s of one training process, for --dry-run's estimate where no completed run of "
                   "the config has measured it (default: %(default)g, the 10M model at batch 256 on an H100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.gpu_only and not (args.list or args.dry_run):
        from src.device import resolve_device

        resolve_device(args.device, gpu_only=True)  # GpuOnlyError before anything is read or started
    groups = make_plan(args)
    gpus = visible_gpus() if args.device == "cuda" else []
    pending = [g for g in groups if g.steps()]
    workers = args.workers or max(len(gpus), 1)
    workers = max(min(workers, len(pending)), 1)
    if args.list:
        for g in groups:
            for p in g.seeds:
                if p.action == "blocked":
                    print(f"note: {g.name} seed {p.seed} is left out: {p.why}", file=sys.stderr)
        for g in pending:
            print(sweep_command(args, g))
        return 0
    if args.dry_run:
        print_plan(groups, args, workers)
        return 0
    blocked = [g for g in groups if g.doing("blocked") and not g.steps()]
    sweep = Sweep(args, pending + blocked, gpus, workers)
    done_before = sum(len(g.doing("finished")) for g in groups)
    print(f"sweep {args.sweep_dir}: {len(groups)} config(s) x {len(args.seeds)} seed(s); {done_before} finished "
          f"already, {sum(g.steps() for g in pending)} step(s) to run on {workers} worker(s)"
          + (f" (GPUs {','.join(gpus[:workers])})" if workers > 1 and len(gpus) > 1 else ""), flush=True)
    sweep.run()
    if sweep.stopping.is_set():
        raise Interrupted(sweep.signum, "interrupted: no new step was started; finished runs are kept and partial ones have "
                          "their checkpoints. Run the same command again to continue")
    print(f"sweep done: {sweep.finished} run(s) finished now, {done_before} before; "
          f"{len(sweep.failed)} failure(s); {len(sweep.skipped)} config(s) skipped (in use)"
          + (f": {', '.join(sweep.skipped)}" if sweep.skipped else ""))
    for message in sweep.failed:
        print(f"FAILED {message}", file=sys.stderr)
    return 1 if sweep.failed else 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
