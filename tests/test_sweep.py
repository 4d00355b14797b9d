"""The sweep runner (`python -m src.sweep DIR --seeds ...`), on the CPU.

A sweep directory of tiny configs (d_model 32, 2 layers, 2 epochs of 8 steps) trained and evaluated
for real: the sweep runs in-process through run_main (as `python -m src.sweep` runs it) and starts
src.train and src.analysis.evaluate as the subprocesses it always starts. One full sweep (module fixture) serves
the checks of its outputs, of the resumed partial run and of a second sweep that skips everything.
"""

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import src.sweep
import src.train
from src.config import load_config
from src.errors import run_main
from src.rundir.directory import RunDir
from tests.runs import (  # noqa: F401  (one_thread is an autouse fixture)
    REPO_ROOT, cli, expect_error, one_thread, tiny_raw, write_data, write_yaml)

SEEDS = (42, 7)
STEPS_PER_EPOCH = 8  # 64 training lines, batch 8
EPOCHS = 2
RESULT_FILES = {"eval.json", "summary.json", "metrics.jsonl", "config.yaml"}


@pytest.fixture(scope="module", autouse=True)
def one_thread_children():
    """Every training and evaluation subprocess on one thread (the tiny models are fastest so)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if before is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = before


def make_sweep(root: Path, names=("a", "b"), partial: str | None = None) -> dict:
    """Data, a sweep directory with one tiny config per name, and (partial="a") seed 42 of that
    config stopped after its first epoch, as `python -m src.train ... --stop-after-epoch 1` leaves it."""
    data = write_data(root / "data")
    sweep_dir = root / "sweep"
    sweep_dir.mkdir()
    for name in names:
        raw = tiny_raw(data, epochs=EPOCHS)
        raw["name"] = name
        write_yaml(sweep_dir / f"{name}.yaml", raw)
    env = {"root": root, "data": data, "sweep": sweep_dir, "runs": root / "runs", "results": root / "results"}
    if partial:
        rc = run_main(src.train.main, [str(a) for a in (
            "--config", sweep_dir / f"{partial}.yaml", "--output-dir", env["runs"] / partial, "--seeds", "42",
            "--device", "cpu", "--no-progress", "--stop-after-epoch", "1")])
        assert rc == 0
    return env


def argv(env, *extra, seeds=SEEDS) -> list[str]:
    return [str(a) for a in (env["sweep"], "--seeds", ",".join(map(str, seeds)), "--runs-dir", env["runs"],
                             "--results-dir", env["results"], "--device", "cpu", "--no-progress", *extra)]


def sweep(env, capsys, *extra, seeds=SEEDS):
    return cli(src.sweep.main, argv(env, *extra, seeds=seeds), capsys)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("planned"), partial="a")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A full sweep, two workers, of configs a (seed 42 partial: resumed; seed 7 new) and b (both new)."""
    env = make_sweep(tmp_path_factory.mktemp("swept"), partial="a")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_main(src.sweep.main, argv(env, "--workers", "2"))
    return {**env, "rc": rc, "out": out.getvalue(), "err": err.getvalue()}


# ---------------------------------------------------------------------------- --list and --dry-run


