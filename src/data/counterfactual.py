"""Aligned counterfactual pairs for the causal variables of docs/CAUSAL_MODELS.md.

    python -m src.data --seed 42 --out data     # also writes the three files below, byte for byte

writes
    data/counterfactual_value.jsonl.gz      variable "value" (V): the value of a bracketed sub-expression
    data/counterfactual_operator.jsonl.gz   variable "operator": the operator that the bracket's result feeds
    data/counterfactual_manifest.json       sha256 of each file (as shipped and decompressed), line count, the
                                            seed, counts, schema

Each file is gzip-compressed reproducibly (level 9, no file name, a zero time stamp: the same lines give the
same bytes with the same zlib), as the lines are 2.7 and 1.8 MB. `load_pairs` is the one reader of both
files, for the interchange analysis and the near-twin exclusion alike; it reads a plain .jsonl file as well.
One JSON object per line (the format the interchange analysis reads; `load_pairs` checks it):
    variable, control ("interchange", "value_preserving", "random"), template (every digit -> "N",
    every operator -> "o"; base and source share it), template_class {depth, inner_ops, outer_op,
    operands} (of the base), base {expr, result}, source {expr, result}, bracket [open, close],
    sites {inside, open, close, operator}, predicted (the causal model's answer, by src.data.evaluate),
    base_value and source_value (V: the bracket's inner values; operator variable: null), and
    base_id (the lines of one base share it: its interchange line and its controls).

How the pairs are drawn (one generator, random.Random("<seed>-counterfactual")):
  * A base is an expression of the project's generator (`random_expression`, depths 1 and 2 in turn)
    and one of its bracket pairs, drawn at random; the pair must enclose an operation. Its class is
    (depth of the pair, "*" if any * is inside else "+-", the operator it feeds, number of operands).
    Bases are taken until every cell of VALUE_CELLS (V) or OPERATOR_CELLS has PER_CELL bases.
  * The operator a bracket feeds is the one right after its `)`, else the one right before its `(`.
    That is the operator of its parent in the parse tree except where an operator stands on both sides
    and the right one does not bind tighter (`a-(b+c)+d`: the bracket feeds the `-`); such expressions
    are never drawn (as base, source or intervened base), so that the rule holds on every line.
  * V, interchange: the source re-draws the numbers inside the bracket (same digit counts, same
    operators) so that the inner value changes; predicted = the source's result.
    V, value_preserving: other numbers inside, the same inner value (one number solved for: the inner
    value is affine in each number); predicted = the base's result.
    V, random: every number and operator re-drawn; predicted = the base with the source's inside.
  * operator, interchange: the source is the base with that operator replaced; predicted = its result.
    operator, random: every number and operator re-drawn, the operator at the site differing from the
    base's; predicted = the base with that operator replaced by the source's.
  * Every line's predicted answer differs from the base's, except the value-preserving ones, whose
    predicted answer is the base's. Every sequence (<BOS>expr = answer<EOS>) of base, source and
    predicted answer fits max_seq_len.
  * Near twins are kept out: no base or source has the canonical form (src/data/canonical.py) of an
    expression of the shipped files (train, val, tests, matched pairs, precedence pairs), nor of the
    forms listed in `recorded_twins`: the near twins of a generated training set that the generator met,
    found once by `python -m src.data --counterfactual-against N`, kept in
    data/counterfactual_train_twins.json and copied into the manifest, so that the files regenerate
    byte for byte without the generated set.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from src.data import depth_labels, operand_count, random_expression
from src.data import evaluate as _evaluate
from src.data.canonical import canonical
from src.errors import UserError
from src.tokenizer import sequence_ids

SCHEMA = "counterfactual/1"
MANIFEST_SCHEMA = "counterfactual_manifest/2"
VARIABLES = ("value", "operator")
CONTROLS = {"value": ("interchange", "value_preserving", "random"), "operator": ("interchange", "random")}
FILES = {v: f"counterfactual_{v}.jsonl.gz" for v in VARIABLES}
MANIFEST = "counterfactual_manifest.json"
COMPRESSION = "gzip, level 9, no file name, time stamp 0 (src.rundir.atomic.gzip_bytes)"
PAIRS_COMMAND = "python -m src.data --seed 42 --out data"
MAX_LINE_BYTES = 1 << 16     # one pair line: about 450 bytes
MAX_FILE_BYTES = 64 << 20    # a pair file, decompressed: 2.7 MB as shipped
OPERATORS = "+-*"
TIGHTER = {"+": 1, "-": 1, "*": 2}
PER_CELL = {"value": 144, "operator": 168}  # 14 x 144 = 2,016 and 12 x 168 = 2,016 bases
# (depth, inner_ops, outer_op): a bracket that feeds no operator wraps the whole expression (depth 1 only)
VALUE_CELLS = tuple((d, i, o) for d in (1, 2) for i in ("+-", "*") for o in ("+", "-", "*", None) if (d, o) != (2, None))
OPERATOR_CELLS = tuple((d, i, o) for d in (1, 2) for i in ("+-", "*") for o in ("+", "-", "*"))
CELLS = {"value": VALUE_CELLS, "operator": OPERATOR_CELLS}
SOURCE_TRIES = 50        # re-draws per source before the base is given up
MAX_CANDIDATES = 200_000   # bases drawn at most (about 11,000 are needed at max_seq_len 32)
# the safe evaluator, remembered: a base is evaluated again for each of its sources
evaluate = lru_cache(maxsize=1 << 16)(_evaluate)
_NUMBER = re.compile(r"\d+")
_TEMPLATE = str.maketrans("0123456789+-*", "NNNNNNNNNNooo")


# ---------------------------------------------------------------------------- structure


def template(expr: str) -> str:
    """`expr` with every digit replaced by "N" and every operator by "o"."""
    return expr.translate(_TEMPLATE)


def bracket_pairs(expr: str) -> list[tuple[int, int]]:
    """(index of "(", index of its ")") of every bracket pair, in the order of the "(" ."""
    stack, pairs = [], []
    for i, ch in enumerate(expr):
        if ch == "(":
            stack.append(i)
        elif ch == ")":
            pairs.append((stack.pop(), i))
    return sorted(pairs)


def fed_operator(expr: str, open_: int, close: int) -> int | None:
    """Index of the operator the bracket pair feeds by the file format's rule: right after ")", else right
    before "(", else None."""
    if close + 1 < len(expr) and expr[close + 1] in OPERATORS:
        return close + 1
    if open_ > 0 and expr[open_ - 1] in OPERATORS:
        return open_ - 1
    return None


def rule_holds(expr: str, open_: int, close: int) -> bool:
    """Whether the operator of `fed_operator` is the bracket's parent in the parse tree: false only where an
    operator stands on each side and the right one does not bind tighter than the left one."""
    after = expr[close + 1] if close + 1 < len(expr) else ""
    before = expr[open_ - 1] if open_ > 0 else ""
    if after in TIGHTER and before in TIGHTER:
        return TIGHTER[after] > TIGHTER[before]
    return True


def _with_numbers(expr: str, spans: list[tuple[int, int]], numbers: list[int]) -> str:
    """`expr` with the numbers at these spans replaced (same digit counts, so every index stays)."""
    chars = list(expr)
    for (start, end), value in zip(spans, numbers):
        chars[start:end] = str(value)
    return "".join(chars)


_RANGE = {1: (1, 9), 2: (10, 99)}  # the numbers of each digit count


def _draw_number(rng: random.Random, digits: int) -> int:
    return rng.randint(1, 9) if digits == 1 else rng.randint(10, 99)


_SEQUENCE_EXTRA = len(sequence_ids("", 0)) - 1  # <BOS>, " = ", <EOS>: the tokens besides the expr and the answer


def _fits(expr: str, value: int, max_seq_len: int) -> bool:
    """Whether <BOS>expr = value<EOS> fits: one token a character (src.tokenizer)."""
    return len(expr) + len(str(value)) + _SEQUENCE_EXTRA <= max_seq_len


def intervened(variable: str, base: str, source: str, open_: int, close: int) -> str:
    """The base with the variable set to the source's value, as an expression: for "value" the base with the
    source's inside of the bracket (so the bracket takes the source's inner value), for "operator" the base
    with the operator the bracket feeds replaced by the source's. Base and source share a template."""
    if variable == "value":
        return base[:open_ + 1] + source[open_ + 1:close] + base[close:]
    if variable == "operator":
        site = fed_operator(base, open_, close)
        if site is None:
            raise ValueError(f"the bracket {open_, close} of {base!r} feeds no operator")
        return base[:site] + source[site] + base[site + 1:]
    raise ValueError(f"variable {variable!r}: expected one of {', '.join(VARIABLES)}")


