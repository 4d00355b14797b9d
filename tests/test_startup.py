"""Ctrl-C while an entry point imports torch (seconds): one line, exit 130, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [["-m", "src.analysis.evaluate", "--help"], ["-m", "src.report", "--help"],
            ["-m", "src.data", "--help"], ["-m", "src.analysis.run_all", "--help"],
            ["-m", "scripts.carry_weights", "--help"], ["-m", "src.train", "--help"],
            [str(REPO_ROOT / "verify_10m_config.py")]]


@pytest.mark.parametrize("command", COMMANDS, ids=[c[1] if c[0] == "-m" else Path(c[0]).name for c in COMMANDS])
def test_sigint_while_torch_imports_ends_in_one_line_and_exit_130(command, tmp_path):
    """A torch whose import receives a real SIGINT (as Ctrl-C during the seconds it takes)."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO_ROOT)]))
    result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 130, result.stderr
    assert result.stderr.startswith("interrupted: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


# What a real torch import does with a signal handler's exception raised inside it, seen with torch 2.13 and
# numpy 2 (SIGINT sent 0.36 s and 0.38 s after start): numpy's C extension, interrupted while it initialises,
# fails its next import ("cannot load module more than once per process", a traceback, exit 1); or the
# exception is lost inside the import and the command goes on after printing "interrupted:".
SWALLOWING_IMPORTS = {
    "lost": "import os, signal, time\ntry:\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)\n"
            "except BaseException:\n    pass\n",
    "import_error": "import os, signal, time\ntry:\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)\n"
                    "except BaseException:\n    raise ImportError('cannot load module more than once per process')\n",
}


@pytest.mark.parametrize("behaviour", SWALLOWING_IMPORTS)
@pytest.mark.parametrize("command", COMMANDS, ids=[c[1] if c[0] == "-m" else Path(c[0]).name for c in COMMANDS])
def test_sigint_inside_an_import_that_loses_the_exception_still_ends_at_once(command, behaviour, tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(SWALLOWING_IMPORTS[behaviour])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO_ROOT)]))
    result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 130, result.stderr
    assert result.stderr.startswith("interrupted: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
