"""src.report.analyses on the battery's files of two tiny runs, CPU: the section's tables hold what the
files hold, a missing file is said, and the report includes the section."""

import json
import shutil
from pathlib import Path

import pytest

from src.analysis import run_all as battery, evaluate, rolematch

from src import data

from src.report import analyses as mechanisms
from src.errors import run_main
from src.report.cli import extension_section
from tests.test_probe import write_tiny_run
from tests.tiny import drop_limit_tag

EXTENSION_JSON = Path(__file__).resolve().parent.parent / "results" / "extension" / "extension.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mechanisms")
    out = []
    for seed in (0, 1):
        (root / f"s{seed}").mkdir()
        run = write_tiny_run(root / f"s{seed}", seed=seed)
        assert battery.main(["--run", str(run), "--device", "cpu", "--limit", "24", "--quiet",
                             "--only", "ablate,roles,probe,patching,value_probe"]) == 0  # what the section reads
        drop_limit_tag(run, 24)  # the report reads the full-data names
        out.append(run)
    assert rolematch.main(["--pilot", str(out[0]), "--large", str(out[1]), "--out", str(root / "match")]) == 0
    return {"root": root, "runs": out, "match": root / "match"}


@pytest.mark.slow
def test_the_tables_hold_what_the_files_hold(runs, tmp_path):
    out = tmp_path / "out"
    assert mechanisms.main([*map(str, runs["runs"]), "--rolematch", str(runs["match"]), "--out", str(out)]) == 0
    result = json.loads((out / "mechanisms.json").read_text())
    assert result["schema"] == "mechanisms/1" and [r["seed"] for r in result["runs"]] == [0, 1]
    first = result["runs"][0]
    assert first["missing"] == []
    ablation = json.loads((runs["runs"][0] / "ablation.json").read_text())
    both = [f["head"] for f in ablation["head_findings"]
            if f["tests"]["test_paren_matched/answer_loss"]["holds_under"] == "both"]
    assert first["heads"]["matter_under_both"] == both and first["heads"]["heads_scanned"] == 8
    for mode, t in first["heads"]["targeted"].items():
        assert t["found"] == ablation["targeted"][mode]["found"]
        if t["found"]:
            assert t["family"] == f"targeted_{mode}" and t["p_adjusted"] < 0.05
    vp = json.loads((runs["runs"][0] / "value_probe.json").read_text())
    best = vp["probes"]["close"]["mod10"]["best_layer"]
    assert first["values"]["close/mod10"]["layer"] == best["layer"]
    assert first["values"]["close/mod10"]["trained"] == best["splits"]["test_paren"]["trained"]
    assert first["battery"]["device"] == "cpu" and set(first["battery"]["steps"]) == {"ablate", "roles", "probe", "patching", "value_probe"}  # the steps the fixture ran
    text = (out / "MECHANISMS.md").read_text()
    assert text.startswith("## Extension: mechanisms")
    assert "| role | verdict |" in text and "close/mod10" in text and "Files not there" not in text


@pytest.mark.slow
def test_a_missing_file_is_said_and_the_report_includes_the_section(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["runs"][0], run)
    (run / "value_probe.json").unlink()
    fresh = tmp_path / "fresh_7"
    splits = data.generate_splits(7, only=("pilot_test_flat", "pilot_test_paren", "pilot_test_depth3"))
    # small files rather than --limit, whose results carry a name of their own
    data.write_splits({name: records[:20] for name, records in splits.items()}, fresh)
    assert evaluate.main(["--run", str(run), "--device", "cpu", "--data-dir", str(fresh), "--no-progress"]) == 0
    ext = tmp_path / "extension"
    assert mechanisms.main([str(run), "--out", str(ext / "mechanisms")]) == 0
    text = (ext / "mechanisms" / "MECHANISMS.md").read_text()
    fresh_em = json.loads((run / "eval_fresh_7.json").read_text())["metrics"]["test_flat"]["exact_match"]
    assert f"| `tiny` seed 0 | `eval_fresh_7.json` | {fresh_em:.3f} [" in text
    assert "no value_probe.json" in text and "Files not there: `tiny` seed 0: value_probe.json." in text
    assert "No rolematch.json given" in text
    shutil.copy(EXTENSION_JSON, ext / "extension.json")
    section = "\n".join(extension_section(ext, tmp_path / "REPORT.md"))
    assert "## Extension: when the models compute" in section and "## Extension: mechanisms" in section
    assert "`extension/mechanisms/mechanisms.json`" in section
    capsys.readouterr()
    (run / "summary.json").unlink()
    assert run_main(mechanisms.main, [str(run), "--out", str(tmp_path / "x")]) == 2
    assert "summary.json: unreadable" in capsys.readouterr().err


def value_run(config: str, seed: int, selectivity: dict, ceiling=()) -> dict:
    """A summarized run holding only value-probe summaries (what value_family reads)."""
    return {"config": config, "seed": seed,
            "values": {key: {"selectivity_nontrivial": x,
                             "claim": "at ceiling: no claim" if key in ceiling else "selective"}
                       for key, x in selectivity.items()}}


def test_value_family_tests_over_seeds_with_holm_and_leaves_out_ceilings_and_single_seeds():
    runs = [value_run("big", s, {"close/sign": 0.40 + d, "close/mod10": d, "operator/sign": 0.3},
                      ceiling={"operator/sign"} if s == 7 else ())
            for s, d in ((42, 0.01), (123, -0.02), (7, 0.015))]
    runs.append(value_run("lonely", 1, {"close/sign": 0.9}))
    fam = mechanisms.value_family(runs)
    rows = {(r["config"], r["target"]): r for r in fam["rows"]}
    assert set(rows) == {("big", "close/sign"), ("big", "close/mod10")}  # ceiling and one-seed configs left out
    assert fam["family"]["size"] == 2 and fam["family"]["correction"] == "holm"
    sign, mod10 = rows[("big", "close/sign")], rows[("big", "close/mod10")]
    assert sign["estimate"] == pytest.approx(0.40 + 0.005 / 3)
    assert sign["significant"] and not mod10["significant"]
    assert sign["p_floor"] == 0.0 and sign["p_adjusted"] >= sign["p_value"]