def predicted_answer(variable: str, base: str, source: str, open_: int, close: int) -> int:
    """The causal model's answer (docs/CAUSAL_MODELS.md): the value, by the safe evaluator, of `intervened`."""
    return evaluate(intervened(variable, base, source, open_, close))


# ---------------------------------------------------------------------------- the inner value, solved for


def _affine(inner: str, spans: list[tuple[int, int]], k: int) -> tuple[int, int]:
    """(alpha, beta) with value(inner, number k = x) = alpha * x + beta: each number occurs once, so the value
    is affine in each. Read off at x = 1 and x = 2 (numbers of the grammar, so evaluate applies)."""
    at = [evaluate(inner[:spans[k][0]] + str(x) + inner[spans[k][1]:]) for x in (1, 2)]
    return at[1] - at[0], 2 * at[0] - at[1]


def _value_preserving_inner(rng: random.Random, inner: str, tries: int) -> str | None:
    """Another inside with the same template and value (other numbers), or None."""
    target = evaluate(inner)
    spans = [m.span() for m in _NUMBER.finditer(inner)]
    digits = [end - start for start, end in spans]
    if len(spans) == 2 and spans[0][0] == 0 and spans[1][1] == len(inner):  # "a op b": every solution, listed
        op, (lo_a, hi_a), (lo_b, hi_b) = inner[spans[0][1]], _RANGE[digits[0]], _RANGE[digits[1]]
        solutions = []
        for a in range(lo_a, hi_a + 1):
            b = target - a if op == "+" else a - target if op == "-" else target // a if target % a == 0 else 0
            if lo_b <= b <= hi_b and f"{a}{op}{b}" != inner:
                solutions.append(f"{a}{op}{b}")
        return solutions[rng.randrange(len(solutions))] if solutions else None
    for _ in range(tries):
        k = rng.randrange(len(spans))
        numbers = [_draw_number(rng, d) for d in digits]
        alpha, beta = _affine(_with_numbers(inner, spans, numbers), spans, k)
        if alpha == 0 or (target - beta) % alpha:
            continue
        x = (target - beta) // alpha
        if not (1 <= x <= 99 and len(str(x)) == digits[k]):
            continue
        numbers[k] = x
        candidate = _with_numbers(inner, spans, numbers)
        if candidate != inner and evaluate(candidate) == target:
            return candidate
    return None


