"""train_10m_scale.sh and train_10m_scale.bat, run for real with PYTHON pointed at a shim, for the same outcomes.

The shim logs its arguments and exits with SHIM_VERIFY_RC for `verify_10m_config.py ...` (the checks and then,
in the same process, the training) and SHIM_TRAIN_RC for anything else (the Windows nvidia-smi below). The
.bat runs under Wine's cmd (tests marked `wine`, skipped where `wine` or the MinGW compiler that builds the
Windows shim is missing); the .sh under bash.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN = ("verify_10m_config.py --require-cuda --then-train --config configs/scale_10m.yaml --output-dir runs/scale_10m "
       "--seed 42 --device cuda --fp16 --gpu-only --resume")
SHIM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *log = getenv("SHIM_LOG");
    FILE *f = log ? fopen(log, "a") : NULL;
    if (f) {
        for (int i = 1; i < argc; i++) fprintf(f, "%s%s", i > 1 ? " " : "", argv[i]);
        fprintf(f, "\n");
        fclose(f);
    }
    const char *rc = getenv(argc > 1 && strstr(argv[1], "verify_10m_config") ? "SHIM_VERIFY_RC" : "SHIM_TRAIN_RC");
    return rc ? atoi(rc) : 0;
}
"""
SHIM_SH = """#!/bin/sh
echo "$*" >> "$SHIM_LOG"
case "$1" in *verify_10m_config*) exit "${SHIM_VERIFY_RC:-0}";; esac
exit "${SHIM_TRAIN_RC:-0}"
"""
# (nvidia-smi: None missing / exit status; the Python process's status) -> (exit, lines in the output, runs logged).
# What the checks print when they fail, and that nothing trains then: tests/test_verify.py.
CASES = {
    "nvidia-smi missing, training status passed through": (None, 7, 7, ["nvidia-smi not found",
                                                                        "[ERROR] exited with status 7"], [RUN]),
    "all good": (None, 0, 0, ["nvidia-smi not found", "== 2/2 config and CUDA check, then the training"], [RUN]),
    "a check fails": (None, 1, 1, ["[ERROR] exited with status 1: a failed check"], [RUN]),
    "nvidia-smi fails: no training": (1, 0, 1, ["[ERROR] nvidia-smi is installed but failed"], []),
}


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def check(result, log: Path, code: int, lines: list[str], runs: list[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    for line in lines:
        assert line in output, output
    logged = log.read_text().splitlines() if log.exists() else []
    assert [" ".join(r.split()) for r in logged] == runs, output


@pytest.mark.parametrize("case", list(CASES))
def test_sh_launcher(case, tmp_path):
    smi, python_rc, code, lines, runs = CASES[case]
    shutil.copy(REPO_ROOT / "train_10m_scale.sh", tmp_path)
    shim = executable(tmp_path / "python_shim", SHIM_SH)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sh"):  # a PATH without any nvidia-smi of this machine
        os.symlink(shutil.which(tool), bin_dir / tool)
    if smi is not None:
        executable(bin_dir / "nvidia-smi", f"#!/bin/sh\nexit {smi}\n")
    log = tmp_path / "log"
    env = {"PATH": str(bin_dir), "PYTHON": str(shim), "SHIM_LOG": str(log), "SHIM_VERIFY_RC": str(python_rc)}
    result = subprocess.run([shutil.which("bash"), str(tmp_path / "train_10m_scale.sh"), "--resume"], env=env,
                            capture_output=True, text=True, timeout=30)
    check(result, log, code, lines, runs)


def windows_path(path: Path) -> str:
    return "Z:" + str(path).replace("/", "\\")


@pytest.fixture(scope="module")
def windows_shim(tmp_path_factory):
    if shutil.which("wine") is None:
        pytest.skip("needs wine (Debian: apt-get install wine)")
    compiler = shutil.which("x86_64-w64-mingw32-gcc")
    if compiler is None:
        pytest.skip("needs the MinGW compiler for the Windows shim (Debian: apt-get install gcc-mingw-w64-x86-64-win32)")
    root = tmp_path_factory.mktemp("wine")
    (root / "shim.c").write_text(SHIM_C)
    subprocess.run([compiler, "-O2", "-o", str(root / "shim.exe"), str(root / "shim.c")], check=True, timeout=120)
    # The first Windows process starts wine's background services, and they inherit its stdout and stderr;
    # they end a few seconds after the last Windows process, so capturing the output of a run that started
    # them waits for them (about 2.4 s). Started here first, with their output to /dev/null, and kept 30 s
    # after the last run, they are the ones every run below uses.
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 60}
    subprocess.run(["wineserver", "-p30"], **quiet)
    subprocess.run(["wine", "cmd", "/c", "exit"], env={**os.environ, "WINEDEBUG": "-all"}, **quiet)
    return root / "shim.exe"


@pytest.mark.wine
@pytest.mark.parametrize("case", list(CASES))
def test_bat_launcher_under_wine(case, tmp_path, windows_shim):
    smi, python_rc, code, lines, runs = CASES[case]
    shutil.copy(REPO_ROOT / "train_10m_scale.bat", tmp_path)
    log = tmp_path / "log"
    env = {**os.environ, "WINEDEBUG": "-all", "PYTHON": windows_path(windows_shim), "SHIM_LOG": windows_path(log),
           "SHIM_VERIFY_RC": str(python_rc), "SHIM_TRAIN_RC": "0"}
    if smi is not None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        shutil.copy(windows_shim, bin_dir / "nvidia-smi.exe")  # exits with SHIM_TRAIN_RC: set to `smi` below
        env["WINEPATH"] = windows_path(bin_dir)
        env["SHIM_TRAIN_RC"] = str(smi)
    result = subprocess.run(["wine", "cmd", "/c", "train_10m_scale.bat", "--resume"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    if smi is not None:  # nvidia-smi itself writes to the log: the shim's line with no arguments
        runs = [""]
    check(result, log, code, lines, runs)
