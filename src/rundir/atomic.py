"""Atomic writes, the one way every output file of the project is written.

Each writer goes through a temporary file beside the target and a rename: a crash, a full disk or
an error half-way leaves the previous file untouched (a reader sees the old file or the new one,
never half of one), and a failure is reported as a one-line UserError naming the file.

Every writer has a temporary file of its own: a unique name in the target's directory
(`.<name>.<pid>-<random>.tmp`), created with O_EXCL and O_NOFOLLOW, so two processes writing one
file (two evaluations of one run) never share one, and a left-over temporary file or a symbolic
link planted under such a name is never opened, let alone written through; the rename replaces a
link at the target's name rather than the file it points to. The last writer's version wins, whole.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import secrets
import stat
from pathlib import Path

from src.errors import write_failed

# O_NOFOLLOW where the system has it (not Windows, whose links need privileges to make); open_new checks
# with lstat as well, so that a link is refused everywhere
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_TEMP_NAME_MAX = 120  # bytes of the target's name kept in a temporary name (the rest becomes a hash)


def temporary_path(path: Path) -> Path:
    """A fresh name for a temporary file of `path`, in its directory: `.<name>.<pid>-<random>.tmp`.
    A long name is shortened (its hash kept), so that the temporary name stays within NAME_MAX."""
    name = path.name
    if len(os.fsencode(name)) > _TEMP_NAME_MAX:
        name = os.fsdecode(os.fsencode(name)[:60]) + "-" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return path.with_name(f".{name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


def open_new(path: Path, mode: int = 0o644) -> int:
    """A file descriptor open for writing on a file created here and now: FileExistsError if anything,
    a symbolic link included, is already at `path` (O_EXCL does not follow links)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | getattr(os, "O_BINARY", 0), mode)


def is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def open_temporary(path: Path) -> tuple[int, Path]:
    """(descriptor, name) of a new temporary file for `path`, created exclusively beside it; a name some
    other writer holds is left alone and another one drawn."""
    for _ in range(100):
        tmp = temporary_path(path)
        try:
            return open_new(tmp), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def discard(tmp: Path) -> None:
    """Remove a temporary file this process created (never what a link points to)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to the new file `path` (created here, exclusively, no link followed) and flush it
    to the disk (the step a full disk fails)."""
    with open(open_new(path), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def replaced(tmp: Path, path: Path) -> None:
    """`os.replace(tmp, path)`: the moment the new version of `path` becomes visible."""
    os.replace(tmp, path)


def target_name(tmp: Path) -> str:
    """The name of the file a temporary file of temporary_path stands for (`.<name>.<pid>-<hex>.tmp`)."""
    name = Path(tmp).name
    if name.startswith(".") and name.endswith(".tmp"):
        return name[1:-4].rsplit(".", 1)[0]
    return name


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    for _ in range(100):
        tmp = temporary_path(path)
        try:
            write_synced(tmp, data)
            replaced(tmp, path)
            return
        except FileExistsError:  # the name is another writer's (or a planted link): not touched, another drawn
            continue
        except BaseException as err:  # a full disk, or Ctrl-C half-way: no temporary file is left
            discard(tmp)
            if isinstance(err, OSError):
                raise write_failed(path, err) from None
            raise
    raise write_failed(path, FileExistsError(errno.EEXIST, "no free temporary name in its directory"))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """`data` gzip-compressed, reproducibly: no file name and a zero time stamp in the header, so the same
    result gives the same bytes (and a committed file changes only when its content does)."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def write_result(path, obj, figure: tuple | None = None, compress: bool = False) -> Path:
    """An analysis command's outputs, once everything is computed: the JSON at `path` (its directory
    made), then `figure` = (png path, png bytes) where there is one; each write is atomic and said.

    `compress`: write `path` + ".gz" (gzip) instead, and remove a plain `path` left by an earlier run so
    that the reader (src.rundir.results.read_result, which reads X.json.gz where X.json is absent) never
    sees a stale one. For large results committed to the repository. Returns the path written."""
    from src.text import shown  # a run directory's name may hold bytes that are not UTF-8

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        packed = path if path.name.endswith(".gz") else path.with_name(path.name + ".gz")
        atomic_write_bytes(packed, gzip_bytes(json_bytes(obj)))
        if packed != path:
            path.unlink(missing_ok=True)
        path = packed
    else:
        atomic_write_json(path, obj)
    print(f"wrote {shown(path)}")
    if figure is not None and figure[1] is not None:
        atomic_write_bytes(figure[0], figure[1])
        print(f"wrote {shown(figure[0])}")
    return path


def torch_bytes(obj) -> memoryview:
    """torch.save into memory: the bytes of a checkpoint file, tensors copied off the device.

    Serializing to memory first keeps torch's zip writer away from the disk: on a full disk it
    raises RuntimeError("unexpected pos ..."), which hides the ENOSPC; the plain write of these
    bytes raises the real OSError, reported as "disk full" with the previous checkpoint intact.
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()


def atomic_save(obj, path) -> None:
    """torch.save, written atomically like every other file (see torch_bytes)."""
    atomic_write_bytes(path, torch_bytes(obj))


class WriteBehind:
    """Writes handed to a thread of their own, done one at a time in the order given, while the
    caller goes on (training, for a checkpoint: writing and flushing 128 MB takes tenths of a second).

    Each job is an atomic write, so a crash while one is under way leaves the previous file whole.
    `wait()` returns once every job handed over is done and raises the first one's error (a full
    disk: the same UserError as a write made in place); `drain()` waits without raising, for a
    caller already failing with an error of its own."""

    def __init__(self):
        self._pool = None
        self._jobs = []

    def submit(self, fn, *args) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind")
        self._jobs.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        jobs, self._jobs = self._jobs, []
        errors = [job.exception() for job in jobs]  # every job ends before any error is raised
        if self._pool is not None:  # no thread is left idle between checkpoints (nor one per run, in a sweep)
            self._pool.shutdown()
            self._pool = None
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def drain(self) -> None:
        try:
            self.wait()
        except Exception:
            pass


def write_files_together(directory, files: dict[str, bytes], manifest_name: str, schema: str) -> None:
    """Write the files of one output directory as a whole (src.data's splits), with a manifest.

    1. every file goes to a temporary file of its own (a failure or a signal here leaves the directory
       as it was, its previous manifest still true, and no temporary file);
    2. the manifest is written with `"complete": false` and the new files' sha256;
    3. each file is renamed into place, SIGINT and SIGTERM held back meanwhile (they act once the
       renames are done);
    4. the manifest becomes `"complete": true`.
    A reader (src.data.integrity.check_generated) refuses a directory whose manifest is not complete,
    or a listed file whose checksum differs: only a SIGKILL or a power cut between 2 and 4 can leave a
    mix of old and new files, and that mix is then refused, never used.
    """
    import signal
    import threading

    directory = Path(directory)
    temporaries: dict[str, Path] = {}
    try:
        for name, data in files.items():
            fd, tmp = open_temporary(directory / name)
            temporaries[name] = tmp
            with open(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        sums = {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in files.items()}
        manifest = {"schema": schema, "complete": False, "files": sums}
        atomic_write_json(directory / manifest_name, manifest)
        hold = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
        if hold:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for name, tmp in list(temporaries.items()):
                replaced(tmp, directory / name)
                del temporaries[name]
            atomic_write_json(directory / manifest_name, {**manifest, "complete": True})
        finally:
            if hold:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    except BaseException as err:
        for tmp in temporaries.values():
            discard(tmp)
        if isinstance(err, OSError) and not isinstance(err, FileExistsError):
            raise write_failed(directory, err) from None
        raise
