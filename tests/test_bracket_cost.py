"""The cost of brackets by kind and the near-twin-free subsets (src/analysis/bracket_cost.py), from
src.analysis.evaluate down to known tables."""

import json
from types import SimpleNamespace

import pytest

from src.analysis import bracket_cost, evaluate
from src.analysis.bracket_cost import (
    _family,
    mcnemar_floor,
    near_twin_free,
    paired_outcomes,
)
from tests.test_probe import write_tiny_run

REPO_DATA = __import__("pathlib").Path(__file__).resolve().parent.parent / "data"


@pytest.mark.parametrize("d, floor", [(0, 1.0), (1, 1.0), (2, 0.5), (3, 0.25), (14, 2.0 ** -13)])
def test_mcnemar_floor(d, floor):
    assert mcnemar_floor(d) == floor


def test_paired_outcomes_on_a_known_table():
    flat = [True, True, False, False, True]
    bracketed = [True, False, True, True, True]
    out = paired_outcomes(flat, bracketed)
    assert out["only_flat_correct"] == 1 and out["only_bracketed_correct"] == 2 and out["discordant"] == 3
    assert out["p_floor"] == 0.25 and out["p_value"] == 1.0
    assert out["difference"] == pytest.approx(1 / 5) and out["flat_exact_match"] == 0.6


def test_family_that_cannot_reach_its_threshold_says_so():
    few = {"redundant": paired_outcomes([True] * 3 + [False] * 7, [False] * 10),
           "precedence_changing": paired_outcomes([True, False] * 2 + [True] * 6, [False, True] * 2 + [True] * 6)}
    family = _family(few)  # floors 2^-2 and 2^-3, above the first Holm threshold 0.025
    assert family["verdict"] == "cannot decide (largest d = 4)"
    many = {"redundant": paired_outcomes([True] * 30 + [False] * 70, [False] * 100),
            "precedence_changing": paired_outcomes([True] * 50, [True] * 50)}
    family = _family(many)
    assert "cannot decide" not in family["verdict"]
    assert many["redundant"]["significant"] and not many["precedence_changing"]["significant"]


def _cfg(paths: dict, max_seq_len=32):
    data = SimpleNamespace(train_size=0, path=lambda split: paths[split], answer_format="plain")
    return SimpleNamespace(data=data, model=SimpleNamespace(max_seq_len=max_seq_len))


def _write(path, exprs):
    from src.data import make_record
    path.write_text("".join(make_record(e).to_json() + "\n" for e in exprs))
    return path


def test_near_twin_free_subset_drops_the_items_seen_up_to_near_twins(tmp_path):
    paths = {"train": _write(tmp_path / "train.jsonl", ["3+5", "(2*3)+4", "9-1"]),
             "test_flat": _write(tmp_path / "flat.jsonl", ["5+3", "4+2*3", "1-9", "7*7"])}
    out = near_twin_free(_cfg(paths), {"test_flat": {"exact_match": [1.0, 1.0, 0.0, 0.0]}}, None,
                         {"extra": (["9-1", "2+2"], [True, False])})
    flat = out["splits"]["test_flat"]
    assert flat["whole"]["n"] == 4 and flat["whole"]["exact_match"] == 0.5
    assert flat["unseen"]["n"] == 2 and flat["unseen"]["exact_match"] == 0.0 and flat["near_twins_seen"] == 2
    assert out["splits"]["extra"]["unseen"]["n"] == 1 and out["training_forms"] == 3
    costs = {"redundant": paired_outcomes([True, False], [True, True]), "precedence_changing": {"unavailable": "absent"}}
    text = bracket_cost.summary({"bracket_cost_by_kind": costs, "near_twin_free": out})
    assert "redundant (2 pairs), exact_match bracketed - flat: +0.5000" in text and "floor 1" in text
    assert "precedence_changing: absent" in text and "test_flat: exact_match 0.5000 whole (4), 0.0000" in text


def test_near_twin_free_without_the_training_file_says_what_is_missing(tmp_path):
    out = near_twin_free(_cfg({"train": tmp_path / "gone.jsonl"}), {}, None)
    assert "not found" in out["unavailable"]


@pytest.mark.slow
def test_evaluate_reports_both_kinds_and_the_subsets(tmp_path):
    run = write_tiny_run(tmp_path)
    # without the precedence file beside test_flat: the kind says which command writes it
    assert evaluate.main(["--run", str(run), "--device", "cpu", "--limit", "8"]) == 0
    kinds = json.loads((run / "eval.limit8.json").read_text())["bracket_cost_by_kind"]
    assert "python -m src.data" in kinds["precedence_changing"]["unavailable"]
    assert kinds["family"]["tests"] == ["redundant"]
    data = tmp_path / "data"
    # the precedence lines whose flat twins are among the run's 40 flat lines, as the shipped file has them
    lines = [l for l in (REPO_DATA / "pilot_test_paren_precedence.jsonl").read_text().splitlines()
             if json.loads(l)["flat_line"] < 40]
    (data / "pilot_test_paren_precedence.jsonl").write_text("\n".join(lines) + "\n")
    assert evaluate.main(["--run", str(run), "--device", "cpu", "--limit", "30"]) == 0
    out = json.loads((run / "eval.limit30.json").read_text())
    kinds = out["bracket_cost_by_kind"]
    expected = [json.loads(l)["flat_line"] for l in lines if json.loads(l)["flat_line"] < 30]
    assert kinds["precedence_changing"]["flat_lines"] == expected and kinds["precedence_changing"]["n_pairs"] == len(expected)
    assert kinds["redundant"]["n_pairs"] == 30 and len(kinds["redundant"]["outcomes"]["flat"]) == 30
    for kind in ("redundant", "precedence_changing"):
        k = kinds[kind]
        assert k["p_floor"] == mcnemar_floor(k["discordant"]) and sum(c["n_pairs"] for c in k["by_class"].values()) == k["n_pairs"]
    assert kinds["family"]["tests"] == ["redundant", "precedence_changing"]
    subsets = out["near_twin_free"]["splits"]
    assert set(subsets) == {"val", "test_flat", "test_paren", "test_paren_matched", "test_depth3", "test_paren_precedence"}
    assert all(s["unseen"]["n"] + s["near_twins_seen"] == s["whole"]["n"] for s in subsets.values())
