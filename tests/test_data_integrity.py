"""src.data's output as a whole (a manifest readers check), pair files checked pair by pair, signals."""

import functools
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import src.rundir.atomic as atomic
from src.analysis import evaluate
from src.data import generate_splits, load_jsonl, write_splits
from src.data.integrity import MANIFEST, check_pairs
from src.errors import UserError, run_main

from tests.quickrun import quick_run

REPO_ROOT = Path(__file__).resolve().parent.parent
SMALL = ("pilot_test_flat", "pilot_test_paren")  # MATCHED_SPLIT comes with test_flat


@functools.cache
def _small_splits(seed):
    return generate_splits(seed, only=SMALL)


def small_splits(seed):
    """The two small splits of `seed`, generated once per seed (the generator is deterministic:
    tests/test_data.py::test_generator_is_deterministic); each caller gets its own lists."""
    return {name: list(records) for name, records in _small_splits(seed).items()}


def test_a_generation_interrupted_half_way_is_refused_by_readers(tmp_path, monkeypatch):
    write_splits(small_splits(1), tmp_path)
    old = {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl")}
    real, done = atomic.replaced, []

    def replaced(tmp, path):  # a kill after the first file is in place
        if path.name.endswith(".jsonl"):
            if done:
                raise KeyboardInterrupt
            done.append(path)
        return real(tmp, path)

    monkeypatch.setattr(atomic, "replaced", replaced)
    with pytest.raises(KeyboardInterrupt):
        write_splits(small_splits(2), tmp_path)
    monkeypatch.undo()
    changed = [n for n, data in old.items() if (tmp_path / n).read_bytes() != data]
    assert len(changed) == 1  # a mix of two generations on the disk ...
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # ... but no temporary file
    for name in old:  # ... and never used
        with pytest.raises(UserError, match="its generation was interrupted"):
            load_jsonl(tmp_path / name, 32)
    write_splits(small_splits(2), tmp_path)  # generated again: whole
    assert len(load_jsonl(tmp_path / "pilot_test_flat.jsonl", 32)) == 2000


def test_a_file_changed_after_generation_is_refused(tmp_path):
    write_splits(small_splits(1), tmp_path)
    other = tmp_path / "other"
    write_splits(small_splits(2), other)
    (tmp_path / "pilot_test_paren.jsonl").write_bytes((other / "pilot_test_paren.jsonl").read_bytes())
    with pytest.raises(UserError, match=r"pilot_test_paren.jsonl: not the file its directory's data.manifest.json"):
        load_jsonl(tmp_path / "pilot_test_paren.jsonl", 32)
    assert json.loads((tmp_path / MANIFEST).read_text())["complete"] is True


def test_pair_files_are_checked_pair_by_pair(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_splits(small_splits(1), a)
    write_splits(small_splits(2), b)
    check_pairs(a / "pilot_test_flat.jsonl", a / "pilot_test_paren_matched.jsonl")
    mixed = tmp_path / "mixed"  # made by hand, no manifest: the pairs are still checked
    mixed.mkdir()
    (mixed / "pilot_test_flat.jsonl").write_bytes((a / "pilot_test_flat.jsonl").read_bytes())
    (mixed / "pilot_test_paren_matched.jsonl").write_bytes((b / "pilot_test_paren_matched.jsonl").read_bytes())
    with pytest.raises(UserError, match=r"pilot_test_paren_matched.jsonl:1: .* is not the twin of .*"
                                        r"pilot_test_flat.jsonl:1"):
        check_pairs(mixed / "pilot_test_flat.jsonl", mixed / "pilot_test_paren_matched.jsonl")
    lines = (a / "pilot_test_paren_matched.jsonl").read_text().splitlines()
    (mixed / "pilot_test_paren_matched.jsonl").write_text("\n".join(lines[:5] + lines[6:]) + "\n")  # one pair lost
    with pytest.raises(UserError, match="1999 lines, but its pairs' partner"):
        check_pairs(mixed / "pilot_test_flat.jsonl", mixed / "pilot_test_paren_matched.jsonl")


def test_evaluate_refuses_unpaired_pair_files_in_a_data_dir(tmp_path, capsys):
    run = quick_run(tmp_path / "run", tmp_path / "data")
    a, b = tmp_path / "a", tmp_path / "fresh"
    write_splits(small_splits(1), a)
    b.mkdir()
    for name in ("pilot_test_flat.jsonl", "pilot_test_paren.jsonl"):
        (b / name).write_bytes((a / name).read_bytes())
    write_splits(small_splits(2), tmp_path / "c")
    (b / "pilot_test_paren_matched.jsonl").write_bytes((tmp_path / "c" / "pilot_test_paren_matched.jsonl").read_bytes())
    rc = run_main(evaluate.main, ["--run", str(run), "--device", "cpu", "--limit", "8", "--data-dir", str(b)])
    err = capsys.readouterr().err
    assert rc == 2 and "is not the twin of" in err and "Traceback" not in err
    assert not (run / "eval_fresh.json").exists()


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_generation_stopped_by_a_signal_leaves_no_workers_and_no_temporary_files(sig, tmp_path):
    out = tmp_path / "gen"
    proc = subprocess.Popen([sys.executable, "-m", "src.data", "--train-size", "2000000", "--processes", "2",
                             "--out", str(out)], cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, workers = time.time(), []
    while time.time() - start < 60 and not (len(workers) >= 2 and glob.glob(str(out / ".*.tmp"))):
        workers = children(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the generation started its workers"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"interrupted by {signal.Signals(sig).name}" in err
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()], "no worker process is left"
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert not list(out.glob("train_*.jsonl"))