# ---------------------------------------------------------------------------- generation


@dataclass
class Stats:
    candidates: int = 0
    rejected: Counter = field(default_factory=Counter)        # reason -> bases given up
    near_twin_sources: int = 0                                # sources re-drawn as near twins
    recorded_twins: set = field(default_factory=set)          # forms rejected only as near twins of generated sets


class _Exclusion:
    """The canonical forms no base or source may have: `shipped`, and `generated` (a generated training set's,
    or those recorded for it). Forms met only in `generated` are collected, to be recorded in the manifest."""

    def __init__(self, shipped: set[str], generated: set[str], stats: Stats):
        self.shipped, self.generated, self.stats = shipped, generated, stats

    def excluded(self, expr: str) -> bool:
        form = canonical(expr)
        if form in self.shipped:
            return True
        if form in self.generated:
            self.stats.recorded_twins.add(form)
            return True
        return False


def _base_candidate(rng: random.Random, number: int):
    """An expression of the generator (depths 1 and 2 in turn) and one of its bracket pairs."""
    expr = random_expression(rng, 1 + number % 2)
    pairs = bracket_pairs(expr)
    return expr, pairs[rng.randrange(len(pairs))]


def _cell(expr: str, open_: int, close: int):
    inner = expr[open_ + 1:close]
    site = fed_operator(expr, open_, close)
    return (depth_labels(expr)[open_], "*" if "*" in inner else "+-", expr[site] if site is not None else None)


