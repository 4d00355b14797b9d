"""The study's preregistered tests (src/report/study.py) on synthetic seed directories with known effects.

The synthetic eval.json and interchange.json are made by the project's own writers of each part
(src.analysis.bracket_cost for the costs and near-twin subsets, src.data.classes for the classes,
src.analysis.interchange's sites, proportions and first_reach for the cells) and stamped and read like the real
ones; one test checks their shape against a real interchange_variable result, and a slow one reads a real
evaluate + interchange battery of a tiny run."""

import gzip
import json
import math
import shutil
import subprocess

import pytest

from src.analysis import bracket_cost, interchange
from src.config import ModelConfig
from src.data import load_jsonl
from src.data.classes import exact_match_by_class
from src.errors import UserError, run_main
from src.report import study
from src.rundir.results import read_result, stamp
from src.stats import wilson_interval
from src.tokenizer import VOCAB_SIZE
from tests.tiny import REPO_ROOT

scipy_stats = pytest.importorskip("scipy.stats")

SEEDS = study.REGISTERED_SEEDS
N = 200  # examples per split (the real files hold 2,000)
LAYERS = {"pilot": 4, "10M": 6}
RECORDS = {split: [r.expr for r in load_jsonl(REPO_ROOT / "data" / f"pilot_{split}.jsonl", 32)[:N]]
           for split in ("test_flat", "test_paren", "test_depth3")}
# known effects: 10M well above the pilot on test_flat, the same on test_paren; the pilot pays for
# precedence-changing brackets, the 10M model does not; V reaches 0.9 at the `)` half-way up the pilot and
# at a sixth of the 10M model's depth
FLAT = {"pilot": [120, 126, 118, 130, 124, 122, 128, 116], "10M": [160, 164, 158, 166, 162, 161, 159, 163]}
PAREN = {"pilot": [100, 104, 98, 106, 102, 101, 99, 103], "10M": [101, 99, 105, 100, 103, 98, 104, 102]}
PREC_LOST = {"pilot": [20, 22, 18, 24, 21, 19, 23, 20], "10M": [1, -1, 0, 2, -2, 1, 0, -1]}  # of N flat-correct lines
REACH = {"pilot": [0.5, 0.5, 0.75, 0.5, 0.5, 0.25, 0.5, 0.5], "10M": [1 / 6, 1 / 6, 2 / 6, 1 / 6, 1 / 6, 1 / 6, 0.5, 1 / 6]}
# training curves of 8 epochs: a slow fall of 0.01 an epoch and one drop of 0.3 at this epoch (the last: still dropping)
DROP = {"pilot": [8, 8, 4, 8, 8, 3, 8, 8], "10M": [3, 3, 3, 4, 3, 3, 3, 3]}
EPOCHS = 8


def outcomes(k: int, n: int = N) -> list[bool]:
    return [True] * k + [False] * (n - k)


def eval_json(config: str, seed: int, scale: str, i: int) -> dict:
    flat, paren = outcomes(FLAT[scale][i]), outcomes(PAREN[scale][i])
    flat_k = FLAT[scale][i]
    metrics = {s: {"n_examples": N, "exact_match": sum(o) / N, "exact_match_ci95": list(wilson_interval(sum(o), N))}
               for s, o in (("test_flat", flat), ("test_paren", paren))}
    prec_bracketed = outcomes(flat_k - PREC_LOST[scale][i])  # the same N lines, bracketed to change the value
    matched = outcomes(flat_k - (1 if i % 2 else -1))
    kinds = {"redundant": bracket_cost._kind("matched", RECORDS["test_flat"], flat, matched),
             "precedence_changing": bracket_cost._kind("precedence", RECORDS["test_flat"], flat, prec_bracketed)}
    family = bracket_cost._family(kinds)
    near = {"metric": "exact_match", "splits": {}}
    for split, o in (("test_flat", flat), ("test_paren", paren), ("test_paren_matched", matched),
                     ("test_paren_precedence", prec_bracketed), ("test_depth3", outcomes(20))):
        unseen = o[5:]  # five near twins set apart
        near["splits"][split] = {"whole": bracket_cost._subset_cell(o), "unseen": bracket_cost._subset_cell(unseen),
                                 "near_twins_seen": 5}
    by_class = {s: exact_match_by_class(RECORDS[s], o) for s, o in
                (("test_flat", flat), ("test_paren", paren), ("test_depth3", outcomes(20)))}
    return stamp("eval", {"run": f"runs/study/{seed}", "checkpoint": "best", "epoch": 32, "step": 250016,
                          "config": config, "seed": seed, "precision": "fp16", "fp16": True, "limit": None,
                          "metrics": metrics, "exact_match_by_class": by_class,
                          "bracket_cost_by_kind": {"metric": "exact_match", "sign": "bracketed minus flat", **kinds,
                                                   "family": family}, "near_twin_free": near})


