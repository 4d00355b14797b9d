"""Shared test setup: one CPU thread for the tests' tiny models, and GPU-marked tests skipped on a
machine without CUDA."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    """The tests' models are tiny: a second intra-op thread buys nothing and, on a machine whose
    cores are busy, makes every step crawl while the threads wait for each other. So the test
    process and the commands it starts (unless a test or the caller sets OMP_NUM_THREADS) use one."""
    if "OMP_NUM_THREADS" not in os.environ:  # a caller's setting is torch's already
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; run `python -m pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def held_out_expressions_read_once():
    """Every training and every check of a training set reads the shipped validation and test files and
    validates each of their records (src.data.trainsets._held_out_expressions): about a tenth of the
    suite's time, for the same few files again and again. Within the test session the result is kept
    per file name and content (sha256), so that a file a test changes, or one named elsewhere, is read
    again; a file that cannot be read, and every error, goes to the real function each time. Callers get
    their own copy of the dict."""
    import hashlib

    from src.data import trainsets

    real = trainsets._held_out_expressions
    kept: dict[tuple, dict] = {}

    def held_out_expressions(files):
        try:
            key = tuple((str(path), hashlib.sha256(Path(path).read_bytes()).hexdigest()) for path in files)
        except OSError:
            return real(files)
        if key not in kept:
            kept[key] = real(files)
        return dict(kept[key])

    trainsets._held_out_expressions = held_out_expressions
    yield
    trainsets._held_out_expressions = real


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def analysed_tiny_runs(tmp_path_factory) -> dict:
    """Two seeds of tests/tiny.py's run, every analysis the report reads run on them (small, full data):
    one pair for the report's tests in test_report.py, built once.
    The tests copy a run before changing it; these directories stay as built."""
    from src.analysis import ablate, evaluate, probe, roles
    from tests.tiny import tiny_config, write_data, write_run

    root = tmp_path_factory.mktemp("report")
    write_data(root / "data")
    raw = tiny_config(root / "data")
    runs = []
    for seed in (1, 2):
        run = root / f"seed{seed}"
        write_run(run, raw, seed=seed)
        cpu = ["--run", str(run), "--device", "cpu"]
        assert evaluate.main(cpu) == 0
        assert ablate.main([*cpu, "--max-set-size", "2"]) == 0
        assert roles.main(cpu) == 0
        assert probe.main([*cpu, "--max-iter", "20", "--resamples", "200"]) == 0  # the report reads probe.json
        runs.append(run)
    return {"root": root, "runs": runs}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """Small data files, a tiny config (4 epochs of 8 steps), and two real runs made with it:
    `paused` stopped after epoch 2 (resumable), `finished` ran all 4 epochs. Built once, on one thread
    (so that a test's own training compares with them bit for bit); tests copy a run before changing it."""
    import src.train
    from src.errors import run_main
    from tests.runs import tiny_raw, train_argv, write_data, write_yaml

    root = tmp_path_factory.mktemp("tiny")
    data_dir = write_data(root / "data")
    config = write_yaml(root / "tiny.yaml", tiny_raw(data_dir))
    runs = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, extra in (("paused", ["--stop-after-epoch", "2"]), ("finished", [])):
            assert run_main(src.train.main, [str(a) for a in train_argv(config, root / name, *extra)]) == 0
            runs[name] = root / name
    finally:
        torch.set_num_threads(before)
    return {"root": root, "data": data_dir, "config": config, **runs}


@pytest.fixture(scope="session")
def crash(tmp_path_factory) -> dict:
    """A config of 8 epochs x 32 steps, a checkpoint every epoch, and the run that never stopped (a
    subprocess, as the killed and resumed runs of the tests are)."""
    import json

    from tests.runs import (
        CRASH_EPOCHS,
        run_cli,
        tiny_raw,
        train_argv,
        write_data,
        write_yaml,
    )

    root = tmp_path_factory.mktemp("crash")
    data_dir = write_data(root / "data", n_train=256, n_val=16)
    config = write_yaml(root / "crash.yaml", tiny_raw(data_dir, epochs=CRASH_EPOCHS, warmup_steps=8))
    reference = root / "uninterrupted"
    proc = run_cli(["-m", "src.train", *train_argv(config, reference)])
    assert proc.returncode == 0, proc.stderr
    seconds = json.loads((reference / "summary.json").read_text())["wall_time_s"]  # after start-up
    return {"root": root, "config": config, "reference": reference, "seconds": seconds}


@pytest.fixture(scope="session")
def analysis_run(tmp_path_factory) -> dict:
    """tests/tiny.py's run (data, config, a briefly trained model, seed 0), built once: the analysis tests
    copy it (tests/analysis_runs.py: copy_run) before they change anything in it."""
    from tests.tiny import tiny_config, write_data, write_run

    root = tmp_path_factory.mktemp("analysis")
    write_data(root / "data")
    raw = tiny_config(root / "data")
    run = root / "run"
    write_run(run, raw)
    return {"root": root, "raw": raw, "run": run}