def test_list_prints_one_self_contained_command_per_config(planned):
    """Run as the real command line; each line finishes one config and says everything it needs."""
    before = files_under(planned["root"])
    result = subprocess.run([sys.executable, "-m", "src.sweep", *argv(planned, "--list")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, name in zip(lines, ("a", "b")):
        words = shlex.split(line)
        assert words[:4] == ["python", "-m", "src.sweep", str(planned["sweep"])]
        flags = dict(zip(words[4::2], words[5::2]))
        assert flags == {"--seeds": "42,7", "--only": name, "--runs-dir": str(planned["runs"]),
                         "--results-dir": str(planned["results"]), "--device": "cpu"}
    assert files_under(planned["root"]) == before  # nothing started, nothing written


def test_dry_run_prints_the_plan_and_its_time(planned, capsys):
    before = files_under(planned["root"])
    rc, out, err = sweep(planned, capsys, "--dry-run", "--steps-per-s", "8")
    assert rc == 0, err
    rows = {tuple(line.split()[:3]) for line in out.splitlines()}
    left = {"a": {42: STEPS_PER_EPOCH, 7: EPOCHS * STEPS_PER_EPOCH}, "b": {42: 16, 7: 16}}
    for name, seed, action in (("a", 42, "resume"), ("a", 7, "train"), ("b", 42, "train"), ("b", 7, "train")):
        assert (name, str(seed), action) in rows, out
        row = next(line for line in out.splitlines() if line.split()[:3] == [name, str(seed), action])
        assert row.split()[3] == str(left[name][seed])
    assert "plan: 1 resume, 3 train" in out
    # 8 + 16 + 16 + 16 seed-steps at 8 seed-steps/s (--steps-per-s: no completed run measured one yet)
    assert "estimated CPU time (training only): 7 s" in out
    assert files_under(planned["root"]) == before


# ---------------------------------------------------------------------------- the full sweep


@pytest.mark.slow
def test_full_sweep_collects_every_run(swept):
    assert swept["rc"] == 0, swept["err"]
    assert "4 run(s) finished now" in swept["out"]
    for name in ("a", "b"):
        for seed in SEEDS:
            result = swept["results"] / name / f"seed{seed}"
            assert {p.name for p in result.iterdir()} == RESULT_FILES  # no checkpoint, no temporary file
            run = swept["runs"] / name / f"seed{seed}"
            assert (result / "eval.json").read_bytes() == (run / "eval.json").read_bytes()
            for file in RESULT_FILES - {"eval.json"}:
                assert (result / file).read_bytes() == (run / file).read_bytes()
            evaluation = json.loads((result / "eval.json").read_text())
            assert evaluation["schema"] == "eval/2" and evaluation["seed"] == seed and evaluation["config"] == name
            summary = json.loads((result / "summary.json").read_text())
            assert summary["status"] == "completed" and summary["steps"] == EPOCHS * STEPS_PER_EPOCH
            assert "--device cpu" in (run / "evaluate.log").read_text()
        assert list((swept["runs"] / name).glob("train_*.log"))
        assert not list((swept["runs"] / name).glob(".seed*.lock"))  # the sweep's locks on the seeds are gone


@pytest.mark.slow
def test_sweep_resumes_the_partial_run_and_trains_the_new_seed_beside_it(swept):
    fresh, resumed = ((swept["runs"] / "a" / f"train_{s}.log").read_text() for s in (7, 42))  # a log per command
    commands = [line for log in (fresh, resumed) for line in log.splitlines() if line.startswith("=== ")]
    assert len(commands) == 2
    assert "--seeds 7 " in commands[0] and "--resume" not in commands[0]
    assert "--seeds 42 " in commands[1] and "--resume" in commands[1]
    assert "Resuming from epoch 1" in resumed
    run = swept["runs"] / "a" / "seed42"
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    b_log = (swept["runs"] / "b" / "train_42+7.log").read_text()
    assert [line for line in b_log.splitlines() if line.startswith("=== ")][0].count("--seeds 42,7 ") == 1


@pytest.mark.slow
def test_second_sweep_skips_everything(swept, capsys):
    logs = {p: p.stat().st_size for p in swept["runs"].rglob("*.log")}
    results = {p: p.stat().st_mtime_ns for p in swept["results"].rglob("*") if p.is_file()}
    rc, out, err = sweep(swept, capsys)
    assert rc == 0, err
    assert "4 finished already, 0 step(s) to run" in out
    assert {p: p.stat().st_size for p in swept["runs"].rglob("*.log")} == logs  # nothing was started
    assert {p: p.stat().st_mtime_ns for p in swept["results"].rglob("*") if p.is_file()} == results
    rc, out, err = sweep(swept, capsys, "--list")
    assert rc == 0 and out == ""
    rc, out, err = sweep(swept, capsys, "--dry-run")
    assert "plan: 4 finished" in out


@pytest.mark.slow
def test_estimate_uses_the_rate_a_completed_run_measured(swept):
    """b's seeds trained side by side: the process's seed-steps/s is each seed's rate times two."""
    args = src.sweep.parse_args(argv(swept))
    b = src.sweep.make_plan(args)[1]
    summary = json.loads((swept["runs"] / "b" / "seed42" / "summary.json").read_text())
    assert summary["seeds_side_by_side"] == [42, 7]
    rate, source = src.sweep.rate_of(b, args)
    assert rate == summary["train_steps_per_s"] * 2 and source.startswith("measured")


@pytest.mark.slow
def test_estimate_uses_a_run_collected_in_results_when_runs_has_none(swept, tmp_path):
    """A new machine has no run directories, only the committed results: their summaries still measure."""
    args = src.sweep.parse_args(argv({**swept, "runs": tmp_path / "fresh_runs"}))
    b = src.sweep.make_plan(args)[1]
    rate, source = src.sweep.rate_of(b, args)
    summary = json.loads((swept["results"] / "b" / "seed42" / "summary.json").read_text())
    assert rate == summary["train_steps_per_s"] * 2 and source == f"measured, {swept['results'] / 'b' / 'seed42' / 'summary.json'}"


# ---------------------------------------------------------------------------- locks and failures


@pytest.mark.slow
def test_config_in_use_is_skipped_and_a_failed_one_reported_while_the_others_go_on(tmp_path, capsys):
    """Config a: a run directory locked by another process (a training started by hand): skipped with
    a note. Config b: its training fails (a bad line in its training file): reported once, with the
    exit status, the error and the log. Config c trains and finishes; the sweep exits 1 for b."""
    env = make_sweep(tmp_path, names=("a", "b", "c"))
    broken = env["data"] / "broken.jsonl"
    lines = (env["data"] / "train.jsonl").read_text().splitlines()
    broken.write_text("\n".join(lines[:2] + ["{not json"] + lines[3:]) + "\n")
    raw = yaml.safe_load((env["sweep"] / "b.yaml").read_text())
    raw["data"]["train"] = str(broken)
    write_yaml(env["sweep"] / "b.yaml", raw)
    held = RunDir(str(env["runs"] / "a" / "seed42"), resume=False)
    try:
        rc, out, err = sweep(env, capsys, "--workers", "2", seeds=(42,))
    finally:
        held.release()
    assert rc == 1, err
    assert f"note: a skipped: {env['runs'] / 'a' / 'seed42'} is in use by PID {os.getpid()}" in err
    assert "1 config(s) skipped (in use): a" in out
    assert not (env["results"] / "a").exists()
    assert not list((env["runs"] / "a").glob("train_*.log"))  # no training was started for it
    log = env["runs"] / "b" / "train_42.log"
    failures = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(set(failures)) == 1, err  # the training's failure, once (its seed is not reported again)
    assert "b: training seeds 42: exit status 2" in failures[0] and "broken.jsonl:3" in failures[0]
    assert f"(log: {log})" in failures[0]
    assert "not valid JSON" in log.read_text()
    assert not (env["results"] / "b").exists()
    assert {p.name for p in (env["results"] / "c" / "seed42").iterdir()} == RESULT_FILES
    rc, out, err = sweep(env, capsys, "--list", seeds=(42,))  # a and b are still to do
    assert [shlex.split(line)[shlex.split(line).index("--only") + 1] for line in out.splitlines()] == ["a", "b"]


def test_config_held_by_another_sweep_is_skipped(tmp_path, capsys):
    env = make_sweep(tmp_path)
    other_sweep = src.sweep.GroupLock(env["runs"] / "b", [42])
    held = RunDir(str(env["runs"] / "a" / "seed42"), resume=False)
    try:
        rc, out, err = sweep(env, capsys, "--dry-run", seeds=(42,))
        assert "a: in use now" in out and "b: in use now" in out
        rc, out, err = sweep(env, capsys, seeds=(42,))
    finally:
        held.release()
        other_sweep.release()
    assert rc == 0, err
    assert f"note: b skipped: {env['runs'] / 'b'} seed 42 is in use by PID {os.getpid()}" in err
    assert "2 config(s) skipped (in use)" in out
    assert not env["results"].exists()


@pytest.mark.slow
def test_sweeps_of_disjoint_seeds_of_one_config_run_side_by_side(tmp_path, capsys):
    env = make_sweep(tmp_path)
    other_sweep = src.sweep.GroupLock(env["runs"] / "a", [42])  # another sweep (another GPU) on seed 42 of a
    try:
        rc, out, err = sweep(env, capsys, "--dry-run", "--only", "a", seeds=(123,))
        assert "in use" not in out and "train" in out
        rc, out, err = sweep(env, capsys, "--dry-run", "--only", "a", seeds=(42, 123))
        assert "a: in use now" in out
        rc, out, err = sweep(env, capsys, "--only", "a", seeds=(123,))
    finally:
        other_sweep.release()
    assert rc == 0, err
    assert (env["results"] / "a" / "seed123" / "eval.json").is_file()
    assert not (env["results"] / "a" / "seed42").exists()


# ---------------------------------------------------------------------------- what each seed needs


def fake_run(run: Path, cfg, status=None, epochs=EPOCHS, checkpoint=True, **changes) -> None:
    """The files of a run directory that the plan reads (the checkpoint is only looked at, not loaded)."""
    run.mkdir(parents=True)
    raw = cfg.to_dict()
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    (run / "metrics.jsonl").write_text(json.dumps({"schema": "metrics/1", "epoch": 1, "step": 8}) + "\n")
    if checkpoint:
        (run / "checkpoint_latest.pt").write_bytes(b"")
    if status:
        (run / "summary.json").write_text(json.dumps({"status": status, "epochs": epochs}))


@pytest.mark.parametrize("state, action, why", [
    (dict(), "resume", "interrupted"),
    (dict(status="stopped_after_epoch", epochs=1), "resume", "stopped after an epoch"),
    (dict(status="completed"), "evaluate", "training completed"),
    (dict(status="completed", epochs=1), "resume", "completed 1 epochs; the config asks for 2"),
    (dict(status="completed", epochs=3), "blocked", "trained 3 epochs and the config asks for 2"),
    (dict(status="stopped_diverged"), "blocked", "stopped with status 'stopped_diverged'"),
    (dict(checkpoint=False), "blocked", "holds a run without checkpoint_latest.pt"),
    (dict(status="completed", training__learning_rate=0.5), "blocked", "differs from the sweep's in training.learning_rate"),
])
def test_seed_plan(tmp_path, state, action, why):
    env = make_sweep(tmp_path, names=("a",))
    cfg = load_config(env["sweep"] / "a.yaml")
    run = tmp_path / "runs" / "seed42"
    fake_run(run, cfg, **state)
    plan = src.sweep.seed_plan(cfg, 42, run, tmp_path / "results" / "seed42")
    assert (plan.action, why in plan.why) == (action, True), plan


def test_blocked_seed_is_reported_and_nothing_else_runs(tmp_path, capsys):
    env = make_sweep(tmp_path, names=("a",))
    fake_run(env["runs"] / "a" / "seed42", load_config(env["sweep"] / "a.yaml"), status="stopped_non_finite")
    rc, out, err = sweep(env, capsys, "--list", seeds=(42,))
    assert rc == 0 and out == "" and "a seed 42 is left out" in err
    rc, out, err = sweep(env, capsys, seeds=(42,))
    assert rc == 1 and "FAILED a seed 42:" in err and "stopped_non_finite" in err
    assert not list((env["runs"] / "a").glob("train_*.log"))


# ---------------------------------------------------------------------------- workers and GPUs


def test_one_worker_per_gpu_each_pinned_to_its_own(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")  # the third is not usable: device_count says 2
    assert src.sweep.visible_gpus() == ["3", "5"]
    env = make_sweep(tmp_path, names=("a", "b", "c", "d"))
    args = src.sweep.parse_args(argv(env))
    groups = src.sweep.make_plan(args)
    seen = []

    def run_group(self, group, child_env):
        seen.append((group.name, child_env["CUDA_VISIBLE_DEVICES"]))

    monkeypatch.setattr(src.sweep.Sweep, "run_group", run_group)
    src.sweep.Sweep(args, groups, ["3", "5"], workers=2).run()
    assert sorted(n for n, _ in seen) == ["a", "b", "c", "d"] and {d for _, d in seen} <= {"3", "5"}
    seen.clear()
    src.sweep.Sweep(args, groups, ["3"], workers=1).run()  # one worker: the environment as it was
    assert {d for _, d in seen} == {"3,5,6"}


def test_a_signal_ends_the_sweep_as_it_ends_a_training(tmp_path, monkeypatch, capsys):
    """SIGTERM: no step starts, and the sweep exits as src.train does (one Interrupted, 128 + 15)."""
    import signal

    from src.signals import Interrupted

    env = make_sweep(tmp_path, names=("a",))
    monkeypatch.setattr(src.sweep.Sweep, "run", lambda self: self.on_signal(signal.SIGTERM, None))
    rc, out, err = sweep(env, capsys, seeds=(42,))
    assert src.sweep.Interrupted is Interrupted
    assert rc == 128 + signal.SIGTERM and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: interrupted: no new step was started")
    assert not (env["runs"] / "a" / "seed42").exists()


def test_default_outputs_stay_under_runs():
    """Without --runs-dir and --results-dir, a sweep writes under runs/, never into the committed results/."""
    args = src.sweep.parse_args(["configs/extension", "--seeds", "42"])
    assert Path(args.runs_dir).parts[0] == "runs" and Path(args.results_dir).parts[0] == "runs"


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_are_one_line_and_start_nothing(tmp_path, capsys):
    env = make_sweep(tmp_path, names=("a",))
    missing = dict(env, sweep=tmp_path / "nowhere")
    expect_error(sweep(missing, capsys), "nowhere", "no such directory")
    empty = dict(env, sweep=tmp_path / "empty")
    empty["sweep"].mkdir()
    expect_error(sweep(empty, capsys), "no configs in it")
    for seeds in ("42,,7", "42,42", "x", "-1"):
        expect_error(cli(src.sweep.main, [env["sweep"], "--seeds", seeds, "--device", "cpu"], capsys), "--seeds", seeds)
    expect_error(sweep(env, capsys, "--only", "zzz"), "--only zzz", "no config 'zzz'", "its configs are a")
    expect_error(sweep(env, capsys, "--dry-run", "--list"), "not allowed with")
    expect_error(sweep(env, capsys, "--gpu-only"), "GPU-only mode requires --device cuda", code=1)
    bad = yaml.safe_load((env["sweep"] / "a.yaml").read_text())
    bad["training"]["batch_sise"] = 8
    write_yaml(env["sweep"] / "b.yaml", bad)
    expect_error(sweep(env, capsys), str(env["sweep"] / "b.yaml"), "unknown key 'training.batch_sise'")
    no_data = yaml.safe_load((env["sweep"] / "a.yaml").read_text())
    no_data["data"]["train"] = str(tmp_path / "missing.jsonl")
    write_yaml(env["sweep"] / "b.yaml", no_data)
    expect_error(sweep(env, capsys), str(env["sweep"] / "b.yaml"), "data.train", "does not exist")
    assert not env["runs"].exists() and not env["results"].exists()
