"""Checks that the data files a command reads belong together, before they are used.

    check_generated(path)     a file src.data wrote is whole and of the generation its directory's
                              manifest (data.manifest.json) names: the manifest complete, the checksum
                              the same. A directory without a manifest (the shipped data/, files made
                              by hand) is not refused here: check_pairs still applies.
    check_pairs(flat, matched)  line i of the matched file is the twin of line i of the flat file: the
                              same expression with brackets added, so that "paired" comparisons
                              (docs/DESIGN.md section 5) pair what they claim to.

A failure is a UserError naming the file (and line) and the command that remakes the files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from src.errors import UserError

MANIFEST = "data.manifest.json"
MANIFEST_SCHEMA = "data_manifest/1"
MAX_MANIFEST = 1 << 20  # bytes: a manifest lists a few files



def file_sha256(path) -> tuple[str, int]:
    """(sha256 hex digest, size in bytes) of a file, read in blocks: the one checksum of data files."""
    digest, size = hashlib.sha256(), 0
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size

def read_small_json(path: Path, limit: int, fix: str) -> object:
    """The JSON of a small file (a manifest), read at most `limit` bytes deep: too large, undecodable or
    too deeply nested is a UserError naming the file, ending with `fix`."""
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(limit + 1)
        if len(raw) > limit:
            raise ValueError(f"larger than {limit:,} bytes")
        return json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise UserError(f"{path}: unreadable ({' '.join(str(err).split())[:120]}); {fix}") from None


def _regenerate(directory: Path) -> str:
    return f"generate the files again with `python -m src.data --out {directory}` (with the seed used before)"


def read_manifest(directory: Path) -> dict | None:
    """The manifest of a generated directory, checked; None when there is none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    manifest = read_small_json(path, MAX_MANIFEST, _regenerate(path.parent))
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA or not isinstance(files, dict)
            or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values())):
        raise UserError(f"{path}: not a data manifest of schema {MANIFEST_SCHEMA}; {_regenerate(path.parent)}")
    if manifest.get("complete") is not True:
        raise UserError(f"{path.parent}: its generation was interrupted before every file was in place (the "
                        f"manifest says incomplete), so its files may mix two generations; {_regenerate(path.parent)}")
    return manifest


def check_generated(path) -> None:
    """`path` as its directory's manifest lists it (nothing to check where there is no manifest)."""
    path = Path(path)
    manifest = read_manifest(path.parent)
    if manifest is None or path.name not in manifest["files"]:
        return
    try:
        sha256, _ = file_sha256(path)
    except OSError:
        return  # the reader reports a missing or unreadable file itself
    if sha256 != manifest["files"][path.name]["sha256"]:
        raise UserError(f"{path}: not the file its directory's {MANIFEST} lists (its sha256 differs): it was changed "
                        f"or comes from another generation; {_regenerate(path.parent)}")


def unbracketed(expr: str) -> str:
    return expr.replace("(", "").replace(")", "")


def check_pairs(flat_path, matched_path, limit: int | None = None) -> None:
    """Line i of `matched_path` is line i of `flat_path` with brackets added (the first `limit` lines).
    A missing file is left to the reader, which says how to make it."""
    flat_path, matched_path = Path(flat_path), Path(matched_path)
    if flat_path.exists() and matched_path.exists() and flat_path.samefile(matched_path):
        return  # one file as both splits (a smoke-test config): no pairs to check
    exprs = []
    if not (flat_path.is_file() and matched_path.is_file()):
        return
    for path in (flat_path, matched_path):
        check_generated(path)
        lines = []
        try:
            with path.open("rb") as fh:
                for line_no, raw in enumerate(fh, start=1):
                    if limit is not None and line_no > limit:
                        break
                    try:
                        obj = json.loads(raw)
                    except (ValueError, RecursionError):
                        obj = None
                    expr = obj.get("expr") if isinstance(obj, dict) else None
                    if not isinstance(expr, str) or len(expr) > 1000:
                        raise UserError(f"{path}:{line_no}: not a record with an expression; fix or regenerate the file")
                    lines.append(expr)
        except OSError as err:
            raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
        exprs.append(lines)
    flat, matched = exprs
    if len(flat) != len(matched):
        raise UserError(f"{matched_path}: {len(matched)} lines, but its pairs' partner {flat_path} has {len(flat)}: "
                        f"line i of one is the twin of line i of the other; {_regenerate(matched_path.parent)}")
    for line_no, (a, b) in enumerate(zip(flat, matched), start=1):
        if unbracketed(b) != a:
            raise UserError(f"{matched_path}:{line_no}: {b[:60]!r} is not the twin of {flat_path}:{line_no} "
                            f"{a[:60]!r} (the same expression with brackets added): the two files are not pairs; "
                            f"{_regenerate(matched_path.parent)}")