def _line(variable, control, base, source, open_, close, site, predicted, base_id, values=(None, None)) -> dict:
    depth, inner_ops, outer_op = _cell(base, open_, close)
    return {"variable": variable, "control": control, "template": template(base),
            "template_class": {"depth": depth, "inner_ops": inner_ops, "outer_op": outer_op,
                               "operands": operand_count(base)},
            "base": {"expr": base, "result": evaluate(base)}, "source": {"expr": source, "result": evaluate(source)},
            "bracket": [open_, close],
            "sites": {"inside": list(range(open_ + 1, close)), "open": open_, "close": close, "operator": site},
            "predicted": predicted, "base_value": values[0], "source_value": values[1], "base_id": base_id}


def _random_source(rng, base: str, open_: int, close: int, max_seq_len: int, accept) -> str | None:
    """Every number and operator of `base` re-drawn (same template), the rule holding, `accept(source)` true."""
    spans = [m.span() for m in _NUMBER.finditer(base)]
    op_sites = [i for i, ch in enumerate(base) if ch in OPERATORS]
    for _ in range(SOURCE_TRIES):
        chars = list(_with_numbers(base, spans, [_draw_number(rng, e - s) for s, e in spans]))
        for i in op_sites:
            chars[i] = OPERATORS[rng.randrange(3)]
        source = "".join(chars)
        if rule_holds(source, open_, close) and _fits(source, evaluate(source), max_seq_len) and accept(source):
            return source
    return None


def _value_lines(rng, base, open_, close, base_id, max_seq_len, exclusion, stats) -> list[dict] | str:
    """The three lines of a V base, or the reason it is given up."""
    inner = base[open_ + 1:close]
    base_value, base_result = evaluate(inner), evaluate(base)
    site = fed_operator(base, open_, close)

    def ok(source: str, predicted_differs: bool) -> bool:
        predicted = predicted_answer("value", base, source, open_, close)
        if (predicted != base_result) != predicted_differs or not _fits(base, predicted, max_seq_len):
            return False
        if not _fits(source, evaluate(source), max_seq_len):
            return False
        if exclusion.excluded(source):
            stats.near_twin_sources += 1
            return False
        return True

    spans = [m.span() for m in _NUMBER.finditer(inner)]
    interchange = None
    for _ in range(SOURCE_TRIES):
        new_inner = _with_numbers(inner, spans, [_draw_number(rng, e - s) for s, e in spans])
        source = base[:open_ + 1] + new_inner + base[close:]
        if evaluate(new_inner) != base_value and ok(source, True):
            interchange = source
            break
    if interchange is None:
        return "no interchange source"
    preserving = None
    for _ in range(4):
        new_inner = _value_preserving_inner(rng, inner, SOURCE_TRIES)
        if new_inner is None:
            break
        source = base[:open_ + 1] + new_inner + base[close:]
        if ok(source, False):
            preserving = source
            break
    if preserving is None:
        return "no value-preserving source"
    random_source = _random_source(rng, base, open_, close, max_seq_len, lambda s: ok(s, True))
    if random_source is None:
        return "no random source"
    lines = []
    for control, source in zip(CONTROLS["value"], (interchange, preserving, random_source)):
        source_value = evaluate(source[open_ + 1:close])
        lines.append(_line("value", control, base, source, open_, close, site,
                           predicted_answer("value", base, source, open_, close), base_id, (base_value, source_value)))
    return lines


def _operator_lines(rng, base, open_, close, base_id, max_seq_len, exclusion, stats) -> list[dict] | str:
    """The two lines of an operator base, or the reason it is given up."""
    site = fed_operator(base, open_, close)
    base_result = evaluate(base)

    def ok(source: str) -> bool:
        target = intervened("operator", base, source, open_, close)
        if source[site] == base[site] or not rule_holds(target, open_, close):
            return False
        predicted = evaluate(target)
        if predicted == base_result or not _fits(base, predicted, max_seq_len):
            return False
        if exclusion.excluded(source):
            stats.near_twin_sources += 1
            return False
        return True

    others = [op for op in OPERATORS if op != base[site]]
    rng.shuffle(others)
    interchange = next((s for s in (base[:site] + op + base[site + 1:] for op in others)
                        if rule_holds(s, open_, close) and _fits(s, evaluate(s), max_seq_len) and ok(s)), None)
    if interchange is None:
        return "no interchange source"
    random_source = _random_source(rng, base, open_, close, max_seq_len, ok)
    if random_source is None:
        return "no random source"
    return [_line("operator", control, base, source, open_, close, site,
                  predicted_answer("operator", base, source, open_, close), base_id)
            for control, source in zip(CONTROLS["operator"], (interchange, random_source))]


