"""src.report.curves: a run's metrics.jsonl read into a training curve, and where that curve fell fastest."""

import json

import pytest

from src.errors import UserError
from src.report.curves import steepest_fall, summary, training_curve


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_a_curve_keeps_every_epoch_in_order_with_validation_only_where_evaluated(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [
        {"epoch": 2, "step": 20, "train_loss": 0.8, "val": {"loss": 1.0, "exact_match": 0.3, "end_of_answer_acc": 1.0}},
        {"epoch": 1, "step": 10, "train_loss": 1.0},
        {"epoch": 3, "step": 30, "train_loss": None},  # src.train writes a non-finite loss as null
    ])
    curve = training_curve(tmp_path, "make it")
    assert curve == {"epoch": [1, 2, 3], "train_loss": [1.0, 0.8, None], "val_exact_match": [None, 0.3, None]}
    s = summary(curve)
    assert (s["epochs"], s["train_loss_last"], s["val_last"], s["val_best"], s["val_best_epoch"]) == (3, None, 0.3, 0.3, 2)


def test_a_damaged_line_is_a_warning_and_skipped(tmp_path, capsys):
    write_rows(tmp_path / "metrics.jsonl", [{"epoch": 1, "step": 10, "train_loss": 1.0}, "{not json",
                                            {"epoch": 2, "step": 20, "train_loss": "high"}])
    assert training_curve(tmp_path, "make it")["epoch"] == [1]
    out = capsys.readouterr().out
    assert out.count("warning: ") == 2 and "metrics.jsonl:2" in out and "'train_loss' is not a number" in out


@pytest.mark.parametrize("rows", [None, [], ["{not json"]])
def test_no_usable_epoch_is_an_error_with_the_fix(tmp_path, rows):
    if rows is not None:
        write_rows(tmp_path / "metrics.jsonl", rows)
    with pytest.raises(UserError, match=r"metrics.jsonl: missing or without an epoch; copy the run's metrics.jsonl there "
                                        r"\(make it\)"):
        training_curve(tmp_path, "make it")


def test_the_steepest_fall_skips_the_first_epochs_gaps_and_missing_losses():
    curve = {"epoch": [1, 2, 3, 4, 6, 7, 8], "train_loss": [2.0, 1.0, 0.9, 0.7, 0.2, None, 0.1],
             "val_exact_match": [None] * 7}
    # 1 -> 2 falls most but lies before epoch 3; 4 -> 6 is no epoch-to-epoch fall; 6 -> 7 and 7 -> 8 have a null
    assert steepest_fall(curve) == {"epoch": 4, "fall": pytest.approx(0.2)}
    assert steepest_fall(curve, from_epoch=9) is None
    assert steepest_fall({"epoch": [1], "train_loss": [1.0], "val_exact_match": [None]}) is None