def test_patching_profile_reads_changes_and_the_last_layer_that_still_reaches_the_answer():
    def cells(changes):
        return [{"layer": i, "relative_layer": i / (len(changes) - 1), "logp_change": c, "answer_correct": 0.5}
                for i, c in enumerate(changes)]
    patching = {"baseline": {"bracketed_minus_flat": {"logp": {"estimate": -0.03, "ci95": [-0.05, -0.01]}}},
                "resid": {"bracketed_to_flat": {"close": cells([-20.0, -3.0, -0.5, -0.05]),
                                                "equals": cells([-0.01, 0.0, 0.0, 0.0]),
                                                "prompt": cells([+0.2, -0.09, +0.15, 0.0])}}}
    p = mechanisms.patching_profile(patching)
    assert p["twin_gap_logp"]["estimate"] == -0.03
    assert p["classes"]["close"]["reach_layer"] == 2 and p["classes"]["close"]["reach_relative_layer"] == pytest.approx(2 / 3)
    assert p["classes"]["equals"]["reach_layer"] is None  # nothing there is read
    assert p["classes"]["prompt"]["reach_layer"] == 2     # the size of a change counts, either sign
    assert "inside" not in p["classes"]                   # a class the file does not hold is left out
    assert p["classes"]["close"]["logp_change"] == [-20.0, -3.0, -0.5, -0.05]


def test_patching_profile_with_tests_needs_a_significant_change_to_reach():
    def cell(layer, change, p):
        return {"layer": layer, "relative_layer": layer / 2, "logp_change": change, "answer_correct": 0.5,
                "logp_change_test": {"test": "paired_t", "estimate": change, "ci95": [change - 1, change + 1],
                                     "p_value": p, "p_floor": 0.0, "n": 100}}
    patching = {"resid": {"bracketed_to_flat": {"close": [cell(0, -5.0, 1e-9), cell(1, -0.5, 1e-6), cell(2, -0.3, 0.2)],
                                                "equals": [cell(0, -0.05, 1e-9), cell(1, 0.0, 1.0), cell(2, 0.0, 1.0)]}}}
    p = mechanisms.patching_profile(patching)
    assert p["tested"] and p["family"]["size"] == 6 and p["family"]["correction"] == "holm"
    assert p["classes"]["close"]["reach_layer"] == 1      # layer 2 is large enough but not significant
    assert p["classes"]["equals"]["reach_layer"] is None  # significant but too small to count
    assert p["classes"]["close"]["p_adjusted"][0] == pytest.approx(6e-9)


def test_standardized_to_reweights_the_shipped_rates_to_the_fresh_mix():
    cell = lambda n, k: {"n": n, "correct": k}  # noqa: E731
    shipped = {"by_class": {"a": cell(100, 90), "b": cell(100, 10), "c": cell(50, 50)}}
    fresh = {"by_class": {"a": cell(10, 9), "b": cell(90, 9), "d": cell(5, 5)}}
    s = mechanisms.standardized_to(shipped, fresh)
    assert s["shipped_standardized"] == pytest.approx((10 * 0.9 + 90 * 0.1) / 100)  # 0.18, against a raw 0.6
    assert s["fresh"] == pytest.approx(18 / 100)
    assert s["classes"] == 2 and s["fresh_classes_left_out"] == 1 and s["fresh_n"] == 100
    assert mechanisms.standardized_to(shipped, {"by_class": {"d": cell(5, 5)}}) is None


def test_the_profile_figure_is_drawn_from_the_profiles_and_skipped_without_them():
    def run(config, seed, changes):
        cells = {"close": changes, "equals": [0.0] * len(changes)}
        return {"config": config, "seed": seed, "patching_profile": {"classes": {
            c: {"logp_change": v} for c, v in cells.items()}}}
    runs = [run("ext_pilot_n2000", 1, [-5.0, -1.0, 0.0, 0.0]), run("ext_10m_n2000", 1, [-9.0, -3.0, -1.0, -0.2, 0.0, 0.0])]
    png = mechanisms.profile_figure(runs)
    assert png.startswith(b"\x89PNG")
    assert mechanisms.profile_figure([{"config": "x", "seed": 1}]) is None


def test_the_patching_table_marks_untested_runs_and_says_when_every_run_is_tested():
    def run(seed, tested):
        return {"config": "ext_pilot_n2000", "seed": seed, "patching_profile": {
            "tested": tested, "twin_gap_logp": {"estimate": -0.01, "ci95": [-0.02, 0.0]},
            "classes": {"close": {"logp_change": [-5.0, -0.5, 0.0], "reach_layer": 1, "reach_relative_layer": 0.5}}}}
    both = "\n".join(mechanisms.patching_markdown([run(1, True), run(2, False)]))
    assert "| `ext_pilot_n2000` seed 2 |" in both and "1 (0.50), descriptive |" in both
    assert "| `ext_pilot_n2000` seed 1 | -0.010 [-0.020, 0.000] | close | -5.00, -0.50, +0.00 | 1 (0.50) |" in both
    assert "predate those tests" in both
    tested = "\n".join(mechanisms.patching_markdown([run(1, True)]))
    assert "descriptive" not in tested and "every run here has them" in tested
