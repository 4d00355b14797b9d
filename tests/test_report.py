"""src.report on tiny runs analysed with every tool, CPU only (see tests/tiny.py)."""

import json
import shutil

import pytest
import yaml

from src.analysis import ablate, evaluate, probe, roles
from src.errors import run_main
from src.report import main as report_main
from tests.analysis_runs import expect_user_error, full_disk_on, snapshot
from tests.runs import cli


@pytest.fixture(scope="module")
def analysed(analysed_tiny_runs):
    """Two seeds analysed with every tool (tests/conftest.py builds them once for the session)."""
    return analysed_tiny_runs


@pytest.mark.slow
def test_report_aggregates_seeds_and_states_the_tests_behind_each_section(analysed):
    out = analysed["root"] / "results" / "REPORT.md"
    assert report_main([*map(str, analysed["runs"]), "--out", str(out)]) == 0
    rep = json.loads((out.parent / "report.json").read_text())
    assert rep["schema"] == "report/2"
    tiny = rep["configs"]["tiny"]
    assert tiny["seeds"] == [1, 2]
    em = tiny["baseline"]["test_paren_matched"]["exact_match"]
    assert em["n"] == 2 and len(em["per_run"]) == 2
    cost = tiny["bracket_cost"]["per_run"][0]["bracket_cost"]
    assert cost["exact_match"]["test"] == "mcnemar_exact" and cost["answer_loss"]["test"] == "paired_t"
    assert "p_adjusted" in cost["answer_loss"]
    assert tiny["heads"]["per_run"][0]["families"]["head_bracket"]["size"] == 2 * 8 * 2
    assert {p["mode"] for p in tiny["targeted"]["per_run"]} == {"zero", "mean"}
    assert [e["role"] for e in tiny["roles"]["matched"]] == list(roles.ROLES)
    assert tiny["probe"]["per_run"][0]["summary"]["tasks"]["binary"]["test_paren"]["first_block"]["claim"]
    text = out.read_text()
    for heading in ("## 1. Training", "### 1b. Like with like", "## 2. Baseline metrics", "## 3. The cost of brackets",
                    "content-and-bracket", "## 4. Heads", "## 5. Heads matched by role", "## 6. Targeted set",
                    "## 7. Depth probes", "first block", "## 8. Depth 3", "## 9. Against the original study"):
        assert heading in text, heading
    assert "eval_equal_steps.json" in text  # no run has one: the report says so rather than comparing unlike steps
    for png in ("training_curves", "probe_relative_depth", "head_specialization", "attention_roles"):
        assert (out.parent / f"{png}.png").is_file(), png


@pytest.mark.slow
def test_the_same_run_twice_counts_once(analysed):
    out = analysed["root"] / "twice" / "REPORT.md"
    run = str(analysed["runs"][0])
    assert report_main([run, run + "/", "--out", str(out)]) == 0
    rep = json.loads((out.parent / "report.json").read_text())
    assert rep["configs"]["tiny"]["seeds"] == [1]
    assert any("counted once" in n for n in rep["notes"])


@pytest.mark.slow
def test_a_stale_result_file_names_the_file_and_the_command(analysed, tmp_path, capsys):
    run = tmp_path / "stale"
    shutil.copytree(analysed["runs"][0], run)
    old = json.loads((run / "ablation.json").read_text())
    old["schema"] = "ablation/1"
    (run / "ablation.json").write_text(json.dumps(old))
    assert run_main(report_main, [str(run), "--out", str(tmp_path / "out" / "REPORT.md")]) == 2
    err = capsys.readouterr().err
    assert "ablation.json" in err and "ablation/2" in err and "python -m src.analysis.ablate --run" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_architectures_under_one_config_name_are_an_error(analysed, tmp_path, capsys):
    run = tmp_path / "other"
    shutil.copytree(analysed["runs"][1], run)
    summary = json.loads((run / "summary.json").read_text()) | {"parameters": 123}
    (run / "summary.json").write_text(json.dumps(summary))
    assert run_main(report_main, [str(analysed["runs"][0]), str(run), "--out", str(tmp_path / "R.md")]) == 2
    assert "different architectures" in capsys.readouterr().err


