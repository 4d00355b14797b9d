"""Inputs a hostile new user gives: foreign checkpoints, names that leave their directory, empty paths,
huge or deep or mistyped values, seeds out of range, unpacking over a run. Each ends in a one-line error
(or a note), never a traceback, an internal error or a write in the wrong place."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from src import sweep
from src.analysis import evaluate
from src.errors import UserError, run_main
from src.rundir.directory import RunDir
from src.rundir.results import read_metrics, read_result

from tests.quickrun import quick_run

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))


def error_of(main, argv, capsys, code=2) -> str:
    try:
        rc = run_main(main, [str(a) for a in argv])
    except SystemExit as exit_:
        rc = exit_.code
    out, err = capsys.readouterr()
    assert rc == code, (rc, err)
    assert "Traceback" not in err and "internal error" not in err, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return {"a": quick_run(root / "a", root / "data", seed=1), "b": quick_run(root / "b", root / "data", seed=2, width=48),
            "root": root}


# ---------------------------------------------------------------------------- 3. foreign checkpoints


def test_a_checkpoint_of_another_run_is_refused(runs, capsys):
    before = sorted(os.listdir(runs["a"]))
    err = error_of(evaluate.main, ["--run", runs["a"], "--checkpoint", runs["b"] / "checkpoint_best.pt", "--device",
                                   "cpu", "--limit", "4"], capsys)
    assert "not a checkpoint of --run" in err and "seed 2, the run's 1" in err and "model.d_model 48" in err
    assert [n for n in sorted(os.listdir(runs["a"])) if n != ".lock"] == [n for n in before if n != ".lock"]
    assert not (runs["a"] / "eval.json").exists()


def test_a_foreign_checkpoint_on_purpose_writes_only_to_out(runs, capsys):
    out = runs["root"] / "foreign_eval.json"
    assert run_main(evaluate.main, ["--run", str(runs["a"]), "--checkpoint", str(runs["b"] / "checkpoint_best.pt"),
                                    "--device", "cpu", "--limit", "4", "--out", str(out)]) == 0
    assert "writing only to --out" in capsys.readouterr().err
    assert out.is_file() and not (runs["a"] / "eval.json").exists()


def test_the_runs_own_checkpoint_by_path_is_accepted(runs, capsys):
    out = runs["root"] / "own.json"
    assert run_main(evaluate.main, ["--run", str(runs["a"]), "--checkpoint", str(runs["a"] / "checkpoint_best.pt"),
                                    "--device", "cpu", "--limit", "4", "--out", str(out)]) == 0
    assert "writing only" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- 4. names and empty paths


def test_a_sweep_config_stem_of_dots_is_refused(tmp_path, capsys):
    grid = tmp_path / "grid"
    grid.mkdir()
    shutil.copy(REPO_ROOT / "configs" / "pilot.yaml", grid / "...yaml")  # stem ".."
    runs_dir = tmp_path / "deep" / "runs"
    err = error_of(sweep.main, [grid, "--seeds", "1", "--runs-dir", runs_dir, "--results-dir", tmp_path / "res",
                                "--device", "cpu", "--list"], capsys)
    assert "'..' cannot name a directory inside the output directory" in err
    assert not (tmp_path / "deep").exists() or not any((tmp_path / "deep").iterdir())


@pytest.mark.parametrize("argv", [
    ["src.report.analyses", "RUN", "--out", ""],
    ["carry_weights", "pack", "RUN", "--out", ""],
    ["src.report", "RUN", "--out", ""],
    ["src.analysis.rolematch", "--pilot", "RUN", "--large", "RUN", "--out", ""],
    ["src.analysis.evaluate", "--run", ""],
], ids=["mechanisms", "weights-pack", "report", "rolematch", "evaluate-run"])
def test_an_empty_output_path_is_an_error(argv, runs, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(argv[0] if argv[0] != "carry_weights" else "carry_weights")
    args = [str(runs["a"]) if a == "RUN" else a for a in argv[1:]]
    err = error_of(module.main, args, capsys)
    assert "the path is empty" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("module, argv", [
    ("evaluate", ["--out", ""]), ("ablate", ["--out", ""]), ("probe", ["--out", ""]), ("roles", ["--out", ""]),
    ("patching", ["--out", ""]), ("value_probe", ["--out", ""]), ("interchange", ["--out", ""]), ("evaluate", ["--data-dir", ""]),
    ("run_all", ["--run", ""]),
])
def test_an_analysis_commands_empty_out_is_an_error(module, argv, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"src.analysis.{module}").main
    run = ["--run", str(tmp_path / "no_such_run")] if argv[0] != "--run" else []
    err = error_of(main, run + argv + ["--device", "cpu"], capsys)
    assert "the path is empty" in err and len(err.strip().splitlines()) <= 3, err
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- 6. hostile but valid JSON


@pytest.mark.parametrize("text, fragment", [
    ('{"schema": "eval/2", "seed": ' + "9" * 5000 + "}", "unreadable"),
    ("[" * 5000 + "]" * 5000, "nested more than"),
    ('{"schema": "summary/1", "parameters": "18016 (about)"}', "'parameters' must be a whole number"),
    ('{"schema": "summary/1", "seed": 1e30}', "'seed' must be an integer from 0 to"),
    ('{"schema": "summary/1", "seed": -3}', "'seed' must be an integer from 0 to"),
], ids=["5000-digit-seed", "nested-5000-deep", "number-as-text", "seed-1e30", "negative-seed"])
def test_hostile_result_files_are_one_line_errors(text, fragment, tmp_path):
    kind = "eval" if "eval/2" in text else "summary"
    path = tmp_path / f"{kind}.json"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment) as info:
        read_result(path, kind)
    assert str(path) in str(info.value) and len(str(info.value)) < 600


def test_damaged_metrics_lines_are_skipped_with_their_line_number(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    good = {"schema": "metrics/1", "epoch": 1, "step": 2, "train_loss": 1.0}
    path.write_text("\n".join([json.dumps(good), "[" * 100_000 + "]" * 100_000,
                               '{"epoch": ' + "1" * 5000 + "}", json.dumps({**good, "epoch": "2"}),
                               json.dumps({**good, "epoch": 3})]) + "\n")
    rows, problems = read_metrics(path)
    assert [r["epoch"] for r in rows] == [1, 3]
    assert [p.split(": ")[0] for p in problems] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    run = RunDir(str(tmp_path), resume=True) if (tmp_path / "checkpoint_latest.pt").exists() else None
    assert run is None  # the RunDir reader shares read_metrics: resume skips the same lines with a warning


def test_a_data_line_nested_thousands_deep_is_a_one_line_error(tmp_path):
    from src.data import load_jsonl

    path = tmp_path / "d.jsonl"
    path.write_text('{"expr": "' + "(" * 3000 + "1+2" + ")" * 3000 + '", "result": 3, "depth": []}\n')
    with pytest.raises(UserError, match=f"{path}:1"):
        load_jsonl(path, 32)
    path.write_text("[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(UserError, match=f"{path}:1"):
        load_jsonl(path, 32)


@pytest.mark.slow
def test_a_manifest_place_with_a_nul_byte_is_an_error(tmp_path):
    import carry_weights

    manifest = tmp_path / "x.weights.json"
    manifest.write_text(json.dumps({"schema": "weights/1", "place": "a\u0000b", "pieces": [{"file": "x.part0",
                                                                                              "sha256": "0" * 64}],
                                    "sha256": "0" * 64, "bytes": 0}))
    proc = subprocess.run([sys.executable, "-m", "scripts.carry_weights", "unpack", str(tmp_path),
                           "--runs-dir", str(tmp_path / "runs")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert carry_weights  # imported: the module loads without running anything


# ---------------------------------------------------------------------------- 7. text that cannot be rendered


def test_a_config_name_with_dollars_is_drawn_as_plain_text():
    from src.report.figures import training_curves
    from src.text import plain_text

    rows = [{"epoch": 1, "step": 1, "train_loss": 1.0, "val": {"loss": 1.0, "exact_match": 0.1, "end_of_answer_acc": 0.2}}]
    with plain_text():
        png = training_curves([(r"cfg $\frac{a}{$ s1", rows), ("x$^{", rows)])
    assert png[:4] == b"\x89PNG"


@pytest.mark.parametrize("figure", ["class_heatmap", "class_curve", "patching_profile"])
def test_a_config_name_with_dollars_is_drawn_as_plain_text_in_the_extension_and_mechanisms_figures(figure):
    from src.report import analyses, scaling

    name = "a$x^$b"
    if figure == "class_heatmap":
        png = scaling.class_heatmap("pilot", name, {"pooled": {"by_class": {"operands=2|operators=+-|depth=1": {
            "mean": 0.5, "n": 10}}}, "N": 1000, "seeds": [1]})
    elif figure == "class_curve":
        png = scaling.class_curve_figure({"class_curve": {name: {"operands=2|operators=+-": [
            {"N": 100, "mean": 0.5, "ci95": [0.4, 0.6]}, {"N": 1000, "mean": 0.7, "ci95": [0.6, 0.8]}]}}})
    else:
        png = analyses.profile_figure([{"config": name, "seed": 1, "patching_profile": {"classes": {
            c: {"logp_change": [0.1, -0.2]} for c in analyses.PROFILE_CLASSES}}}])
    assert png[:4] == b"\x89PNG"


@pytest.mark.skipif(sys.platform != "linux", reason="a name of bytes that are not UTF-8")
def test_a_run_directory_name_that_is_not_utf8_is_shown_escaped(runs, tmp_path, capsys):
    from src.report.cli import main as report

    odd = quick_run(Path(os.fsdecode(bytes(tmp_path) + b"/run\xff")), runs["root"] / "data", name=r"cfg $\frac{a}{$")
    out = tmp_path / "out" / "REPORT.md"
    assert run_main(report, [str(odd), "--out", str(out)]) == 0, capsys.readouterr().err
    assert "run\\xff" in out.read_text(encoding="utf-8")


@pytest.mark.skipif(sys.platform != "linux", reason="a name of bytes that are not UTF-8")
@pytest.mark.parametrize("module", ["roles", "ablate", pytest.param("probe", marks=pytest.mark.slow)])
def test_an_analysis_of_a_run_whose_name_is_not_utf8_shows_it_escaped(module, runs, tmp_path, capsys):
    import importlib

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/run\xff"))
    shutil.copytree(runs["a"], odd)
    main = importlib.import_module(f"src.analysis.{module}").main
    assert run_main(main, ["--run", str(odd), "--limit", "4", "--device", "cpu", "--no-progress"]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert "run\\xff" in out and "\udcff" not in out
    assert any(name.endswith(".png") for name in os.listdir(odd)) or module == "probe"


# ---------------------------------------------------------------------------- 8. arguments


def test_a_negative_data_seed_is_refused(capsys):
    from src.data.cli import main as data_main

    with pytest.raises(SystemExit):
        data_main(["--seed", "-1", "--out", "/nonexistent/never"])
    assert "must be an integer written in digits, at least 0" in capsys.readouterr().err


def test_a_seed_of_100000_digits_gives_a_short_message(capsys):
    import src.train

    with pytest.raises(SystemExit):
        src.train.main(["--config", "configs/pilot.yaml", "--seed", "7" * 100_000])
    err = capsys.readouterr().err
    assert "100,000 characters" in err and len(err) < 2000
    err = error_of(sweep.main, ["configs", "--seeds", "1," + "7" * 100_000], capsys)
    assert len(err) < 1200


def test_sixty_seeds_make_a_bounded_log_name(tmp_path):
    seeds = list(range(1_000_000_000, 1_000_000_060))
    log = sweep.train_log(tmp_path, seeds)
    assert len(log.name) <= 120 and log != sweep.train_log(tmp_path, seeds[:-1])
    log.write_text("ok")  # within the file system's limit
    assert sweep.train_log(tmp_path, [42, 7]).name == "train_42+7.log"


# ---------------------------------------------------------------------------- 9. unpacking over a run


def test_unpacking_over_a_runs_results_is_refused_without_force(runs, tmp_path, capsys):
    import carry_weights

    packs = tmp_path / "packs"
    source = tmp_path / "cfg" / "seed1"
    shutil.copytree(runs["a"], source, ignore=shutil.ignore_patterns(".lock"))
    assert run_main(carry_weights.main, ["pack", str(source), "--out", str(packs)]) == 0
    results = tmp_path / "results"
    (results / "cfg" / "seed1").mkdir(parents=True)
    (results / "cfg" / "seed1" / "summary.json").write_text('{"other": "run"}')
    capsys.readouterr()
    err = error_of(carry_weights.main, ["unpack", packs, "--runs-dir", tmp_path / "runs", "--results-dir", results],
                   capsys)
    assert "would replace 1 file(s) of an existing run" in err and "summary.json" in err and "--force" in err
    assert (results / "cfg" / "seed1" / "summary.json").read_text() == '{"other": "run"}'
    assert not (tmp_path / "runs").exists()
    assert run_main(carry_weights.main, ["unpack", str(packs), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
                                         str(results), "--force"]) == 0
    assert "replacing" in capsys.readouterr().err
    assert json.loads((results / "cfg" / "seed1" / "summary.json").read_text())["seed"] == 1
