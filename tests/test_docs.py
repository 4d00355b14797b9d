"""Every command the README and docs/ name runs as written: each answers --help, naming itself.

The commands are read from the documents (`python -m src...`, `python -m scripts...`,
`python scripts/X.py`, `python benchmarks/X.py`, `python verify_10m_config.py`) and run with --help
in one subprocess, in-process one after another, so that the check costs one interpreter start.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

DOCUMENTS = ["README.md", "docs/COMMANDS.md", "docs/DESIGN.md", "docs/SCALE_10M.md"]
COMMAND = re.compile(r"python (-m (?:src|scripts)(?:\.\w+)*|(?:scripts|benchmarks)/\w+\.py|verify_10m_config\.py)(?![\w./])")

# Runs each command's --help in this one process: a module as `python -m` runs it (the repository root
# first on sys.path), a script as `python path` does (its own folder first, the project's modules
# forgotten, so a script that cannot import them alone fails here too). Prints one JSON object.
RUNNER = r"""
import contextlib, io, json, os, runpy, sys
results = {}
root = sys.path[0] = os.getcwd()
for command in json.loads(sys.argv[1]):
    module = command[3:] if command.startswith("-m ") else None
    for name in [m for m in sys.modules if m.split(".")[0] in ("src", "scripts", "benchmarks")]:
        del sys.modules[name]
    sys.path[0] = root if module else os.path.dirname(os.path.abspath(command))
    sys.argv = [module or command, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(command, run_name="__main__")
        code = "returned without exiting"
    except SystemExit as stop:
        code = stop.code or 0
    except BaseException as error:
        code = repr(error)
    results[command] = [code, out.getvalue()[:3000]]
sys.stdout = sys.__stdout__
print(json.dumps(results))
"""


def documented_commands() -> list[str]:
    found = []
    for name in DOCUMENTS:
        for command in COMMAND.findall((REPO_ROOT / name).read_text()):
            if command not in found:
                found.append(command)
    return found


def test_the_documents_name_the_pipeline_commands():
    """The extraction finds what the docs must cover, so that the --help test below is not vacuous."""
    commands = documented_commands()
    for expected in ["-m src.train", "-m src.data", "-m src.sweep", "-m src.analysis.evaluate",
                     "-m src.analysis.ablate", "-m src.analysis.probe", "-m src.analysis.run_all", "-m src.report",
                     "-m src.report.scaling", "-m src.report.analyses", "verify_10m_config.py",
                     "benchmarks/train_speed.py"]:
        assert expected in commands, f"{expected} is not named in {DOCUMENTS}"


@pytest.mark.slow  # one interpreter that imports torch and every entry point: 10-20 s on 2 busy cores
def test_every_documented_command_answers_help_and_names_itself():
    commands = documented_commands()
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(commands)], check=False, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failures = []
    for command in commands:
        code, text = results[command]
        name = command[3:] if command.startswith("-m ") else command.rsplit("/", 1)[-1]
        if code != 0:
            failures.append(f"python {command} --help: exit {code}: {text[-500:]}")
        elif "usage:" not in text or name not in text:
            failures.append(f"python {command} --help: the help does not name {name}: {text[:300]}")
    assert not failures, "\n".join(failures)
