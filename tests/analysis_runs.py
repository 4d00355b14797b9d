"""Helpers of the tests that run the analysis commands (evaluate, ablate, probe, roles, report) on a
tiny run (the `analysis_run` fixture of tests/conftest.py), in-process as `python -m src.<tool>` runs them: the run (tests/tiny.py) and copies of it that
hold earlier result files, a snapshot of a run directory, the check of a refusal, and a full disk.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import src.rundir.atomic
from src.analysis import ablate, evaluate, probe, roles

ANALYSES = {"evaluate": evaluate.main, "ablate": ablate.main, "probe": probe.main, "roles": roles.main}

FAST = {"evaluate": [], "ablate": ["--max-set-size", "1"], "probe": ["--max-iter", "5", "--resamples", "100"],
        "roles": []}

MAX_MESSAGE = 600


def snapshot(root: Path) -> dict:
    """Every file under `root` and its bytes (directories as None)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def expect_error(result, *fragments) -> str:
    rc, _, err = result
    assert rc == 2, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def expect_user_error(result, *fragments) -> str:
    """A UserError: exactly one line `error: ...`."""
    err = expect_error(result, *fragments).strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and len(err) < MAX_MESSAGE, err
    return err


def copy_run(analysis_run, tmp_path, name="run") -> Path:
    run = tmp_path / name
    shutil.copytree(analysis_run["run"], run)
    # result files of an earlier analysis, which a failed command must leave untouched
    for f in ("eval.json", "ablation.json", "probe.json", "roles.json"):
        (run / f).write_text('{"schema": "earlier", "keep": "me"}\n')
    for f in ("ablation_heatmap.png", "probe_layers.png", "roles.png"):
        (run / f).write_bytes(b"\x89PNG earlier figure")
    return run


def full_disk_on(monkeypatch, suffix: str):
    """Every atomic write of a file ending in `suffix` fails with ENOSPC half-way through its bytes."""
    real = src.rundir.atomic.write_synced

    def write(path, data):
        if src.rundir.atomic.target_name(path).endswith(suffix):
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(src.rundir.atomic, "write_synced", write)
