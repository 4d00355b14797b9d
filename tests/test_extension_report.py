"""src.report.scaling on made-up result directories (real eval.json / summary.json / config.yaml of
results/extension with the numbers changed), CPU only: the mean and t interval over seeds, the one-seed
case, the class aggregation, the grid's runs not made yet, the figures, and the errors."""

import copy
import json
import math
from pathlib import Path

import pytest
import yaml

from src.report import scaling as extension
from src.errors import run_main
from src.stats import wilson_interval

REAL = Path(__file__).resolve().parent.parent / "results" / "extension" / "ext_10m_n2000000" / "seed42"
T975_DF2 = 4.302652729749464  # Student's t, 97.5% quantile, 2 degrees of freedom (tables: 4.3027)
FLAT_KEY = "operands=2|operators=*|depth=0"


@pytest.fixture(scope="module")
def real():
    return {"eval": json.loads((REAL / "eval.json").read_text()), "summary": json.loads((REAL / "summary.json").read_text()),
            "config": yaml.safe_load((REAL / "config.yaml").read_text())}


def write_run(results: Path, real: dict, config: str, seed: int, flat: float | None = None, class_correct: int | None = None,
              train_size: int = 2000000, answer_format: str = "plain", loss_on: str = "answer") -> Path:
    """RESULTS/config/seedS with the real files, renamed, and test_flat's exact_match (and one class cell) changed."""
    run = results / config / f"seed{seed}"
    run.mkdir(parents=True)
    ev, summary, cfg = copy.deepcopy(real["eval"]), copy.deepcopy(real["summary"]), copy.deepcopy(real["config"])
    ev["config"] = summary["config"] = cfg["name"] = config
    ev["seed"] = summary["seed"] = seed
    cfg["data"].update(train_size=train_size, answer_format=answer_format)
    cfg["training"]["loss_on"] = loss_on
    if flat is not None:
        m = ev["metrics"]["test_flat"]
        k = round(flat * m["n_examples"])
        m["exact_match"], m["exact_match_ci95"] = k / m["n_examples"], list(wilson_interval(k, m["n_examples"]))
    if class_correct is not None:
        cell = ev["exact_match_by_class"]["test_flat"]["by_class"][FLAT_KEY]
        cell["correct"], cell["exact_match"] = class_correct, class_correct / cell["n"]
        cell["exact_match_ci95"] = list(wilson_interval(class_correct, cell["n"]))
    (run / "eval.json").write_text(json.dumps(ev))
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run


def write_grid(directory: Path, names) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / f"{name}.yaml").write_text(f"name: {name}\n")  # only the file names make the grid
    return directory


def run(tmp_path, results, *extra) -> dict:
    out = tmp_path / "out"
    grid = tmp_path / "grid"
    if not grid.is_dir():
        write_grid(grid, ["ext_10m_n2000"])
    assert extension.main(["--results", str(results), "--out", str(out), "--configs", str(grid), *extra]) == 0
    return json.loads((out / "extension.json").read_text())


def error(capsys, argv) -> str:
    assert run_main(extension.main, argv) == 2
    return capsys.readouterr().err


def test_three_seeds_give_their_mean_and_a_t_interval_with_two_degrees_of_freedom(tmp_path, real):
    results = tmp_path / "results"
    for seed, flat in ((42, 0.5), (123, 0.6), (7, 0.7)):
        write_run(results, real, "ext_10m_n2000", seed, flat=flat, train_size=2000)
    rep = run(tmp_path, results)
    assert list(rep)[0] == "schema" and rep["schema"] == "extension/1"
    c = rep["configs"]["ext_10m_n2000"]
    assert (c["scale"], c["N"], c["variant"], c["answer_format"], c["loss_on"]) == ("10m", 2000, "plain", "plain", "answer")
    assert c["seeds"] == [7, 42, 123]
    e = c["splits"]["test_flat"]
    half = T975_DF2 * 0.1 / math.sqrt(3)  # sd of 0.5, 0.6, 0.7 is 0.1
    assert e["seeds"] == 3 and e["mean"] == pytest.approx(0.6)
    assert e["ci95"] == pytest.approx([0.6 - half, 0.6 + half], abs=1e-6)
    assert e["ci95"] == pytest.approx([0.351586, 0.848414], abs=1e-6)
    assert e["interval"].startswith("t over seeds")
    assert [p["exact_match"] for p in e["per_seed"]] == [0.7, 0.5, 0.6]  # seeds in order 7, 42, 123
    assert e["per_seed"][0]["ci95"] == pytest.approx(list(wilson_interval(1400, 2000)))
    same = c["splits"]["test_paren"]  # the same number in every seed: sd 0, the interval is the point
    assert same["ci95"] == pytest.approx([0.8245, 0.8245])
    assert [r["training"]["steps"] for r in c["runs"]] == [125008] * 3
    assert c["runs"][0]["bracket_cost"]["exact_match"]["test"] == "mcnemar_exact"
    assert rep["curve"]["10m"]["test_flat"] == [{"N": 2000, "config": "ext_10m_n2000", "seeds": 3,
                                                 "mean": pytest.approx(0.6), "ci95": pytest.approx(e["ci95"])}]
    text = (tmp_path / "out" / "EXTENSION.md").read_text()
    assert text.startswith("## Extension: when the models compute")
    assert f"| 10m | 2,000 | 3 | 0.845 [0.845, 0.845] | 0.600 [{0.6 - half:.3f}, {0.6 + half:.3f}] |" in text