def control_entry(layers: int, reach: float, right: int, ceiling: str = "passed", figure: str = "iia") -> dict:
    """One control's entry as interchange_variable writes it: residual cells whose IIA at `)` is 0.95 from the
    relative depth `reach` up (0.3 below it) and 0.97 inside the bracket at the embedding only."""
    cfg = ModelConfig(vocab_size=VOCAB_SIZE, d_model=32, num_layers=layers, num_heads=2, d_ff=64, max_seq_len=32,
                      dropout=0.0, rope_base=10000.0)
    sites, _ = interchange.sites_of(cfg)
    cells = []
    for site in sites:
        for cls in interchange.POSITION_CLASSES:
            if cls == "close":
                share = 0.95 if site.kind != "head" and site.relative_depth >= reach - 1e-9 else 0.3
            elif cls == "inside":
                share = 0.97 if site.kind == "embed" else 0.1
            else:
                share = 0.05
            hits = round(share * right)
            iia = interchange.proportion(hits, right) if figure == "iia" else interchange.proportion(0, 0)
            cells.append({"site": site.label, "name": site.name, "kind": site.kind, "layer": site.layer,
                          "head": site.head, "relative_depth": site.relative_depth, "position_class": cls, "n": right,
                          "iia": iia, "kept_base": interchange.proportion(right - hits, right), "by_class": {}})
    entry = {"n_pairs": 2016, "base_correct": right + 10, "source_correct": right + 12, "both_correct": right,
             "by_class": {}, "cells": cells}
    if right:
        entry["ceiling"] = {"what": interchange.CEILING, "source_answer": interchange.proportion(right, right),
                            "check": ceiling}
        entry["first_reach"] = {cls: interchange.first_reach(cells, cls) for cls in interchange.POSITION_CLASSES}
    return entry


def interchange_json(config: str, seed: int, scale: str, i: int, right: int = 1500, ceiling: str = "passed") -> dict:
    layers = LAYERS[scale]
    value = {"interchange": control_entry(layers, REACH[scale][i], right, ceiling),
             "value_preserving": control_entry(layers, 2.0, right, figure="kept_base"),
             "random": control_entry(layers, 2.0, right)}
    operator = {"interchange": control_entry(layers, 0.5, 1200), "random": control_entry(layers, 2.0, 1100)}
    return stamp("interchange", {"run": f"runs/study/{seed}", "checkpoint": "best", "epoch": 32, "step": 250016,
                                 "config": config, "seed": seed, "limit": None, "num_layers": layers, "num_heads": 2,
                                 "metric": "iia", "iia_reach": 0.9,
                                 "variables": {"value": {"controls": value}, "operator": {"controls": operator}}})


def metrics_jsonl(drop: int) -> str:
    """src.train's metrics rows (schema metrics/1) of an 8-epoch run whose training loss drops by 0.3 at `drop`,
    evaluated every other epoch."""
    rows = []
    for e in range(1, EPOCHS + 1):
        row = {"schema": "metrics/1", "epoch": e, "step": 100 * e, "train_loss": 1.0 - 0.01 * e - 0.3 * (e >= drop)}
        if e % 2 == 0:
            row["val"] = {"loss": 1.0, "exact_match": 0.1 * e, "end_of_answer_acc": 1.0}
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


