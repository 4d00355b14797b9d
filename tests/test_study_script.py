"""scripts/study.sh under DRY_RUN=1: the plan follows what is done (no GPU, nothing run)."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "study.sh"


def plan(tmp_path, **extra) -> tuple[int, str]:
    env = dict(os.environ, DRY_RUN="1", RUNS=str(tmp_path / "runs"), RESULTS=str(tmp_path / "res"),
               MODELS=str(tmp_path / "models"), **extra)
    if "SEEDS" not in extra:
        env.pop("SEEDS", None)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout


def test_the_plan_trains_the_first_unfinished_scale_and_analyses_only_finished_seeds(tmp_path):
    (tmp_path / "runs" / "pilot" / "seed42").mkdir(parents=True)
    (tmp_path / "runs" / "pilot" / "seed42" / "summary.json").write_text("{}")
    rc, out = plan(tmp_path)
    assert rc == 75 and "run the same command again" in out
    assert out.count("scripts/resumable_train.py") == 1 and "study_pilot.yaml" in out and "study_10m.yaml" not in out
    assert "--seeds 123,7,1,2,3,4,5 " in out  # the finished run is not trained again
    assert out.count("src.analysis.run_all") == 1 and "pilot/seed42 --device cuda" in out
    assert "src.export --run" in out and "models/study_pilot --dtype float32" in out


def test_a_finished_study_plans_no_training_and_no_battery_twice(tmp_path):
    for scale in ("pilot", "10m"):
        for seed in (42, 123, 7, 1, 2, 3, 4, 5):
            d = tmp_path / "runs" / scale / f"seed{seed}"
            d.mkdir(parents=True)
            for name in ("summary.json", "battery.json"):
                (d / name).write_text("{}")
        (tmp_path / "models" / f"study_{scale}").mkdir(parents=True)
        (tmp_path / "models" / f"study_{scale}" / "model.safetensors").write_bytes(b"")
    rc, out = plan(tmp_path)
    assert rc == 0 and "all done" in out
    assert "resumable_train" not in out and "run_all" not in out and "src.export" not in out


def commit(tmp_path, config, seed, battery="battery.json"):
    d = tmp_path / "res" / config / f"seed{seed}"
    d.mkdir(parents=True)
    for name in ("summary.json", battery):
        (d / name).write_text("{}")


def test_seeds_whose_files_are_committed_are_done_on_a_machine_without_their_runs(tmp_path):
    for seed in (42, 123, 7, 1, 2, 3, 4, 5):
        commit(tmp_path, "study_pilot", seed, battery="battery.json.gz" if seed == 5 else "battery.json")
    for seed in (42, 123):
        commit(tmp_path, "study_10m", seed)
    rc, out = plan(tmp_path)
    assert rc == 75 and out.count("scripts/resumable_train.py") == 1
    assert "study_10m.yaml" in out and "--seeds 7,1,2,3,4,5 " in out and "study_pilot.yaml" not in out
    assert "run_all" not in out and "src.export" not in out  # nothing finished on this machine yet


def test_a_seed_group_trains_only_its_seeds_and_the_study_is_done_when_all_are_committed(tmp_path):
    rc, out = plan(tmp_path, SEEDS="7,1", SCALES="10m")
    assert rc == 75 and "--seeds 7,1 " in out and "study_10m.yaml" in out and "study_pilot" not in out
    for config in ("study_pilot", "study_10m"):
        for seed in (42, 123, 7, 1, 2, 3, 4, 5):
            commit(tmp_path, config, seed)
    rc, out = plan(tmp_path)
    assert rc == 0 and "all done" in out and "resumable_train" not in out


def test_the_batteries_of_a_group_are_planned_side_by_side_each_with_its_log(tmp_path):
    for seed, has_battery in ((42, False), (123, False), (7, True)):
        d = tmp_path / "runs" / "10m" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text("{}")
        if has_battery:
            (d / "battery.json").write_text("{}")
    rc, out = plan(tmp_path, SEEDS="42,123,7", SCALES="10m")
    batteries = [line for line in out.splitlines() if "src.analysis.run_all" in line]
    assert rc == 75 and len(batteries) == 2 and "resumable_train" not in out
    for seed, line in zip((42, 123), batteries):
        assert f"10m/seed{seed} --device cuda" in line and line.endswith(f"10m/seed{seed}/battery.log")
    assert "src.export --run" in out and "--dtype float16" in out


DETACHED = SCRIPT.parent / "study_detached.sh"


def detached(tmp_path, *args, **extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, DRY_RUN="1", RUNS=str(tmp_path / "runs"), RESULTS=str(tmp_path / "res"),
               MODELS=str(tmp_path / "models"), LOG_DIR=str(tmp_path / "log"), SCALES="10m")
    env.update({"SEEDS": "42", **extra})
    return subprocess.run(["bash", str(DETACHED), *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_detached_study_runs_on_after_start_and_wait_reports_and_copies_it(tmp_path):
    import tarfile

    nothing = detached(tmp_path, "wait", "1")
    assert nothing.returncode == 1 and "nothing was started" in nothing.stderr
    commit(tmp_path, "study_pilot", 42)  # a seed's files, to be copied
    (tmp_path / "models" / "study_pilot").mkdir(parents=True)
    (tmp_path / "models" / "study_pilot" / "model.safetensors").write_bytes(b"weights")
    started = detached(tmp_path, "start")
    assert started.returncode == 0 and "started scripts/study.sh" in started.stdout
    out = tmp_path / "out"
    waited = detached(tmp_path, "wait", "50", str(out))
    # the 10M seed is not trained (nothing runs under DRY_RUN): study.sh ends with work left, exit 75
    assert waited.returncode == 75 and "ended with exit status 75" in waited.stdout
    assert "not done: run the same command again" in (tmp_path / "log" / "study.log").read_text()
    with tarfile.open(out / "results.tgz") as t:
        assert "res/study_pilot/seed42/summary.json" in t.getnames()
    with tarfile.open(out / "logs.tgz") as t:
        assert any(name.endswith("log/study.log") for name in t.getnames())
    parts = sorted(out.glob("models.tar.part_*"))
    assert parts and b"weights" in b"".join(p.read_bytes() for p in parts)


def test_a_group_whose_seeds_are_done_exits_0_and_names_what_the_study_has_left(tmp_path):
    for seed in (42, 123):
        commit(tmp_path, "study_10m", seed)
    rc, out = plan(tmp_path, SEEDS="42,123", SCALES="10m")
    assert rc == 0 and "resumable_train" not in out
    last = out.strip().splitlines()[-1]  # the seeds missing from this machine's RESULTS, which the test names
    assert last.startswith("group done; seeds not yet in ") and last.endswith(" here: study_10m: 7,1,2,3,4,5;")
    rc, out = plan(tmp_path, SEEDS="42,7", SCALES="10m")  # seed 7 of this group is left
    assert rc == 75 and "--seeds 7 " in out and "not done: run the same command again" in out


def test_one_by_one_runs_a_study_per_seed_in_order_and_stops_at_the_first_with_work_left(tmp_path):
    for seed in (42, 123):
        commit(tmp_path, "study_10m", seed)
    assert detached(tmp_path, "start", ONE_BY_ONE="1", SEEDS="42,123").returncode == 0
    waited = detached(tmp_path, "wait", "50")
    log = (tmp_path / "log" / "study.log").read_text()
    assert waited.returncode == 0 and log.count("group done; seeds not yet in") == 2
    assert "--seeds" not in log  # both seeds committed: nothing trained
    assert detached(tmp_path, "start", ONE_BY_ONE="1", SEEDS="7,1").returncode == 0
    waited = detached(tmp_path, "wait", "50")
    log = (tmp_path / "log" / "study.log").read_text()
    # under DRY_RUN seed 7 is not trained, so its study.sh ends with work left and seed 1 is not started
    assert waited.returncode == 75 and "--seeds 7 " in log and "--seeds 1 " not in log
    assert detached(tmp_path, "start", ONE_BY_ONE="1", SEEDS="").returncode == 1


def test_a_queue_runs_one_study_per_scale_and_seeds_in_order_and_stops_at_the_first_with_work_left(tmp_path):
    commit(tmp_path, "study_10m", 42)
    commit(tmp_path, "study_pilot", 123)
    assert detached(tmp_path, "start", QUEUE="10m:42 pilot:123").returncode == 0
    waited = detached(tmp_path, "wait", "50")
    log = (tmp_path / "log" / "study.log").read_text()
    assert waited.returncode == 0 and log.count("group done; seeds not yet in") == 2 and "--seeds" not in log
    # under DRY_RUN the 10M seed 7 is not trained: its study.sh ends with work left, and the pilot's is not started
    assert detached(tmp_path, "start", QUEUE="10m:7 pilot:1").returncode == 0
    waited = detached(tmp_path, "wait", "50")
    log = (tmp_path / "log" / "study.log").read_text()
    assert waited.returncode == 75 and "--seeds 7 " in log and "study_10m.yaml" in log
    assert "--seeds 1 " not in log and "study_pilot.yaml" not in log


@pytest.mark.parametrize("queue", ["10M:2", "10m", "pilot:2 10m:", "pilot:two", "10m:2;pilot:3"])
def test_a_queue_item_that_is_not_scale_colon_seeds_is_refused_before_anything_starts(tmp_path, queue):
    started = detached(tmp_path, "start", QUEUE=queue)
    assert started.returncode == 1 and "is not SCALE:SEEDS" in started.stderr and 'QUEUE="10m:2 pilot:3"' in started.stderr
    assert not (tmp_path / "log" / "pid").exists()
