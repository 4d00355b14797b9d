"""The training loop of src/training/trainer.py as `python -m src.train` runs it: non-finite losses are
skipped and counted, a streak of them or a diverged validation loss stops the run with exit 3 and
the last good checkpoint intact. docs/RELIABILITY.md lists the cases.
"""

import json

import pytest
import torch

import src.train
import src.training.trainer
from tests.runs import (  # noqa: F401  (one_thread is an autouse fixture)
    cli,
    expect_error,
    load_all_checkpoints,
    one_thread,
    tiny_raw,
    train_argv,
    train_entry,
    write_yaml,
)

# ---------------------------------------------------------------------------- crash 3: non-finite losses (docs/RELIABILITY.md)


def nan_loss_on(monkeypatch, bad_steps) -> dict:
    """Make the loss NaN at the given (1-based) training steps; returns the call record."""
    real = src.training.trainer.Trainer._plain_loss
    seen = {"steps": 0, "trainer": None}

    def loss(self, inputs, labels):
        seen["steps"] += 1
        seen["trainer"] = self
        value = real(self, inputs, labels)
        return value * float("nan") if bad_steps(seen["steps"]) else value

    monkeypatch.setattr(src.training.trainer.Trainer, "_plain_loss", loss)
    return seen


def test_nan_loss_stops_after_max_bad_steps_with_last_good_checkpoint_intact(tiny, tmp_path, capsys, monkeypatch):
    """From step 21 (epoch 3 of 8-step epochs) every loss is NaN; max_bad_steps is 3. The streak is
    checked at progress refreshes and epoch ends, so the run stops at the first check after the
    streak reaches 3: here the end of epoch 3. Epochs 1 and 2 were checkpointed."""
    run = tmp_path / "nan"
    seen = nan_loss_on(monkeypatch, lambda step: step > 20)
    message = expect_error(cli(src.train.main, train_argv(tiny["config"], run), capsys),
                           "consecutive steps had a non-finite loss or gradient", "training.max_bad_steps = 3",
                           "the last good checkpoint is intact", code=3)
    monkeypatch.undo()
    bad = seen["steps"] - 20
    assert bad >= 3 and f"stopped: {bad} consecutive steps" in message
    trainer = seen["trainer"]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), "a NaN step must not touch the weights"

    checkpoints = load_all_checkpoints(run)
    assert checkpoints["checkpoint_latest.pt"]["epoch"] == 2
    assert (run / "checkpoint_latest.pt").read_bytes() == (run / "checkpoint_epoch_2.pt").read_bytes()
    assert checkpoints["checkpoint_best.pt"]["epoch"] <= 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped_non_finite"
    assert summary["skipped_steps"] == bad and isinstance(summary["skipped_steps"], int)
    assert summary["epochs"] == 2 and summary["steps"] == seen["steps"]
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_isolated_nan_steps_are_skipped_and_counted(tiny, tmp_path, capsys, monkeypatch):
    """Two separate bad steps (a streak of 1 each, under max_bad_steps 3): skipped, counted, run completes."""
    run = tmp_path / "two_nans"
    nan_loss_on(monkeypatch, lambda step: step in (5, 13))
    rc, out, err = cli(src.train.main, train_argv(tiny["config"], run), capsys)
    monkeypatch.undo()
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["skipped_steps"] == 2
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 2, 2, 2]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    load_all_checkpoints(run)


@pytest.mark.gpu
def test_fp16_overflow_steps_are_skipped_and_reported(tiny, tmp_path, capsys, monkeypatch):
    """FP16 on CUDA: with a loss scale of 2**24 the first steps overflow in float16; the dynamic scale
    backs off, the steps are skipped, and summary.json counts them."""
    raw = tiny_raw(tiny["data"], epochs=3, max_bad_steps=50)
    config = write_yaml(tmp_path / "fp16.yaml", raw)
    monkeypatch.setattr(src.training.trainer, "INIT_SCALE", 2.0**24)  # read when a Trainer is made
    run = tmp_path / "fp16"
    rc, out, err = cli(src.train.main, ["--config", config, "--output-dir", run, "--device", "cuda", "--fp16",
                                        "--no-progress"], capsys)
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"].startswith("fp16") and summary["status"] == "completed"
    assert isinstance(summary["skipped_steps"], int) and 1 <= summary["skipped_steps"] < summary["steps"]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_steps"] == summary["skipped_steps"]
    load_all_checkpoints(run)


# ---------------------------------------------------------------------------- divergence


def test_divergence_at_validation_stops_cleanly_and_names_the_setting(tiny, tmp_path, capsys):
    """A learning rate of 15: the weights stay finite but the validation loss explodes (math.exp of
    it overflowed before). The run stops with exit 3, the summary says so, no checkpoint of the
    diverged epoch is written."""
    config = write_yaml(tmp_path / "lr15.yaml", tiny_raw(tiny["data"], learning_rate=15.0))
    run = tmp_path / "diverged"
    message = expect_error(train_entry(train_argv(config, run), capsys), "stopped: the model diverged",
                           "Lower training.learning_rate (now 15)", code=3)
    assert "validation loss after epoch 1" in message
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped_diverged" and summary["epochs"] == 0
    assert not list(run.glob("checkpoint_*.pt"))
