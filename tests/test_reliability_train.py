"""Reliability of training: one writer per run directory, signals, divergence,
a resume that keeps its promises, damaged run files, precision that travels with the run.

The helpers and the shared runs (`tiny`: a paused and a finished 4-epoch run; `crash`: an
8-epoch run that never stopped) come from tests/test_reliability.py. docs/RELIABILITY.md lists
every case with what the user sees.
"""

import json
import signal
import subprocess
import sys

import pytest
import torch
import yaml

import src.train
import src.training.trainer
from src.rundir.directory import RunDir
from tests.test_reliability import (  # noqa: F401  (crash, one_thread and tiny are fixtures)
    CRASH_EPOCHS, REPO_ROOT, SUBPROCESS_ENV, assert_same_training, cli, copy_run, crash, expect_error,
    load_all_checkpoints, needs_no_cuda, one_thread, snapshot, tiny, tiny_raw, train_argv, write_yaml)


def train(argv, capsys):
    return cli(src.train.main, argv, capsys)


# ---------------------------------------------------------------------------- failure 2: one writer


def test_a_second_training_into_a_locked_directory_is_refused_with_the_holders_pid(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    holder = RunDir(run, resume=True)  # as a training in progress holds it
    try:
        before = {k: v for k, v in snapshot(run).items() if k != ".lock"}
        message = expect_error(train(train_argv(tiny["config"], run, "--resume"), capsys),
                               f"--output-dir {run} is in use by PID ", "one training writes into a run directory at a time")
        import os
        assert f"PID {os.getpid()} on " in message
        assert {k: v for k, v in snapshot(run).items() if k != ".lock"} == before
        # a new run into a fresh directory that another process holds: refused the same way
        other = tmp_path / "other"
        held = RunDir(other, resume=False)
        expect_error(train(train_argv(tiny["config"], other), capsys), f"--output-dir {other} is in use by PID ")
        held.release()
    finally:
        holder.release()
    assert not (run / ".lock").exists()
    assert train(train_argv(tiny["config"], run, "--resume"), capsys)[0] == 0  # free again


def test_a_lock_left_by_a_dead_process_is_taken_over(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(f"PID {dead.stdout.strip()} on somehost\n")  # no process holds it any more
    rc, out, err = train(train_argv(tiny["config"], run, "--resume"), capsys)
    assert rc == 0, err
    assert f"was left by PID {dead.stdout.strip()} on somehost, which no longer holds it" in err
    assert_same_training(tiny["finished"], run)
    assert not (run / ".lock").exists()


# ---------------------------------------------------------------------------- failure 14: signals


def signalled_run(crash, run, point: str, name: str):
    """A training subprocess that sends itself SIG`name` at `point` (tests/killpoint.py)."""
    return subprocess.run([sys.executable, "-m", "tests.killpoint", f"{point}:{name}", "--", "src.train",
                           *map(str, train_argv(crash["config"], run))],
                          cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["TERM", "INT"])
def test_sigterm_and_sigint_save_checkpoint_latest_say_how_to_resume_and_exit_non_zero(name, crash, tmp_path):
    """The signal arrives just after epoch 3's metrics row is written (before its checkpoint): the
    epoch's checkpoint is written as checkpoint_latest.pt, the run stops, and --resume ends bit for
    bit where the uninterrupted run ends. (A signal in the middle of an epoch: the next test.)"""
    run = tmp_path / "signalled"
    proc = signalled_run(crash, run, "metrics.jsonl@3:after", name)
    signum = getattr(signal, f"SIG{name}")
    assert proc.returncode == 128 + signum, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: interrupted by SIG{name} after epoch 3 (step 96)")
    assert f"Continue with: python -m src.train --output-dir {run} --resume" in last
    latest = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert latest["epoch"] == 3 and latest["epoch_step"] == 0
    assert not (run / "summary.json").exists() and not (run / ".lock").exists()

    proc = subprocess.run([sys.executable, "-m", "src.train", "--output-dir", str(run), "--resume", "--device", "cpu",
                           "--no-progress"], cwd=REPO_ROOT, env=SUBPROCESS_ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_training(crash["reference"], run)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_mid_epoch_checkpoint_resumes_bit_for_bit(tiny, tmp_path, capsys, monkeypatch):
    """SIGTERM in the middle of epoch 3 (after its 5th step, in-process): the checkpoint holds the
    epoch's order and running sums, and the resumed run equals the one that never stopped."""
    run = tmp_path / "mid"
    real = src.training.trainer.Trainer.run_step
    count = {"steps": 0}

    def run_step(self):
        real(self)
        count["steps"] += 1
        if count["steps"] == 2 * 8 + 5:  # 8 steps per epoch
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(src.training.trainer.Trainer, "run_step", run_step)
    rc, out, err = train(train_argv(tiny["config"], run), capsys)
    assert rc == 128 + signal.SIGTERM and "interrupted by SIGTERM in epoch 3 at step 21" in err, err
    latest = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert (latest["epoch"], latest["epoch_step"], latest["step"]) == (2, 5, 21)
    monkeypatch.undo()
    rc, out, err = train(train_argv(tiny["config"], run, "--resume"), capsys)
    assert rc == 0, err
    assert "Resuming from epoch 2 (step 21), 5 steps into epoch 3" in out
    assert_same_training(tiny["finished"], run)


# ---------------------------------------------------------------------------- failure 6: divergence


def test_divergence_at_validation_stops_cleanly_and_names_the_setting(tiny, tmp_path, capsys):
    """A learning rate of 15: the weights stay finite but the validation loss explodes (math.exp of
    it overflowed before). The run stops with exit 3, the summary says so, no checkpoint of the
    diverged epoch is written."""
    config = write_yaml(tmp_path / "lr15.yaml", tiny_raw(tiny["data"], learning_rate=15.0))
    run = tmp_path / "diverged"
    message = expect_error(train(train_argv(config, run), capsys), "stopped: the model diverged",
                           "Lower training.learning_rate (now 15)", code=3)
    assert "validation loss after epoch 1" in message
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped_diverged" and summary["epochs"] == 0
    assert not list(run.glob("checkpoint_*.pt"))


# ---------------------------------------------------------------------------- failure 7: resume keeps its promises


def test_resume_with_another_seed_is_an_error(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)  # trained with --seed 7
    before = snapshot(run)
    argv = [a if a != "7" else "42" for a in train_argv(tiny["config"], run, "--resume")]
    expect_error(train(argv, capsys), "a resumed run keeps its own config and seed", "seed: run 7, --seed 42")
    assert snapshot(run) == before


def test_resume_without_config_or_seed_takes_the_runs_own(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    rc, out, err = train(["--output-dir", run, "--resume", "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    assert "Seed: 7" in out
    assert json.loads((run / "summary.json").read_text())["seed"] == 7
    assert_same_training(tiny["finished"], run)


def test_resume_with_a_changed_config_lists_the_differences(tiny, tmp_path, capsys):
    raw = tiny_raw(tiny["data"], learning_rate=0.5, batch_size=4)
    config = write_yaml(tmp_path / "changed.yaml", raw)
    run = copy_run(tiny, "paused", tmp_path)
    before = snapshot(run)
    message = expect_error(train(train_argv(config, run, "--resume"), capsys), "a resumed run keeps its own config",
                           f"training.batch_size: run 8, {config} 4", "training.learning_rate: run 0.0003")
    assert "only training.epochs may change" in message
    assert snapshot(run) == before
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["learning_rate"] != 0.5


def test_resume_may_change_the_number_of_epochs_and_records_it(tiny, tmp_path, capsys):
    config = write_yaml(tmp_path / "longer.yaml", tiny_raw(tiny["data"], epochs=6))
    run = copy_run(tiny, "finished", tmp_path)
    rc, out, err = train(train_argv(config, run, "--resume"), capsys)
    assert rc == 0, err
    assert "training.epochs changes from 4 to 6 at epoch 4" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 6 and summary["epoch_changes"] == [{"at_epoch": 4, "from": 4, "to": 6}]
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["epochs"] == 6
    assert torch.load(run / "checkpoint_latest.pt", weights_only=True)["epoch_changes"] == summary["epoch_changes"]


def test_resume_records_precision_and_refuses_another(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    ckpt = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert ckpt["precision"] == "fp32" and ckpt["seed"] == 7
    config = write_yaml(tmp_path / "fp16.yaml", {**tiny_raw(tiny["data"]),
                                                 "training": {**tiny_raw(tiny["data"])["training"], "precision": "bf16"}})
    expect_error(train(train_argv(config, run, "--resume"), capsys), "training.precision: run 'fp32'")


@needs_no_cuda
def test_low_precision_without_cuda_is_an_error_before_anything_is_written(tiny, tmp_path, capsys):
    for precision in ("fp16", "bf16"):
        config = write_yaml(tmp_path / f"{precision}.yaml",
                            {**tiny_raw(tiny["data"]), "training": {**tiny_raw(tiny["data"])["training"],
                                                                    "precision": precision}})
        out = tmp_path / precision
        expect_error(train(train_argv(config, out), capsys), "needs a CUDA device")
        assert not out.exists()


# ---------------------------------------------------------------------------- failure 8: damaged run files


def test_damaged_metrics_lines_are_reported_and_the_run_goes_on(tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + '{"epoch": 2, "st\n')  # row 2 cut short
    rc, out, err = train(train_argv(tiny["config"], run, "--resume"), capsys)
    assert rc == 0, err
    assert f"{run / 'metrics.jsonl'}:2: not valid JSON" in err and "line skipped" in err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 3, 4]  # the damaged row is gone, the run went on from its checkpoint
    finished = load_all_checkpoints(run)["checkpoint_latest.pt"]
    assert finished["epoch"] == 4


@pytest.mark.parametrize("dangling", [True, False], ids=["dangling_link", "missing"])
def test_missing_checkpoint_latest_advice_never_destroys_data(dangling, tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    (run / "checkpoint_latest.pt").unlink()
    if dangling:
        (run / "checkpoint_latest.pt").symlink_to(run / "gone.pt")
    before = snapshot(run)
    message = expect_error(train(train_argv(tiny["config"], run, "--resume"), capsys),
                           "checkpoint_epoch_2.pt is in", f"cp {run / 'checkpoint_epoch_2.pt'} {run / 'checkpoint_latest.pt'}")
    assert ("link to a file that does not exist" in message) == dangling
    for destructive in ("delete", "rm ", "remove"):
        assert destructive not in message
    assert snapshot(run) == before


def damage(ckpt: dict, case: str) -> None:
    if case == "negative_step":
        ckpt["step"] = -1
    elif case == "epoch_not_a_number":
        ckpt["epoch"] = "two"
    elif case == "skipped_beyond_step":
        ckpt["skipped_steps"] = ckpt["step"] + 1
    elif case == "optimizer_moment_wrong_shape":
        ckpt["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    elif case == "optimizer_too_few_params":
        ckpt["optimizer"]["param_groups"][0]["params"] = ckpt["optimizer"]["param_groups"][0]["params"][:-1]
    elif case == "scale_not_finite":
        ckpt["scaler"]["scale"] = torch.tensor(float("nan"))
    elif case == "rng_wrong_dtype":
        ckpt["rng"]["cpu"] = torch.zeros(8)
    elif case == "best_not_a_mapping":
        ckpt["best"] = 1.5
    elif case == "weights_wrong_dtype":
        name = next(iter(ckpt["model"]))
        ckpt["model"][name] = ckpt["model"][name].half()
    elif case == "weights_not_finite":
        name = next(iter(ckpt["model"]))
        ckpt["model"][name] = ckpt["model"][name].clone().fill_(float("nan"))
    elif case == "model_config_zero_heads":  # was a ZeroDivisionError
        ckpt["model_config"]["num_heads"] = 0
    elif case == "model_config_wrong_type":  # was a TypeError
        ckpt["model_config"]["d_model"] = "32"
    elif case == "epoch_state_missing":
        ckpt["epoch_step"] = 3
    elif case == "seed_missing":  # was resumed with seed 42 and a note
        del ckpt["seed"]
    elif case == "seed_not_a_number":
        ckpt["seed"] = "42"


DAMAGE = {
    "negative_step": "'step' must be a whole number >= 0, got '-1'",
    "epoch_not_a_number": "'epoch' must be a whole number >= 0, got 'two'",
    "skipped_beyond_step": "'skipped_steps'",
    "optimizer_moment_wrong_shape": "exp_avg is missing, of the wrong shape or not finite",
    "optimizer_too_few_params": "'optimizer' holds",
    "scale_not_finite": "'scaler' must hold a positive finite scale",
    "rng_wrong_dtype": "'rng' must hold the cpu and shuffle generator states",
    "best_not_a_mapping": "'best' must be a mapping",
    "weights_wrong_dtype": "has dtype torch.float16, expected torch.float32",
    "weights_not_finite": "holds non-finite values (NaN or inf)",
    "model_config_zero_heads": "key 'model.num_heads' must be positive, got 0",
    "model_config_wrong_type": "key 'model.d_model' must be int, got '32'",
    "epoch_state_missing": "'epoch_state' must hold the tensors",
    "seed_missing": "no training state (no 'seed' entry)",
    "seed_not_a_number": "'seed' must be a whole number >= 0, got '42'",
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_checkpoint_contents_are_checked_against_the_schema(case, tiny, tmp_path, capsys):
    run = copy_run(tiny, "paused", tmp_path)
    latest = run / "checkpoint_latest.pt"
    ckpt = torch.load(latest, weights_only=True)
    damage(ckpt, case)
    latest.unlink()  # a new file: the hard links of the other names keep the good checkpoint
    torch.save(ckpt, latest)
    before = snapshot(run)
    expect_error(train(train_argv(tiny["config"], run, "--resume"), capsys), str(latest), DAMAGE[case])
    assert snapshot(run) == before


# ---------------------------------------------------------------------------- precision


def test_a_gpu_without_float16_or_bfloat16_is_a_clear_error(monkeypatch):
    """fp16 needs native float16 arithmetic (compute capability 5.3), bf16 a card that supports it:
    each is refused before anything runs, naming the card (simulated: this machine may have none)."""
    from src.device import check_precision
    from src.errors import UserError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (5, 2))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(UserError, match=r"precision fp16: the GPU Old GPU \(compute capability 5\.2\) has no native "
                                        "float16 arithmetic; use training.precision fp32"):
        check_precision("fp16", torch.device("cuda"))
    with pytest.raises(UserError, match=r"precision bf16: the GPU Old GPU .* does not support bfloat16"):
        check_precision("bf16", torch.device("cuda"))
    check_precision("fp32", torch.device("cuda"))  # fp32 runs anywhere


@pytest.mark.gpu
def test_bf16_run_on_cuda_has_no_loss_scaling_and_travels_with_the_run(tiny, tmp_path, capsys):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU does not support bfloat16")
    raw = tiny_raw(tiny["data"])
    raw["training"]["precision"] = "bf16"
    config = write_yaml(tmp_path / "bf16.yaml", raw)
    run = tmp_path / "bf16"
    rc, out, err = train(["--config", config, "--output-dir", run, "--device", "cuda", "--no-progress"], capsys)
    assert rc == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"].startswith("bf16") and summary["fp16"] is False and summary["status"] == "completed"
    ckpt = torch.load(run / "checkpoint_latest.pt", weights_only=True)
    assert ckpt["precision"] == "bf16" and float(ckpt["scaler"]["scale"]) == 1.0  # no loss scaling
    import src.analysis.evaluate
    rc, out, err = cli(src.analysis.evaluate.main, ["--run", run, "--device", "cuda"], capsys)
    assert rc == 0, err
    assert json.loads((run / "eval.json").read_text())["precision"] == "bf16"  # the run's own, by default


# ---------------------------------------------------------------------------- no traceback without --debug


def test_run_main_never_prints_a_traceback_without_debug(capsys):
    """The last line of defence of every entry point: an untranslated OSError is its file and reason
    (exit 2), any other exception is called a bug in one line (exit 1), a message is bounded, and
    --debug re-raises."""
    import errno
    import os

    from src.errors import MAX_MESSAGE, UserError, run_main

    def raises(err):
        def main(argv):
            raise err
        return main

    assert run_main(raises(OSError(errno.EACCES, os.strerror(errno.EACCES), "/x/y.json")), []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /x/y.json: Permission denied") and len(err.strip().splitlines()) == 1
    assert run_main(raises(ValueError("something unforeseen")), []) == 1
    err = capsys.readouterr().err
    assert "internal error (ValueError: something unforeseen). This is a bug: rerun with --debug" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert run_main(raises(UserError("x" * 10**6 + "\n" + "y")), []) == 2
    err = capsys.readouterr().err
    assert len(err) < MAX_MESSAGE + 20 and "(1000002 characters)" in err
    with pytest.raises(ValueError):
        run_main(raises(ValueError("shown")), ["--debug"])


# ---------------------------------------------------------------------------- failure 4: output paths, through src.train


@pytest.mark.parametrize("case", ["empty", "name_too_long", "dangling_symlink"])
def test_bad_output_dir_is_rejected_up_front(case, tiny, tmp_path, capsys, monkeypatch):
    """`--output-dir ""` used to write the run into the current directory (the repository root), a
    300-character name gave an ENAMETOOLONG traceback, a dangling symlink a wrong message."""
    monkeypatch.chdir(tmp_path)
    out, says = {
        "empty": ("", "--output-dir: the path is empty"),
        "name_too_long": (str(tmp_path / ("r" * 300)), "more than the 255 the file system allows"),
        "dangling_symlink": (str(tmp_path / "link"), "is a symlink to"),
    }[case]
    if case == "dangling_symlink":
        (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    before = sorted(p.name for p in tmp_path.iterdir())
    expect_error(train(train_argv(tiny["config"], out), capsys), says)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, here or anywhere under it
