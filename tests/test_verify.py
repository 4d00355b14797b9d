"""verify_10m_config.py: output lines and exit status. Every case calls its main() in-process, as its
__main__ block does; test_errors.py runs the script itself as a subprocess."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PILOT = REPO_ROOT / "configs" / "pilot.yaml"


@pytest.fixture
def verify_here(capsys, monkeypatch):
    """`verify_10m_config.py ARGS` in-process: main(args) from the repository root, stdout and stderr captured."""
    import verify_10m_config

    monkeypatch.chdir(REPO_ROOT)

    def run(*args) -> subprocess.CompletedProcess:
        rc = verify_10m_config.main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["verify_10m_config.py", *args], rc, out, err)

    return run


@pytest.fixture(scope="module")
def default_run():
    """`verify_10m_config.py` with no arguments, in-process (test_errors.py runs the script itself)."""
    import contextlib
    import io
    import os

    import verify_10m_config

    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = verify_10m_config.main([])
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["verify_10m_config.py"], rc, out.getvalue(), err.getvalue())


def write_pilot_variant(tmp_path, change) -> Path:
    raw = yaml.safe_load(PILOT.read_text(encoding="utf-8"))
    change(raw)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_default_checks_scale_10m(default_run):
    out = default_run.stdout
    assert default_run.returncode == 0, default_run.stdout + default_run.stderr
    for line in ("Total parameters: 10,651,776", "10.65M", "Target: 10M", "Difference: 6.5%", "[OK] Configuration verified"):
        assert line in out
    assert "[ERROR]" not in out
    assert "CUDA:" in out


def test_pilot_config(verify_here):
    proc = verify_here("--config", "configs/pilot.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Total parameters: 664,192" in proc.stdout
    assert "Target: 0.66M" in proc.stdout
    assert "[OK] Configuration verified" in proc.stdout


def test_require_cuda(verify_here):
    proc = verify_here("--require-cuda")
    if torch.cuda.is_available():
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "CUDA: available" in proc.stdout
    else:
        assert proc.returncode == 1
        assert "[ERROR]" in proc.stdout and "CUDA" in proc.stdout
        assert "Total parameters: 10,651,776" in proc.stdout  # the count is still reported


def test_count_far_from_target_fails(tmp_path, verify_here):
    path = write_pilot_variant(tmp_path, lambda raw: raw.update(target_parameters=1_000_000))
    proc = verify_here("--config", str(path))
    assert proc.returncode == 1
    assert "Total parameters: 664,192" in proc.stdout
    assert "Difference: -33.6%" in proc.stdout
    assert "[ERROR]" in proc.stdout and "[OK]" not in proc.stdout


def test_invalid_config_fails(tmp_path, verify_here):
    path = write_pilot_variant(tmp_path, lambda raw: raw["model"].update(d_model=0))
    proc = verify_here("--config", str(path))
    assert proc.returncode == 1
    assert "[ERROR]" in proc.stdout and "model.d_model" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_missing_config_fails(tmp_path, verify_here):
    proc = verify_here("--config", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1
    assert "[ERROR]" in proc.stdout and "nope.yaml" in proc.stdout


# ---------------------------------------------------------------------------- --then-train (the launchers' way)


def tiny_variant(tmp_path) -> Path:
    """The pilot config shrunk to a one-epoch CPU run, its target the model's exact count (so the check passes)."""
    from src.config import load_config
    from src.model import CompactTransformer

    def shrink(raw):
        raw["model"].update(d_model=32, num_layers=2, num_heads=4, d_ff=64)
        raw["training"].update(batch_size=64, epochs=1, eval_interval=1, save_interval=1, warmup_steps=10)

    path = write_pilot_variant(tmp_path, shrink)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["target_parameters"] = CompactTransformer(load_config(path).model).num_parameters()
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_then_train_checks_then_trains_in_the_same_process(tmp_path, verify_here):
    out = tmp_path / "run"
    proc = verify_here("--then-train", "--config", str(tiny_variant(tmp_path)), "--output-dir", str(out),
                       "--seed", "42", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert (text.index("[OK] Configuration verified") < text.index("CUDA:")
            < text.index("== training: python -m src.train --config") < text.index("Done:"))
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["status"] == "completed"


def test_then_train_trains_nothing_when_a_check_fails(tmp_path, verify_here):
    path = write_pilot_variant(tmp_path, lambda raw: raw.update(target_parameters=1_000_000))
    out = tmp_path / "run"
    proc = verify_here("--then-train", "--config", str(path), "--output-dir", str(out), "--device", "cpu")
    assert proc.returncode == 1
    assert "Difference: -33.6%" in proc.stdout  # the training's --config is the one checked
    assert "[ERROR] A check failed (above). Not training." in proc.stdout
    assert "== training" not in proc.stdout and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the case of a machine without CUDA")
def test_then_train_requires_cuda_before_training(tmp_path, verify_here):
    out = tmp_path / "run"
    proc = verify_here("--require-cuda", "--then-train", "--config", str(tiny_variant(tmp_path)),
                       "--output-dir", str(out), "--device", "cuda", "--gpu-only")
    assert proc.returncode == 1
    assert "[ERROR] CUDA is required (--require-cuda) but not available" in proc.stdout
    assert "Not training." in proc.stdout and not out.exists()


def test_then_train_checks_the_config_it_trains(tmp_path, verify_here):
    from src.errors import UserError

    with pytest.raises(UserError, match="the config checked must be the one trained"):
        verify_here("--config", "configs/pilot.yaml", "--then-train", "--config", "configs/scale_10m.yaml",
                    "--output-dir", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