def write_seed(results, scale: str, seed: int, **kw) -> None:
    config, i = study.SCALES[scale], SEEDS.index(seed)
    d = results / config / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text(metrics_jsonl(DROP[scale][i]))
    (d / "eval.json").write_text(json.dumps(eval_json(config, seed, scale, i)))
    (d / "interchange.json").write_text(json.dumps(interchange_json(config, seed, scale, i, **kw)))
    (d / "summary.json").write_text(json.dumps({"schema": "summary/1", "status": "completed", "config": config,
                                                "seed": seed, "steps": 250016, "gpu_name": "GPU"}))


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    results = tmp_path_factory.mktemp("study") / "results"
    for scale in study.SCALES:
        for seed in SEEDS:
            write_seed(results, scale, seed)
    return results


@pytest.fixture
def results(complete, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(complete, copy)
    return copy


@pytest.fixture
def no_figures(monkeypatch):
    """The figures drawn as a stub: tests of what PRIMARY.md and primary.json say need not spend a second on them."""
    for name in ("iia_figure", "class_figure", "cost_figure", "curves_figure"):
        monkeypatch.setattr(study, name, lambda *args: b"\x89PNG stub")


@pytest.fixture(scope="module")
def report(complete, tmp_path_factory):
    """One full run with its figures on the complete study, with a DEVIATIONS.md and one compressed file, the
    registration's commit from git (where this is a checkout)."""
    results = tmp_path_factory.mktemp("report") / "results"
    shutil.copytree(complete, results)
    (results / "DEVIATIONS.md").write_text("- H3: the precedence file was regenerated (reason: a typo).\n")
    d = results / "study_10m" / "seed42"
    (d / "interchange.json.gz").write_bytes(gzip.compress((d / "interchange.json").read_bytes()))
    (d / "interchange.json").unlink()
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%H", "--", "docs/PREREGISTRATION.md"],
                          capture_output=True, text=True, check=False)
    commit = done.stdout.strip() if done.returncode == 0 else ""
    rep = run(results, *([] if commit else ["--preregistration-commit", "cc50020"]))
    return results, rep, commit or "cc50020"


def run(results, *extra) -> dict:
    assert study.main(["--results", str(results), "--out", str(results), "--simulations", "200", *extra]) == 0
    return json.loads((results / "primary.json").read_text())


