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
