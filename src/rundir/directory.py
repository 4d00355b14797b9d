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

import errno
import json
import os
import re
import shutil
import socket
import stat
import sys
from pathlib import Path

from src.rundir.atomic import (NOFOLLOW, WriteBehind, atomic_write_bytes, atomic_write_json, atomic_write_text, discard,
                               open_new, replaced, temporary_path, torch_bytes)
from src.errors import UserError, write_failed
from src.rundir.paths import check_output_dir
from src.rundir.results import read_metrics

RUN_FILES = ("metrics.jsonl", "checkpoint_latest.pt", "summary.json")

try:
    import fcntl

    def _try_lock(fd: int, shared: bool = False) -> bool:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
except ImportError:  # Windows: no shared locks; a reader checks that no training holds the lock, and lets go
    import msvcrt

    def _try_lock(fd: int, shared: bool = False) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        if shared:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return True


TEMPORARY = re.compile(r"\..+\.(\d+)-[0-9a-f]{12}\.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows: os.kill would end the process, not probe it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process, or a system that cannot tell: left alone
    return True


def _lock_holders(fd: int) -> list[str]:
    """The PIDs holding a lock on the file of `fd`, from /proc/locks (Linux); empty where it cannot tell."""
    info = os.fstat(fd)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and "->" not in fields[1] and fields[1] == "FLOCK" and fields[5] == device:
            holders.append(f"PID {fields[4]}" + (" (reading it)" if fields[3] == "READ" else ""))
    return holders


def open_lock_file(directory: Path, flag: str) -> int:
    """A descriptor of DIRECTORY/.lock (created if missing), which must be a plain file: a symbolic link
    there is refused, never followed (O_NOFOLLOW, and lstat where the system has no O_NOFOLLOW)."""
    lock = directory / ".lock"
    fix = f"a run directory's .lock is a plain file; remove it (rm {lock}) and run again"
    try:
        mode = os.lstat(lock).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise UserError(f"{flag} {directory}: {lock} cannot be read ({err.strerror or err})") from None
    if mode is not None and not stat.S_ISREG(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a plain file"
        raise UserError(f"{flag} {directory}: {lock} is {what}, which is never followed or written through; {fix}")
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{flag} {directory}: {lock} is a symbolic link, which is never followed or written "
                            f"through; {fix}") from None
        raise UserError(f"{flag} {directory}: {lock} cannot be opened ({err.strerror or err}); "
                        "check the directory's permissions") from None


def lock_file(directory: Path, flag: str, shared: bool) -> tuple[int | None, str]:
    """(descriptor holding the lock, "") or (None, who holds it). The lock is taken on the `.lock` that
    is in the directory once it is held: a `.lock` removed and made again meanwhile (a training ending)
    is locked again, so that two processes never hold locks on two different files of one name."""
    lock = directory / ".lock"
    for _ in range(20):
        fd = open_lock_file(directory, flag)
        if not _try_lock(fd, shared):
            holders = _lock_holders(fd)
            os.lseek(fd, 0, os.SEEK_SET)
            written = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            if written and not any(h.endswith("(reading it)") for h in holders):
                return None, written
            return None, ", ".join(holders) or written or "another process"
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(lock))
        except OSError:
            same = False
        if same:
            return fd, ""
        os.close(fd)
    raise UserError(f"{flag} {directory}: {lock} keeps being replaced by another process; run again")


_SHARED: dict[str, int] = {}  # run directory -> the descriptor of its shared lock, held by this process


def hold_run_shared(run, flag: str = "--run") -> None:
    """Take a shared lock on RUN/.lock for as long as this process reads the run (released by
    release_shared or when the process ends): analyses may read a run together, each writing its
    own result atomically, but not while a training writes into it (a training holds the lock
    exclusively, and is refused while an analysis reads the run). Refused with the holder's PID."""
    run = Path(run)
    key = os.path.realpath(run)
    if key in _SHARED:
        return
    fd, holder = lock_file(run, flag, shared=True)
    if fd is None:
        raise UserError(f"{flag} {run} is in use by {holder}, which trains into it; analyse it once the training "
                        "has ended (or stop it), or copy the checkpoint you want elsewhere first")
    _SHARED[key] = fd