@pytest.mark.slow
def test_a_bad_metrics_row_is_reported_and_skipped(analysed, tmp_path):
    run = tmp_path / "badrow"
    shutil.copytree(analysed["runs"][0], run)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write("{not json\n")
    out = tmp_path / "R.md"
    assert report_main([str(run), "--out", str(out)]) == 0
    notes = json.loads((tmp_path / "report.json").read_text())["notes"]
    assert any("metrics.jsonl:2" in n and "not valid JSON" in n for n in notes)


def test_a_bare_run_notes_every_missing_piece(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"schema": "summary/1", "config": "pilot", "seed": 42,
                                                  "parameters": 664192}))
    out = tmp_path / "REPORT.md"
    assert report_main([str(run), "--out", str(out)]) == 0
    notes = json.loads((tmp_path / "report.json").read_text())["notes"]
    for piece in ("eval.json", "ablation.json", "probe.json", "roles.json"):
        assert any(piece in n for n in notes), piece
    assert "config not in this report" in out.read_text()  # no 10M run given


@pytest.mark.parametrize("module", [ablate, probe, roles, evaluate])
def test_help_describes_every_flag(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--run", "--device", "--fp16", "--limit", "--checkpoint", "--debug"):
        assert flag in text, flag


def test_report_help(capsys):
    with pytest.raises(SystemExit):
        report_main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--out", "--curves-only", "--debug"):
        assert flag in text


@pytest.mark.slow
def test_the_report_writes_nowhere_it_is_not_told_to(analysed, capsys, monkeypatch):
    """No default output: without --out, src.report stops before reading a run, and writes nothing
    (the committed results/REPORT.md is never replaced by accident); --curves-only needs no --out."""
    from src.report import cli

    monkeypatch.setattr(cli, "build_report", lambda *a: pytest.fail("built a report without --out"))
    assert run_main(report_main, [str(analysed["runs"][0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out is required") and err.count("\n") == 1
    assert not (analysed["runs"][0] / "training_curve.png").exists()


# ---------------------------------------------------------------------------- refused outputs, a full disk, the report's inputs (docs/RELIABILITY.md)


@pytest.fixture(scope="module")
def analysed_runs(analysed_tiny_runs):
    """Two seeds of the tiny config, every analysis run, for the report (tests/conftest.py builds them once)."""
    return analysed_tiny_runs["runs"]


REPORT_FILES = ("REPORT.md", "report.json", "training_curves.png", "probe_relative_depth.png",
                "head_specialization.png", "attention_roles.png")


@pytest.mark.parametrize("target", REPORT_FILES)
@pytest.mark.slow
def test_report_output_that_is_a_directory_is_refused_before_writing(analysed_runs, tmp_path, capsys, target):
    out = tmp_path / "results"
    out.mkdir()
    (out / target).mkdir()
    before = snapshot(out)
    expect_user_error(cli(report_main, [*analysed_runs, "--out", out / "REPORT.md"], capsys),
                      str(out / target), "is a directory")
    assert snapshot(out) == before


@pytest.mark.parametrize("suffix", [".png", ".md", ".json"])
@pytest.mark.slow
def test_report_full_disk_leaves_no_partial_file(analysed_runs, tmp_path, capsys, monkeypatch, suffix):
    out = tmp_path / "results" / "REPORT.md"
    full_disk_on(monkeypatch, suffix)
    expect_user_error(cli(report_main, [*analysed_runs, "--out", out], capsys), "disk is full")
    files = {p.name: p.stat().st_size for p in out.parent.iterdir()}
    assert not [n for n in files if n.endswith(".tmp")] and all(size > 0 for size in files.values()), files
    assert not [n for n in files if n.endswith(suffix)], files


@pytest.mark.slow
def test_report_renders_every_figure_before_writing_any(analysed_runs, tmp_path, capsys, monkeypatch):
    from src.report import figures

    def broken(*args, **kwargs):
        raise ValueError("a figure that cannot be drawn")

    monkeypatch.setattr(figures, "attention_roles", broken)  # the last figure
    out = tmp_path / "results" / "REPORT.md"
    with pytest.raises(ValueError):
        report_main([*map(str, analysed_runs), "--out", str(out)])
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.slow
def test_report_counts_a_run_given_twice_once(analysed_runs, tmp_path, capsys):
    out = tmp_path / "R.md"
    link = tmp_path / "link"
    link.symlink_to(analysed_runs[0])
    rc, stdout, _ = cli(report_main, [analysed_runs[0], f"{analysed_runs[0]}/", link, analysed_runs[1], "--out", out], capsys)
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["configs"]["tiny"]["seeds"] == [1, 2]
    assert sum("counted once" in n for n in rep["notes"]) == 2 and "counted once" in stdout


@pytest.mark.slow
def test_two_architectures_under_one_config_name_name_both_runs_and_the_keys(analysed_runs, tmp_path, capsys):
    other = tmp_path / "wider"
    shutil.copytree(analysed_runs[1], other)
    raw = yaml.safe_load((other / "config.yaml").read_text())
    raw["model"]["d_model"] = 64
    raw["model"]["d_ff"] = 128
    (other / "config.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "R.md"
    err = expect_user_error(cli(report_main, [analysed_runs[0], other, "--out", out], capsys),
                            str(analysed_runs[0]), str(other), "d_model 32 vs 64", "d_ff 64 vs 128", "'tiny'")
    assert not out.exists()
    assert "num_layers" not in err  # only the keys that differ


BAD_METRICS_ROWS = {  # what each bad row is -> the row
    "not-json": "{not json",
    "not-a-dict": '["a list"]',
    "train_loss-text": '{"schema": "metrics/1", "epoch": 2, "step": 80, "train_loss": "x", "val": {"loss": 2.0}}',
    "val-number": '{"schema": "metrics/1", "epoch": 2, "step": 80, "train_loss": 2.0, "val": 5}',
    "val-loss-null": '{"schema": "metrics/1", "epoch": 2, "step": 80, "train_loss": 2.0, "val": {"loss": null, '
                     '"exact_match": 0, "end_of_answer_acc": 0.5}}',
    "epoch-text": '{"schema": "metrics/1", "epoch": "2", "step": 80}',
}


@pytest.mark.slow
def test_a_bad_metrics_row_is_reported_with_its_line_and_skipped(analysed_runs, tmp_path, capsys):
    """Each kind of bad row, one per line (lines 2-7, a good row after them), in one report: every
    one is noted with its own line and skipped, in the full report and with --curves-only."""
    run = tmp_path / "badrow"
    shutil.copytree(analysed_runs[0], run)
    with (run / "metrics.jsonl").open("a") as fh:
        for line in BAD_METRICS_ROWS.values():
            fh.write(line + "\n")
        fh.write(json.dumps({"schema": "metrics/1", "epoch": 3, "step": 120, "train_loss": 2.1,
                             "val": {"loss": 2.0, "exact_match": 0.0, "end_of_answer_acc": 0.5}}) + "\n")
    bad_lines = {kind: 2 + i for i, kind in enumerate(BAD_METRICS_ROWS)}
    out = tmp_path / "R.md"
    rc, stdout, err = cli(report_main, [run, "--out", out], capsys)
    assert rc == 0, err
    notes = json.loads((tmp_path / "report.json").read_text())["notes"]
    for kind, number in bad_lines.items():
        assert any(f"{run / 'metrics.jsonl'}:{number}:" in n and "skipped" in n for n in notes), (kind, notes)
    assert not any(f"{run / 'metrics.jsonl'}:8:" in n for n in notes), notes  # the good row after them is read
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    rc, stdout, err = cli(report_main, [run, "--out", out, "--curves-only"], capsys)
    assert rc == 0, err
    for kind, number in bad_lines.items():
        assert f"metrics.jsonl:{number}:" in stdout, (kind, stdout)
