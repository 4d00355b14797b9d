"""src.rundir.atomic: every writer has a temporary file of its own, created exclusively, no link followed."""

import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

import src.rundir.atomic
import src.rundir.atomic as atomic
import src.train
from src.errors import UserError
from src.rundir.atomic import atomic_write_bytes, atomic_write_json, temporary_path
from src.rundir.checkpoint import load_checkpoint
from src.rundir.directory import RunDir
from tests.runs import (
    CRASH_EPOCHS,
    assert_same_training,
    cli,
    expect_error,
    killed_run,
    load_all_checkpoints,
    resume,
    run_cli,
    train_argv,
)


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


# ---------------------------------------------------------------------------- crash 1: SIGKILL at a named point of a write, then --resume (docs/RELIABILITY.md)


# where a SIGKILL lands -> the checkpoint_latest epoch it leaves behind (one checkpoint per epoch)
KILL_POINTS = {
    "metrics.jsonl@3:after": 2,            # epoch 3 evaluated, its checkpoint not yet written
    "metrics.jsonl@5:mid": 4,              # half-way through rewriting the log
    "checkpoint_epoch_4.pt:mid": 3,        # half-way through a checkpoint
    "checkpoint_latest.pt@4:after": 4,     # latest in place, best not yet linked
    "checkpoint_epoch_8.pt:after": 7,      # the last epoch's checkpoint written, latest not yet
}


