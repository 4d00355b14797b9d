"""Helpers of the tests that run the real entry points (`python -m src.train`, `src.analysis.evaluate`, ...)
on tiny configs: a runner that calls an entry point as its __main__ block does, the check of a one-line
error, snapshots of a run directory, and the comparison of two trainings bit for bit.

The shared runs built with them (`tiny`: a paused and a finished 4-epoch run; `crash`: an 8-epoch run
that never stopped) are fixtures of tests/conftest.py, built once per test session.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from src.errors import run_main
from src.rundir.checkpoint import load_checkpoint, model_from_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
PILOT = REPO_ROOT / "configs" / "pilot.yaml"
HAS_CUDA = torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks behaviour on a machine without CUDA")
GOOD_LINES = (REPO_ROOT / "data" / "pilot_train.jsonl").read_text(encoding="utf-8").splitlines()
# one thread in every training subprocess: the same arithmetic in each, so weights compare bit for bit
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class NotWeights:
    """A custom class: a checkpoint holding one can only be rebuilt by unpickling code."""


def tiny_raw(data_dir: Path, **training) -> dict:
    """The pilot config shrunk to d_model 32, 2 layers, on the small data files in `data_dir`."""
    raw = yaml.safe_load(PILOT.read_text(encoding="utf-8"))
    raw["name"] = "tiny"
    raw["model"].update(d_model=32, num_layers=2, num_heads=2, d_ff=64)
    raw["training"].update(batch_size=8, epochs=4, warmup_steps=2, eval_interval=1, save_interval=1,
                           compile=False, cuda_graph=False, max_bad_steps=3)
    raw["training"].update(training)
    raw["data"] = {split: str(data_dir / ("train.jsonl" if split == "train" else "val.jsonl")) for split in raw["data"]}
    return raw


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def write_data(data_dir: Path, n_train: int = 64, n_val: int = 16) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "train.jsonl").write_text("\n".join(GOOD_LINES[:n_train]) + "\n", encoding="utf-8")
    (data_dir / "val.jsonl").write_text("\n".join(GOOD_LINES[n_train:n_train + n_val]) + "\n", encoding="utf-8")
    return data_dir


def cli(main, argv, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of an entry point run as its __main__ block runs it."""
    try:
        rc = run_main(main, [str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    out, err = capsys.readouterr()
    return rc, out, err


def expect_error(result, *fragments, code=2, usage=False) -> str:
    """The run failed with `code`, no traceback, and a short message holding every fragment."""
    rc, out, err = result
    assert rc == code, f"exit status {rc}, expected {code}; stderr:\n{err}\nstdout tail:\n{out[-2000:]}"
    assert "Traceback" not in out + err, err
    message = err.strip().splitlines()[-1] if err.strip() else ""
    if usage:  # argparse: usage line(s), then "prog: error: ..."
        assert "error: " in message, err
    else:  # run_main: one line, "error: ..."
        assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in the message:\n{message}"
    return message


def snapshot(directory: Path) -> dict:
    """Name -> bytes of every file in a directory (to prove a failed run changed nothing)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def load_all_checkpoints(run_dir: Path) -> dict:
    """Every checkpoint_*.pt of a run directory, loaded and rebuilt into a model: name -> dict."""
    loaded = {}
    for path in sorted(run_dir.glob("checkpoint_*.pt")):
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, path)
        assert all(torch.isfinite(p).all() for p in model.parameters()), path
        loaded[path.name] = ckpt
    assert loaded, f"no checkpoint in {run_dir}"
    return loaded


def assert_same_training(run_a: Path, run_b: Path) -> None:
    """Final weights, optimizer state and every evaluation identical (bit for bit)."""
    a, b = load_checkpoint(run_a / "checkpoint_latest.pt"), load_checkpoint(run_b / "checkpoint_latest.pt")
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"weights {name} differ"
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), f"optimizer state {pid}.{key} differs"
    rows_a = (run_a / "metrics.jsonl").read_text().splitlines()
    rows_b = (run_b / "metrics.jsonl").read_text().splitlines()
    assert rows_a == rows_b
    for name in sorted(p.name for p in run_a.glob("checkpoint_epoch_*.pt")):
        ca, cb = load_checkpoint(run_a / name), load_checkpoint(run_b / name)
        assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"]), f"{name} differs"


def train_argv(config: Path, out: Path, *extra) -> list:
    return ["--config", config, "--output-dir", out, "--device", "cpu", "--seed", "7", "--no-progress", *extra]


def run_cli(args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO_ROOT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (two threads crawl when other processes hold the
    cores), and one thread count for every in-process run keeps their weights comparable bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_run(tiny, name, tmp_path) -> Path:
    target = tmp_path / name
    shutil.copytree(tiny[name], target)
    return target


def replace_file(path: Path, content: bytes) -> None:
    """New content at `path` without touching the hard links that share its inode."""
    path.unlink()
    path.write_bytes(content)


def truncated_checkpoint(tiny) -> bytes:
    """The first half of the paused run's checkpoint_latest.pt."""
    data = (tiny["paused"] / "checkpoint_latest.pt").read_bytes()
    return data[: len(data) // 2]


def saved_bytes(tmp_path, obj) -> bytes:
    """What torch.save writes for `obj`."""
    path = tmp_path / "obj.pt"
    torch.save(obj, path)
    return path.read_bytes()


def pickled_code_checkpoint(tmp_path) -> bytes:
    """A checkpoint file whose model is a NotWeights object, which only unpickling code rebuilds."""
    return saved_bytes(tmp_path, {"model": NotWeights(), "model_config": {}})


CRASH_EPOCHS = 8


def resume(crash, run: Path) -> subprocess.CompletedProcess:
    proc = run_cli(["-m", "src.train", *train_argv(crash["config"], run, "--resume")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "Resuming from epoch" in proc.stdout
    return proc


def killed_run(crash, run: Path, point: str, signal_name: str = "KILL") -> subprocess.CompletedProcess:
    """A training subprocess that stops itself at a named point (through tests/killpoint.py, which wraps
    src.rundir.atomic's write steps): `<file>[@<n>]:<mid|after>` is half-way through, or just after,
    the n-th write of that file."""
    return run_cli(["-m", "tests.killpoint", f"{point}:{signal_name}", "--", "src.train",
                    *train_argv(crash["config"], run)])


def train_entry(argv, capsys) -> tuple[int, str, str]:
    """`python -m src.train ARGV`, in-process, as its __main__ block runs it."""
    import src.train

    return cli(src.train.main, argv, capsys)
