"""Checks of the paths given on the command line, made up front, before anything is read or written.

A bad path would otherwise end late in a traceback (ENAMETOOLONG, NotADirectoryError, IsADirectoryError,
FileExistsError) or quietly do the wrong thing (`--output-dir ""` writes into the current directory).
Each check raises a one-line UserError, `<flag> <path>: what is wrong; what to do`, or returns the
absolute, resolved Path. The checks create nothing: whether a directory can be written is probed with a
temporary file in the nearest directory that exists, removed at once; the caller creates what it writes.

Pass the path as the user typed it (argparse `type=str`): `Path("")` is `Path(".")`, so an empty path can
no longer be told from the current directory once it has become a Path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from src.errors import UserError

NAME_MAX, PATH_MAX = 255, 4096  # where os.pathconf cannot tell (Windows, some network file systems)


def _limit(directory: Path, name: str, fallback: int) -> int:
    try:
        value = os.pathconf(directory, name)
    except (AttributeError, OSError, ValueError):
        return fallback
    return value if value > 0 else fallback


def _short(text: str) -> str:
    return text if len(text) <= 60 else f"{text[:28]}...{text[-28:]}"


def _existing_part(path: Path, where: str) -> Path:
    """The longest prefix of `path` that exists (the path itself if it does); a dangling symlink is an error."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            if candidate.is_symlink() and not candidate.exists():
                what = "is" if candidate == path else f"{candidate} is"
                raise UserError(f"{where}: {what} a symlink to {os.readlink(candidate)}, which does not exist; "
                                "create the target or remove the link")
            return candidate
    return path.anchor  # not reached: the root always exists


def _start(path, flag: str) -> tuple[Path, str, Path]:
    """The checks every path shares: not empty, every name and the whole path within the file system's limits.

    Returns the path (absolute, not resolved), the `<flag> <path>` that starts a message, and the
    longest prefix of the path that exists.
    """
    text = os.fspath(path)
    if text == "":
        raise UserError(f"{flag}: the path is empty; give a path ('.' for the current directory)")
    where = f"{flag} {text}"
    absolute = Path(text).absolute()
    existing = _existing_part(absolute, where)
    directory = existing if existing.is_dir() else existing.parent
    name_max = _limit(directory, "PC_NAME_MAX", NAME_MAX)
    for name in Path(text).parts:
        if len(os.fsencode(name)) > name_max:
            raise UserError(f"{flag} {_short(text)}: a name of {len(os.fsencode(name))} bytes ({_short(name)}), "
                            f"more than the {name_max} the file system allows; choose a shorter name")
    path_max = _limit(directory, "PC_PATH_MAX", PATH_MAX)
    length = len(os.fsencode(str(absolute)))
    if length >= path_max:  # PATH_MAX counts the terminating NUL byte
        raise UserError(f"{flag} {_short(text)}: the path is {length} bytes long, more than the {path_max - 1} "
                        "the file system allows; choose a shorter path")
    return absolute, where, existing


def _probe(directory: Path, what: str, where: str) -> None:
    """Create and remove a temporary file in `directory`; an OSError becomes a UserError."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    except OSError as err:
        raise UserError(f"{where}: {what} ({err.strerror or err}); choose another directory") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path, flag: str = "--output-dir") -> Path:
    """A directory that can be created (with its parents) or written into."""
    absolute, where, existing = _start(path, flag)
    if not existing.is_dir():
        if existing == absolute:
            raise UserError(f"{where}: is an existing file, not a directory; give a directory path "
                            "(it is created if missing)")
        raise UserError(f"{where}: {existing} is a file, not a directory, so nothing can be created under it; "
                        "choose another path")
    if existing == absolute:
        _probe(existing, "is not writable", where)
    else:
        _probe(existing, f"cannot be created: {existing} is not writable", where)
    return absolute.resolve()


def check_output_file(path, flag: str = "--out", example: str | None = None) -> Path:
    """A file that can be written (created, or replaced through a rename). Its directory may be
    missing when it can be created (the commands create it); `example` names a file to suggest
    when `path` is a directory (`--out runs/x: is a directory; give a file path such as runs/x/eval.json`)."""
    absolute, where, existing = _start(path, flag)
    if existing == absolute and absolute.is_dir():
        hint = f" such as {Path(os.fspath(path)) / example}" if example else ""
        raise UserError(f"{where}: is a directory, not a file; give a file path{hint}")
    if existing != absolute and not existing.is_dir():
        raise UserError(f"{where}: {existing} is a file, not a directory; choose another path")
    if existing in (absolute, absolute.parent):
        _probe(absolute.parent, f"cannot be written: {absolute.parent} is not writable", where)
    else:
        _probe(existing, f"cannot be created: {existing} is not writable", where)
    return absolute.resolve()


def check_input_file(path, flag: str) -> Path:
    """A file that exists and can be read."""
    absolute, where, existing = _start(path, flag)
    if existing != absolute:
        raise UserError(f"{where}: file not found; check the path")
    if absolute.is_dir():
        raise UserError(f"{where}: is a directory, not a file; give the path of a file")
    try:
        with open(absolute, "rb"):
            pass
    except OSError as err:
        raise UserError(f"{where}: cannot be read ({err.strerror or err}); check its permissions") from None
    return absolute.resolve()


def check_name(name: str, where: str) -> str:
    """A name taken from user input (a config's file stem) that becomes one directory or file name:
    not empty, not `.` or `..`, no path separator or NUL, so that DIR/<name> stays inside DIR."""
    bad = (name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
           or (os.altsep is not None and os.altsep in name))
    if bad:
        raise UserError(f"{where} {_short(name)!r} cannot name a directory inside the output directory (it is empty, "
                        "'.' or '..', or holds a path separator); rename the file")
    return name