@pytest.mark.slow
@pytest.mark.parametrize("point, latest_epoch", list(KILL_POINTS.items()), ids=list(KILL_POINTS))
def test_sigkill_at_a_named_point_then_resume_matches_uninterrupted_run(point, latest_epoch, crash, tmp_path):
    run = tmp_path / "killed"
    proc = killed_run(crash, run, point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run / "summary.json").exists()
    assert load_all_checkpoints(run)["checkpoint_latest.pt"]["epoch"] == latest_epoch  # every checkpoint loads
    if point.endswith(":mid"):  # the half-written temporary file is there, and unreadable
        name = point.split("@")[0].split(":")[0]
        halves = list(run.glob(f".{name}.*.tmp"))  # the writer's own temporary file
        assert len(halves) == 1 and halves[0].is_file()
        half = halves[0]
        if half.suffix == ".tmp" and half.stem.endswith(".pt"):
            with pytest.raises(Exception):
                torch.load(half, weights_only=True)
    assert (run / ".lock").read_text().startswith("PID ")  # left behind by the killed process

    proc = resume(crash, run)

    assert "no longer holds it (it was killed); taking it over" in proc.stderr

    assert_same_training(crash["reference"], run)
    assert len(load_all_checkpoints(run)) == CRASH_EPOCHS + 2  # every epoch, latest, best
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp")), "temporary files are removed on resume"
    assert not (run / ".lock").exists(), "the lock is released at the end"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_sigkill_after_the_last_checkpoint_resume_finishes_without_training(crash, tmp_path):
    """Failure 1 of the issue: killed after the final checkpoint_latest.pt, before checkpoint_best.pt
    and summary.json. --resume finishes the run (best, summary) and trains no step."""
    run = tmp_path / "killed_at_the_end"
    proc = killed_run(crash, run, f"checkpoint_latest.pt@{CRASH_EPOCHS}:after")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_checkpoint(run / "checkpoint_latest.pt")["epoch"] == CRASH_EPOCHS
    assert not (run / "summary.json").exists()
    reference_best = load_checkpoint(crash["reference"] / "checkpoint_best.pt")
    best_was_last = reference_best["epoch"] == CRASH_EPOCHS
    if best_was_last:  # the kill came before checkpoint_best.pt was linked: it is stale
        assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] < CRASH_EPOCHS

    proc = run_cli(["-m", "src.train", *train_argv(crash["config"], run, "--resume")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "Finishing the run" in proc.stdout and "epoch 1/" not in proc.stdout + proc.stderr

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == CRASH_EPOCHS
    assert summary["steps"] == json.loads((crash["reference"] / "summary.json").read_text())["steps"]
    assert load_checkpoint(run / "checkpoint_best.pt")["epoch"] == reference_best["epoch"]
    assert_same_training(crash["reference"], run)
    # and now it is finished: a second --resume says so
    proc = run_cli(["-m", "src.train", *train_argv(crash["config"], run, "--resume")])
    assert proc.returncode == 2 and "already finished" in proc.stderr


# ---------------------------------------------------------------------------- crash 2: the disk fills up (docs/RELIABILITY.md)


def full_disk_on(call: int, real, write_half):
    """A replacement for a write function that fails like a full disk on its `call`-th use, after
    writing part of its data (as a real ENOSPC does)."""
    calls = [0]

    def write(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            write_half(*args)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    return write


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB file system (tmpfs), where mounting one is allowed (root, Linux); else None."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True).returncode == 0
    yield mount_point if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_disk(directory: Path, leave: int) -> Path:
    """Fill the file system of `directory` up to `leave` free bytes; returns the filler file."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    size = st.f_bavail * st.f_frsize - leave
    with open(filler, "wb") as fh:
        fh.truncate(0)
        chunk = b"\0" * 2**20
        while size > 0:
            size -= fh.write(chunk[: min(size, len(chunk))])
    return filler


# tmpfs-<KiB>: a real full disk with that much room left when epoch 3's checkpoint is written (where
# the disk runs out within torch's zip records decides whether torch.save straight into the file
# raised OSError or RuntimeError "unexpected pos": with this tiny model, 24 and 48 KiB gave the latter)
@pytest.mark.parametrize("disk", ["tmpfs-16", "tmpfs-24", "tmpfs-48", "patched_write"])
def test_full_disk_while_writing_a_checkpoint_keeps_previous_checkpoints(disk, small_disk, tiny, tmp_path, capsys,
                                                                         monkeypatch):
    """The disk fills up while epoch 3's checkpoint is written. On a real full file system (a small
    tmpfs), torch.save straight into the file used to raise RuntimeError "unexpected pos" with a
    traceback; where no tmpfs can be mounted, the write raises the real ENOSPC half-way through."""
    if disk.startswith("tmpfs") and small_disk is None:
        pytest.skip("mounting a tmpfs is not allowed here; the patched_write case covers the same path")
    run = (small_disk if disk.startswith("tmpfs") else tmp_path) / "full"
    assert cli(src.train.main, train_argv(tiny["config"], run, "--stop-after-epoch", "2"), capsys)[0] == 0
    if disk.startswith("tmpfs"):
        filler = fill_disk(run, leave=int(disk.split("-")[1]) * 1024)  # room for a metrics row, not for a checkpoint
    else:
        real = src.rundir.atomic.write_synced

        def write_synced(path, data):
            if src.rundir.atomic.target_name(path) == "checkpoint_epoch_3.pt":  # its temporary file, whatever its name
                real(path, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(path, data)

        monkeypatch.setattr(src.rundir.atomic, "write_synced", write_synced)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run, "--resume"), capsys),
                 f"{run / 'checkpoint_epoch_3.pt'}: could not be written (No space left on device",
                 "the previous version, if any, is intact", "The disk is full", "--resume")
    monkeypatch.undo()
    checkpoints = load_all_checkpoints(run)
    assert sorted(checkpoints) == ["checkpoint_best.pt", "checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt",
                                   "checkpoint_latest.pt"]
    assert checkpoints["checkpoint_latest.pt"]["epoch"] == 2
    assert not list(run.glob("*.tmp")), "the half-written temporary file is removed"
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["status"] == "stopped_after_epoch"  # epoch 2's, untouched

    # space freed: the run continues and ends exactly where a run on a roomy disk ends
    if disk.startswith("tmpfs"):
        filler.unlink()
    assert cli(src.train.main, train_argv(tiny["config"], run, "--resume"), capsys)[0] == 0
    assert_same_training(tiny["finished"], run)


@pytest.mark.parametrize("name, nth", [("metrics.jsonl", 3), ("summary.json", 1)])
def test_full_disk_while_writing_metrics_or_summary_leaves_no_half_written_file(name, nth, tiny, tmp_path, capsys,
                                                                                monkeypatch):
    """RunDir writes metrics.jsonl (after each evaluation) and summary.json through a temporary file
    and a rename. The disk fills up during the 3rd metrics write / the summary write: the file
    keeps its previous whole content (or stays absent), and no temporary file is left."""
    run = tmp_path / "full"
    real = src.rundir.atomic.write_synced
    writes = []

    def write_synced(path, data):
        if src.rundir.atomic.target_name(path) == name:  # its temporary file, whatever its name
            writes.append(data)
            if len(writes) == nth:
                real(path, data[: len(data) // 2])  # a partial write, then the error
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(src.rundir.atomic, "write_synced", write_synced)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run), capsys),
                 f"{run / name}: could not be written (No space left on device", "The disk is full")
    monkeypatch.undo()
    assert len(writes) == nth
    assert not list(run.glob("*.tmp")), "the half-written temporary file is removed"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # whole rows only
    done = nth - 1 if name == "metrics.jsonl" else 4
    assert [r["epoch"] for r in rows] == list(range(1, done + 1))
    assert not (run / "summary.json").exists()
    assert load_all_checkpoints(run)["checkpoint_latest.pt"]["epoch"] == done


# ---------------------------------------------------------------------------- checkpoints written behind the training


def test_write_behind_runs_jobs_in_order_and_raises_the_first_error_once_all_are_done():
    done = []

    def job(name, fail=False):
        done.append(name)
        if fail:
            raise UserError(f"{name}: could not be written")

    writes = atomic.WriteBehind()
    writes.wait()  # nothing handed over: returns at once
    for name, fail in [("a", False), ("b", True), ("c", True), ("d", False)]:
        writes.submit(job, name, fail)
    with pytest.raises(UserError, match="^b: could not be written"):
        writes.wait()
    assert done == ["a", "b", "c", "d"]  # every job ran, in order, before the error was raised
    writes.wait()  # the errors were reported once
    writes.submit(job, "e", True)
    writes.drain()  # waits, raises nothing
    assert done[-1] == "e"


def test_a_checkpoint_handed_to_the_writer_is_the_state_when_it_was_handed_over(tmp_path):
    """save_checkpoint(behind=True) serializes at once: a change after the call is not in the file."""
    run = RunDir(tmp_path / "run", resume=False)
    weights = torch.zeros(3)
    run.save_checkpoint(["checkpoint_epoch_1.pt", "checkpoint_latest.pt"], {"w": weights}, behind=True)
    weights += 1
    run.writes.wait()
    for name in ("checkpoint_epoch_1.pt", "checkpoint_latest.pt"):
        assert torch.equal(torch.load(run.path / name, weights_only=True)["w"], torch.zeros(3))
    assert os.path.samefile(run.path / "checkpoint_epoch_1.pt", run.path / "checkpoint_latest.pt")


def test_a_checkpoint_that_fails_behind_the_training_stops_the_run_at_the_next_epoch_end(tiny, tmp_path, capsys,
                                                                                      monkeypatch):
    """Epoch 1's checkpoint fails on a full disk while epoch 2 trains: the error is reported when epoch 2
    ends, before its metrics row, so the run directory reads as a run killed after epoch 1's row."""
    run = tmp_path / "full"
    real = src.rundir.atomic.write_synced

    def write_synced(path, data):
        if src.rundir.atomic.target_name(path) == "checkpoint_epoch_1.pt":
            real(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(src.rundir.atomic, "write_synced", write_synced)
    expect_error(cli(src.train.main, train_argv(tiny["config"], run), capsys),  # a checkpoint every epoch
                 f"{run / 'checkpoint_epoch_1.pt'}: could not be written (No space left on device", "The disk is full")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert not list(run.glob("*.pt")) and not list(run.glob(".*.tmp"))
    assert not (run / "summary.json").exists()