def release_shared(run=None) -> None:
    """Drop this process's shared lock on `run` (every one, without `run`)."""
    keys = list(_SHARED) if run is None else [os.path.realpath(run)]
    for key in keys:
        fd = _SHARED.pop(key, None)
        if fd is None:
            continue
        try:  # the last reader removes the empty .lock it made (a training's holds its PID and stays)
            lock = Path(key) / ".lock"
            if os.fstat(fd).st_size == 0 and _try_lock(fd) and os.path.samestat(os.fstat(fd), os.lstat(lock)):
                os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


class RunDir:
    """The output directory of one training run, locked for as long as this object lives."""

    def __init__(self, path: str, resume: bool):
        """`path` as the user typed it: src.rundir.paths rejects an empty one, over-long names, a dangling
        link, a file, an unwritable place, before anything is created."""
        check_output_dir(str(path), "--output-dir")
        self.path = Path(path)
        self._lock_fd = None
        self.writes = WriteBehind()  # checkpoints written while training goes on (save_checkpoint)
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
        release_shared(self.path)  # this process's own reading of the run (an analysis before) is over
        fd, holder = lock_file(self.path, "--output-dir", shared=False)
        if fd is None:
            raise UserError(f"--output-dir {self.path} is in use by {holder}: one training writes into a run "
                            "directory at a time, and not while an analysis reads it. Wait for it to end, or stop "
                            "it; or choose another directory")
        if existed:
            previous = os.read(fd, 200).decode("utf-8", "replace").strip()
            if previous:
                print(f"note: {lock} was left by {previous}, which no longer holds it (it was killed); taking it over",
                      file=sys.stderr)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock_fd = fd
        self._remove_dead_temporaries()

    def _remove_dead_temporaries(self) -> None:
        """The temporary files of writers that were killed half-way (src.rundir.atomic names them
        `.<name>.<pid>-<random>.tmp`): with the lock held exclusively nobody else writes here."""
        for entry in os.scandir(self.path):
            found = TEMPORARY.fullmatch(entry.name)
            if found and entry.is_file(follow_symlinks=False) and not _alive(int(found.group(1))):
                discard(Path(entry.path))

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

    def save_checkpoint(self, names: list[str], obj, behind: bool = False) -> None:
        """Serialize once, atomically, under names[0]; the other names become hard links to it
        (each swapped in atomically too), or copies where the file system has no links. `behind`:
        serialize now (the state as it is), write on the run's writer thread (`self.writes`), in order;
        `self.writes.wait()` says when every file is on the disk, and raises what failed."""
        data = torch_bytes(obj)
        if behind:
            self.writes.submit(self._write_checkpoint, names, data)
        else:
            self._write_checkpoint(names, data)

    def _write_checkpoint(self, names: list[str], data) -> None:
        atomic_write_bytes(self.path / names[0], data)
        for name in names[1:]:
            self.link(names[0], name)

    def link(self, source: str, name: str) -> None:
        """`name` becomes the same file as `source`, atomically (through a temporary name of its own)."""
        target = self.path / name
        for _ in range(100):
            tmp = temporary_path(target)
            try:
                try:
                    os.link(self.path / source, tmp, follow_symlinks=False)
                except FileExistsError:
                    continue
                except OSError:  # no hard links on this file system: a copy, into a file created here
                    with open(self.path / source, "rb") as src, open(open_new(tmp), "wb") as dst:
                        shutil.copyfileobj(src, dst)
                replaced(tmp, target)
                return
            except FileExistsError:
                continue
            except OSError as err:
                discard(tmp)
                raise write_failed(target, err) from None
        raise write_failed(target, FileExistsError(errno.EEXIST, "no free temporary name in its directory"))