def generate_counterfactuals(seed: int, shipped_forms: Iterable[str], recorded_twins: Iterable[str] = (),
                             max_seq_len: int = 32, stop_after: int | None = None) -> tuple[dict[str, list[dict]], Stats]:
    """variable -> its lines, and the generation's counts (module docstring). `stop_after`: stop after this many
    candidate bases, with the first lines of each file (bases are taken in the order they are drawn)."""
    rng = random.Random(f"{seed}-counterfactual")
    stats = Stats()
    exclusion = _Exclusion(set(shipped_forms), set(recorded_twins), stats)
    lines = {v: [] for v in VARIABLES}
    filled = {v: Counter() for v in VARIABLES}
    taken = {v: set() for v in VARIABLES}  # the canonical forms of each file's bases: every base once
    makers = {"value": _value_lines, "operator": _operator_lines}
    while any(filled[v][c] < PER_CELL[v] for v in VARIABLES for c in CELLS[v]) and stats.candidates != stop_after:
        if stats.candidates >= MAX_CANDIDATES:
            raise UserError(f"counterfactual pairs: {MAX_CANDIDATES:,} candidate bases drawn and some cells still "
                            f"short ({dict(filled['value'])}, {dict(filled['operator'])}); raise --max-seq-len")
        expr, (open_, close) = _base_candidate(rng, stats.candidates)
        stats.candidates += 1
        cell = _cell(expr, open_, close)
        wanted = [v for v in VARIABLES if cell in CELLS[v] and filled[v][cell] < PER_CELL[v]]
        if not wanted:
            continue
        if not any(ch in OPERATORS for ch in expr[open_ + 1:close]):
            stats.rejected["bracket around a lone number"] += 1
            continue
        if not rule_holds(expr, open_, close):
            stats.rejected["operator on both sides, the left one binding first"] += 1
            continue
        if not _fits(expr, evaluate(expr), max_seq_len):
            stats.rejected["too long"] += 1
            continue
        if exclusion.excluded(expr):
            stats.rejected["base a near twin"] += 1
            continue
        form = canonical(expr)
        for variable in wanted:
            if form in taken[variable]:
                stats.rejected[f"{variable}: base already taken"] += 1
                continue
            made = makers[variable](rng, expr, open_, close, len(lines[variable]) // len(CONTROLS[variable]),
                                    max_seq_len, exclusion, stats)
            if isinstance(made, str):
                stats.rejected[f"{variable}: {made}"] += 1
                continue
            taken[variable].add(form)
            filled[variable][cell] += 1
            lines[variable].extend(made)
    return lines, stats


# ---------------------------------------------------------------------------- files


def line_text(line: dict) -> str:
    return json.dumps(line, separators=(", ", ": ")) + "\n"


def class_key(template_class: dict) -> str:
    """A template class as text, e.g. "depth=2|inner_ops=*|outer_op=-|operands=4"."""
    return "|".join(f"{k}={template_class[k]}" for k in ("depth", "inner_ops", "outer_op", "operands"))


def manifest(seed: int, texts: dict[str, str], packed: dict[str, bytes], lines: dict[str, list[dict]], stats: Stats,
             sources: dict, recorded: dict) -> dict:
    """`texts`: each variable's lines as text; `packed`: the bytes of its file (the text gzip-compressed)."""
    files = {}
    for variable, name in FILES.items():
        data = texts[variable].encode()
        rows = lines[variable]
        files[name] = {"variable": variable, "sha256": hashlib.sha256(packed[variable]).hexdigest(),
                       "bytes": len(packed[variable]), "compression": COMPRESSION,
                       "content_sha256": hashlib.sha256(data).hexdigest(), "content_bytes": len(data), "lines": len(rows),
                       "by_control": dict(Counter(r["control"] for r in rows)),
                       "interchange_by_template_class": dict(sorted(Counter(
                           class_key(r["template_class"]) for r in rows if r["control"] == "interchange").items()))}
    return {"schema": MANIFEST_SCHEMA, "line_schema": SCHEMA, "seed": seed, "generator": "src/data/counterfactual.py",
            "files": files, "candidates_drawn": stats.candidates, "bases_rejected": dict(sorted(stats.rejected.items())),
            "sources_rejected_as_near_twins": stats.near_twin_sources,
            "excluded_shipped_files": sources, "recorded_twins": recorded}


