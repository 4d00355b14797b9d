"""scripts/extension_mechanisms.sh end to end on the CPU, with tiny stand-ins for the configs: each
run trained, evaluated on the shipped and fresh test files, taken apart by the battery; roles matched
within the extension; the section written; small files kept, every file listed; the weights packed, and
taken apart again in a later call without training."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "extension_mechanisms.sh"


def tiny(raw: dict, layers: int) -> dict:
    raw["model"].update(d_model=32, num_layers=layers, num_heads=2, d_ff=64)
    raw["training"].update(epochs=1, eval_interval=1, save_interval=1, batch_size=128, compile=False,
                           cuda_graph=False, precision="fp32", warmup_steps=2)
    raw["target_parameters"] = 1
    return raw


@pytest.mark.slow
def test_the_script_takes_both_studies_apart(tmp_path):
    ext, rep = tmp_path / "ext", tmp_path / "rep"
    ext.mkdir()
    rep.mkdir()
    for name, layers in (("ext_pilot_n2000", 2), ("ext_10m_n2000", 3)):
        raw = yaml.safe_load((REPO_ROOT / "configs" / "extension" / f"{name}.yaml").read_text())
        (ext / f"{name}.yaml").write_text(yaml.safe_dump(tiny(raw, layers), sort_keys=False))
    raw = yaml.safe_load((REPO_ROOT / "configs" / "pilot.yaml").read_text())
    (rep / "pilot.yaml").write_text(yaml.safe_dump(tiny(raw, 2), sort_keys=False))
    out, raw_dir = tmp_path / "out", tmp_path / "raw"
    # two queues (both on the CPU here): the runs of QUEUES' first list in order on one, the second's on the other
    env = {**os.environ, "QUEUES": "ext_pilot_n2000:42 pilot:42;ext_10m_n2000:42", "MATCH_N": "2000", "GPUS": "cpu cpu",
           "EXT_CONFIGS": str(ext), "REP_CONFIGS": str(rep), "FRESH_EXCLUDE": "2000", "FRESH": str(tmp_path / "fresh_2026"),
           "LIMIT": "24", "RUNS_DIR": str(tmp_path / "runs"), "RETRAIN_DIR": str(tmp_path / "retrain"),
           "RAW": str(raw_dir), "OUT": str(out), "SMALL_KB": "60", "WEIGHTS_OUT": str(tmp_path / "weights")}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "weights").glob("*.weights.json")) == [
        "ext_10m_n2000_seed42.weights.json", "ext_pilot_n2000_seed42.weights.json",
        "replication_pilot_seed42.weights.json"]
    for config in ("ext_pilot_n2000", "ext_10m_n2000", "pilot"):
        everything = {p.name for p in (raw_dir / config / "seed42").iterdir()}
        assert {"ablation.json", "roles.json", "probe.json", "patching.json", "value_probe.json", "battery.json",
                "eval.json", "eval_fresh_2026.json", "summary.json"} <= everything
        listed = (out / config / "seed42" / "FILES.txt").read_text().splitlines()
        assert sorted(line.split()[0] for line in listed) == sorted(everything)
        for line in listed:
            name, size, kept = line.split()[0], int(line.split()[1]), line.endswith(" kept")
            assert kept == (size <= 60 * 1024) == (out / config / "seed42" / name).is_file()
    match = json.loads((out / "rolematch.json").read_text())
    assert match["pilot_runs"] == [str(raw_dir / "ext_pilot_n2000" / "seed42")]
    assert not (out / "replication").exists()  # the replication has no 10M run here
    mech = json.loads((out / "mechanisms.json").read_text())
    assert sorted(r["config"] for r in mech["runs"]) == ["ext_10m_n2000", "ext_pilot_n2000", "pilot"]
    assert "eval_fresh_2026" in mech["runs"][0]["exact_match"]
    assert (out / "MECHANISMS.md").read_text().startswith("## Extension: mechanisms")

    # the packed weights (WEIGHTS_OUT above) in a later call: unpacked and taken apart, not trained again
    again = {**env, "QUEUES": "ext_pilot_n2000:42", "GPUS": "cpu", "WEIGHTS_IN": env["WEIGHTS_OUT"],
             "RUNS_DIR": str(tmp_path / "b" / "runs"), "RETRAIN_DIR": str(tmp_path / "b" / "retrain"),
             "RAW": str(tmp_path / "b" / "raw"), "OUT": str(tmp_path / "b" / "out")}
    again.pop("WEIGHTS_OUT")
    done = subprocess.run(["bash", str(SCRIPT)], env=again, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "training seeds" not in done.stdout + done.stderr and "0 run(s) finished now, 1 before" in done.stdout
    run = tmp_path / "b" / "runs" / "ext_pilot_n2000" / "seed42"
    assert json.loads((run / "weights_origin.json").read_text())["store"] == "fp32"
    first, second = (json.loads((d / "ext_pilot_n2000" / "seed42" / "ablation.json").read_text())
                     for d in (raw_dir, tmp_path / "b" / "raw"))
    assert first["baseline"] == second["baseline"]  # the same model, bit for bit: the same scores


def test_more_queues_than_devices_is_refused_before_anything_runs(tmp_path):
    env = {**os.environ, "QUEUES": "a:1;b:2;c:3", "GPUS": "cpu cpu", "RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "QUEUES has 3 lists but GPUS names 2 device(s)" in done.stderr
    assert not (tmp_path / "runs").exists()

