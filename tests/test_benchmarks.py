"""The benchmark scripts still run: benchmarks/rerun_noise.py on the CPU (where nothing is compiled or
captured, and every kernel repeats), two of its modes on a few steps."""

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_rerun_noise_runs_its_modes_and_finds_the_cpu_repeatable(tmp_path):
    out = tmp_path / "noise.json"
    done = subprocess.run([sys.executable, "benchmarks/rerun_noise.py", "--device", "cpu", "--repeat-data", "1",
                           "--configs", "configs/extension/ext_pilot_n2000000.yaml",
                           "--modes", "default", "scatter-embedding", "--json", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert [r["mode"] for r in results] == ["default", "scatter-embedding"]
    assert [r["embedding_backward"] for r in results] == ["_EmbeddingLookupBackward", "EmbeddingBackward0"]
    for r in results:
        assert r["steps"] == 8 and r["batch_size"] == 256 and r["tensors"] == 43
        assert r["max_weight_difference"] == 0 and r["tensors_differing"] == 0
    assert "ext_pilot_n2000000 scatter-embedding: 8 steps, max weight difference 0" in done.stdout
