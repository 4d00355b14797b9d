"""src.analysis.run_all on a tiny run, CPU: every step runs in one process and writes its file; a failing
step is reported and the others still run."""

import json
from pathlib import Path

import pytest

from src.analysis import run_all as battery
from src.errors import run_main
from tests.test_probe import write_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("battery"))


@pytest.mark.slow
def test_the_battery_runs_every_step_and_records_its_time(run):
    assert battery.main(["--run", str(run), "--device", "cpu", "--limit", "30", "--quiet"]) == 0
    record = json.loads((run / "battery.json").read_text())
    assert record["schema"] == "battery/1" and record["failed"] == [] and record["device"] == "cpu"
    assert [s["step"] for s in record["steps"]] == list(battery.STEPS)
    for step in record["steps"]:
        assert step["status"] == "ok" and step["wall_s"] > 0
        assert step["command"].startswith(f"python -m src.{step['step']} --run ")
        assert json.loads((run / battery.OUTPUTS[step["step"]]).read_text())["schema"]
    assert record["total_s"] >= sum(s["wall_s"] for s in record["steps"])


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path):
    run = write_tiny_run(tmp_path)
    (tmp_path / "data" / "pilot_test_paren_matched.jsonl").write_text("not json\n")  # patching reads it
    assert battery.main(["--run", str(run), "--device", "cpu", "--limit", "20", "--only", "patching,value_probe",
                         "--quiet"]) == 1
    record = json.loads((run / "battery.json").read_text())
    status = {s["step"]: s["status"] for s in record["steps"]}
    assert status == {"patching": "failed", "value_probe": "ok"} and record["failed"] == ["patching"]
    assert "not valid JSON" in record["steps"][0]["error"] or record["steps"][0]["error"] == "exit status 2"
    assert (run / "value_probe.json").is_file() and not (run / "patching.json").exists()


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert run_main(battery.main, ["--run", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert run_main(battery.main, ["--run", str(tmp_path), "--only", "ablate,nothing"]) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.gpu
def test_the_battery_runs_on_cuda(tmp_path):
    run = write_tiny_run(tmp_path)
    assert battery.main(["--run", str(run), "--device", "cuda", "--limit", "30", "--quiet"]) == 0
    record = json.loads((run / "battery.json").read_text())
    assert record["failed"] == [] and record["device"] != "cpu"
    assert json.loads((run / "value_probe.json").read_text())["device"].startswith("cuda")


@pytest.mark.slow
def test_the_profiling_script_profiles_a_step_on_an_untrained_model(tmp_path):
    import os
    import pstats
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "DEVICE": "cpu", "STEPS": "roles", "RUNSETS": "pilot", "PROFILE_DIR": str(tmp_path)}
    done = subprocess.run(["bash", str(root / "scripts" / "profile_battery.sh")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "times.txt").read_text().startswith("pilot roles rc=0 wall=")
    assert (tmp_path / "run_pilot" / "roles.json").is_file()
    assert pstats.Stats(str(tmp_path / "pilot_roles.prof")).total_calls > 0
