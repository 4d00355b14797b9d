"""scripts/study.sh under DRY_RUN=1: the plan follows what is done (no GPU, nothing run)."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "study.sh"


def plan(tmp_path) -> tuple[int, str]:
    env = dict(os.environ, DRY_RUN="1", RUNS=str(tmp_path / "runs"), RESULTS=str(tmp_path / "res"),
               MODELS=str(tmp_path / "models"))
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout


def test_the_plan_trains_the_first_unfinished_scale_and_analyses_only_finished_seeds(tmp_path):
    (tmp_path / "runs" / "pilot" / "seed42").mkdir(parents=True)
    (tmp_path / "runs" / "pilot" / "seed42" / "summary.json").write_text("{}")
    rc, out = plan(tmp_path)
    assert rc == 75 and "run the same command again" in out
    assert out.count("scripts/resumable_train.py") == 1 and "study_pilot.yaml" in out and "study_10m.yaml" not in out
    assert "--seeds 42,123,7,1,2,3,4,5" in out
    assert out.count("src.analysis.run_all") == 1 and "pilot/seed42 --device cuda" in out
    assert "src.export --run" in out and "models/study_pilot" in out


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