def write_counterfactuals(out_dir: Path, seed: int, shipped_forms: set[str], sources: dict,
                          recorded: dict | None = None, generated: tuple[str, str, set[str]] | None = None,
                          max_seq_len: int = 32) -> dict:
    """Generate the pair files into `out_dir` with their manifest; returns the manifest.

    `recorded`: {"set": name, "sha256": ..., "forms": [...]}, the near twins of a generated training set
    found before (regenerating with it gives the same files); or `generated`: (name, sha256, canonical forms)
    of a generated training set, to find them afresh and record them."""
    from src.rundir.atomic import atomic_write_bytes, atomic_write_json, gzip_bytes

    twins = set(generated[2] if generated is not None else (recorded or {}).get("forms", ()))
    lines, stats = generate_counterfactuals(seed, shipped_forms, twins, max_seq_len)
    if generated is not None:
        recorded = {"set": generated[0], "sha256": generated[1], "forms": sorted(stats.recorded_twins)}
    texts = {v: "".join(map(line_text, rows)) for v, rows in lines.items()}
    packed = {v: gzip_bytes(text.encode()) for v, text in texts.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    for variable, name in FILES.items():
        atomic_write_bytes(out_dir / name, packed[variable])
    meta = manifest(seed, texts, packed, lines, stats, sources, recorded or {})
    atomic_write_json(out_dir / MANIFEST, meta)
    return meta


# ---------------------------------------------------------------------------- loading


_FIELDS = ("variable", "control", "template", "template_class", "base", "source", "bracket", "sites", "predicted",
           "base_value", "source_value")


def _check_line(obj) -> None:
    """ValueError saying what is wrong with one pair line (its alignment first of all)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in _FIELDS if f not in obj]
    if missing:
        raise ValueError(f"missing field {missing[0]!r}")
    variable, control = obj["variable"], obj["control"]
    if variable not in VARIABLES or control not in CONTROLS[variable]:
        raise ValueError(f"variable {variable!r} with control {control!r}: expected one of "
                         + ", ".join(f"{v}/{c}" for v in VARIABLES for c in CONTROLS[v]))
    try:
        base, source = obj["base"]["expr"], obj["source"]["expr"]
        base_value, source_value = evaluate(base), evaluate(source)
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"base and source must be {{'expr': ..., 'result': ...}} of the grammar ({err})") from None
    if len(base) != len(source):
        raise ValueError(f"base {base!r} and source {source!r} do not align: {len(base)} and {len(source)} characters")
    if template(base) != template(source):
        first = next(i for i, (a, b) in enumerate(zip(template(base), template(source))) if a != b)
        raise ValueError(f"base {base!r} and source {source!r} do not align: their templates differ at character {first}")
    if obj["template"] != template(base):
        raise ValueError(f"template {obj['template']!r} is not the base's ({template(base)!r})")
    if obj["base"].get("result") != base_value or obj["source"].get("result") != source_value:
        raise ValueError("a result is not the value of its expression")
    bracket = obj["bracket"]
    if (not isinstance(bracket, list) or len(bracket) != 2 or tuple(bracket) not in bracket_pairs(base)):
        raise ValueError(f"bracket {bracket!r} is not a bracket pair of the base {base!r}")
    open_, close = bracket
    sites = obj["sites"]
    expected = {"inside": list(range(open_ + 1, close)), "open": open_, "close": close,
                "operator": fed_operator(base, open_, close)}
    if sites != expected:
        raise ValueError(f"sites {sites!r} are not those of the bracket {bracket} ({expected})")
    if variable == "operator" and expected["operator"] is None:
        raise ValueError(f"the bracket {bracket} feeds no operator, so the operator variable has no site")
    predicted = predicted_answer(variable, base, source, open_, close)
    if obj["predicted"] != predicted:
        raise ValueError(f"predicted {obj['predicted']!r} is not the causal model's answer {predicted}")


def _raw_lines(path: Path, limit: int | None) -> list[bytes]:
    """The first `limit` lines (all without it) of a pair file, gunzipped when its name ends in .gz. The whole
    file is read and decompressed first, so that damaged or truncated compressed data (OSError, EOFError,
    zlib.error) is met before any line is used; at most MAX_FILE_BYTES of it, and lines of at most
    MAX_LINE_BYTES (UserError)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{path}: more than {MAX_FILE_BYTES:,} bytes{' decompressed' if opener is gzip.open else ''}; "
                        f"the pair files hold under 3 MB: regenerate it with `{PAIRS_COMMAND}`")
    lines = data.splitlines(keepends=True)[:limit]
    for line_no, raw in enumerate(lines, start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"{path}:{line_no}: a line longer than {MAX_LINE_BYTES:,} bytes (a pair line holds about "
                            f"450): not a pair file; regenerate it with `{PAIRS_COMMAND}`")
    return lines


