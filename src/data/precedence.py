"""Brackets that change the value: data/pilot_test_paren_precedence.jsonl (docs/CAUSAL_MODELS.md).

The matched pairs (pilot_test_paren_matched.jsonl) add brackets that change nothing; this file adds
brackets that override precedence or the left-to-right order, so that the value changes:
`a+b*c` -> `(a+b)*c`, `a-b-c` -> `a-(b-c)`, `a*b-c` -> `a*(b-c)`.

Line i holds the i-th line of pilot_test_flat.jsonl that admits such a placement, as a record of
src.data plus one field:
    {"expr": "(3+4)*5", "result": 35, "depth": [...], "flat_line": 17}
`flat_line` is the 0-based index of the flat twin in pilot_test_flat.jsonl (its line number minus 1).

A placement is one pair of brackets around a run of two or more consecutive numbers of the flat
expression, not the whole of it, whose value then differs from the flat one's. Among the placements
of a flat line (in the order of their spans, then shuffled by a generator of its own, seeded
"<seed>-pilot_test_paren_precedence", so that no other file changes), the first is taken whose
sequence fits max_seq_len and whose canonical form (src/data/canonical.py) is in no other shipped file
and on no earlier line; a flat line with none is skipped (`2*3`, `5+7`: two numbers admit no proper run).

    records = load_precedence(path, flat_records)   # validated: a UserError names the file and line
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from src.data import Record, _check_record, evaluate, make_record
from src.data.canonical import canonical
from src.errors import UserError
from src.tokenizer import sequence_ids

PRECEDENCE_SPLIT = "pilot_test_paren_precedence"
PRECEDENCE_SOURCE = "pilot_test_flat"
FIELD = "flat_line"


@dataclass(frozen=True)
class PrecedencePair:
    record: Record   # the bracketed expression
    flat_line: int   # 0-based index of its flat twin in pilot_test_flat.jsonl

    def to_json(self) -> str:
        return json.dumps({"expr": self.record.expr, "result": self.record.result,
                           "depth": list(self.record.depth), FIELD: self.flat_line})


def placements(flat: str) -> list[str]:
    """`flat` with one pair of brackets around a proper run of 2+ numbers that changes its value, by span."""
    numbers = [(m.start(), m.end()) for m in re.finditer(r"\d+", flat)]
    value, out = evaluate(flat), []
    for i in range(len(numbers)):
        for j in range(i + 1, len(numbers)):
            if (i, j) == (0, len(numbers) - 1):
                continue
            start, end = numbers[i][0], numbers[j][1]
            expr = f"{flat[:start]}({flat[start:end]}){flat[end:]}"
            if evaluate(expr) != value:
                out.append(expr)
    return out


def generate_precedence(flat: Sequence[Record], seed: int, max_seq_len: int,
                        exclude_canonical: Iterable[str] = ()) -> list[PrecedencePair]:
    """The precedence-changing twins of the flat records (module docstring)."""
    rng = random.Random(f"{seed}-{PRECEDENCE_SPLIT}")
    taken = set(exclude_canonical)
    pairs = []
    for line, record in enumerate(flat):
        if "(" in record.expr:
            raise ValueError(f"{PRECEDENCE_SOURCE} line {line + 1}: {record.expr!r} is not flat")
        candidates = placements(record.expr)
        rng.shuffle(candidates)
        for expr in candidates:
            twin = make_record(expr)
            form = canonical(expr)
            if form in taken or len(sequence_ids(expr, twin.result)) > max_seq_len:
                continue
            taken.add(form)
            pairs.append(PrecedencePair(twin, line))
            break
    return pairs


def load_precedence(path, flat: Sequence[Record] | None = None, max_seq_len: int = 32) -> list[PrecedencePair]:
    """Every line of a precedence file, validated; with `flat` (the records of pilot_test_flat.jsonl) also
    against its flat twin: brackets removed give the flat line, and the value differs. A UserError names the
    file and line of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: precedence file not found; generate it with `python -m src.data --seed 42 --out data`")
    pairs, last = [], -1
    for line_no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{line_no}: not valid JSON ({err.msg}); regenerate the file") from None
        if not isinstance(obj, dict) or type(obj.get(FIELD)) is not int or obj[FIELD] < 0:
            raise UserError(f"{path}:{line_no}: missing or bad field {FIELD!r} (a 0-based line index of "
                            f"{PRECEDENCE_SOURCE}.jsonl); regenerate the file")
        flat_line = obj.pop(FIELD)
        try:
            record = _check_record(obj, max_seq_len)
        except ValueError as err:
            raise UserError(f"{path}:{line_no}: {err}") from None
        if flat_line <= last:
            raise UserError(f"{path}:{line_no}: {FIELD} {flat_line} does not follow {last}; lines follow the flat file's order")
        last = flat_line
        if flat is not None:
            if flat_line >= len(flat):
                raise UserError(f"{path}:{line_no}: {FIELD} {flat_line} is past the end of the flat file ({len(flat)} lines)")
            twin = flat[flat_line]
            if record.expr.replace("(", "").replace(")", "") != twin.expr:
                raise UserError(f"{path}:{line_no}: {record.expr!r} without brackets is not its flat twin {twin.expr!r} "
                                f"(line {flat_line + 1} of {PRECEDENCE_SOURCE}.jsonl); regenerate the file")
            if record.result == twin.result:
                raise UserError(f"{path}:{line_no}: {record.expr!r} has the value of its flat twin {twin.expr!r}; "
                                "its brackets must change the value")
        pairs.append(PrecedencePair(record, flat_line))
    if not pairs:
        raise UserError(f"{path}: file is empty; regenerate it with `python -m src.data --seed 42 --out data`")
    return pairs
