"""Reliability: the analysis commands: evaluate, ablate, probe, roles, report.

Each case goes through the real entry point, in-process through `run_main(main, argv)` as
`python -m src.<tool>` runs it, and checks the exit status, that the message names the file, the
tensor or the flag, that it is one line without a traceback, and that nothing was written: the run
directory is compared byte for byte with a snapshot taken before the command. The cases: a
checkpoint with non-finite weights, numeric flags out of range and list flags that are not strict
lists, output paths that are directories, a full disk while writing a result or a figure, the
report's inputs (a run given twice, two architectures under one config name, a bad metrics row),
and the precision an analysis runs in by default. docs/RELIABILITY.md lists every case.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import src.rundir.atomic
from src.analysis import ablate, common, evaluate, probe, roles, run_all
from src.model import CompactTransformer
from src.report import main as report_main
from tests.test_reliability import cli  # the one runner of an entry point, as its __main__ runs it
from tests.tiny import tiny_config, write_data, write_run

ANALYSES = {"evaluate": evaluate.main, "ablate": ablate.main, "probe": probe.main, "roles": roles.main}
FAST = {"evaluate": [], "ablate": ["--max-set-size", "1"], "probe": ["--max-iter", "5", "--resamples", "100"],
        "roles": []}
MAX_MESSAGE = 600


def snapshot(root: Path) -> dict:
    """Every file under `root` and its bytes (directories as None)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def expect_error(result, *fragments) -> str:
    rc, _, err = result
    assert rc == 2, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def expect_user_error(result, *fragments) -> str:
    """A UserError: exactly one line `error: ...`."""
    err = expect_error(result, *fragments).strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and len(err) < MAX_MESSAGE, err
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    write_data(root / "data")
    raw = tiny_config(root / "data")
    run = root / "run"
    write_run(run, raw)
    return {"root": root, "raw": raw, "run": run}


def copy_run(tiny, tmp_path, name="run") -> Path:
    run = tmp_path / name
    shutil.copytree(tiny["run"], run)
    # result files of an earlier analysis, which a failed command must leave untouched
    for f in ("eval.json", "ablation.json", "probe.json", "roles.json"):
        (run / f).write_text('{"schema": "earlier", "keep": "me"}\n')
    for f in ("ablation_heatmap.png", "probe_layers.png", "roles.png"):
        (run / f).write_bytes(b"\x89PNG earlier figure")
    return run


# ---------------------------------------------------------------------------- 9. non-finite weights


def poison(run: Path, tensor: str, value: float) -> Path:
    path = run / "checkpoint_best.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"][tensor].view(-1)[3] = value
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("tool", list(ANALYSES))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused_before_anything_is_written(tiny, tmp_path, capsys, tool, value):
    run = copy_run(tiny, tmp_path)
    path = poison(run, "blocks.1.ffn.up.weight", value)
    poison(run, "ln_f.weight", float("nan"))  # a later tensor: the message names the first one
    before = snapshot(run)
    err = expect_user_error(cli(ANALYSES[tool], ["--run", run, "--device", "cpu", *FAST[tool]], capsys),
                            str(path), "blocks.1.ffn.up.weight", "finite")
    assert "ln_f.weight" not in err
    assert snapshot(run) == before


def test_finite_weights_check_covers_a_checkpoint_named_by_path(tiny, tmp_path, capsys):
    """The one place (src.rundir.checkpoint, through which every tool loads): a checkpoint named by
    --checkpoint PATH is checked too."""
    run = copy_run(tiny, tmp_path)
    other = tmp_path / "elsewhere.pt"
    shutil.copy(run / "checkpoint_best.pt", other)
    ckpt = torch.load(other, weights_only=True)
    ckpt["model"]["embed.weight"][0, 0] = float("nan")
    torch.save(ckpt, other)
    before = snapshot(run)
    expect_user_error(cli(evaluate.main, ["--run", run, "--device", "cpu", "--checkpoint", other], capsys),
                      str(other), "embed.weight", "finite")
    assert snapshot(run) == before


# ---------------------------------------------------------------------------- 10. flags