MAX_MANIFEST_BYTES = 1 << 20  # the manifest: 35 KB as shipped


def check_generation(path: Path) -> None:
    """Where the pair file's directory holds the manifest that lists it (a directory `python -m src.data --out`
    wrote, data/ as shipped): the file is the one the manifest lists (sha256), and the data files the manifest
    records as excluded are those beside it. A generation over an old directory, stopped between the splits and
    the pair files, leaves old pair files beside new splits; they are refused here. UserError naming the files."""
    meta_path = path.parent / MANIFEST
    if not meta_path.is_file():
        return  # pair files made or copied by hand: each line is still checked
    fix = f"generate the files again with `python -m src.data --out {path.parent}` (with the seed used before)"
    from src.data.integrity import file_sha256, read_small_json

    meta = read_small_json(meta_path, MAX_MANIFEST_BYTES, fix)
    files, excluded = (meta.get("files"), meta.get("excluded_shipped_files")) if isinstance(meta, dict) else (None, None)
    if (meta.get("schema") if isinstance(meta, dict) else None) != MANIFEST_SCHEMA or not isinstance(files, dict) \
            or not isinstance(excluded, dict):
        raise UserError(f"{meta_path}: not a pair-file manifest of schema {MANIFEST_SCHEMA}; {fix}")
    entry = files.get(path.name)
    if entry is None:
        return  # a file the generator did not write (another name): its lines are checked

    if not isinstance(entry, dict) or file_sha256(path)[0] != entry.get("sha256"):
        raise UserError(f"{path}: not the file {MANIFEST} lists (its sha256 differs): it was changed or comes from "
                        f"another generation; {fix}")
    for name, sha256 in sorted(excluded.items()):
        other = path.parent / name
        if other.is_file() and file_sha256(other)[0] != sha256:
            raise UserError(f"{path}: made against other data files than those beside it ({name} differs from what "
                            f"{MANIFEST} records): the pairs were not drawn free of its near twins (a generation "
                            f"stopped half-way, or files of two generations); {fix}")


def load_pairs(path, variable: str | None = None, limit: int | None = None) -> list[dict]:
    """The lines of a pair file (the first `limit` of them), each checked (fields, alignment of base and source,
    bracket, sites, the causal model's answer); a one-line UserError names the file, and the line of the first
    bad one. `variable`: every line must be of it. The one reader of the pair files (module docstring). First,
    `check_generation`: the file belongs with its manifest and the data files beside it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: counterfactual pair file not found; generate it with `{PAIRS_COMMAND}`")
    try:
        check_generation(path)
        lines = _raw_lines(path, limit)
    except (OSError, EOFError, zlib.error) as err:
        why = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"{path}: unreadable ({why[:200]}): damaged or truncated; restore it with "
                        f"`git checkout data/` or regenerate it with `{PAIRS_COMMAND}`") from None
    rows = []
    for line_no, raw in enumerate(lines, start=1):
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(raw.decode("utf-8"))
            _check_line(obj)
        except UnicodeDecodeError as err:
            raise UserError(f"{where}: not UTF-8 text (byte {err.start}); regenerate the file with `{PAIRS_COMMAND}`") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON ({err.msg}); regenerate the file with `{PAIRS_COMMAND}`") from None
        except ValueError as err:
            raise UserError(f"{where}: {err}; every pair must align position for position "
                            f"(regenerate with `{PAIRS_COMMAND}`)") from None
        if variable is not None and obj["variable"] != variable:
            raise UserError(f"{where}: variable {obj['variable']!r}, expected {variable!r} in this file")
        rows.append(obj)
    if not rows:
        raise UserError(f"{path}: file is empty")
    return rows
