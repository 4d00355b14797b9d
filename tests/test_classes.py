"""Expression classes, exact_match by class, and the reversed-answer format (docs/DESIGN.md section 8)."""

import json
import random

import pytest
import torch

from src import stats
from src.data.classes import (
    ExpressionClass,
    classify,
    exact_match_by_class,
    parse_reversed_answer,
    reversed_answer,
)
from src.data import make_record, random_expression


@pytest.mark.parametrize("expr, operands, operators, depth", [
    ("1+2", 2, "+-", 0),
    ("99-1", 2, "+-", 0),
    ("3*4", 2, "*", 0),
    ("(3*4)-5", 3, "*", 1),          # operands 3, 4, 5
    ("(1+2)", 2, "+-", 1),           # the whole expression in brackets
    ("10+20-30+40", 4, "+-", 0),     # multi-digit numbers count once
    ("1+2*3-4", 4, "*", 0),
    ("1-(2+(3-4))", 4, "+-", 2),
    ("((1+2)*3)-4", 4, "*", 2),
    ("(1+(2*(3+4)))", 4, "*", 3),
    ("(((12*34)-56)+78)", 4, "*", 3),
    ("(1+2)*(3+4)", 4, "*", 1),      # two brackets side by side: depth 1, not 2
])
def test_classify_hand_made_expressions(expr, operands, operators, depth):
    expected = ExpressionClass(operands, operators, depth)
    assert classify(expr) == expected
    assert classify(make_record(expr)) == expected  # a Record is classified by its expression
    assert expected.key() == f"operands={operands}|operators={operators}|depth={depth}"


@pytest.mark.parametrize("expr", ["", "-1+2", "1+-2", "1", "1+2+3+4+5", "0+1", "100+1", "(1+2", "1/2", "1 + 2"])
def test_classify_rejects_what_the_grammar_cannot_produce(expr):
    # no unary minus or negative numbers, 2 to 4 integers from 1 to 99, balanced brackets
    with pytest.raises(ValueError):
        classify(expr)


def test_classify_matches_the_generator():
    rng = random.Random(0)
    for _ in range(400):
        depth = rng.randint(0, 3)
        expr = random_expression(rng, depth)
        cls = classify(expr)
        assert cls.depth == depth
        assert cls.operands == len([t for t in expr.replace("(", " ").replace(")", " ")
                                    .replace("+", " ").replace("-", " ").replace("*", " ").split()])
        assert cls.operators == ("*" if "*" in expr else "+-")


RECORDS = ["1+2", "3-4", "5+6",          # operands=2 +- depth 0: 2 of 3
           "(7*8)-9",                     # operands=3 *  depth 1: 0 of 1
           "(1+2)*3", "(4+5)*6",          # operands=3 *  depth 1: 2 of 2
           "1+(2-(3+4))"]                 # operands=4 +- depth 2: 1 of 1
CORRECT = [1, 0, 1, 0, 1, 1, 1]


def test_breakdown_counts_and_wilson_intervals():
    out = exact_match_by_class([make_record(e) for e in RECORDS], torch.tensor(CORRECT, dtype=torch.float64))
    assert out["all"]["n"] == 7 and out["all"]["correct"] == 5
    counts = {group: {key: (cell["n"], cell["correct"]) for key, cell in out[group].items()}
              for group in ("by_operands", "by_operators", "by_depth", "by_class")}
    assert counts["by_operands"] == {"operands=2": (3, 2), "operands=3": (3, 2), "operands=4": (1, 1)}
    assert counts["by_operators"] == {"operators=+-": (4, 3), "operators=*": (3, 2)}
    assert counts["by_depth"] == {"depth=0": (3, 2), "depth=1": (3, 2), "depth=2": (1, 1)}
    assert counts["by_class"] == {"operands=2|operators=+-|depth=0": (3, 2),
                                  "operands=3|operators=*|depth=1": (3, 2),
                                  "operands=4|operators=+-|depth=2": (1, 1)}
    # keys in a stable order: "+-" before "*", and empty classes left out
    assert list(out["by_operators"]) == ["operators=+-", "operators=*"]
    for group in ("all", "by_operands", "by_operators", "by_depth", "by_class"):
        cells = [out[group]] if group == "all" else out[group].values()
        for cell in cells:
            assert cell["exact_match"] == cell["correct"] / cell["n"]
            assert cell["exact_match_ci95"] == list(stats.wilson_interval(cell["correct"], cell["n"]))
            lo, hi = cell["exact_match_ci95"]
            assert 0.0 <= lo <= cell["exact_match"] <= hi <= 1.0
    # a known value: 2 of 3 gives the Wilson interval (0.2077, 0.9385)
    assert out["by_depth"]["depth=0"]["exact_match_ci95"] == pytest.approx([0.20765, 0.93851], abs=1e-4)
    assert out["by_class"]["operands=4|operators=+-|depth=2"]["exact_match"] == 1.0
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN anywhere


def test_breakdown_accepts_bools_strings_and_lists_alike():
    from_bools = exact_match_by_class(RECORDS, [bool(c) for c in CORRECT])
    assert from_bools == exact_match_by_class([make_record(e) for e in RECORDS], CORRECT)
    assert from_bools == exact_match_by_class(RECORDS, torch.tensor(CORRECT, dtype=torch.bool))


def test_breakdown_of_nothing():
    out = exact_match_by_class([], [])
    assert out["all"] == {"n": 0, "correct": 0, "exact_match": None, "exact_match_ci95": None}
    assert out["by_class"] == {} and out["by_depth"] == {}
    json.dumps(out, allow_nan=False)


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"7 records but 6 outcomes"):
        exact_match_by_class(RECORDS, CORRECT[:-1])


@pytest.mark.parametrize("bad", [[0.5], [float("nan")], [2], ["1"]])
def test_outcomes_must_be_yes_or_no(bad):
    with pytest.raises(ValueError, match=r"correct\[0\]"):
        exact_match_by_class(["1+2"], bad)


@pytest.mark.parametrize("value, text", [
    (0, "0"), (7, "7"), (-7, "-7"), (123, "321"), (-123, "-321"), (120, "021"), (-120, "-021"),
    (1000, "0001"), (-9000, "-0009"), (101, "101"), (9801, "1089"),
])
def test_reversed_answer_known_values(value, text):
    assert reversed_answer(value) == text
    assert parse_reversed_answer(text) == value


def test_reversed_answer_round_trip_over_a_range():
    for value in list(range(-10_000, 10_001)) + [99**4, -(99**3), 10**30, -(10**30) + 1]:
        text = reversed_answer(value)
        assert parse_reversed_answer(text) == value
        assert text.lstrip("-")[::-1] == str(abs(value))


@pytest.mark.parametrize("text", ["", "-", "+12", " 12", "12 ", "1-2", "--1", "-0", "10", "-210", "00", "1.0", "١٢"])
def test_parse_reversed_answer_rejects_malformed_text(text):
    # "10" would be the number "01", with a leading zero; "-0" has a sign zero never gets
    with pytest.raises(ValueError):
        parse_reversed_answer(text)


def test_reversed_answer_takes_only_ints():
    for bad in (True, 1.0, "12"):
        with pytest.raises(TypeError):
            reversed_answer(bad)
