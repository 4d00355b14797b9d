"""src.device.set_cpu_threads: the thread count of CPU training, chosen in code; OMP_NUM_THREADS wins."""

import pytest
import torch

import src.train
from src.device import CPU_TRAIN_THREADS, set_cpu_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_without_omp_num_threads_cpu_training_takes_the_chosen_count(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert set_cpu_threads() == CPU_TRAIN_THREADS == 1
    assert torch.get_num_threads() == 1


def test_omp_num_threads_set_by_the_user_wins(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert set_cpu_threads() == 2
    assert torch.get_num_threads() == 2


class Reached(Exception):
    pass


def test_train_sets_the_cpu_threads_before_reading_data(monkeypatch, tmp_path, repo_root):
    """src.train calls set_cpu_threads on the CPU, before the data are checked or read."""
    def called():
        raise Reached("set_cpu_threads")

    def data_checked(*args, **kwargs):
        raise Reached("check_data_paths")

    monkeypatch.setattr(src.train, "set_cpu_threads", called)
    monkeypatch.setattr(src.train, "check_data_paths", data_checked)
    monkeypatch.chdir(repo_root)
    with pytest.raises(Reached, match="set_cpu_threads"):
        src.train.main(["--config", "configs/quickstart.yaml", "--output-dir", str(tmp_path / "run"),
                        "--device", "cpu", "--no-progress"])
    assert not (tmp_path / "run").exists()
