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
