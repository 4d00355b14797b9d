"""tests/killpoint.py, the launcher the crash tests stop a real run with, and the production write
path it wraps (src/rundir/atomic.py reads no test switch of its own)."""

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.killpoint import parse

REPO_ROOT = Path(__file__).resolve().parent.parent

# three versions of a.json, then a hard link swapped in as b.json (as RunDir.link does)
WRITER = '''
import os, sys
from pathlib import Path
from src.rundir.atomic import atomic_write_json, replaced
out = Path(sys.argv[1])
for version in (1, 2, 3):
    atomic_write_json(out / "a.json", {"version": version, "pad": "x" * 200})
os.link(out / "a.json", out / "b.json.tmp")
replaced(out / "b.json.tmp", out / "b.json")
print("done")
'''


def run_writer(tmp_path, spec: str) -> subprocess.CompletedProcess:
    (tmp_path / "writer_module.py").write_text(WRITER)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(tmp_path)])}
    return subprocess.run([sys.executable, "-m", "tests.killpoint", spec, "--", "writer_module", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def version(path: Path) -> int:
    return json.loads(path.read_text())["version"]


def test_mid_stops_half_way_through_the_nth_write_leaving_the_previous_file(tmp_path):
    proc = run_writer(tmp_path, "a.json@2:mid")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    out = tmp_path / "out"
    assert version(out / "a.json") == 1
    (left,) = out.glob(".a.json.*.tmp")  # the killed writer's own temporary file
    half = left.read_text()
    whole = json.dumps({"version": 2, "pad": "x" * 200}, indent=2) + "\n"
    assert half == whole[: len(whole.encode()) // 2]


def test_after_stops_once_the_nth_version_is_in_place(tmp_path):
    proc = run_writer(tmp_path, "a.json@3:after")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    out = tmp_path / "out"
    assert version(out / "a.json") == 3 and not list(out.glob(".a.json.*.tmp")) and not (out / "b.json").exists()


def test_a_linked_file_counts_as_a_write_and_the_signal_is_chosen(tmp_path):
    proc = run_writer(tmp_path, "b.json:after:TERM")
    assert proc.returncode == -signal.SIGTERM, proc.stderr  # the writer installs no handler
    assert version(tmp_path / "out" / "b.json") == 3 and "done" not in proc.stdout


def test_without_a_matching_point_the_command_runs_to_the_end(tmp_path):
    proc = run_writer(tmp_path, "a.json@4:after")
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr
    assert version(tmp_path / "out" / "b.json") == 3


@pytest.mark.parametrize("spec", ["a.json", "a.json:during", "a.json@x:mid", "a.json:mid:NOSUCH"])
def test_a_malformed_kill_point_is_refused(spec):
    with pytest.raises(SystemExit, match="bad kill point") as refused:
        parse(spec)
    assert "usage:" in str(refused.value)


def test_the_production_write_path_reads_no_environment_variable():
    """The crash tests' kill switch lives in tests/killpoint.py: src/rundir/atomic.py neither reads
    os.environ / os.getenv nor names a test switch."""
    source = (REPO_ROOT / "src" / "rundir" / "atomic.py").read_text()
    names = {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}
    assert not names & {"environ", "getenv", "environb"}
    assert "PARENS_TEST" not in source
