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


# ---------------------------------------------------------------------------- precision a GPU cannot run


def test_a_gpu_without_float16_or_bfloat16_is_a_clear_error(monkeypatch):
    """fp16 needs native float16 arithmetic (compute capability 5.3), bf16 a card that supports it:
    each is refused before anything runs, naming the card (simulated: this machine may have none)."""
    from src.device import check_precision
    from src.errors import UserError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (5, 2))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UserError, match=r"precision fp16: the GPU Old GPU \(compute capability 5\.2\) has no native "
                                        "float16 arithmetic; use training.precision fp32"):
        check_precision("fp16", torch.device("cuda"))
    with pytest.raises(UserError, match=r"precision bf16: the GPU Old GPU .* does not support bfloat16"):
        check_precision("bf16", torch.device("cuda"))
    check_precision("fp32", torch.device("cuda"))  # fp32 runs anywhere
