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


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def analysed_tiny_runs(tmp_path_factory) -> dict:
    """Two seeds of tests/tiny.py's run, every analysis the report reads run on them (small, full data):
    one pair for the report's tests in test_report.py and test_reliability_analysis.py, built once.
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
