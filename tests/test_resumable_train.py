"""scripts/resumable_train.py: a run that outlasts one command is started, stopped before its budget,
and resumed in the same directory by the same command."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_train import REPO_ROOT, write_tiny_config


def load_script():
    spec = importlib.util.spec_from_file_location("resumable_train", REPO_ROOT / "scripts" / "resumable_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SLEEPER = ("import signal, sys, time\n"
           "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)) if sys.argv[1] == 'obey' else "
           "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
           "print('ready', flush=True)\n"
           "time.sleep(60)\n")


@pytest.mark.parametrize("mode", ["obey", "ignore"])
@pytest.mark.slow
def test_the_budget_ends_the_child_with_sigterm_then_sigkill(mode):
    script = load_script()
    tic = time.perf_counter()
    rc, stopped = script.run_with_budget([sys.executable, "-c", SLEEPER, mode], budget_s=1.5, grace_s=0.5)  # SIGTERM after 1 s
    took = time.perf_counter() - tic
    assert stopped and took < 10
    assert rc == (143 if mode == "obey" else -9)  # a child that ignores SIGTERM is killed after the grace


def test_run_directories_of_one_seed_and_of_several():
    script = load_script()
    assert script.run_dirs(["--config", "c.yaml", "--output-dir", "runs/x"]) == [Path("runs/x")]
    assert [str(p) for p in script.run_dirs(["--output-dir", "runs/x", "--seeds", "1,2"])] == ["runs/x/seed1",
                                                                                             "runs/x/seed2"]
    assert [str(p) for p in script.run_dirs(["--output-dir", "runs/x", "--seed", "42"])] == ["runs/x"]


@pytest.mark.slow
def test_a_paused_run_is_resumed_by_the_same_command_and_equals_an_uninterrupted_one(tmp_path):
    config = write_tiny_config(tmp_path, packing=True)
    common = ["--config", str(config), "--seed", "42", "--device", "cpu", "--no-progress"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}

    def call(*args):
        return subprocess.run([sys.executable, "scripts/resumable_train.py", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300, env={**env, "PYTHONPATH": str(REPO_ROOT)})

    whole = subprocess.run([sys.executable, "-m", "src.train", *common, "--output-dir", str(tmp_path / "whole")],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]
    part = ["--budget-s", "300", "--", *common, "--output-dir", str(tmp_path / "part")]
    first = call(*part, "--stop-after-epoch", "1")  # as a budget would: a checkpoint, then an end
    assert first.returncode == 75, first.stderr[-2000:]
    assert "starting" in first.stdout and "run the same command again" in first.stdout
    second = call(*part)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming" in second.stdout and "--resume" in second.stdout
    assert (tmp_path / "part" / "metrics.jsonl").read_bytes() == (tmp_path / "whole" / "metrics.jsonl").read_bytes()
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["status"] == "completed"
    third = call(*part)
    assert third.returncode == 0 and "finished already" in third.stdout
