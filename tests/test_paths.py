"""src/rundir/paths.py: bad paths on the command line are one clear line, never a traceback.

The checks of src/rundir/paths.py are tested directly on files made in tmp_path; then `python -m src.data --out`
is tested through `run_main(main, argv)`, as its __main__ block runs it, as the other entry-point tests do
(tests/runs.py). Every case checks that nothing was written. docs/RELIABILITY.md lists the cases.
"""

import errno
import os
import tempfile
from pathlib import Path

import pytest

import src.data
import src.data.cli
import src.rundir.paths
from src.errors import UserError
from src.rundir.paths import check_input_file, check_output_dir, check_output_file
from tests.runs import cli  # the one runner of an entry point, as its __main__ runs it

LONG_NAME = "x" * 300  # longer than any file system's NAME_MAX (255 on Linux, macOS and Windows)
is_root = hasattr(os, "geteuid") and os.geteuid() == 0
needs_permissions = pytest.mark.skipif(is_root, reason="root writes and reads despite the permission bits")


# ---------------------------------------------------------------------------- helpers


def expect_error(result, *fragments, code=2) -> str:
    """The run failed with `code`, no traceback, and one line `error: ...` holding every fragment."""
    rc, out, err = result
    assert rc == code, f"exit status {rc}, expected {code}; stderr:\n{err}\nstdout tail:\n{out[-2000:]}"
    assert "Traceback" not in out + err, err
    assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err
    message = err.strip()
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in the message:\n{message}"
    return message


