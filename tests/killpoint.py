"""Run a command that stops itself at a named point of its file writes (crash tests only).

    python -m tests.killpoint "<file>[@<n>]:<mid|after>[:<SIGNAL>]" -- <module> [args...]

runs `python -m <module> args...` with src.rundir.atomic's two write steps wrapped: on the n-th
(default first) write of the file named `<file>`, the process sends itself SIGNAL (default KILL)
half-way through the bytes, once they are on the disk (`mid`), or once the new file is in place
(`after`). A hard link swapped in under a name (checkpoint_best.pt) counts as a write of that name.
The crash tests use it to stop a real run at a chosen point, the same point on every run; the
production write path knows nothing of it.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

from src.rundir import atomic

USAGE = 'usage: python -m tests.killpoint "<file>[@<n>]:<mid|after>[:<SIGNAL>]" -- <module> [args...]'


def parse(spec: str) -> tuple[str, int, str, signal.Signals]:
    """`file[@n]:point[:SIGNAL]` -> (file, n, point, signal); a malformed spec is a usage error."""
    target, _, rest = spec.partition(":")
    point, _, sig = rest.partition(":")
    file, _, nth = target.partition("@")
    if not file or point not in ("mid", "after") or not (nth or "1").isdigit():
        raise SystemExit(f"bad kill point {spec!r}\n{USAGE}")
    try:
        signum = signal.Signals[f"SIG{sig or 'KILL'}"]
    except KeyError:
        raise SystemExit(f"bad kill point {spec!r}: no signal SIG{sig}\n{USAGE}") from None
    return file, int(nth or 1), point, signum


def install(spec: str) -> None:
    """Wrap src.rundir.atomic.write_synced and .replaced so that they stop the process at `spec`."""
    file, nth, point, signum = parse(spec)
    real_write, real_replace = atomic.write_synced, atomic.replaced
    writes: dict[str, int] = {}
    synced: set[Path] = set()  # temporary files written through write_synced, counted already

    def stop_if(name: str, where: str) -> None:
        if name == file and where == point and writes.get(name, 0) == nth:
            os.kill(os.getpid(), signum)

    def write_synced(path: Path, data: bytes) -> None:
        name = atomic.target_name(path)
        writes[name] = writes.get(name, 0) + 1
        synced.add(Path(path))
        if name == file and point == "mid" and writes[name] == nth:
            real_write(path, data[: len(data) // 2])  # half the bytes on the disk, then the signal
            stop_if(name, "mid")
            with open(path, "ab") as fh:  # a signal that does not end the process: finish the write
                fh.write(data[len(data) // 2:])
                fh.flush()
                os.fsync(fh.fileno())
            return
        real_write(path, data)

    def replaced(tmp: Path, path: Path) -> None:
        path = Path(path)
        if Path(tmp) not in synced:  # a linked or copied file swapped in: a write of its name
            writes[path.name] = writes.get(path.name, 0) + 1
        synced.discard(Path(tmp))
        real_replace(tmp, path)
        stop_if(path.name, "after")

    atomic.write_synced, atomic.replaced = write_synced, replaced
    # modules that took the functions by name before this point (`from src.rundir.atomic import replaced`)
    for module in list(sys.modules.values()):
        for attr, real, wrapped in (("write_synced", real_write, write_synced), ("replaced", real_replace, replaced)):
            if module is not atomic and getattr(module, attr, None) is real:
                setattr(module, attr, wrapped)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit(USAGE)
    spec, module, args = argv[0], argv[2], argv[3:]
    install(spec)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
