"""Opening a run for analysis (src/analysis/common.py), as every analysis command does: a checkpoint
with non-finite weights, an output path that is a directory, the precision an analysis runs in, the
seed read from the checkpoint, and the advice for a run that is interrupted, still training or never
trained. Each case goes through the real entry point, in-process through `run_main(main, argv)` as
`python -m src.<tool>` runs it, and checks the exit status, the message, and that nothing was written.
docs/RELIABILITY.md lists every case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from src.analysis import common, evaluate, probe, roles, run_all
from src.model import CompactTransformer
from tests.analysis_runs import ANALYSES, FAST, copy_run, expect_user_error, snapshot
from tests.runs import cli  # the one runner of an entry point, as its __main__ runs it
from tests.tiny import tiny_config, write_data, write_run

# ---------------------------------------------------------------------------- 9. non-finite weights


def poison(run: Path, tensor: str, value: float) -> Path:
    path = run / "checkpoint_best.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"][tensor].view(-1)[3] = value
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("tool", list(ANALYSES))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused_before_anything_is_written(analysis_run, tmp_path, capsys, tool, value):
    run = copy_run(analysis_run, tmp_path)
    path = poison(run, "blocks.1.ffn.up.weight", value)
    poison(run, "ln_f.weight", float("nan"))  # a later tensor: the message names the first one
    before = snapshot(run)
    err = expect_user_error(cli(ANALYSES[tool], ["--run", run, "--device", "cpu", *FAST[tool]], capsys),
                            str(path), "blocks.1.ffn.up.weight", "finite")
    assert "ln_f.weight" not in err
    assert snapshot(run) == before


def test_finite_weights_check_covers_a_checkpoint_named_by_path(analysis_run, tmp_path, capsys):
    """The one place (src.rundir.checkpoint, through which every tool loads): a checkpoint named by
    --checkpoint PATH is checked too."""
    run = copy_run(analysis_run, tmp_path)
    other = tmp_path / "elsewhere.pt"
    shutil.copy(run / "checkpoint_best.pt", other)
    ckpt = torch.load(other, weights_only=True)
    ckpt["model"]["embed.weight"][0, 0] = float("nan")
    torch.save(ckpt, other)
    before = snapshot(run)
    expect_user_error(cli(evaluate.main, ["--run", run, "--device", "cpu", "--checkpoint", other], capsys),
                      str(other), "embed.weight", "finite")
    assert snapshot(run) == before


# ---------------------------------------------------------------------------- 11. writers


@pytest.mark.parametrize("tool, target", [
    ("evaluate", "eval.json"), ("ablate", "ablation.json"), ("ablate", "ablation_heatmap.png"),
    ("probe", "probe.json"), ("probe", "probe_layers.png"), ("roles", "roles.json"), ("roles", "roles.png")])
def test_an_output_path_that_is_a_directory_is_refused_before_any_computation(analysis_run, tmp_path, capsys, monkeypatch,
                                                                              tool, target):
    run = copy_run(analysis_run, tmp_path)
    (run / target).unlink()
    (run / target).mkdir()
    before = snapshot(run)
    for reader in ("batches", "all_records"):  # every analysis reads its data through these
        monkeypatch.setattr(common.RunData, reader, lambda *a, **k: pytest.fail("computed before checking --out"))
    expect_user_error(cli(ANALYSES[tool], ["--run", run, "--device", "cpu", *FAST[tool]], capsys),
                      str(run / target), "is a directory")
    assert snapshot(run) == before


# ---------------------------------------------------------------------------- precision of an analysis


def fp16_run(analysis_run, tmp_path) -> Path:
    run = copy_run(analysis_run, tmp_path)
    path = run / "checkpoint_best.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["precision"] = "fp16"
    torch.save(ckpt, path)
    return run


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_an_fp16_run_is_analysed_in_fp32_on_the_cpu_with_a_note(analysis_run, tmp_path, capsys):
    run = fp16_run(analysis_run, tmp_path)
    rc, _, err = cli(evaluate.main, ["--run", run, "--device", "cpu", "--limit", "4"], capsys)
    assert rc == 0, err
    assert "note: the run trained in fp16; evaluating in fp32 on the CPU" in err
    res = json.loads((run / "eval.limit4.json").read_text())
    assert res["precision"] == "fp32" and res["fp16"] is False


@pytest.mark.parametrize("flags", [["--precision", "fp16"], ["--fp16"], ["--precision", "bf16"]])
def test_explicit_half_precision_on_the_cpu_is_an_error(analysis_run, tmp_path, capsys, flags):
    run = copy_run(analysis_run, tmp_path)
    before = snapshot(run)
    expect_user_error(cli(evaluate.main, ["--run", run, "--device", "cpu", *flags], capsys),
                      "needs a CUDA device")
    assert snapshot(run) == before


@pytest.mark.gpu
def test_an_fp16_run_is_analysed_in_fp16_on_cuda_by_default(analysis_run, tmp_path, capsys):
    run = fp16_run(analysis_run, tmp_path)
    rc, _, err = cli(evaluate.main, ["--run", run, "--device", "cuda", "--limit", "4"], capsys)
    assert rc == 0, err
    res = json.loads((run / "eval.limit4.json").read_text())
    assert res["precision"] == "fp16" and res["fp16"] is True
    rc, _, err = cli(evaluate.main, ["--run", run, "--device", "cuda", "--limit", "4", "--precision", "fp32"], capsys)
    assert rc == 0 and json.loads((run / "eval.limit4.json").read_text())["precision"] == "fp32"


# ---------------------------------------------------------------------------- opening a run: its seed and its state


@pytest.mark.slow
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


def test_a_checkpoint_without_its_seed_is_an_error_that_says_what_to_do(analysis_run, tmp_path, capsys):
    run = copy_run(analysis_run, tmp_path)
    ckpt = torch.load(run / "checkpoint_best.pt", weights_only=True)
    del ckpt["seed"]
    torch.save(ckpt, run / "checkpoint_best.pt")
    before = snapshot(run)
    expect_user_error(cli(probe.main, ["--run", run, "--device", "cpu"], capsys),
                      str(run / "checkpoint_best.pt"), "records no seed", "python -m src.train")
    assert snapshot(run) == before


def interrupted(analysis_run, tmp_path, keep_best: bool) -> Path:
    """A run as a training killed part-way leaves it: checkpoint_latest.pt, no summary.json, maybe no best."""
    run = copy_run(analysis_run, tmp_path)
    shutil.copy(run / "checkpoint_best.pt", run / "checkpoint_latest.pt")
    (run / "summary.json").unlink()
    if not keep_best:
        (run / "checkpoint_best.pt").unlink()
    return run


@pytest.mark.parametrize("keep_best", [False, True], ids=["no_best", "no_summary"])
def test_an_interrupted_run_is_told_to_resume_or_to_analyse_its_latest_checkpoint(analysis_run, tmp_path, capsys, keep_best):
    run = interrupted(analysis_run, tmp_path, keep_best)
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


def test_a_run_still_training_names_the_process_that_holds_it(analysis_run, tmp_path, capsys):
    import socket
    import subprocess
    import sys

    run = copy_run(analysis_run, tmp_path)
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
