"""The benchmark scripts still run: benchmarks/rerun_noise.py on the CPU (where nothing is compiled or
captured, and every kernel repeats), on a few steps."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/extension/ext_pilot_n2000000.yaml"


@pytest.mark.slow
def test_rerun_noise_runs_its_modes_and_finds_the_cpu_repeatable(tmp_path):
    out = tmp_path / "noise.json"  # the command line, with the mode that puts nn.Embedding's backward back
    done = subprocess.run([sys.executable, "benchmarks/rerun_noise.py", "--device", "cpu", "--repeat-data", "1",
                           "--configs", CONFIG, "--modes", "scatter-embedding", "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ext_pilot_n2000000 scatter-embedding: 8 steps, max weight difference 0" in done.stdout
    (scatter,) = json.loads(out.read_text())
    spec = importlib.util.spec_from_file_location("rerun_noise", REPO_ROOT / "benchmarks" / "rerun_noise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    default = module.one(str(REPO_ROOT / CONFIG), "default", 1, "cpu")  # the project's path, in this process
    assert scatter["embedding_backward"] == "EmbeddingBackward0"
    assert default["embedding_backward"] == "_EmbeddingLookupBackward"
    for r in (scatter, default):
        assert r["steps"] == 8 and r["batch_size"] == 256 and r["tensors"] == 43
        assert r["max_weight_difference"] == 0 and r["tensors_differing"] == 0


def load_train_speed():
    spec = importlib.util.spec_from_file_location("train_speed", REPO_ROOT / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_speed_paths_run_on_the_cpu_and_write_every_figure(tmp_path):
    """benchmarks/train_speed.py --quick (tiny models, a few steps) on one batch-256 config of the pilot's
    data: a row per path, each with its ratio to the padded path (several seeds: the slow test below)."""
    import yaml

    raw = yaml.safe_load((REPO_ROOT / "configs/extension/ext_pilot_n2000000.yaml").read_text())
    raw["data"] = {k: str(REPO_ROOT / v) for k, v in raw["data"].items() if k not in ("train_size", "answer_format")}
    raw["data"]["train"] = str(REPO_ROOT / "data" / "pilot_train.jsonl")
    config = tmp_path / "b256.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "speed.json"
    assert load_train_speed().main(["--quick", "--configs", str(config), "--seeds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "train_speed/1" and result["gpu"] == "cpu" and result["torch"]
    rows = {(r["path"], r["seeds"]): r for r in result["rows"]}
    assert set(rows) == {(p, s) for p in ("padded", "packed", "packed-bf16") for s in (1,)}
    for (path, seeds), r in rows.items():
        assert r["examples_per_s"] == pytest.approx(r["seed_steps_per_s"] * 256)
        assert r["seed_steps_per_s"] == pytest.approx(r["steps_per_s"] * seeds)
        assert r["ratio_to_padded"] == pytest.approx(r["examples_per_s"] / rows[("padded", seeds)]["examples_per_s"])
        assert (r["packing"] is False) == (path == "padded")
        assert r["precision"] == ("bf16" if path == "packed-bf16" else "fp32")
    packed = rows[("packed", 1)]
    assert packed["packing"]["width"] == 64 and packed["positions_per_step"] < 256 * packed["data_width"]


@pytest.mark.slow
def test_train_speed_quick_runs_every_default_config(tmp_path):
    """--quick as the command line runs it: the three default configs, seeds 1 and 2 side by side."""
    out = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, "benchmarks/train_speed.py", "--quick", "--json", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["config"] for r in rows} == {"ext_10m_n2000000", "ext_pilot_n2000000", "scale_10m"}
    assert {(r["path"], r["seeds"]) for r in rows} == {(p, s) for p in ("padded", "packed", "packed-bf16") for s in (1, 2)}
    assert all(r["ratio_to_padded"] is not None for r in rows)
    assert "examples/s" in done.stdout and "x padded" in done.stdout


def test_start_time_times_both_cases_in_fresh_caches_and_names_a_failed_import(tmp_path, capsys):
    """benchmarks/start_time.py on a small stdlib module: each case timed in new processes, the cache written
    by the first process with bytecode on, the ratio the medians'; an import that fails is an error, not a time."""
    from benchmarks import start_time

    out = tmp_path / "start.json"
    assert start_time.main(["--imports", "json", "--repeats", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == "start_time/1"
    (row,) = result["results"]
    assert row["imports"] == "json" and len(row["without_bytecode_s"]) == len(row["with_bytecode_s"]) == 2
    assert row["bytecode_files_written"] > 0
    assert row["ratio_without_over_with"] == pytest.approx(row["median_without_s"] / row["median_with_s"])
    assert "import json: without bytecode" in capsys.readouterr().out
    assert start_time.main(["--imports", "no_such_module_here"]) == 1
    assert "No module named 'no_such_module_here'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        start_time.main(["--repeats", "0"])
