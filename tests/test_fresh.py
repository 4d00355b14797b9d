"""Fresh test files (`python -m src.data --fresh-test SEED`) and evaluation on them (`src.analysis.evaluate
--data-dir`), CPU: expressions no shipped file and no training set holds, drawn like the test sets."""

import json
from pathlib import Path

import pytest

import src.config
from src import data
from src.analysis import evaluate
from src.data import cli as data_cli
from src.errors import run_main
from tests.test_probe import write_tiny_run

REPO_ROOT = Path(__file__).resolve().parent.parent
NAMES = ("pilot_test_flat", "pilot_test_paren", "pilot_test_depth3", "pilot_test_paren_matched")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(src.config, "GENERATED_DIR", root / "generated")
        assert data_cli.main(["--fresh-test", "7", "--exclude-train", "2100", "--out", str(root / "fresh")]) == 0
    return root


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fresh_files_avoid_every_shipped_and_training_expression_and_are_drawn_like_the_test_sets(fresh):
    seen = {r["expr"] for name in (*data.SPLITS, data.MATCHED_SPLIT) for r in records(REPO_ROOT / "data" / f"{name}.jsonl")}
    seen |= {r["expr"] for r in records(fresh / "generated" / "train_2100.jsonl")}
    files = {name: records(fresh / "fresh" / f"{name}.jsonl") for name in NAMES}
    exprs = [r["expr"] for rs in files.values() for r in rs]
    assert len(exprs) == len(set(exprs)) == 8000 and not set(exprs) & seen
    assert {max(r["depth"]) for r in files["pilot_test_flat"]} == {0}
    assert {max(r["depth"]) for r in files["pilot_test_paren"]} == {1, 2}
    assert {max(r["depth"]) for r in files["pilot_test_depth3"]} == {3}
    for flat, twin in zip(files["pilot_test_flat"], files["pilot_test_paren_matched"]):  # still matched pairs
        assert twin["expr"].replace("(", "").replace(")", "") == flat["expr"] and twin["result"] == flat["result"]
    for name in NAMES:  # records the loader accepts
        data.load_jsonl(fresh / "fresh" / f"{name}.jsonl", 32)


@pytest.mark.slow
def test_fresh_files_are_reproducible_and_differ_from_the_shipped_ones(fresh, tmp_path, monkeypatch):
    monkeypatch.setattr(src.config, "GENERATED_DIR", fresh / "generated")
    assert data_cli.main(["--fresh-test", "7", "--exclude-train", "2100", "--out", str(tmp_path / "again")]) == 0
    for name in NAMES:
        assert (tmp_path / "again" / f"{name}.jsonl").read_bytes() == (fresh / "fresh" / f"{name}.jsonl").read_bytes()
    # the shipped files are untouched by the new parameters: seed 42 still gives them byte for byte
    splits = data.generate_splits(42)
    assert "".join(r.to_json() + "\n" for r in splits["pilot_test_flat"]) == (REPO_ROOT / "data" / "pilot_test_flat.jsonl").read_text()


@pytest.mark.slow
def test_a_run_is_evaluated_on_the_fresh_files(fresh, tmp_path, capsys):
    run = write_tiny_run(tmp_path)
    assert evaluate.main(["--run", str(run), "--device", "cpu", "--limit", "50", "--data-dir", str(fresh / "fresh")]) == 0
    result = json.loads((run / "eval_fresh.limit50.json").read_text())  # a --limit run: its own file
    assert result["data_files"]["test_flat"] == str((fresh / "fresh" / "pilot_test_flat.jsonl").resolve())
    assert result["data_files"]["val"].endswith("pilot_val.jsonl") and "fresh" not in result["data_files"]["val"]
    assert result["metrics"]["test_depth3"]["n_examples"] == 50
    capsys.readouterr()
    assert run_main(evaluate.main, ["--run", str(run), "--device", "cpu", "--data-dir", str(tmp_path)]) == 2
    assert "holds none of pilot_val.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--seed", "3"], ["--train-size", "3000"]])
def test_fresh_test_refuses_a_seed_or_train_size_beside_it(capsys, extra):
    with pytest.raises(SystemExit) as exit_info:
        data_cli.main(["--fresh-test", "7", *extra])
    assert exit_info.value.code == 2
    assert "--fresh-test takes its own seed" in capsys.readouterr().err
