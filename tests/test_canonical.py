"""The canonical form (src/data/canonical.py), the parser under it, the cached forms of a training set, and the
near-twin-free training sets (src/data/trainsets.py, kind near_twin_free)."""

import ast
import json
import random

import pytest

from src.data import ExpressionError, evaluate, parse, random_expression, trainsets
from src.data import canonical as canonical_module
from src.data.canonical import cache_path, canonical, training_forms


@pytest.mark.parametrize("a, b", [
    ("3+5", "5+3"),
    ("(2*3)+4", "4+2*3"),
    ("(3+5)", "5+3"),
    ("1+(2+3)", "(3+2)+1"),
    ("2*(3*4)", "4*3*2"),
    ("7-2+9", "9+(7-2)"),             # the + node's two operands commute, the - node stays as it is
    ("(4*5)-6", "5*4-6"),
    ("10-(3*2)", "10-2*3"),
    ("((1+2))*3", "3*(2+1)"),
])
def test_near_twins_share_the_form(a, b):
    assert canonical(a) == canonical(b)


@pytest.mark.parametrize("a, b", [
    ("5-3", "3-5"),
    ("7-2+9", "7+9-2"),               # would move a -
    ("7+(9-2)", "7+9-2"),             # a bracket that makes b-c an operand of +: another tree
    ("10-(5-2)", "10-5-2"),
    ("(1+2)*3", "1+2*3"),
    ("2*(3+4)", "2*3+2*4"),           # no distribution
])
def test_different_forms(a, b):
    assert canonical(a) != canonical(b)


@pytest.mark.parametrize("expr, form", [
    ("5+3", "3+5"), ("(2*3)+4", "2*3+4"), ("99-(3-(2*5))", "99-(3-2*5)"), ("(1+2)*(3-4)", "(1+2)*(3-4)"),
    ("9+(7-2)", "7-2+9"), ("1+(9-2)", "9-2+1"), ("((12))", "12"), ("(5-1)+(4-3)", "4-3+(5-1)"),
])
def test_hand_computed_forms(expr, form):
    assert canonical(expr) == form


def ast_value(expr: str) -> int:
    """Value by Python's own parser (ast, no eval): an independent check."""
    def walk(node):
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
        return node.value
    return walk(ast.parse(expr, mode="eval").body)


def test_form_is_an_expression_of_the_same_value_and_a_fixed_point():
    rng = random.Random(7)
    for i in range(3000):
        expr = random_expression(rng, i % 4)
        form = canonical(expr)
        assert evaluate(form) == evaluate(expr) == ast_value(form), expr
        assert canonical(form) == form, expr
        assert form.count("(") <= expr.count("("), expr  # brackets are only dropped


def test_parse_builds_the_tree_evaluate_reads():
    def value(node):
        if type(node) is int:
            return node
        op, left, right = node
        return {"+": value(left) + value(right), "-": value(left) - value(right), "*": value(left) * value(right)}[op]

    rng = random.Random(3)
    for i in range(2000):
        expr = random_expression(rng, i % 4)
        assert value(parse(expr)) == evaluate(expr)
    assert parse("1-2-3") == ("-", ("-", 1, 2), 3) and parse("1-(2-3)") == ("-", 1, ("-", 2, 3))
    assert parse("2+3*4") == ("+", 2, ("*", 3, 4))


@pytest.mark.parametrize("bad", ["", "1+", "(1+2", "1+2)", "0+1", "100*2", "1/2", "a"])
def test_parse_rejects_what_evaluate_rejects(bad):
    with pytest.raises(ExpressionError):
        evaluate(bad)
    with pytest.raises(ExpressionError):
        canonical(bad)


def _write(path, exprs):
    path.write_text("".join(json.dumps({"expr": e, "result": evaluate(e), "depth": []}) + "\n" for e in exprs))


def test_training_forms_are_cached_and_the_cache_follows_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(canonical_module, "CACHE_FROM_BYTES", 1)
    path = tmp_path / "train_3.jsonl"
    _write(path, ["5+3", "3+5", "(2*3)+4"])
    assert training_forms(path) == {"3+5", "2*3+4"}
    header = json.loads(cache_path(path).read_text().splitlines()[0])
    assert header["schema"] == "canonical_forms/1" and header["forms"] == 2
    # read from the cache: a form planted there comes back, so the cache is what was read
    cache_path(path).write_text(cache_path(path).read_text().replace("3+5\n", "3+6\n"))
    assert training_forms(path) == {"3+6", "2*3+4"}
    lines = cache_path(path).read_text().splitlines()
    lines[0] = lines[0].replace('"form_version": 1', '"form_version": 0')
    cache_path(path).write_text("\n".join(lines) + "\n")  # made by another definition of the form: remade
    assert training_forms(path) == {"3+5", "2*3+4"}
    _write(path, ["5-3"])  # the file changed: the cache is remade
    assert training_forms(path) == {"5-3"}


def test_training_forms_in_worker_processes_are_those_of_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(canonical_module, "_CHUNK", 7)  # 40 lines: six chunks for the workers
    rng = random.Random(3)
    exprs = [random_expression(rng, rng.randint(0, 2)) for _ in range(40)]
    path = tmp_path / "train_40.jsonl"
    _write(path, exprs)
    one = training_forms(path, processes=1)
    assert training_forms(path, processes=3) == one == {canonical(e) for e in exprs}


@pytest.fixture(scope="module")
def held_out_forms():
    return trainsets.near_twin_forms()


def test_near_twin_free_set_holds_no_near_twin_beyond_the_prefix(tmp_path, held_out_forms, monkeypatch):
    # small chunks, so that 2,600 lines draw 1,000 expressions at a time instead of 10,000 (the test's speed)
    monkeypatch.setattr(trainsets, "CHUNK_SIZE", 1000)
    monkeypatch.setattr(trainsets, "near_twin_forms", lambda data_dir=None: held_out_forms)
    _check_near_twin_free(tmp_path, 2600, held_out_forms)


@pytest.mark.slow
def test_near_twin_free_set_as_shipped_settings(tmp_path, held_out_forms):
    _check_near_twin_free(tmp_path, 12_000, held_out_forms)
    again = trainsets.write_training_set(12_000, tmp_path / "two", processes=2, kind="near_twin_free")
    assert again.read_bytes() == (tmp_path / "train_nt_12000.jsonl").read_bytes()


def _check_near_twin_free(tmp_path, n, held_out_forms):
    nt = trainsets.write_training_set(n, tmp_path, processes=1, kind="near_twin_free")
    plain = trainsets.write_training_set(n, tmp_path, processes=1)
    assert nt.name == f"train_nt_{n}.jsonl" and plain.name == f"train_{n}.jsonl"
    nt_lines, plain_lines = nt.read_text().splitlines(), plain.read_text().splitlines()
    assert len(nt_lines) == n and nt_lines[:2000] == plain_lines[:2000] == trainsets.DATA_DIR.joinpath(
        "pilot_train.jsonl").read_text().splitlines()
    assert trainsets.near_twin_lines(nt, held_out_forms, start=2000) == []
    assert trainsets.near_twin_lines(plain, held_out_forms, start=2000) != []  # what the kind removes is there
    manifest = json.loads(trainsets.manifest_path(nt).read_text())
    assert manifest["kind"] == "near_twin_free" and "counterfactual_value.jsonl.gz" in manifest["sources"]
    assert "kind" not in json.loads(trainsets.manifest_path(plain).read_text())  # plain manifests as before
    assert trainsets.training_set_problem(nt, kind="near_twin_free") is None
    assert trainsets.training_set_problem(plain) is None
