"""Brackets that change the value: data/pilot_test_paren_precedence.jsonl (src/data/precedence.py)."""

import json

import pytest

from src.data import depth_labels, evaluate, load_jsonl
from src.data.canonical import canonical, canonical_set
from src.data.precedence import generate_precedence, load_precedence, placements
from src.errors import UserError
from src.tokenizer import sequence_ids
from tests.test_data import DATA_DIR, EXPECTED_COUNTS, reference_value

PATH = DATA_DIR / "pilot_test_paren_precedence.jsonl"


@pytest.fixture(scope="module")
def flat():
    return load_jsonl(DATA_DIR / "pilot_test_flat.jsonl", 32)


@pytest.fixture(scope="module")
def pairs(flat):
    return load_precedence(PATH, flat)


@pytest.mark.parametrize("flat_expr, expected", [
    ("2+3*4", ["(2+3)*4"]),
    ("9-5-2", ["9-(5-2)"]),
    ("2*3-1", ["2*(3-1)"]),
    ("2+3+4", []),                 # + is associative: no bracket changes the value
    ("2*3*4", []),
    ("7+5", []),                   # two numbers: no proper run
    ("5+3*1", []),                 # (5+3)*1 = 8 = 5+3*1: the value must change
])
def test_placements_by_hand(flat_expr, expected):
    assert placements(flat_expr) == expected


def test_every_line_changes_the_value_of_its_flat_twin(pairs, flat):
    assert len(pairs) > 500
    for pair in pairs:
        twin = flat[pair.flat_line]
        assert pair.record.expr.replace("(", "").replace(")", "") == twin.expr
        assert pair.record.expr.count("(") == 1
        assert pair.record.result == evaluate(pair.record.expr) == reference_value(pair.record.expr) != twin.result


def test_lines_are_the_flat_lines_that_admit_a_placement_in_order(pairs, flat):
    indices = [p.flat_line for p in pairs]
    assert indices == sorted(set(indices))
    skipped = set(range(len(flat))) - set(indices)
    # a skipped flat line admits no placement outside the other files (its only ones are taken or too long)
    others = canonical_set(r.expr for name in EXPECTED_COUNTS for r in load_jsonl(DATA_DIR / f"{name}.jsonl", 32))
    taken = {canonical(p.record.expr) for p in pairs}
    for i in skipped:
        assert all(canonical(e) in others | taken or len(sequence_ids(e, evaluate(e))) > 32
                   for e in placements(flat[i].expr)), flat[i].expr


def test_no_line_is_a_near_twin_of_another_file(pairs):
    others = canonical_set(r.expr for name in EXPECTED_COUNTS for r in load_jsonl(DATA_DIR / f"{name}.jsonl", 32))
    forms = [canonical(p.record.expr) for p in pairs]
    assert len(set(forms)) == len(forms) and not set(forms) & others


def test_regenerated_byte_for_byte(flat):
    forms = canonical_set(r.expr for name in EXPECTED_COUNTS for r in load_jsonl(DATA_DIR / f"{name}.jsonl", 32))
    text = "".join(p.to_json() + "\n" for p in generate_precedence(flat, 42, 32, forms))
    assert text == PATH.read_text()


@pytest.mark.parametrize("edit, message", [
    (lambda o: o.update(flat_line=o["flat_line"] + 1), "without brackets is not its flat twin"),
    (lambda o: o.pop("flat_line"), "missing or bad field 'flat_line'"),
    (lambda o: o.update(result=o["result"] + 1), ":2: result"),
])
def test_bad_line_is_named(tmp_path, flat, edit, message):
    lines = PATH.read_text().splitlines()[:3]
    obj = json.loads(lines[1])
    edit(obj)
    lines[1] = json.dumps(obj)
    bad = tmp_path / "p.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=message) as err:
        load_precedence(bad, flat)
    assert f"{bad}:2:" in str(err.value)


def test_same_value_twin_is_rejected(tmp_path, flat):
    i = next(i for i, r in enumerate(flat) if r.expr.count("+") == 2 and "-" not in r.expr and "*" not in r.expr)
    expr = flat[i].expr
    start = expr.index("+") + 1
    same = f"{expr[:start]}({expr[start:]})"  # a+(b+c): the value of a+b+c
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"expr": same, "result": evaluate(same), "depth": depth_labels(same), "flat_line": i}) + "\n")
    with pytest.raises(UserError, match="must change the value"):
        load_precedence(bad, flat, max_seq_len=32)
