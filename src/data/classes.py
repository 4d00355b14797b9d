"""Expression classes of the learnability extension (docs/DESIGN.md section 8).

A class is (number of operands, operators, depth):
    operands    2, 3 or 4 (the grammar's range)
    operators   "+-" when the expression uses only + and -, "*" when it uses * at least once
    depth       the maximum bracket nesting depth, 0 without brackets (0..3 in the shipped files)
Its key, e.g. "operands=3|operators=*|depth=1", is what `exact_match_by_class` reports it under.

The reversed-answer helpers (`reversed_answer`, `parse_reversed_answer`) live in src/tokenizer.py,
where `sequence_ids` writes an answer in the config's `data.answer_format`; they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from src.data import MAX_OPERANDS, MIN_OPERANDS, Record, depth_labels, evaluate, operand_count
from src.stats import wilson_interval
from src.tokenizer import parse_reversed_answer, reversed_answer  # noqa: F401  (re-exported)

PLUS_MINUS, TIMES = "+-", "*"
DIMENSIONS = ("operands", "operators", "depth")
_OPERATOR_ORDER = {PLUS_MINUS: 0, TIMES: 1}  # so that tables list "+-" before "*"


class ExpressionClass(NamedTuple):
    operands: int
    operators: str  # PLUS_MINUS or TIMES
    depth: int

    def key(self, dimensions: Sequence[str] = DIMENSIONS) -> str:
        """The class as text, "operands=3|operators=*|depth=1", or only the named dimensions ("depth=1")."""
        return "|".join(f"{name}={getattr(self, name)}" for name in dimensions)

    def sort_key(self) -> tuple[int, int, int]:
        return (self.operands, _OPERATOR_ORDER[self.operators], self.depth)


def classify(item: Record | str) -> ExpressionClass:
    """The class of a record or of an expression string; ValueError if it is not an expression of
    the grammar (2 to 4 integers from 1 to 99, + - *, brackets: there are no negative numbers)."""
    expr = item.expr if isinstance(item, Record) else item
    if not isinstance(expr, str):
        raise TypeError(f"expected a Record or an expression string, got {type(item).__name__}")
    evaluate(expr)  # ExpressionError, a ValueError, says what is wrong
    operands = operand_count(expr)
    if not MIN_OPERANDS <= operands <= MAX_OPERANDS:
        raise ValueError(f"expr {expr!r} has {operands} numbers; the grammar allows {MIN_OPERANDS} to {MAX_OPERANDS}")
    return ExpressionClass(operands, TIMES if TIMES in expr else PLUS_MINUS, max(depth_labels(expr)))


def _outcomes(correct) -> list[bool]:
    """`correct` as a list of bools; ValueError for anything but 0/1 (NaN: exact_match not scored)."""
    values = correct.tolist() if hasattr(correct, "tolist") else list(correct)  # torch or numpy, or a sequence
    for i, v in enumerate(values):
        if not (v == 0 or v == 1):  # False for NaN, a string, a nested list
            raise ValueError(f"correct[{i}] is {v!r}; each outcome must be 0/1 or a bool "
                             "(NaN means exact_match was not scored: decode the answers)")
    return [bool(v) for v in values]


def _cell(n: int, correct: int) -> dict:
    if n == 0:  # only "all", for an empty set: null, not NaN, so that the output stays strict JSON
        return {"n": 0, "correct": 0, "exact_match": None, "exact_match_ci95": None}
    return {"n": n, "correct": correct, "exact_match": correct / n, "exact_match_ci95": list(wilson_interval(correct, n))}


def exact_match_by_class(records: Sequence[Record | str], correct) -> dict:
    """exact_match broken down by expression class, from per-example outcomes in the order of `records`.

    `correct` is one 0/1 (or bool) outcome per record, e.g. `per_example_scores(...)["exact_match"]`.
    Returns a JSON-serialisable dict:
        all           the whole set
        by_operands   {"operands=2": cell, ...}
        by_operators  {"operators=+-": cell, "operators=*": cell}
        by_depth      {"depth=0": cell, ...}
        by_class      the full cross, {"operands=3|operators=*|depth=1": cell, ...}
    where a cell is {"n", "correct", "exact_match", "exact_match_ci95"} (95% Wilson interval).
    Empty cells are omitted, not reported with n = 0: several classes cannot occur (two operands
    never nest to depth 2 or 3), and every reported rate is then a finite number. Only "all" is
    always there: for no records at all it has n = 0 and null exact_match and interval. Keys are in
    order of operands, operators ("+-" before "*"), then depth.
    """
    outcomes = _outcomes(correct)
    if len(records) != len(outcomes):
        raise ValueError(f"{len(records)} records but {len(outcomes)} outcomes; give one outcome per record, in the same order")
    classes = [classify(r) for r in records]
    groups = {"by_operands": ("operands",), "by_operators": ("operators",), "by_depth": ("depth",), "by_class": DIMENSIONS}
    out: dict = {"all": _cell(len(outcomes), sum(outcomes))}
    for group, dimensions in groups.items():
        counts: dict[str, list[int]] = {}  # key -> [n, correct], filled in sorted order
        for cls, ok in sorted(zip(classes, outcomes), key=lambda pair: pair[0].sort_key()):
            tally = counts.setdefault(cls.key(dimensions), [0, 0])
            tally[0] += 1
            tally[1] += ok
        out[group] = {key: _cell(n, k) for key, (n, k) in counts.items()}
    return out
