"""Atomic writes, the one way every output file of the project is written.

Each writer goes through a temporary file beside the target and a rename: a crash, a full disk or
an error half-way leaves the previous file untouched (a reader sees the old file or the new one,
never half of one), and a failure is reported as a one-line UserError naming the file.
"""

from __future__ import annotations

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


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, err) from None


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_figure(fig, path, **savefig_kwargs) -> None:
    """A matplotlib figure rendered in memory first, so that no partial PNG is ever left behind."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file beside `path`, flushed to disk, then renamed over it."""
    import torch

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_failed(path, err) from None
        raise
