"""Atomic writes, the one way every output file of the project is written.

Each writer goes through a temporary file beside the target and a rename: a crash, a full disk or
an error half-way leaves the previous file untouched (a reader sees the old file or the new one,
never half of one), and a failure is reported as a one-line UserError naming the file.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

from src.errors import write_failed


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and flush it to the disk (the step a full disk fails)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def replaced(tmp: Path, path: Path) -> None:
    """`os.replace(tmp, path)`: the moment the new version of `path` becomes visible."""
    os.replace(tmp, path)


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write_synced(tmp, data)
        replaced(tmp, path)
    except BaseException as err:  # a full disk, or Ctrl-C half-way: no temporary file is left
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_failed(path, err) from None
        raise


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
    print(f"wrote {path}")
    if figure is not None and figure[1] is not None:
        atomic_write_bytes(figure[0], figure[1])
        print(f"wrote {figure[0]}")
    return path


def atomic_save(obj, path) -> None:
    """torch.save into memory, then written atomically like every other file.

    Serializing to memory first keeps torch's zip writer away from the disk: on a full disk it
    raises RuntimeError("unexpected pos ..."), which hides the ENOSPC; the plain write below
    raises the real OSError, reported as "disk full" with the previous checkpoint intact.
    """
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())
