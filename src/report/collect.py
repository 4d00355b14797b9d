"""Collecting runs for the report: each run directory's pieces, read through src.rundir.results, grouped
by config. A missing piece is a note saying how to make it; a piece of an unknown schema is an error
naming the file and the command that regenerates it (never silently mixed in)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from src.errors import UserError
from src.text import shown
from src.rundir.results import metrics_row_problem, read_metrics, read_result, regenerate_hint, result_file

# key -> (file name, schema kind)
PIECES = {
    "summary": ("summary.json", "summary"),
    "eval": ("eval.json", "eval"),
    "eval_equal_steps": ("eval_equal_steps.json", "eval"),
    "ablation": ("ablation.json", "ablation"),
    "roles": ("roles.json", "roles"),
    "probe": ("probe.json", "probe"),
}
OPTIONAL = {"eval_equal_steps"}


def load_run(path: Path) -> dict:
    """Every piece a run directory holds; `notes` says what is missing and how to make it."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a run directory")
    run = {"path": str(path), "name": path.name, "notes": []}
    for key, (filename, kind) in PIECES.items():
        run[key] = None
        if result_file(path / filename) is not None:  # X.json, or X.json.gz
            run[key] = read_result(path / filename, kind)
        elif key not in OPTIONAL:
            run["notes"].append(f"{path}: no {filename} (make it with `{regenerate_hint(kind, path)}`)")
        if run[key] and run[key].get("limit"):
            run["notes"].append(f"{path}: {filename} was made with --limit {run[key]['limit']} (a subset of every "
                                "split: not the study's figures)")
    run["metrics"], problems = read_metrics(path / "metrics.jsonl", check=metrics_row_problem)
    run["notes"] += problems
    pieces = [run[k] for k in PIECES if run[k]]
    run["config"] = next((p["config"] for p in pieces if p.get("config")), "unknown")
    run["seed"] = next((p["seed"] for p in pieces if p.get("seed") is not None), None)
    run["architecture"] = architecture(run)
    return run


def architecture(run: dict) -> dict:
    """The model keys the run's pieces state: config.yaml's `model` section (d_model, num_layers,
    ...), the parameter count of summary.json, and the layers and heads of the analyses."""
    arch = {}
    try:
        raw = yaml.safe_load((Path(run["path"]) / "config.yaml").read_text(encoding="utf-8"))
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            arch = {k: v for k, v in raw["model"].items() if isinstance(v, (int, float, str, bool))}
    except (OSError, ValueError, yaml.YAMLError):
        pass  # no config.yaml: the other pieces still say something
    for k in ("ablation", "probe", "roles"):
        for key in ("num_layers", "num_heads"):
            if run[k] and key in run[k]:
                arch.setdefault(key, run[k][key])
    if (run["summary"] or {}).get("parameters") is not None:
        arch["parameters"] = run["summary"]["parameters"]
    return arch


def architecture_conflict(name: str, members: list[dict]) -> str | None:
    """The message for two runs under one config name whose model keys differ (None when none do)."""
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            keys = [k for k in a["architecture"] if k in b["architecture"] and a["architecture"][k] != b["architecture"][k]]
            if keys:
                diffs = "; ".join(f"{k} {a['architecture'][k]} vs {b['architecture'][k]}" for k in keys)
                return (f"config {name!r}: runs {a['path']} and {b['path']} are different architectures under one "
                        f"config name (model keys: {diffs}); averaging them would mix two models: give them "
                        "different config names (`name:` in the config) or report them separately")
    return None


def collect(run_dirs) -> tuple[dict[str, list[dict]], list[str]]:
    """Runs grouped by config name (smallest model first, seeds in order) and the notes.

    The same directory given twice counts once (with a note); two runs of one config name whose
    architectures differ are an error, since averaging them would mix two models."""
    notes, seen, runs = [], {}, []
    for p in run_dirs:
        key = os.path.realpath(p)
        if key in seen:
            notes.append(f"{p}: the same run as {seen[key]}; counted once")
            continue
        seen[key] = p
        runs.append(load_run(Path(p)))
    runs, dropped = distinct_runs(runs)
    notes += dropped
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["config"], []).append(run)
        notes += run["notes"]
    for name, members in groups.items():
        mixed = data_conflict(name, members)
        if mixed:
            raise UserError(mixed)
    for name, members in groups.items():
        conflict = architecture_conflict(name, members)
        if conflict:
            raise UserError(conflict)
        members.sort(key=lambda r: (r["seed"] is None, r["seed"] if r["seed"] is not None else 0, r["path"]))

    def size(name):
        return min(((r["summary"] or {}).get("parameters") or float("inf")) for r in groups[name])

    return {name: groups[name] for name in sorted(groups, key=lambda n: (size(n), n))}, notes


_DIGESTS: dict[tuple, str] = {}


def _digest(path: Path) -> str:
    """sha256 of a data file (cached by path, size and time: a training set is shared by many runs)."""
    try:
        info = os.stat(path)
    except OSError:
        return f"missing {shown(path)}"
    key = (os.path.realpath(path), info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def data_identity(run: dict) -> tuple:
    """(split, sha256) of every data file the run trained on (config.yaml's data section) and was
    evaluated on (eval.json's data_files): what the run was fed, wherever the files lie."""
    files = {}
    try:
        raw = yaml.safe_load((Path(run["path"]) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        raw = None
    data = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(data, dict):
        files.update({f"trained {k}": v for k, v in data.items() if isinstance(v, str) and v.endswith(".jsonl")})
    evaluated_on = (run.get("eval") or {}).get("data_files")
    if isinstance(evaluated_on, dict):
        files.update({f"evaluated {k}": v for k, v in evaluated_on.items() if isinstance(v, str)})
    return tuple(sorted((split, _digest(Path(path))) for split, path in files.items()))


def distinct_runs(runs: list[dict]) -> tuple[list[dict], list[str]]:
    """The runs, each identified by what it is (config, seed, data files' checksums); a second
    directory of the same run (a `cp -r` backup) is dropped with a note: it is not a second seed."""
    kept, notes, seen = [], [], {}
    for run in runs:
        run["data"] = data_identity(run)
        key = (run["config"], run["seed"], run["data"])
        if run["seed"] is not None and key in seen:
            notes.append(f"{shown(run['path'])}: the same run as {shown(seen[key]['path'])} (config {shown(run['config'])}, "
                         f"seed {run['seed']}, the same data files): a copy, counted once")
            continue
        seen[key] = run
        kept.append(run)
    return kept, notes


def data_conflict(name: str, members: list[dict]) -> str | None:
    """The message for runs of one config fed different data files (None when all were fed the same)."""
    first = members[0]
    a = dict(first["data"])
    for other in members[1:]:
        b = dict(other["data"])
        differ = [k for k in sorted(set(a) & set(b))  # what both record, where both files are there to compare
                  if a[k] != b[k] and not a[k].startswith("missing ") and not b[k].startswith("missing ")]
        if differ:
            split = differ[0]
            return (f"config {shown(name)!r}: runs {shown(first['path'])} and {shown(other['path'])} were not fed the same "
                    f"data ({split}: sha256 {str(a.get(split))[:12]} vs {str(b.get(split))[:12]}); averaging them "
                    "would mix two data sets: report them separately, or give them different config names")
    return None