def holm(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


# ---------------------------------------------------------------------------- the tests, against scipy


def test_the_five_tests_match_scipy_with_holm_floors_and_verdicts(report):
    results, rep, commit = report
    tests = {t["id"]: t for t in rep["tests"]}
    assert list(tests) == ["H1-flat", "H1-paren", "H2", "H3-pilot", "H3-10M"] and rep["partial"] is False
    flat = {s: [k / N for k in v] for s, v in FLAT.items()}
    paren = {s: [k / N for k in v] for s, v in PAREN.items()}
    cost = {s: [lost / N for lost in v] for s, v in PREC_LOST.items()}
    expected = {"H1-flat": scipy_stats.ttest_ind(flat["10M"], flat["pilot"], equal_var=False).pvalue,
                "H1-paren": scipy_stats.ttest_ind(paren["10M"], paren["pilot"], equal_var=False).pvalue,
                "H3-pilot": scipy_stats.ttest_1samp(cost["pilot"], 0.0).pvalue,
                "H3-10M": scipy_stats.ttest_1samp(cost["10M"], 0.0).pvalue}
    import numpy as np
    perm = scipy_stats.permutation_test((REACH["10M"], REACH["pilot"]), lambda x, y: np.mean(x) - np.mean(y),
                                        permutation_type="independent", n_resamples=np.inf)
    expected["H2"] = perm.pvalue
    for test_id, p in expected.items():
        assert tests[test_id]["p_value"] == pytest.approx(p, rel=1e-6), test_id
    adjusted = holm([expected[t] for t in tests])
    for t, adj in zip(tests.values(), adjusted):
        assert t["p_adjusted"] == pytest.approx(adj, rel=1e-6)
    assert tests["H1-flat"]["estimate"] == pytest.approx(np.mean(flat["10M"]) - np.mean(flat["pilot"]))
    assert tests["H3-pilot"]["estimate"] == pytest.approx(np.mean(cost["pilot"]))  # flat minus bracketed: positive
    assert tests["H2"]["p_floor"] == pytest.approx(2 / 12870) and tests["H2"]["p_floor_x_family"] == pytest.approx(10 / 12870)
    assert all(tests[t]["p_floor"] == 0.0 for t in ("H1-flat", "H1-paren", "H3-pilot", "H3-10M"))
    assert tests["H1-flat"]["verdict"].startswith("significant, 10M above the pilot: scale matters once data suffice")
    assert tests["H1-paren"]["verdict"].startswith("not significant: the difference is not shown at this power (10M - pilot")
    assert tests["H2"]["verdict"].startswith("significant: the bracket's value settles at the `)` at a different")
    assert tests["H3-pilot"]["verdict"].startswith("significant positive cost: brackets that change the order")
    assert tests["H3-10M"]["verdict"].startswith("not significant: no cost shown at this power (cost = ")
    for t in tests.values():
        assert t["ci95"][0] < t["estimate"] < t["ci95"][1] and 0.0 <= t["power"] <= 1.0
    # power: the registration's method (scripts/power.py) with the measured seed spreads and seeds
    from src import stats
    sds = [float(np.std(flat[s], ddof=1)) for s in ("pilot", "10M")]
    assert tests["H1-flat"]["power"] == stats.power_welch(0.05, *sds, np.random.default_rng(0), 8, 8, 200, 0.01)
    sd = float(np.std(cost["pilot"], ddof=1))
    assert tests["H3-pilot"]["power"] == stats.power_one_sample(0.05, sd, np.random.default_rng(0), 8, 200, 0.01)
    sds = [float(np.std(REACH[s], ddof=1)) for s in ("pilot", "10M")]
    assert tests["H2"]["power"] == stats.power_permutation(0.25, *sds, np.random.default_rng(0), 8, 8, 20, 0.01)[0]
    assert rep["registration"]["commit"] == commit and rep["schema"] == "study_primary/1"  # git's, by default
    md = (results / "PRIMARY.md").read_text()
    assert "no difference" not in md and "Exploratory (not part of the preregistered family)" in md
    assert md.count("\n| H") == 5 and "../../docs/PREREGISTRATION.md" not in md  # --out is not two levels below the root
    for name in ("iia_depth.png", "class_exact_match.png", "bracket_cost.png", "training_curves.png"):
        assert (results / name).read_bytes()[:4] == b"\x89PNG"
    # every test's numbers of PRIMARY.md are those of primary.json
    for t in tests.values():
        assert f"{t['estimate']:+.4f}" in md and f"{t['p_adjusted']:.3g}" in md


def test_exploratory_section_and_deviations_verbatim(report):
    results, rep, _ = report
    md = (results / "PRIMARY.md").read_text()
    assert "## Deviations from the registration\n\n- H3: the precedence file was regenerated (reason: a typo).\n" in md
    ex = rep["exploratory"]
    near = ex["near_twin_free"]["pilot"]["test_flat"]
    assert near["whole"]["mean"] == pytest.approx(sum(FLAT["pilot"]) / 8 / N)
    assert near["unseen"]["n"] == 8 and near["near_twins_seen"]["mean"] == 5
    assert ex["bracket_cost"]["10M"]["precedence_changing"]["mean"] == pytest.approx(sum(PREC_LOST["10M"]) / 8 / N)
    assert "operator/interchange/close" in ex["iia"]["10M"] and ex["iia"]["10M"]["value/value_preserving/close"]["figure"] == "kept_base"
    assert md.index("## Exploratory") > md.index("### Primary tests")
    assert rep["runs"]["10M"][0]["interchange"]["first_reach_close"] == pytest.approx(1 / 6)  # read from the .gz
    target = ex["targets"]["10M"]["test_flat"]  # the 10M schedule's aim; the pilot has none
    mean = sum(FLAT["10M"]) / 8 / N
    assert list(ex["targets"]) == ["10M"] and target["target"] == 0.95 and target["whole"]["mean"] == pytest.approx(mean)
    assert target["met"] == {"whole": False, "unseen": False}
    assert f"| 10M | test_flat | 0.95 | {mean:.4f} [" in md and f"| {mean - 0.95:+.4f} |" in md


def test_h1_is_checked_by_the_exact_permutation_test_outside_the_family(report):
    results, rep, _ = report
    check = rep["exploratory"]["h1_permutation"]
    flat = check["test_flat"]
    # the two scales' test_flat values do not overlap: only the observed split and its mirror are as extreme
    assert flat["splits"] == 12870 and flat["p_value"] == pytest.approx(2 / 12870)
    assert flat["estimate"] == pytest.approx((sum(FLAT["10M"]) - sum(FLAT["pilot"])) / 8 / N)
    assert flat["ci95"][0] < flat["estimate"] < flat["ci95"][1]
    assert [t["id"] for t in rep["tests"]] == list(study.TESTS)  # not a member of the family
    md = (results / "PRIMARY.md").read_text()
    section = md[md.index("### H1's difference without assuming normal seeds"):]
    assert md.index("## Exploratory") < md.index("### H1's difference without assuming normal seeds")
    assert f"| test_flat | {flat['estimate']:+.4f} [" in section and f"| {flat['p_value']:.3g} |" in section


def test_training_curves_say_where_each_seed_fell_and_are_drawn(report):
    results, rep, _ = report
    curves = rep["exploratory"]["training_curves"]
    assert [c["seed"] for c in curves["pilot"]] == list(SEEDS)
    assert [c["steepest_fall"]["epoch"] for c in curves["pilot"]] == DROP["pilot"]
    assert all(c["steepest_fall"]["fall"] == pytest.approx(0.31) for cs in curves.values() for c in cs)
    late = curves["pilot"][0]
    assert late["epochs"] == EPOCHS and late["train_loss_last"] == pytest.approx(1.0 - 0.08 - 0.3)
    assert late["val_last"] == pytest.approx(0.8) and late["val_best_epoch"] == EPOCHS
    md = (results / "PRIMARY.md").read_text()
    assert "| pilot | 42 | GPU | 8 | 0.6200 | 0.800 | 0.800 (epoch 8) | epoch 8 (-0.3100) |" in md
    assert "| pilot | 7 | GPU | 8 | 0.6200 | 0.800 | 0.800 (epoch 8) | epoch 4 (-0.3100) |" in md
    assert rep["runs"]["10M"][0]["curve"]["epoch"] == list(range(1, EPOCHS + 1))
    assert "training_curves.png" in rep["figures"] and "![training_curves.png](training_curves.png)" in md
    assert (results / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_no_deviations_file_says_none_recorded(results, no_figures):
    run(results, "--preregistration-commit", "cc50020")
    assert "## Deviations from the registration\n\nnone recorded\n" in (results / "PRIMARY.md").read_text()


# ---------------------------------------------------------------------------- incomplete studies and checks


def test_an_incomplete_study_names_the_missing_seeds_and_partial_tests_what_is_there(results, no_figures, capsys):
    for seed in (3, 4, 5):
        shutil.rmtree(results / "study_10m" / f"seed{seed}")
    shutil.rmtree(results / "study_pilot" / "seed5")
    code = run_main(study.main, ["--results", str(results), "--out", str(results), "--preregistration-commit", "cc50020"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "study_pilot: 7 of 8 seeds" in err and "missing 5" in err and "study_10m: 5 of 8 seeds" in err
    assert "missing 3, 4, 5" in err and "--partial" in err and not (results / "PRIMARY.md").exists()
    rep = run(results, "--partial", "--preregistration-commit", "cc50020")
    assert rep["partial"] and rep["label"].startswith("partial: 12 seeds")
    tests = {t["id"]: t for t in rep["tests"]}
    assert tests["H2"]["seeds"] == {"pilot": [42, 123, 7, 1, 2, 3, 4], "10M": [42, 123, 7, 1, 2]}
    assert tests["H2"]["p_floor"] == pytest.approx(1 / math.comb(12, 5))  # recomputed for 7 against 5
    md = (results / "PRIMARY.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("#") and not line.startswith("## ")]
    assert headings and all("partial: 12 seeds" in h for h in headings), headings


def test_a_study_with_one_scale_only_has_no_check_of_h1(results, no_figures):
    shutil.rmtree(results / "study_10m")
    rep = run(results, "--partial", "--preregistration-commit", "cc50020")
    assert rep["exploratory"]["h1_permutation"] == {}
    assert "without assuming normal seeds" not in (results / "PRIMARY.md").read_text()
    assert not {t["id"]: t for t in rep["tests"]}["H1-flat"]["computed"]


def test_a_failed_ceiling_check_writes_nothing_and_names_the_run(results, capsys):
    write_seed(results, "10M", 3, ceiling="FAILED")
    code = run_main(study.main, ["--results", str(results), "--out", str(results), "--preregistration-commit", "cc50020"])
    err = capsys.readouterr().err
    assert code == 2 and "CHECK FAILED, nothing written" in err and "study_10m seed 3 (value/interchange: FAILED)" in err
    assert sorted(p.name for p in results.iterdir()) == ["study_10m", "study_pilot"]


def test_a_seed_below_100_value_pairs_is_left_out_of_h2_and_flagged(results, no_figures):
    write_seed(results, "10M", 7, right=99)
    rep = run(results, "--preregistration-commit", "cc50020")
    h2 = next(t for t in rep["tests"] if t["id"] == "H2")
    assert h2["seeds"]["10M"] == [42, 123, 1, 2, 3, 4, 5] and len(h2["values"]["10M"]) == 7
    assert h2["p_floor"] == pytest.approx(1 / math.comb(15, 7))
    reach = [d for s, d in zip(SEEDS, REACH["10M"]) if s != 7]
    import numpy as np
    exact = scipy_stats.permutation_test((reach, REACH["pilot"]), lambda x, y: np.mean(x) - np.mean(y),
                                         permutation_type="independent", n_resamples=np.inf)
    # scipy's two-sided p is twice the smaller tail; with 7 against 8 seeds the splits are not symmetric, so
    # the test's own p (|difference| at least the observed) lies between one tail and scipy's figure
    assert exact.pvalue / 2 <= h2["p_value"] <= exact.pvalue + 1e-12
    assert [p["seed"] for p in rep["checks"]["left_out_of_h2"]] == [7]
    first = (results / "PRIMARY.md").read_text().split("### ")[0]
    assert "**Check: study_10m seed 7 answered 99 value interchange pairs right unpatched, fewer than 100" in first


def test_a_scale_whose_seeds_never_reach_is_reported_as_vanishing(results, no_figures):
    for i, seed in enumerate(SEEDS):
        write_seed(results, "10M", seed)
        ic = json.loads((results / "study_10m" / f"seed{seed}" / "interchange.json").read_text())
        ic["variables"]["value"]["controls"]["interchange"] = control_entry(6, 2.0, 1500)
        (results / "study_10m" / f"seed{seed}" / "interchange.json").write_text(json.dumps(ic))
    h2 = next(t for t in run(results, "--preregistration-commit", "cc50020")["tests"] if t["id"] == "H2")
    assert h2["values"]["10M"] == [1.0] * 8
    assert "no seed of the 10M reaches 0.9: the 10M does not carry V at the `)` (vanishes there)" in h2["verdict"]
    # the 10M's spread of 0 is the censoring's: its power uses the registration's assumed sd there, not 0
    assert h2["power_basis"].startswith(f"at the registration's assumed seed sd {study.H2_ASSUMED_SD:g} for the 10M,")
    measured, _ = study._power("H2", {"pilot": h2["values"]["pilot"], "10M": [1.0] * 7 + [0.99]}, 200)
    assumed, _ = study._power("H2", h2["values"], 200)
    assert measured > assumed  # a near-zero measured spread would claim a power the censored seeds do not have
    assert f"| {h2['power']:.2f} (sd assumed) |" in (results / "PRIMARY.md").read_text()


def test_h2_power_uses_the_measured_spreads_where_the_seeds_differ(report):
    _, rep, _ = report
    h2 = next(t for t in rep["tests"] if t["id"] == "H2")
    assert h2["power_basis"] is None and h2["power"] is not None


# ---------------------------------------------------------------------------- damaged input


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "eval.json").write_text('{"schema": "eval/2", "metrics": '), r"eval.json: unreadable"),
    (lambda d: (d / "interchange.json").unlink(), r"interchange.json: not found"),
    (lambda d: [(d / "interchange.json.gz").write_bytes(b"\x1f\x8bnot gzip"), (d / "interchange.json").unlink()],
     r"interchange.json.gz: unreadable"),
    (lambda d: (d / "eval.json").write_text(json.dumps({**json.loads((d / "eval.json").read_text()),
                                                        "bracket_cost_by_kind": {}})),
     r"eval.json: no 'bracket_cost_by_kind.precedence_changing'"),
    (lambda d: (d / "summary.json").write_text('{"schema": "summary/1", "status": "stopped_after_epoch"}'),
     r"not 'completed'"),
    (lambda d: (d.parent / "seed99").mkdir(), r"seed 99 is not one of the registered seeds"),
    (lambda d: (d / "metrics.jsonl").unlink(), r"metrics.jsonl: missing or without an epoch; copy the run's metrics"),
])
def test_damaged_files_give_one_line_errors_and_write_nothing(results, capsys, damage, message):
    import re
    damage(results / "study_pilot" / "seed123")
    code = run_main(study.main, ["--results", str(results), "--out", str(results), "--preregistration-commit", "cc50020"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (results / "PRIMARY.md").exists() and not (results / "primary.json").exists()


# ---------------------------------------------------------------------------- the synthetic files are the real format


def test_synthetic_files_pass_the_readers_and_have_the_shape_interchange_writes(complete):
    d = complete / "study_10m" / "seed42"
    assert read_result(d / "eval.json", "eval")["schema"] == "eval/2"
    assert read_result(d / "interchange.json", "interchange")["schema"] == "interchange/1"
    from types import SimpleNamespace

    from tests.test_interchange import TOY, parsed, toy_model, toy_records
    cfg = SimpleNamespace(model=TOY, data=SimpleNamespace(answer_format="plain"))
    real = interchange.interchange_variable(toy_model(), parsed(toy_records()["value"], "value"), cfg, "fp32", 50,
                                            log=lambda *_: None)["controls"]["interchange"]
    ours = json.loads((d / "interchange.json").read_text())["variables"]["value"]["controls"]["interchange"]
    assert set(ours) == set(real)
    assert set(ours["cells"][0]) == set(real["cells"][0]) and set(ours["ceiling"]) <= set(real["ceiling"])
    assert set(ours["first_reach"]) == set(real["first_reach"]) and set(ours["cells"][0]["iia"]) == set(real["cells"][0]["iia"])


@pytest.mark.slow
def test_a_real_battery_of_a_tiny_run_is_read(tmp_path):
    """evaluate and interchange on a trained tiny run, their files read by the study's reader."""
    from src.analysis import evaluate
    from tests.test_interchange import RANDOM_PAIRS, make_pair, write_pairs
    from tests.tiny import tiny_config, write_data, write_run
    write_data(tmp_path / "data")
    lines = [line for line in (REPO_ROOT / "data" / "pilot_test_paren_precedence.jsonl").read_text().splitlines()
             if json.loads(line)["flat_line"] < 40]
    (tmp_path / "data" / "pilot_test_paren_precedence.jsonl").write_text("\n".join(lines) + "\n")
    write_pairs(tmp_path / "data", "value", [make_pair(*p) for p in RANDOM_PAIRS])
    raw = tiny_config(tmp_path / "data")
    raw["name"] = "study_pilot"
    run_dir = tmp_path / "study_pilot" / "seed42"
    write_run(run_dir, raw, seed=42)
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "completed", "config": "study_pilot"}))
    assert evaluate.main(["--run", str(run_dir), "--device", "cpu"]) == 0
    assert interchange.main(["--run", str(run_dir), "--device", "cpu", "--variables", "value"]) == 0
    seed = study.read_seed(run_dir, "study_pilot", 42)
    assert 0.0 <= seed["test_flat"] <= 1.0 and seed["precedence_changing"]["n_pairs"] == len(lines)
    assert seed["interchange"]["value_pairs_right"] >= 0 and set(seed["near_twin_free"]) == set(study.NEAR_TWIN_SPLITS)
    with pytest.raises(UserError, match="the study is incomplete"):
        study.read_study(tmp_path, partial=False)
