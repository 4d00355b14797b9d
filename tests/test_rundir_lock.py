"""The run's lock: training holds it exclusively, analyses share it; a conflict is refused with the holder's PID."""

import os
import subprocess
import sys
import textwrap

import pytest

from src.analysis import evaluate
from src.errors import UserError, run_main
from src.rundir.directory import RunDir, hold_run_shared, release_shared

from tests.quickrun import quick_run
from tests.runs import REPO_ROOT, SUBPROCESS_ENV, assert_same_training, copy_run, expect_error, snapshot, train_argv, train_entry


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    return quick_run(root / "run", root / "data")


def holder(code: str):
    """A second process that takes a lock and says `ready` (ended by the caller)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code) + "\nprint('ready', flush=True)\n"
                             "import time; time.sleep(60)"], cwd=REPO_ROOT, env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc) -> None:
    proc.kill()
    proc.wait()


def test_an_analysis_is_refused_while_a_training_holds_the_run(tiny_run, capsys):
    before = sorted(p.name for p in tiny_run.iterdir() if p.name != ".lock")
    proc = holder(f"""
        import fcntl, os
        fd = os.open({str(tiny_run / '.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"PID {{os.getpid()}} on trainhost".encode())""")
    try:
        rc = run_main(evaluate.main, ["--run", str(tiny_run), "--device", "cpu", "--limit", "4"])
    finally:
        stop(proc)
    err = capsys.readouterr().err
    assert rc == 2 and f"--run {tiny_run}: locked by PID {proc.pid} on trainhost, a training that still writes" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tiny_run.iterdir() if p.name != ".lock") == before  # no eval.json


def test_a_training_is_refused_while_an_analysis_reads_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = holder(f"""
        from src.rundir.directory import hold_run_shared
        hold_run_shared({str(run)!r})""")
    try:
        with pytest.raises(UserError, match=rf"is in use by PID {proc.pid} \(reading it\)"):
            RunDir(str(run), resume=False)
    finally:
        stop(proc)
    RunDir(str(run), resume=False).release()  # the reader gone, the training may start


def test_analyses_share_the_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = holder(f"""
        from src.rundir.directory import hold_run_shared
        hold_run_shared({str(run)!r})""")
    try:
        hold_run_shared(run)  # a second reader is not refused
    finally:
        release_shared(run)
        stop(proc)


def test_the_shared_lock_is_released_when_the_command_ends(tiny_run, capsys):
    (tiny_run / ".lock").unlink(missing_ok=True)
    assert run_main(evaluate.main, ["--run", str(tiny_run), "--device", "cpu", "--limit", "4",
                                    "--out", str(tiny_run.parent / "eval_a.json")]) == 0
    from src.rundir import directory

    assert os.path.realpath(tiny_run) not in directory._SHARED
    assert not (tiny_run / ".lock").exists()  # the last reader removes the empty .lock it made


# ---------------------------------------------------------------------------- one training per run directory, through python -m src.train (docs/RELIABILITY.md)


def test_a_second_training_into_a_locked_directory_is_refused_with_the_holders_pid(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    holder = RunDir(run, resume=True)  # as a training in progress holds it
    try:
        before = {k: v for k, v in snapshot(run).items() if k != ".lock"}
        message = expect_error(train_entry(train_argv(tiny["config"], run, "--resume"), capsys),
                               f"--output-dir {run} is in use by PID ", "one training writes into a run directory at a time")
        import os
        assert f"PID {os.getpid()} on " in message
        assert {k: v for k, v in snapshot(run).items() if k != ".lock"} == before
        # a new run into a fresh directory that another process holds: refused the same way
        other = tmp_path / "other"
        held = RunDir(other, resume=False)
        expect_error(train_entry(train_argv(tiny["config"], other), capsys), f"--output-dir {other} is in use by PID ")
        held.release()
    finally:
        holder.release()
    assert not (run / ".lock").exists()
    assert train_entry(train_argv(tiny["config"], run, "--resume"), capsys)[0] == 0  # free again


def test_a_lock_left_by_a_dead_process_is_taken_over(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(f"PID {dead.stdout.strip()} on somehost\n")  # no process holds it any more
    rc, out, err = train_entry(train_argv(tiny["config"], run, "--resume"), capsys)
    assert rc == 0, err
    assert f"was left by PID {dead.stdout.strip()} on somehost, which no longer holds it" in err
    assert_same_training(tiny["finished"], run)
    assert not (run / ".lock").exists()