BAD_FLAGS = [
    # (tool, argv, what the message must name)
    ("probe", ["--resamples", "0"], "--resamples"),
    ("probe", ["--resamples", "99"], "--resamples"),
    ("probe", ["--resamples", "1e11"], "--resamples"),
    ("probe", ["--resamples", str(10**11)], "--resamples"),
    ("probe", ["--l2", "nan"], "--l2"),
    ("probe", ["--l2", "inf"], "--l2"),
    ("probe", ["--l2", "-1"], "--l2"),
    ("probe", ["--l2", "abc"], "--l2"),
    ("probe", ["--max-iter", "0"], "--max-iter"),
    ("probe", ["--max-iter", str(10**9)], "--max-iter"),
    ("probe", ["--seed", "-1"], "--seed"),
    ("probe", ["--seed", str(2**64)], "--seed"),
    ("probe", ["--splits", "test_nope"], "--splits"),
    ("probe", ["--splits", "test_flat", "test_flat"], "--splits"),
    ("roles", ["--splits", "test_paren", "test_paren"], "--splits"),
    ("roles", ["--splits", "test_nope"], "--splits"),
    ("ablate", ["--max-set-size", "0"], "--max-set-size"),
    ("ablate", ["--max-set-size", "-3"], "--max-set-size"),
    ("ablate", ["--max-set-size", "1e11"], "--max-set-size"),
    ("ablate", ["--max-set-size", str(10**11)], "--max-set-size"),
    ("ablate", ["--heads", ","], "--heads"),
    ("ablate", ["--heads", ""], "--heads"),
    ("ablate", ["--heads", "0.1,,1.2"], "--heads"),
    ("ablate", ["--heads", "0.1,0.1"], "--heads"),
    ("ablate", ["--heads", "0.1.2"], "--heads"),
    ("ablate", ["--heads", "9.0"], "--heads"),
    ("ablate", ["--modes", "zero,,mean"], "--modes"),
    ("ablate", ["--modes", ","], "--modes"),
    ("ablate", ["--modes", ""], "--modes"),
    ("ablate", ["--modes", "zero,zero"], "--modes"),
    ("ablate", ["--modes", "median"], "--modes"),
    ("ablate", ["--resamples", "1e11"], "--resamples"),
    *[(tool, ["--limit", limit], "--limit") for tool in ANALYSES for limit in ("0", "-5", "1e11", "x")],
]


@pytest.mark.parametrize("tool, argv, flag", BAD_FLAGS, ids=[f"{t}{' '.join(a)}" for t, a, _ in BAD_FLAGS])
def test_bad_flags_are_refused_before_anything_is_read_or_written(tiny, tmp_path, capsys, tool, argv, flag):
    run = copy_run(tiny, tmp_path)
    before = snapshot(run)
    err = expect_error(cli(ANALYSES[tool], ["--run", run, "--device", "cpu", *argv], capsys), flag)
    assert len(err.strip().splitlines()) <= 2, err  # the usage line and one error line at most
    assert snapshot(run) == before


def test_resamples_has_a_stated_maximum(capsys):
    from src.cli import MAX_RESAMPLES

    assert MAX_RESAMPLES == 10**6
    expect_user_error(cli(probe.main, ["--run", "x", "--resamples", str(MAX_RESAMPLES + 1)], capsys),
                      "--resamples 1000001", "at most 1000000")


@pytest.mark.parametrize("argv", [["--heads", "0.1, 1.2"], ["--heads", "L0-H1,L1-H2"], ["--modes", "mean,zero"]])
def test_good_lists_still_parse(argv):
    parser = ablate.build_parser()
    args = parser.parse_args(["--run", "x", *argv])
    assert args.heads in (None, [(0, 1), (1, 2)]) and args.modes in (["zero", "mean"], ["mean", "zero"])


