"""The files of a run directory: their schemas, and the one reader of each.

Every JSON file the project writes starts with `"schema": "<kind>/<version>"`; docs/SCHEMAS.md lists
the keys of each kind. A reader asks for a kind and gets the dict, or a UserError that names the file
and the command that regenerates it, so that a stale file never feeds an analysis silently.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from src.errors import UserError

SCHEMAS = {
    "summary": "summary/1",      # src.train: summary.json
    "metrics": "metrics/1",      # src.train: each line of metrics.jsonl
    "eval": "eval/2",            # src.analysis.evaluate: eval.json
    "ablation": "ablation/2",    # src.analysis.ablate: ablation.json
    "probe": "probe/2",          # src.analysis.probe: probe.json
    "roles": "roles/1",          # src.analysis.roles: roles.json
    "report": "report/2",        # src.report: report.json
    "extension": "extension/1",  # src.report.scaling: results/extension/extension.json
    "patching": "patching/1",    # src.analysis.patching: patching.json
    "value_probe": "value_probe/1",  # src.analysis.value_probe: value_probe.json
    "battery": "battery/1",      # src.analysis.run_all: battery.json
    "rolematch": "rolematch/1",  # src.analysis.rolematch: rolematch.json
    "mechanisms": "mechanisms/1",  # src.report.analyses: mechanisms.json
    "interchange": "interchange/1",  # src.analysis.interchange: interchange.json
    "study_primary": "study_primary/1",  # src.report.study: results/study/primary.json
    "schedule": "schedule/1",  # src.report.schedule: results/extension/schedule.json
}
REGENERATE = {
    "summary": "python -m src.train --config CONFIG --output-dir {run} ...",
    "metrics": "python -m src.train --config CONFIG --output-dir {run} ...",
    "eval": "python -m src.analysis.evaluate --run {run}",
    "ablation": "python -m src.analysis.ablate --run {run}",
    "probe": "python -m src.analysis.probe --run {run}",
    "roles": "python -m src.analysis.roles --run {run}",
    "report": "python -m src.report RUN [RUN ...] --out REPORT.md",
    "extension": "python -m src.report.scaling --out DIR",
    "patching": "python -m src.analysis.patching --run {run}",
    "value_probe": "python -m src.analysis.value_probe --run {run}",
    "battery": "python -m src.analysis.run_all --run {run}",
    "rolematch": "python -m src.analysis.rolematch --pilot RUN ... --large RUN ...",
    "mechanisms": "python -m src.report.analyses RUN ... --out DIR",
    "interchange": "python -m src.analysis.interchange --run {run}",
    "study_primary": "python -m src.report.study --results results/study --out results/study",
    "schedule": "python -m src.report.schedule --out results/extension",
}


def stamp(kind: str, obj: dict) -> dict:
    """`obj` with its schema as the first key."""
    return {"schema": SCHEMAS[kind], **{k: v for k, v in obj.items() if k != "schema"}}


def regenerate_hint(kind: str, run: Path | str) -> str:
    return REGENERATE[kind].format(run=run)


def compressed_path(path: Path | str) -> Path:
    """Where the gzip-compressed form of the result file `path` lives: X.json -> X.json.gz."""
    path = Path(path)
    return path if path.name.endswith(".gz") else path.with_name(path.name + ".gz")


def result_file(path: Path | str) -> Path | None:
    """The file that holds the result `path`: X.json itself, else X.json.gz beside it; None when neither exists.
    Large results are committed compressed (src.rundir.atomic.write_result(..., compress=True))."""
    path = Path(path)
    if path.is_file():
        return path
    packed = compressed_path(path)
    return packed if packed.is_file() else None


def read_json_text(path: Path) -> str:
    """The text of a JSON file, gunzipped when its name ends in .gz."""
    if path.name.endswith(".gz"):
        return gzip.decompress(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8")


MAX_RESULT_BYTES = 256 * 2**20  # a result file: far above any the project writes (report.json of many runs: MBs)
MAX_LINE_BYTES = 2**20           # one metrics.jsonl row: a few hundred bytes
MAX_DEPTH = 64                   # nesting of a result: the project's files nest a few levels


def _depth_ok(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests at most `limit` levels (brackets outside strings counted), checked
    before json.loads, which would recurse once per level."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str, where: str) -> object:
    """json.loads bounded: nesting past MAX_DEPTH levels and integers of more than 4300 digits are a
    ValueError naming `where` (and the line and column of a syntax error)."""
    if text.count("[") + text.count("{") > MAX_DEPTH and not _depth_ok(text):
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None


# the top-level keys every reader trusts, whatever the kind: (test, what it must be)
SEED_MAX = 2**63 - 2
FIELD_TYPES = {
    "seed": (lambda v: v is None or (_integer(v) and 0 <= v <= SEED_MAX), f"an integer from 0 to {SEED_MAX}"),
    "parameters": (lambda v: v is None or (_integer(v) and v >= 0), "a whole number"),
    "config": (lambda v: v is None or isinstance(v, str), "a string"),
    "epoch": (lambda v: v is None or _integer(v), "an integer"),
    "epochs": (lambda v: v is None or _integer(v), "an integer"),
    "step": (lambda v: v is None or _integer(v), "an integer"),
    "steps": (lambda v: v is None or _integer(v), "an integer"),
    "limit": (lambda v: v is None or _integer(v), "an integer"),
    "num_layers": (lambda v: _integer(v) and 0 < v <= 10_000, "a positive integer"),
    "num_heads": (lambda v: _integer(v) and 0 < v <= 10_000, "a positive integer"),
    "wall_time_s": (lambda v: v is None or _number(v), "a number"),
    "metrics": (lambda v: isinstance(v, dict) and all(isinstance(m, dict) for m in v.values()),
                "a mapping of splits to metric mappings"),
}


# the keys of FIELD_TYPES each kind is checked for (the report's inputs; other kinds use these names otherwise)
KIND_FIELDS = {
    "summary": ("seed", "parameters", "config", "epochs", "steps", "wall_time_s"),
    "eval": ("seed", "config", "epoch", "step", "limit", "metrics"),
    "ablation": ("seed", "config", "num_layers", "num_heads"),
    "probe": ("seed", "config", "num_layers", "num_heads"),
    "roles": ("seed", "config", "num_layers", "num_heads"),
}


def field_problem(obj: dict, kind: str) -> str | None:
    """The first top-level key of a result whose value a reader cannot use (`"parameters": "18016
    (about)"`, a seed of 1e30), or None."""
    for key in KIND_FIELDS.get(kind, ()):
        ok, what = FIELD_TYPES[key]
        if key in obj and not ok(obj[key]):
            return f"'{key}' must be {what}, got {str(obj[key])[:40]!r}"
    return None


def read_result(path: Path, kind: str) -> dict:
    """The JSON file at `path`, which must be of `kind` at the current version, its top-level fields
    of the types readers use (FIELD_TYPES), its size and nesting bounded."""
    path = Path(path)
    run = path.parent
    found = result_file(path)
    try:
        if found is None:
            raise FileNotFoundError(path)
        path = found
        if path.stat().st_size > MAX_RESULT_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes, more than the {MAX_RESULT_BYTES} a result may hold")
        obj = parse_json(read_json_text(path), str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; make it with `{regenerate_hint(kind, run)}` (a compressed "
                        f"{compressed_path(path).name} in its place is read too)") from None
    except (OSError, ValueError, EOFError, gzip.BadGzipFile) as err:
        raise UserError(f"{path}: unreadable ({str(err)[:200]}); regenerate it with `{regenerate_hint(kind, run)}`") from None
    schema = obj.get("schema") if isinstance(obj, dict) else None
    if schema != SCHEMAS[kind]:
        found = "no schema (written by an older version)" if schema is None else f"schema {str(schema)[:60]!r}"
        raise UserError(f"{path}: {found}, expected {SCHEMAS[kind]!r}; regenerate it with `{regenerate_hint(kind, run)}`")
    problem = field_problem(obj, kind)
    if problem:
        raise UserError(f"{path}: {problem}; regenerate it with `{regenerate_hint(kind, run)}`")
    return obj


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def metrics_row_problem(row: dict) -> str | None:
    """What keeps a metrics row from being read (None when it can be). Every epoch has a training row
    and an evaluated epoch's row also holds `val`: `step` an integer where present, `train_loss` a
    number where present, `val` a mapping of numbers (loss, exact_match, end_of_answer_acc) where
    present. Null values are allowed only where src.train writes them (a non-finite loss is written
    as null)."""
    if "step" in row and not (isinstance(row["step"], int) and not isinstance(row["step"], bool)):
        return "'step' is not an integer"
    if "train_loss" in row and row["train_loss"] is not None and not _number(row["train_loss"]):
        return "'train_loss' is not a number"
    if "val" in row:
        val = row["val"]
        if not isinstance(val, dict):
            return "'val' is not a mapping of metric values"
        for key in ("loss", "exact_match", "end_of_answer_acc"):
            if not _number(val.get(key)):
                return f"'val.{key}' is missing or not a number"
    return None


def read_metrics(path: Path, check=None) -> tuple[list[dict], list[str]]:
    """The rows of a metrics.jsonl (one per epoch; `val` only in evaluated epochs' rows, see
    `evaluated`) and a note for each line that could not be used
    (`path:line: why`). A missing file is no rows. Rows written before rows carried a schema have the
    same keys and are accepted. `check(row)` (e.g. metrics_row_problem) may refuse a row whose values
    a reader cannot use: it says why, and the line is skipped with a note."""
    path = Path(path)
    if not path.is_file():
        return [], []
    rows, problems = [], []
    for line_no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            if len(line) > MAX_LINE_BYTES:
                raise ValueError(f"{len(line)} characters, more than a row may hold")
            row = parse_json(line, f"{path}:{line_no}")
        except ValueError as err:
            problems.append(f"{path}:{line_no}: not valid JSON ({str(err)[:80]}); line skipped")
            continue
        if not isinstance(row, dict) or not _integer(row.get("epoch")) or row.get("schema", SCHEMAS["metrics"]) != SCHEMAS["metrics"]:
            problems.append(f"{path}:{line_no}: not a metrics row of schema {SCHEMAS['metrics']}; line skipped")
            continue
        problem = check(row) if check is not None else None
        if problem:
            problems.append(f"{path}:{line_no}: {problem}; line skipped")
            continue
        rows.append(row)
    return rows, problems


def evaluated(rows: list[dict]) -> list[dict]:
    """The rows of the epochs that were evaluated on the validation set (those holding `val`)."""
    return [r for r in rows if isinstance(r.get("val"), dict)]


def rounded(obj, digits: int = 5):
    """Floats to `digits` significant digits: report.json stays small and diffs stay readable."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return obj
