"""src.rundir.atomic: every writer has a temporary file of its own, created exclusively, no link followed."""

import json
import os
from pathlib import Path

import pytest

import src.rundir.atomic as atomic
from src.errors import UserError
from src.rundir.atomic import atomic_write_bytes, atomic_write_json, temporary_path
from src.rundir.directory import RunDir


def test_two_writers_of_one_file_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    """Writer B writes the whole file while writer A is half-way through its temporary file (two
    evaluations of one run). Each has its own temporary file: the result is one whole version,
    and neither writer fails (a shared `<name>.tmp` gave invalid JSON and a false "intact")."""
    target = tmp_path / "eval.json"
    real = atomic.write_synced
    calls = []

    def interleaved(path, data):
        calls.append(path)
        if len(calls) > 1:
            return real(path, data)
        with open(atomic.open_new(path), "wb") as fh:  # A: the first half of its bytes...
            fh.write(data[: len(data) // 2])
            fh.flush()
            atomic_write_json(target, {"writer": "B", "pad": "b" * 5000})  # ... B: all of its own ...
            fh.write(data[len(data) // 2:])  # ... A: the rest

    monkeypatch.setattr(atomic, "write_synced", interleaved)
    atomic_write_json(target, {"writer": "A", "pad": "a" * 5000})
    assert calls[0] != calls[1] and calls[0].parent == calls[1].parent == tmp_path
    assert json.loads(target.read_text())["writer"] == "A"  # the last one renamed into place, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_a_left_over_temporary_link_is_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("eval.json.tmp", ".eval.json.tmp"):
        (run / name).symlink_to(victim)
    atomic_write_json(run / "eval.json", {"ok": 1})
    assert victim.read_text() == "precious\n"
    assert json.loads((run / "eval.json").read_text()) == {"ok": 1}
    assert all((run / name).is_symlink() for name in ("eval.json.tmp", ".eval.json.tmp"))  # not ours: left alone


def test_a_taken_temporary_name_is_left_alone_and_another_drawn(tmp_path, monkeypatch):
    taken = tmp_path / ".out.json.taken.tmp"
    taken.symlink_to(tmp_path / "victim")
    names = iter([taken, tmp_path / ".out.json.free.tmp"])
    monkeypatch.setattr(atomic, "temporary_path", lambda path: next(names))
    atomic_write_bytes(tmp_path / "out.json", b"{}\n")
    assert (tmp_path / "out.json").read_bytes() == b"{}\n"
    assert taken.is_symlink() and not (tmp_path / "victim").exists()


def test_a_target_that_is_a_link_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "eval.json").symlink_to(victim)
    atomic_write_json(tmp_path / "eval.json", {"ok": 1})
    assert victim.read_text() == "precious\n" and not (tmp_path / "eval.json").is_symlink()


def test_temporary_names_stay_within_name_max_and_in_the_directory(tmp_path):
    long = tmp_path / ("x" * 250 + ".json")
    tmp = temporary_path(long)
    assert tmp.parent == tmp_path and len(os.fsencode(tmp.name)) <= 255
    assert temporary_path(long) != tmp
    atomic_write_bytes(long, b"1\n")
    assert long.read_bytes() == b"1\n"


def test_a_hard_linked_checkpoint_name_never_follows_a_planted_link(tmp_path):
    """RunDir.link (checkpoint_latest.pt beside checkpoint_epoch_N.pt) through a temporary name of its own."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = RunDir(str(tmp_path / "run"), resume=False)
    try:
        (run.path / "checkpoint_latest.pt.tmp").symlink_to(victim)
        atomic_write_bytes(run.path / "checkpoint_epoch_1.pt", b"weights")
        run.link("checkpoint_epoch_1.pt", "checkpoint_latest.pt")
    finally:
        run.release()
    assert victim.read_text() == "precious\n"
    assert (run.path / "checkpoint_latest.pt").read_bytes() == b"weights"
    assert os.path.samefile(run.path / "checkpoint_latest.pt", run.path / "checkpoint_epoch_1.pt")


def test_a_lock_file_that_is_a_link_is_refused_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match=r"\.lock is a symbolic link, which is never followed"):
        RunDir(str(run), resume=False)
    assert victim.read_text() == "precious\n"
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(tmp_path / "missing")  # a dangling one would be created through
    with pytest.raises(UserError, match="symbolic link"):
        RunDir(str(run), resume=False)
    assert not (tmp_path / "missing").exists()


def test_a_sweep_seed_lock_that_is_a_link_is_refused(tmp_path):
    from src.sweep import GroupLock

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / ".seed42.lock").symlink_to(victim)
    with pytest.raises(UserError, match="cannot be opened as a lock file"):
        GroupLock(Path(tmp_path), [42])
    assert victim.read_text() == "precious\n"