def test_one_seed_says_so_and_keeps_its_wilson_interval(tmp_path, real):
    results = tmp_path / "results"
    write_run(results, real, "ext_10m_n2000", 42, flat=0.25, train_size=2000)
    e = run(tmp_path, results)["configs"]["ext_10m_n2000"]["splits"]["test_flat"]
    assert e["seeds"] == 1 and e["interval"] == "wilson (one seed)" and e["sd"] is None
    assert e["mean"] == 0.25 and e["ci95"] == pytest.approx(list(wilson_interval(500, 2000)), abs=1e-6)


@pytest.mark.slow
def test_class_cells_are_averaged_over_seeds_at_the_largest_n_and_pooled_over_the_test_sets(tmp_path, real):
    results = tmp_path / "results"
    n = real["eval"]["exact_match_by_class"]["test_flat"]["by_class"][FLAT_KEY]["n"]
    write_run(results, real, "ext_10m_n2000", 42, train_size=2000)  # smaller N: no breakdown
    write_run(results, real, "ext_10m_n2000000", 42, class_correct=n // 2)
    write_run(results, real, "ext_10m_n2000000", 7, class_correct=n // 4)
    write_run(results, real, "ext_10m_n2000000_reversed", 42, answer_format="reversed")
    rep = run(tmp_path, results)
    assert rep["largest_n"] == {"10m": 2000000}
    assert set(rep["class_breakdown"]) == {"ext_10m_n2000000", "ext_10m_n2000000_reversed"}
    b = rep["class_breakdown"]["ext_10m_n2000000"]
    want = [(n // 4) / n, (n // 2) / n]  # seeds 7, 42
    cell = b["splits"]["test_flat"]["by_class"][FLAT_KEY]
    assert cell["per_seed"] == pytest.approx(want, abs=1e-5) and cell["mean"] == pytest.approx(sum(want) / 2, abs=1e-5)
    assert cell["seeds"] == 2 and cell["n"] == n
    pooled = b["pooled"]["by_class"]
    assert pooled[FLAT_KEY]["mean"] == pytest.approx(sum(want) / 2, abs=1e-5)  # depth 0 lies in test_flat only
    depth3 = real["eval"]["exact_match_by_class"]["test_depth3"]["by_class"]
    assert {k for k in pooled if k.endswith("depth=3")} == set(depth3)
    assert pooled["operands=4|operators=*|depth=3"]["n"] == depth3["operands=4|operators=*|depth=3"]["n"]
    assert b["splits"]["test_flat"]["by_operators"]["operators=*"]["seeds"] == 2
    # the variant: its own point, not on the curve
    v = rep["configs"]["ext_10m_n2000000_reversed"]
    assert (v["variant"], v["answer_format"]) == ("reversed", "reversed")
    assert [p["config"] for p in rep["curve"]["10m"]["test_flat"]] == ["ext_10m_n2000", "ext_10m_n2000000"]
    text = (tmp_path / "out" / "EXTENSION.md").read_text()
    assert "| `ext_10m_n2000000_reversed` | reversed | reversed | answer | 1 |" in text
    assert f"| 2 | with * | 0 | {n} |" in text
    assert sorted(rep["figures"]) == ["class_curve.png", "class_heatmap_10m.png", "learning_curve.png"]


def test_the_grid_runs_not_made_yet_are_listed(tmp_path, real):
    results = tmp_path / "results"
    write_run(results, real, "ext_pilot_n2000", 42, train_size=2000)
    (results / "ext_pilot_n2000" / "seed7").mkdir()  # started, not evaluated: not finished
    write_grid(tmp_path / "grid", ["ext_pilot_n2000", "ext_pilot_n20000"])
    rep = run(tmp_path, results, "--seeds", "42,7")
    assert rep["grid"]["not_run"] == [{"config": "ext_pilot_n2000", "seed": 7}, {"config": "ext_pilot_n20000", "seed": 42},
                                      {"config": "ext_pilot_n20000", "seed": 7}]
    assert rep["grid"]["size"] == 4 and rep["grid"]["finished"] == 1
    assert rep["configs"]["ext_pilot_n2000"]["seeds"] == [42]
    assert "Not run yet (3 of 4 config × seed" in (tmp_path / "out" / "EXTENSION.md").read_text()
    assert "`ext_pilot_n20000` seeds 42, 7" in (tmp_path / "out" / "EXTENSION.md").read_text()


@pytest.mark.slow
def test_the_figures_are_written_and_small(tmp_path, real):
    results = tmp_path / "results"
    for config, size in (("ext_pilot_n2000", 2000), ("ext_pilot_n2000000", 2000000), ("ext_10m_n2000000", 2000000)):
        for seed, flat in ((42, 0.4), (7, 0.5)):
            write_run(results, real, config, seed, flat=flat, train_size=size)
    write_run(results, real, "ext_10m_n2000000_lossall", 42, loss_on="all")
    rep = run(tmp_path, results)
    assert rep["scales"] == ["10m", "pilot"]  # same parameter count in the made-up files: by name
    for name in ("learning_curve.png", "class_heatmap_pilot.png", "class_heatmap_10m.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 150_000, name
    assert rep["configs"]["ext_10m_n2000000_lossall"]["variant"] == "lossall"


def test_bad_inputs_are_one_line_errors_and_write_nothing(tmp_path, real, capsys):
    out = tmp_path / "out"
    base = ["--out", str(out), "--configs", str(write_grid(tmp_path / "grid", ["ext_10m_n2000"]))]
    err = error(capsys, ["--results", str(tmp_path / "nowhere"), *base])
    assert "--results" in err and "no such directory" in err
    (tmp_path / "empty" / "ext_10m_n2000" / "seed42").mkdir(parents=True)
    err = error(capsys, ["--results", str(tmp_path / "empty"), *base])
    assert "no finished runs" in err and "python -m src.sweep configs/extension --seeds 42,123,7" in err
    results = tmp_path / "results"
    bad = write_run(results, real, "ext_10m_n2000", 42, train_size=2000) / "eval.json"
    bad.write_text(bad.read_text()[:500])  # cut short
    err = error(capsys, ["--results", str(results), *base])
    assert str(bad) in err and "unreadable" in err and "python -m src.analysis.evaluate" in err
    bad.write_text(json.dumps({"schema": "eval/1", "metrics": {}}))
    err = error(capsys, ["--results", str(results), *base])
    assert "expected 'eval/2'" in err
    ev = copy.deepcopy(real["eval"])
    del ev["metrics"]["test_depth3"]["exact_match"]
    bad.write_text(json.dumps({**ev, "config": "ext_10m_n2000", "seed": 42}))
    err = error(capsys, ["--results", str(results), *base])
    assert "metrics.test_depth3.exact_match" in err
    ev = copy.deepcopy(real["eval"])
    del ev["exact_match_by_class"]["test_flat"]["by_class"][FLAT_KEY]["correct"]
    bad.write_text(json.dumps({**ev, "config": "ext_10m_n2000", "seed": 42}))
    err = error(capsys, ["--results", str(results), *base])
    assert f"exact_match_by_class.test_flat.by_class.{FLAT_KEY}.correct" in err
    bad.unlink()
    err = error(capsys, ["--results", str(results), "--out", str(out), "--configs", str(tmp_path / "noconfigs")])
    assert "--configs" in err
    assert error(capsys, ["--seeds", "42,42"]).count("\n") == 1
    assert not out.exists()


def test_no_output_directory_is_implied(tmp_path, capsys):
    """--out is required: the committed results/extension is written only when it is named."""
    err = error(capsys, ["--results", str(tmp_path)])
    assert "the following arguments are required: --out" in err and err.count("\n") == 1


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        extension.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--results", "--out", "--configs", "--seeds", "--debug"):
        assert flag in text


@pytest.mark.slow
def test_configs_are_compared_over_seeds_with_welch_and_holm_and_single_seeds_stay_untested(tmp_path, real):
    results = tmp_path / "results"
    for seed, flat in ((42, 0.50), (123, 0.52), (7, 0.54)):
        summary = write_run(results, real, "ext_pilot_n2000000", seed, flat=flat) / "summary.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "parameters": 660_000}))  # the smaller model
    for seed, flat in ((42, 0.80), (123, 0.83), (7, 0.86)):
        write_run(results, real, "ext_10m_n2000000", seed, flat=flat)
    write_run(results, real, "ext_10m_n2000000_reversed", 42, flat=0.7, answer_format="reversed")
    comp = run(tmp_path, results)["comparisons"]
    scale = {t["split"]: t for t in comp["tested"] if t["kind"] == "scale"}
    assert set(scale) == {"test_flat", "test_paren", "test_depth3"}
    flat = scale["test_flat"]
    assert (flat["a"], flat["b"], flat["test"]) == ("ext_pilot_n2000000", "ext_10m_n2000000", "welch_t")
    assert flat["estimate"] == pytest.approx(0.31, abs=1e-3)
    # the other splits are the same real numbers in every seed: no spread, no difference
    assert scale["test_paren"]["estimate"] == pytest.approx(0.0, abs=1e-12) and scale["test_paren"]["p_value"] == 1.0
    fam = comp["family"]
    assert (fam["name"], fam["correction"], fam["size"]) == ("extension_configs", "holm", 3)
    assert flat["p_adjusted"] == pytest.approx(min(1.0, 3 * flat["p_value"]), rel=1e-5)  # the file keeps 6 digits
    assert [u["b"] for u in comp["untested"]] == ["ext_10m_n2000000_reversed"] * 3
    assert all(u["seeds_b"] == 1 for u in comp["untested"])
    text = (tmp_path / "out" / "EXTENSION.md").read_text()
    assert "10m − pilot at N = 2,000,000 | test_flat | 3 / 3 | +0.310" in text
    assert "Untested (fewer than two seeds on a side): 10m: reversed − plain at N = 2,000,000 (3 / 1 seeds)" in text


@pytest.mark.slow
def test_validation_progress_at_the_largest_n_is_read_from_metrics_jsonl(tmp_path, real):
    results = tmp_path / "results"
    run_dir = write_run(results, real, "ext_10m_n2000000", 42, flat=0.8)
    rows = [{"schema": "metrics/1", "epoch": e, "step": 100 * e, "train_loss": 1.0,
             "val": {"loss": 1.0, "exact_match": em, "end_of_answer_acc": 1.0}}
            for e, em in ((1, 0.1), (2, 0.3), (3, 0.5))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    rep = run(tmp_path, results)
    entry = rep["configs"]["ext_10m_n2000000"]["runs"][0]
    assert [v["exact_match"] for v in entry["val_curve"]] == [0.1, 0.3, 0.5]
    assert entry["still_rising"]["best_is_last"] and entry["still_rising"]["gain_over_last_interval"] == pytest.approx(0.2)
    assert any("metrics.jsonl:4: not valid JSON" in n for n in rep["notes"])
    assert "val_progress.png" in rep["figures"] and (tmp_path / "out" / "val_progress.png").stat().st_size > 1000
    assert "| `ext_10m_n2000000` | 42 | 3 | 0.100, 0.300, 0.500 | +0.200 | yes |" in (tmp_path / "out" / "EXTENSION.md").read_text()


@pytest.mark.slow
def test_exact_match_by_class_against_n_pools_test_sets_and_depths(tmp_path, real):
    results = tmp_path / "results"
    write_run(results, real, "ext_10m_n2000", 42, class_correct=10, train_size=2000)
    for seed, correct in ((42, 100), (7, 200)):
        write_run(results, real, "ext_10m_n2000000", seed, class_correct=correct)
    rep = run(tmp_path, results)
    # operands=2 with *: depth 0 (test_flat, the changed cell) plus depth 1 (test_paren, as in the real file)
    paren = real["eval"]["exact_match_by_class"]["test_paren"]["by_class"]["operands=2|operators=*|depth=1"]
    flat_n = real["eval"]["exact_match_by_class"]["test_flat"]["by_class"][FLAT_KEY]["n"]
    n = flat_n + paren["n"]
    points = rep["class_curve"]["10m"]["operands=2|operators=*"]
    assert [p["N"] for p in points] == [2000, 2000000] and [p["seeds"] for p in points] == [1, 2]
    assert points[0]["mean"] == pytest.approx((10 + paren["correct"]) / n)
    assert points[1]["per_seed"] == pytest.approx([(200 + paren["correct"]) / n, (100 + paren["correct"]) / n])
    assert "class_curve.png" in rep["figures"]
    assert "### By class against N" in (tmp_path / "out" / "EXTENSION.md").read_text()