def rejects(check, path, *fragments, **kwargs) -> str:
    """`check(path)` raises a one-line UserError holding every fragment."""
    with pytest.raises(UserError) as info:
        check(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in the message:\n{message}"
    return message


def listing(directory: Path) -> list[str]:
    """Every path under `directory` (to prove a check created nothing)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def deep_path(root: Path) -> Path:
    """A path whose names are each allowed but which is longer than PATH_MAX (4096 on Linux) as a whole."""
    return root.joinpath(*["d" * 200] * 25)


def dangling_link(tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "gone"
    link = tmp_path / "link"
    link.symlink_to(target)
    return link, target


def fail_probe(monkeypatch):
    """Make the writability probe fail as a read-only directory does (root ignores the permission bits)."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)


# ---------------------------------------------------------------------------- check_output_dir


def test_output_dir_accepts_existing_and_new_directories_and_creates_nothing(tmp_path):
    (tmp_path / "existing").mkdir()
    assert check_output_dir(tmp_path / "existing") == (tmp_path / "existing").resolve()
    assert check_output_dir(str(tmp_path / "new" / "deeper")) == (tmp_path / "new" / "deeper").resolve()
    assert check_output_dir(".") == Path.cwd().resolve()
    assert listing(tmp_path) == ["existing"]  # no probe file left, nothing created


def test_output_dir_empty_path():
    rejects(check_output_dir, "", "--output-dir: the path is empty", "give a path")
    rejects(check_output_dir, "", "--out: the path is empty", flag="--out")


def test_output_dir_name_too_long(tmp_path):
    path = tmp_path / LONG_NAME / "run"
    rejects(check_output_dir, path, "--output-dir", "a name of 300 bytes", "more than the 255", "shorter name")
    assert listing(tmp_path) == []


def test_output_dir_whole_path_too_long(tmp_path):
    rejects(check_output_dir, deep_path(tmp_path), "--output-dir", "the path is", "more than the", "shorter path")
    assert listing(tmp_path) == []


def test_output_dir_dangling_symlink(tmp_path):
    link, target = dangling_link(tmp_path)
    rejects(check_output_dir, link, f"--output-dir {link}: is a symlink to {target}, which does not exist",
            "remove the link")
    rejects(check_output_dir, link / "run", f"--output-dir {link / 'run'}: {link} is a symlink to {target}, "
            "which does not exist")
    assert not target.exists()


def test_output_dir_is_an_existing_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("keep me")
    rejects(check_output_dir, path, f"--output-dir {path}: is an existing file, not a directory", "directory path")
    assert path.read_text() == "keep me"


def test_output_dir_parent_component_is_a_file(tmp_path):
    parent = tmp_path / "file.txt"
    parent.write_text("keep me")
    path = parent / "sub" / "run"
    rejects(check_output_dir, path, f"--output-dir {path}: {parent} is a file, not a directory", "another path")
    assert parent.read_text() == "keep me"


def test_output_dir_not_writable_is_translated(tmp_path, monkeypatch):
    (tmp_path / "existing").mkdir()
    fail_probe(monkeypatch)
    rejects(check_output_dir, tmp_path / "existing", "is not writable (Permission denied)", "another directory")
    rejects(check_output_dir, tmp_path / "new", f"cannot be created: {tmp_path} is not writable (Permission denied)")


@needs_permissions
def test_output_dir_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rejects(check_output_dir, locked, "is not writable (Permission denied)")
        rejects(check_output_dir, locked / "run", f"cannot be created: {locked} is not writable")
    finally:
        locked.chmod(0o755)


# ---------------------------------------------------------------------------- check_output_file


def test_output_file_accepts_new_and_existing_files_and_creates_nothing(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    assert check_output_file(tmp_path / "old.json") == (tmp_path / "old.json").resolve()
    assert check_output_file(str(tmp_path / "new.json")) == (tmp_path / "new.json").resolve()
    assert listing(tmp_path) == ["old.json"]


def test_output_file_empty_path():
    rejects(check_output_file, "", "--out: the path is empty", "give a path")


def test_output_file_name_too_long(tmp_path):
    rejects(check_output_file, tmp_path / (LONG_NAME + ".json"), "--out", "a name of 305 bytes", "more than the 255")


def test_output_file_whole_path_too_long(tmp_path):
    rejects(check_output_file, deep_path(tmp_path) / "eval.json", "--out", "the path is", "more than the")


def test_output_file_dangling_symlink(tmp_path):
    link, target = dangling_link(tmp_path)
    rejects(check_output_file, link, f"--out {link}: is a symlink to {target}, which does not exist")


def test_output_file_is_an_existing_directory(tmp_path):
    rejects(check_output_file, tmp_path, f"--out {tmp_path}: is a directory, not a file", "give a file path")


def test_output_file_parent_missing_is_accepted_where_it_can_be_created(tmp_path, monkeypatch):
    """The commands create the directory of their output: a missing one is fine, if it can be made."""
    path = tmp_path / "missing" / "deeper" / "eval.json"
    assert check_output_file(path) == path.resolve()
    assert listing(tmp_path) == []
    fail_probe(monkeypatch)
    rejects(check_output_file, path, f"--out {path}: cannot be created: {tmp_path} is not writable")


def test_output_file_is_a_directory_suggests_a_file_in_it(tmp_path):
    rejects(check_output_file, tmp_path, f"--out {tmp_path}: is a directory, not a file",
            f"give a file path such as {tmp_path / 'eval.json'}", example="eval.json")


def test_one_output_file_check_for_every_command():
    """src.cli offers the analysis commands the check of src.rundir.paths itself, not a second one."""
    import src.cli

    assert src.cli.check_output_file is check_output_file


def test_output_file_parent_is_a_file(tmp_path):
    parent = tmp_path / "file.txt"
    parent.write_text("")
    path = parent / "eval.json"
    rejects(check_output_file, path, f"--out {path}: {parent} is a file, not a directory")


def test_output_file_parent_not_writable_is_translated(tmp_path, monkeypatch):
    fail_probe(monkeypatch)
    rejects(check_output_file, tmp_path / "eval.json", f"{tmp_path} is not writable (Permission denied)")


# ---------------------------------------------------------------------------- check_input_file


def test_input_file_accepted(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    assert check_input_file(tmp_path / "a.jsonl", "--data") == (tmp_path / "a.jsonl").resolve()


def test_input_file_empty_path():
    rejects(check_input_file, "", "--data: the path is empty", flag="--data")


def test_input_file_missing(tmp_path):
    path = tmp_path / "missing.jsonl"
    rejects(check_input_file, path, f"--data {path}: file not found", "check the path", flag="--data")


def test_input_file_name_too_long(tmp_path):
    rejects(check_input_file, tmp_path / LONG_NAME, "--data", "a name of 300 bytes", flag="--data")


def test_input_file_is_a_directory(tmp_path):
    rejects(check_input_file, tmp_path, f"--data {tmp_path}: is a directory, not a file", flag="--data")


def test_input_file_dangling_symlink(tmp_path):
    link, target = dangling_link(tmp_path)
    rejects(check_input_file, link, f"--data {link}: is a symlink to {target}, which does not exist", flag="--data")


def test_input_file_unreadable_is_translated(tmp_path, monkeypatch):
    path = tmp_path / "a.jsonl"
    path.write_text("{}\n")
    real_open = open

    def refuse(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    rejects(check_input_file, path, f"--data {path}: cannot be read (Permission denied)", "permissions",
            flag="--data")


@needs_permissions
def test_input_file_without_read_permission(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("{}\n")
    path.chmod(0o000)
    try:
        rejects(check_input_file, path, "cannot be read (Permission denied)", flag="--data")
    finally:
        path.chmod(0o644)


# ---------------------------------------------------------------------------- python -m src.data --out


def test_data_out_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "data.txt"
    out.write_text("keep me")
    expect_error(cli(src.data.cli.main, ["--out", out], capsys), f"--out {out}: is an existing file, not a directory")
    assert out.read_text() == "keep me"


def test_data_out_empty(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where `--out ""` used to write its six files
    expect_error(cli(src.data.cli.main, ["--out", ""], capsys), "--out: the path is empty")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("case", ["name_too_long", "path_too_long", "dangling_symlink", "parent_is_a_file",
                                  "not_writable"])
def test_data_out_bad_directory(case, tmp_path, capsys, monkeypatch):
    if case == "name_too_long":
        out, says = tmp_path / LONG_NAME, "a name of 300 bytes"
    elif case == "path_too_long":
        out, says = deep_path(tmp_path), "more than the"
    elif case == "dangling_symlink":
        (tmp_path / "link").symlink_to(tmp_path / "gone")
        out, says = tmp_path / "link", f"is a symlink to {tmp_path / 'gone'}, which does not exist"
    elif case == "parent_is_a_file":
        (tmp_path / "file.txt").write_text("")
        out, says = tmp_path / "file.txt" / "data", f"{tmp_path / 'file.txt'} is a file, not a directory"
    else:
        fail_probe(monkeypatch)
        out, says = tmp_path / "data", "is not writable (Permission denied)"
    before = listing(tmp_path)
    expect_error(cli(src.data.cli.main, ["--out", out], capsys), "--out", says)
    assert listing(tmp_path) == before
