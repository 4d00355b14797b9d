"""The run directory of a training run: one writer at a time, every file written atomically.

    config.yaml        the run's config (its `training.epochs` follows an allowed change on resume)
    metrics.jsonl      one row per evaluated epoch
    checkpoint_*.pt    epoch_N, latest and best (hard links to one file where they coincide)
    summary.json       written last: a run is finished when, and only when, it exists
    .lock              the PID and host of the process that trains into the directory

The lock is an advisory `flock` on `.lock` (Windows: `msvcrt.locking`), which the operating system
drops when its process dies, however it dies. So a second training into the same directory is refused
with the PID that holds the directory, and a `.lock` left by a killed process is simply taken over.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

from src.rundir.atomic import atomic_save, atomic_write_json, atomic_write_text, replaced
from src.errors import UserError, write_failed
from src.rundir.paths import check_output_dir
from src.rundir.results import read_metrics

RUN_FILES = ("metrics.jsonl", "checkpoint_latest.pt", "summary.json")

try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False


class RunDir:
    """The output directory of one training run, locked for as long as this object lives."""

    def __init__(self, path: str, resume: bool):
        """`path` as the user typed it: src.rundir.paths rejects an empty one, over-long names, a dangling
        link, a file, an unwritable place, before anything is created."""
        check_output_dir(str(path), "--output-dir")
        self.path = Path(path)
        self._lock_fd = None
        if resume and not self.path.is_dir():  # checked before anything is created
            self._check_resumable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--output-dir {self.path} is not writable ({err.strerror}); choose another directory") from None
        self._lock()
        try:
            if resume:
                self._check_resumable()
            elif any((self.path / name).exists() for name in RUN_FILES):
                raise UserError(f"--output-dir {self.path} already holds a run; pass --resume to continue it, "
                                "or choose another directory (nothing is overwritten)")
        except BaseException:
            self.release()
            raise

    # -- the lock --------------------------------------------------------------------------

    def _lock(self) -> None:
        lock = self.path / ".lock"
        existed = lock.exists()
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(fd):
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"--output-dir {self.path} is in use by {holder}: one training writes into a run "
                            "directory at a time. Wait for it to end, or stop it; or choose another directory")
        if existed:
            previous = os.read(fd, 200).decode("utf-8", "replace").strip()
            if previous:
                print(f"note: {lock} was left by {previous}, which no longer holds it (it was killed); taking it over",
                      file=sys.stderr)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (at the end of a run, or on an error)."""
        if self._lock_fd is None:
            return
        (self.path / ".lock").unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    # -- resume ----------------------------------------------------------------------------

    def _check_resumable(self) -> None:
        latest = self.path / "checkpoint_latest.pt"
        if latest.is_file():
            return
        epochs = sorted((int(m.group(1)), p.name) for p in self.path.glob("checkpoint_epoch_*.pt")
                        if p.is_file() and (m := re.fullmatch(r"checkpoint_epoch_(\d+)\.pt", p.name)))
        state = "is a link to a file that does not exist" if latest.is_symlink() else "is missing"
        if epochs:
            name = epochs[-1][1]
            raise UserError(f"--resume: {latest} {state}, but {name} is in {self.path}: to continue from it, copy it "
                            f"(cp {self.path / name} {latest}; nothing else is changed) and pass --resume again")
        if latest.is_symlink():
            raise UserError(f"--resume: {latest} {state} and there is no checkpoint_epoch_N.pt beside it; "
                            "nothing to resume here. Start the run again in a new --output-dir")
        started = self.path.is_dir() and any(p.name != ".lock" for p in self.path.iterdir())
        raise UserError(f"--resume: nothing to resume in {self.path} (no checkpoint_latest.pt); " + (
            "the run there stopped before its first checkpoint: start it again in a new --output-dir"
            if started else "start without --resume"))

    # -- files -----------------------------------------------------------------------------

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.path / name, obj)

    def read_summary(self) -> dict | None:
        try:
            summary = json.loads((self.path / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None

    def metrics(self) -> list[dict]:
        rows, problems = read_metrics(self.path / "metrics.jsonl")
        for problem in problems:  # the checkpoint, not this log, is the run's state: go on without the line
            print(f"warning: {problem}", file=sys.stderr)
        return rows

    def write_metrics(self, rows: list[dict]) -> None:
        self.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def append_metrics(self, record: dict) -> None:
        self.write_metrics(self.metrics() + [record])

    def keep_metrics_until(self, epoch: int) -> None:
        """On resume: forget the rows of epochs after the checkpoint we continue from (and damaged lines)."""
        self.write_metrics([r for r in self.metrics() if r["epoch"] <= epoch])

    def save_checkpoint(self, names: list[str], obj) -> None:
        """Serialize once, atomically, under names[0]; the other names become hard links to it
        (each swapped in atomically too), or copies where the file system has no links."""
        first = self.path / names[0]
        atomic_save(obj, first)
        for name in names[1:]:
            self.link(names[0], name)

    def link(self, source: str, name: str) -> None:
        """`name` becomes the same file as `source`, atomically."""
        tmp = self.path / (name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(self.path / source, tmp)
            except OSError:
                shutil.copyfile(self.path / source, tmp)
            replaced(tmp, self.path / name)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise write_failed(self.path / name, err) from None
