"""src.analysis.run_all on a tiny run, CPU: every step runs in one process and writes its file; a failing
step is reported and the others still run."""

import gzip
import json
from pathlib import Path

import pytest

from src.analysis import common, run_all as battery
from src.data.counterfactual import FILES
from src.errors import run_main
from src.rundir.atomic import gzip_bytes
from tests.test_probe import REPO_ROOT, write_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_tiny_run(tmp_path_factory.mktemp("battery"))


def with_pairs(run: Path) -> Path:
    """The run, with the first 40 pairs of each shipped pair file beside its data files: the interchange
    step reads them there."""
    for name in FILES.values():
        lines = gzip.decompress((REPO_ROOT / "data" / name).read_bytes()).splitlines(keepends=True)[:40]
        (run.parent / "data" / name).write_bytes(gzip_bytes(b"".join(lines)))
    return run


@pytest.mark.slow
def test_the_battery_runs_every_step_and_records_its_time(run, monkeypatch):
    with_pairs(run)
    loads, reads = [], []
    real_load, real_read = common.load_model, common.split_records
    monkeypatch.setattr(common, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(common, "split_records", lambda cfg, split, *a: reads.append(split) or real_read(cfg, split, *a))
    assert battery.main(["--run", str(run), "--device", "cpu", "--limit", "30", "--quiet", "--no-progress"]) == 0
    assert len(loads) == 1 and sorted(reads) == sorted(set(reads))  # the checkpoint and every data file read once
    assert not (run / "battery.json").exists()  # a --limit run keeps its own files
    record = json.loads((run / "battery.limit30.json").read_text())
    assert record["schema"] == "battery/1" and record["failed"] == [] and record["device"] == "cpu"
    assert record["limit"] == 30 and record["checkpoint"] == "best"
    assert [s["step"] for s in record["steps"]] == list(battery.STEPS)
    assert battery.STEPS[0] == "evaluate" and battery.STEPS[-1] == "interchange"
    for step in record["steps"]:
        assert step["status"] == "ok" and step["wall_s"] > 0
        assert step["command"].startswith(f"python -m src.analysis.{step['step']} --run ")
        output = record["outputs"][step["step"]]
        assert output == battery.OUTPUTS[step["step"]].replace(".json", ".limit30.json")
        assert json.loads((run / output).read_text())["limit"] == 30
        assert not (run / battery.OUTPUTS[step["step"]]).exists()
    assert record["total_s"] >= sum(s["wall_s"] for s in record["steps"])


@pytest.mark.slow
def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path, capsys):
    run = write_tiny_run(tmp_path)
    (tmp_path / "data" / "pilot_test_paren_matched.jsonl").write_text("not json\n")  # patching reads it
    assert battery.main(["--run", str(run), "--device", "cpu", "--limit", "20", "--only", "patching,value_probe",
                         "--quiet", "--no-progress"]) == 1
    record = json.loads((run / "battery.limit20.json").read_text())
    status = {s["step"]: s["status"] for s in record["steps"]}
    assert status == {"patching": "failed", "value_probe": "ok"} and record["failed"] == ["patching"]
    assert "not valid JSON" in record["steps"][0]["error"]
    assert capsys.readouterr().err.count("not valid JSON") == 1
    assert (run / "value_probe.limit20.json").is_file() and not (run / "patching.limit20.json").exists()


def test_a_failure_every_step_shares_stops_the_battery_before_its_first_step(tmp_path, capsys):
    run = write_tiny_run(tmp_path)
    (run / "checkpoint_best.pt").rename(run / "checkpoint_latest.pt")  # interrupted before its best checkpoint
    rc = run_main(battery.main, ["--run", str(run), "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("error:") == 1 and "--resume" in err
    assert "== battery:" not in out and not (run / "battery.json").exists()


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert run_main(battery.main, ["--run", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert run_main(battery.main, ["--run", str(tmp_path), "--only", "ablate,nothing"]) == 2
    assert "nothing" in capsys.readouterr().err


@pytest.mark.gpu
def test_the_battery_runs_on_cuda(tmp_path):
    run = with_pairs(write_tiny_run(tmp_path))
    assert battery.main(["--run", str(run), "--device", "cuda", "--limit", "30", "--quiet"]) == 0
    record = json.loads((run / "battery.limit30.json").read_text())
    assert record["failed"] == [] and record["device"] != "cpu"
    assert json.loads((run / "value_probe.limit30.json").read_text())["device"].startswith("cuda")


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