def test_cli_helpers():
    import argparse

    from src.cli import comma_list, float_in, int_in

    assert int_in(1, 5)("5") == 5 and int_in(1, None)(str(10**20)) == 10**20
    for bad in ("0", "6", "1e3", "1.0", "", " ", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            int_in(1, 5)(bad)
    assert float_in(0, None)("1e-4") == 1e-4 and float_in(0, 1)("1") == 1.0
    for bad in ("nan", "inf", "-inf", "-1e-9", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            float_in(0, None)(bad)
    parse = comma_list(choices=("a", "b"))
    assert parse("a,b") == ["a", "b"] and parse(" b , a ") == ["b", "a"]
    for bad in ("", ",", "a,", ",a", "a,,b", "a,a", "c"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


# ---------------------------------------------------------------------------- 11. writers


@pytest.mark.parametrize("tool, target", [
    ("evaluate", "eval.json"), ("ablate", "ablation.json"), ("ablate", "ablation_heatmap.png"),
    ("probe", "probe.json"), ("probe", "probe_layers.png"), ("roles", "roles.json"), ("roles", "roles.png")])
def test_an_output_path_that_is_a_directory_is_refused_before_any_computation(tiny, tmp_path, capsys, monkeypatch,
                                                                              tool, target):
    run = copy_run(tiny, tmp_path)
    (run / target).unlink()
    (run / target).mkdir()
    before = snapshot(run)
    for reader in ("batches", "all_records"):  # every analysis reads its data through these
        monkeypatch.setattr(common.RunData, reader, lambda *a, **k: pytest.fail("computed before checking --out"))
    expect_user_error(cli(ANALYSES[tool], ["--run", run, "--device", "cpu", *FAST[tool]], capsys),
                      str(run / target), "is a directory")
    assert snapshot(run) == before


def test_ablate_out_flag_that_is_a_directory(tiny, tmp_path, capsys):
    run = copy_run(tiny, tmp_path)
    before = snapshot(run)
    expect_user_error(cli(ablate.main, ["--run", run, "--device", "cpu", "--out", tmp_path], capsys),
                      f"--out {tmp_path}", "is a directory")
    assert snapshot(run) == before


def full_disk_on(monkeypatch, suffix: str):
    """Every atomic write of a file ending in `suffix` fails with ENOSPC half-way through its bytes."""
    real = src.rundir.atomic.write_synced

    def write(path, data):
        if src.rundir.atomic.target_name(path).endswith(suffix):
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(src.rundir.atomic, "write_synced", write)


@pytest.mark.parametrize("suffix", [".json", ".png"])
def test_ablate_full_disk_leaves_no_partial_file(tiny, tmp_path, capsys, monkeypatch, suffix):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    full_disk_on(monkeypatch, suffix)
    err = expect_user_error(cli(ablate.main, ["--run", run, "--device", "cpu", "--max-set-size", "1", "--limit", "8",
                                              "--modes", "zero"], capsys), "disk is full")
    assert not (run / "ablation.limit8_heatmap.png").exists() and not list(run.glob("*.tmp"))
    if suffix == ".json":  # the first write failed: nothing at all
        assert "ablation.limit8.json" in err and not (run / "ablation.limit8.json").exists()
    else:
        assert "ablation.limit8_heatmap.png" in err


@pytest.mark.parametrize("suffix", [".json", ".png"])
def test_probe_full_disk_leaves_no_partial_file(tiny, tmp_path, capsys, monkeypatch, suffix):
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    full_disk_on(monkeypatch, suffix)
    expect_user_error(cli(probe.main, ["--run", run, "--device", "cpu", *FAST["probe"], "--limit", "8"], capsys),
                      "disk is full")
    assert not (run / "probe_layers.limit8.png").exists() and not list(run.glob("*.tmp"))


@pytest.fixture(scope="module")
def analysed(analysed_tiny_runs):
    """Two seeds of the tiny config, every analysis run, for the report (tests/conftest.py builds them once)."""
    return analysed_tiny_runs["runs"]


REPORT_FILES = ("REPORT.md", "report.json", "training_curves.png", "probe_relative_depth.png",
                "head_specialization.png", "attention_roles.png")


@pytest.mark.parametrize("target", REPORT_FILES)
def test_report_output_that_is_a_directory_is_refused_before_writing(analysed, tmp_path, capsys, target):
    out = tmp_path / "results"
    out.mkdir()
    (out / target).mkdir()
    before = snapshot(out)
    expect_user_error(cli(report_main, [*analysed, "--out", out / "REPORT.md"], capsys),
                      str(out / target), "is a directory")
    assert snapshot(out) == before


@pytest.mark.parametrize("suffix", [".png", ".md", ".json"])
def test_report_full_disk_leaves_no_partial_file(analysed, tmp_path, capsys, monkeypatch, suffix):
    out = tmp_path / "results" / "REPORT.md"
    full_disk_on(monkeypatch, suffix)
    expect_user_error(cli(report_main, [*analysed, "--out", out], capsys), "disk is full")
    files = {p.name: p.stat().st_size for p in out.parent.iterdir()}
    assert not [n for n in files if n.endswith(".tmp")] and all(size > 0 for size in files.values()), files
    assert not [n for n in files if n.endswith(suffix)], files


def test_report_renders_every_figure_before_writing_any(analysed, tmp_path, capsys, monkeypatch):
    from src.report import figures

    def broken(*args, **kwargs):
        raise ValueError("a figure that cannot be drawn")

    monkeypatch.setattr(figures, "attention_roles", broken)  # the last figure
    out = tmp_path / "results" / "REPORT.md"
    with pytest.raises(ValueError):
        report_main([*map(str, analysed), "--out", str(out)])
    assert not out.parent.exists() or not list(out.parent.iterdir())


# ---------------------------------------------------------------------------- 12. report inputs


def test_report_counts_a_run_given_twice_once(analysed, tmp_path, capsys):
    out = tmp_path / "R.md"
    link = tmp_path / "link"
    link.symlink_to(analysed[0])
    rc, stdout, _ = cli(report_main, [analysed[0], f"{analysed[0]}/", link, analysed[1], "--out", out], capsys)
    assert rc == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["configs"]["tiny"]["seeds"] == [1, 2]
    assert sum("counted once" in n for n in rep["notes"]) == 2 and "counted once" in stdout


def test_two_architectures_under_one_config_name_name_both_runs_and_the_keys(analysed, tmp_path, capsys):
    other = tmp_path / "wider"
    shutil.copytree(analysed[1], other)
    raw = yaml.safe_load((other / "config.yaml").read_text())
    raw["model"]["d_model"] = 64
    raw["model"]["d_ff"] = 128
    (other / "config.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "R.md"
    err = expect_user_error(cli(report_main, [analysed[0], other, "--out", out], capsys),
                            str(analysed[0]), str(other), "d_model 32 vs 64", "d_ff 64 vs 128", "'tiny'")
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


def test_a_bad_metrics_row_is_reported_with_its_line_and_skipped(analysed, tmp_path, capsys):
    """Each kind of bad row, one per line (lines 2-7, a good row after them), in one report: every
    one is noted with its own line and skipped, in the full report and with --curves-only."""
    run = tmp_path / "badrow"
    shutil.copytree(analysed[0], run)
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


# ---------------------------------------------------------------------------- precision of an analysis


def fp16_run(tiny, tmp_path) -> Path:
    run = copy_run(tiny, tmp_path)
    path = run / "checkpoint_best.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["precision"] = "fp16"
    torch.save(ckpt, path)
    return run


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_an_fp16_run_is_analysed_in_fp32_on_the_cpu_with_a_note(tiny, tmp_path, capsys):
    run = fp16_run(tiny, tmp_path)
    rc, _, err = cli(evaluate.main, ["--run", run, "--device", "cpu", "--limit", "4"], capsys)
    assert rc == 0, err
    assert "note: the run trained in fp16; evaluating in fp32 on the CPU" in err
    res = json.loads((run / "eval.limit4.json").read_text())
    assert res["precision"] == "fp32" and res["fp16"] is False


@pytest.mark.parametrize("flags", [["--precision", "fp16"], ["--fp16"], ["--precision", "bf16"]])
def test_explicit_half_precision_on_the_cpu_is_an_error(tiny, tmp_path, capsys, flags):
    run = copy_run(tiny, tmp_path)
    before = snapshot(run)
    expect_user_error(cli(evaluate.main, ["--run", run, "--device", "cpu", *flags], capsys),
                      "needs a CUDA device")
    assert snapshot(run) == before


@pytest.mark.gpu
def test_an_fp16_run_is_analysed_in_fp16_on_cuda_by_default(tiny, tmp_path, capsys):
    run = fp16_run(tiny, tmp_path)
    rc, _, err = cli(evaluate.main, ["--run", run, "--device", "cuda", "--limit", "4"], capsys)
    assert rc == 0, err
    res = json.loads((run / "eval.limit4.json").read_text())
    assert res["precision"] == "fp16" and res["fp16"] is True
    rc, _, err = cli(evaluate.main, ["--run", run, "--device", "cuda", "--limit", "4", "--precision", "fp32"], capsys)
    assert rc == 0 and json.loads((run / "eval.limit4.json").read_text())["precision"] == "fp32"


# ---------------------------------------------------------------------------- opening a run: its seed and its state


def test_the_seed_comes_from_the_checkpoint_and_the_control_is_built_from_it(tmp_path, capsys):
    write_data(tmp_path / "data")
    run = tmp_path / "run"
    write_run(run, tiny_config(tmp_path / "data"), seed=5)
    (run / "summary.json").unlink()  # the checkpoint alone says which seed trained the run
    args = probe.build_parser().parse_args(["--run", str(run), "--device", "cpu"])
    opened = common.open_run(args)
    assert opened.seed == 5
    torch.manual_seed(5)
    expected = CompactTransformer(opened.cfg.model).state_dict()
    control = common.untrained_control(opened.cfg, opened.seed, opened.device).state_dict()
    assert all(torch.equal(control[k], expected[k]) for k in expected)
    assert roles.main(["--run", str(run), "--device", "cpu", "--limit", "4", "--no-progress"]) == 0
    assert json.loads((run / "roles.limit4.json").read_text())["seed"] == 5


def test_a_checkpoint_without_its_seed_is_an_error_that_says_what_to_do(tiny, tmp_path, capsys):
    run = copy_run(tiny, tmp_path)
    ckpt = torch.load(run / "checkpoint_best.pt", weights_only=True)
    del ckpt["seed"]
    torch.save(ckpt, run / "checkpoint_best.pt")
    before = snapshot(run)
    expect_user_error(cli(probe.main, ["--run", run, "--device", "cpu"], capsys),
                      str(run / "checkpoint_best.pt"), "records no seed", "python -m src.train")
    assert snapshot(run) == before


def interrupted(tiny, tmp_path, keep_best: bool) -> Path:
    """A run as a training killed part-way leaves it: checkpoint_latest.pt, no summary.json, maybe no best."""
    run = copy_run(tiny, tmp_path)
    shutil.copy(run / "checkpoint_best.pt", run / "checkpoint_latest.pt")
    (run / "summary.json").unlink()
    if not keep_best:
        (run / "checkpoint_best.pt").unlink()
    return run


@pytest.mark.parametrize("keep_best", [False, True], ids=["no_best", "no_summary"])
def test_an_interrupted_run_is_told_to_resume_or_to_analyse_its_latest_checkpoint(tiny, tmp_path, capsys, keep_best):
    run = interrupted(tiny, tmp_path, keep_best)
    before = snapshot(run)
    err = expect_user_error(cli(evaluate.main, ["--run", run, "--device", "cpu"], capsys), "interrupted",
                            "no summary.json" if keep_best else "no checkpoint_best.pt",
                            f"python -m src.train --output-dir {run} --resume", "--checkpoint latest")
    assert "train it" not in err
    assert snapshot(run) == before
    args = evaluate.build_parser().parse_args(["--run", str(run), "--device", "cpu", "--checkpoint", "latest"])
    assert common.open_run(args).ckpt["epoch"] == 1  # what it reached, analysable as the message says


def test_a_run_without_any_checkpoint_is_told_to_train(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    expect_user_error(cli(roles.main, ["--run", run, "--device", "cpu"], capsys), "no checkpoint at all",
                      f"python -m src.train --config CONFIG --output-dir {run}")
    assert not any(run.iterdir())


def test_a_run_still_training_names_the_process_that_holds_it(tiny, tmp_path, capsys):
    import socket
    import subprocess
    import sys

    run = copy_run(tiny, tmp_path)
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"PID {trainer.pid} on {socket.gethostname()}\n")  # as src.rundir.directory writes it
        before = snapshot(run)
        expect_user_error(cli(evaluate.main, ["--run", run, "--device", "cpu"], capsys),
                          f"locked by PID {trainer.pid} on {socket.gethostname()}", "wait for it to finish")
        assert snapshot(run) == before
        rc, _, err = cli(run_all.main, ["--run", run, "--device", "cpu", "--quiet"], capsys)
        assert rc == 2 and err.count("error:") == 1 and f"PID {trainer.pid}" in err  # once, not once per step
        assert snapshot(run) == before  # no battery.json
    finally:
        trainer.kill()
        trainer.wait()
    # the lock of a process that has ended (a killed training) holds nothing
    args = roles.build_parser().parse_args(["--run", str(run), "--device", "cpu"])
    assert common.lock_holder(run) is None and common.open_run(args).seed == 0
