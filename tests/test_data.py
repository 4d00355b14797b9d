"""Data: the safe evaluator, depth labels, the generator, the shipped files, loading and batching."""

import ast
import json
import operator
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src import data as data_module
from src.data import cli as data_cli
from src.data import (
    ExpressionError,
    Record,
    bracketings,
    depth_labels,
    evaluate,
    generate_splits,
    load_jsonl,
    make_batch,
    make_record,
    operand_count,
)
from src.errors import UserError, run_main
from src.tokenizer import EOS_ID, IGNORE_INDEX, PAD_ID, decode, prompt_ids, sequence_ids
import src.train
from tests.runs import GOOD_LINES, tiny_raw, train_argv, write_yaml
from tests.runs import cli as entry_cli, expect_error as expect_entry_error

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
MAX_SEQ_LEN = 32
EXPECTED_COUNTS = {
    "pilot_train": 2000,
    "pilot_val": 200,
    "pilot_test_flat": 2000,
    "pilot_test_paren": 2000,
    "pilot_test_depth3": 2000,
    "pilot_test_paren_matched": 2000,
}


@pytest.fixture(scope="module")
def shipped():
    """Every shipped file, loaded and validated: name -> list of Record."""
    return {name: load_jsonl(DATA_DIR / f"{name}.jsonl", MAX_SEQ_LEN) for name in EXPECTED_COUNTS}


def reference_value(expr: str) -> int:
    """Value of `expr` by Python's own parser (ast, no eval): an independent check of `evaluate`."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        raise AssertionError(f"unexpected node {ast.dump(node)} in {expr!r}")

    return walk(ast.parse(expr, mode="eval").body)


# ---------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize(
    "expr, value",
    [
        ("2+3*4", 14),  # * before +
        ("2*3+4", 10),
        ("10-3-2", 5),  # left-associative minus
        ("8-(3-2)", 7),
        ("3-10", -7),  # negative result
        ("2*3-4*5", -14),
        ("(1+(2*3))", 7),
        ("((2+3)*(4-1))*2", 30),
        ("2*(3+(4-6))", 2),
        ("((1+2))", 3),
        ("99*99*99*99", 96059601),
        ("1-(2-(3-4))", -2),
    ],
)
def test_evaluate_hand_computed(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize("expr", ["1+", "(1+2", "1++2", "0+5", "100+1", "", "1+2)", "()", "1 + 2", "+1", "1*-2", "05+1"])
def test_evaluate_rejects_bad_input(expr):
    with pytest.raises(ExpressionError):
        evaluate(expr)


@pytest.mark.parametrize("module", [data_module, data_cli])
def test_data_module_never_calls_eval(module):
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert not re.search(r"\beval\s*\(", source)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            assert name not in ("eval", "exec", "compile"), f"{module.__file__} calls {name}() at line {node.lineno}"


# ---------------------------------------------------------------------------- depth labels


@pytest.mark.parametrize(
    "expr, depth",
    [
        ("(1+(2*3))", [1, 1, 1, 2, 2, 2, 2, 1, 0]),
        ("1+2", [0, 0, 0]),
        ("12*34-5", [0] * 7),
        ("((1+2))", [1, 2, 2, 2, 2, 1, 0]),
        ("(1+2)*(3+4)", [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0]),
        ("5*(6-7)", [0, 0, 1, 1, 1, 1, 0]),
    ],
)
def test_depth_labels_hand_written(expr, depth):
    assert depth_labels(expr) == depth
    assert make_record(expr) == Record(expr, evaluate(expr), depth)


# ---------------------------------------------------------------------------- generator and shipped files


@pytest.fixture(scope="module")
def splits_42():
    """The splits of seed 42, generated once for the two tests below."""
    return generate_splits(42)


def test_generator_is_deterministic(splits_42):
    assert generate_splits(42) == splits_42


def test_generator_seed_matters(splits_42):
    assert splits_42["pilot_train"] != generate_splits(43)["pilot_train"]


@pytest.mark.slow
def test_shipped_files_reproduce_byte_for_byte(tmp_path):
    out = tmp_path / "generated"
    proc = subprocess.run(
        [sys.executable, "-m", "src.data", "--seed", "42", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # the six files, then the precedence pairs and the counterfactual pair files with their manifest
    pair_files = ["pilot_test_paren_precedence.jsonl", "counterfactual_value.jsonl.gz",
                  "counterfactual_operator.jsonl.gz", "counterfactual_manifest.json"]
    names = [f"{n}.jsonl" for n in EXPECTED_COUNTS] + pair_files
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "data.manifest.json"])
    for name in names:
        shipped_bytes = (DATA_DIR / name).read_bytes()
        assert (out / name).read_bytes() == shipped_bytes, f"{name} differs from the generator's"


@pytest.mark.parametrize("name, count", EXPECTED_COUNTS.items())
def test_shipped_line_counts(name, count):
    lines = (DATA_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == count


def test_shipped_records_valid(shipped):
    # load_jsonl validated every record; also check the values against an independent evaluator
    for name, records in shipped.items():
        assert len(records) == EXPECTED_COUNTS[name]
        for r in records:
            assert r.result == reference_value(r.expr), (name, r.expr)
            assert len(sequence_ids(r.expr, r.result)) <= MAX_SEQ_LEN


@pytest.mark.parametrize("name", ["pilot_train", "pilot_val"])
def test_mixed_splits_have_depths_0_1_2_about_equally(shipped, name):
    records = shipped[name]
    max_depths = [max(r.depth) for r in records]
    assert set(max_depths) == {0, 1, 2}
    for d in (0, 1, 2):
        share = max_depths.count(d) / len(records)
        assert 0.30 <= share <= 0.37, f"{name}: depth {d} is {share:.2f} of the examples"


def test_flat_split_has_no_parentheses(shipped):
    for r in shipped["pilot_test_flat"]:
        assert set(r.depth) == {0}
        assert "(" not in r.expr and ")" not in r.expr


def test_paren_split_has_depth_1_or_2(shipped):
    max_depths = set()
    for r in shipped["pilot_test_paren"]:
        assert "(" in r.expr
        assert max(r.depth) in (1, 2)
        max_depths.add(max(r.depth))
    assert max_depths == {1, 2}


def test_depth3_split_has_depth_exactly_3(shipped):
    for r in shipped["pilot_test_depth3"]:
        assert max(r.depth) == 3


def test_matched_split_is_the_flat_split_with_brackets(shipped):
    pairs = list(zip(shipped["pilot_test_flat"], shipped["pilot_test_paren_matched"], strict=True))
    for line_no, (flat, matched) in enumerate(pairs, start=1):
        where = f"line {line_no}: {flat.expr!r} -> {matched.expr!r}"
        assert matched.expr.replace("(", "").replace(")", "") == flat.expr, where
        assert matched.result == flat.result == reference_value(matched.expr), where
        assert max(matched.depth) >= 1, where
        assert len(sequence_ids(matched.expr, matched.result)) <= MAX_SEQ_LEN, where


@pytest.mark.parametrize(
    "flat, expected",
    [
        ("1+2", ["(1+2)", "(1)+2", "1+(2)"]),  # the whole expression is the only operation
        ("1*2+3", ["(1*2)+3", "(1*2+3)", "(1)*2+3", "1*(2)+3", "1*2+(3)"]),
        ("1-2*3-4", ["(1-2*3)-4", "1-(2*3)-4", "(1-2*3-4)", "(1)-2*3-4", "1-(2)*3-4", "1-2*(3)-4", "1-2*3-(4)"]),
        ("1+2*3*4", ["1+(2*3)*4", "1+(2*3*4)", "(1+2*3*4)", "(1)+2*3*4", "1+(2)*3*4", "1+2*(3)*4", "1+2*3*(4)"]),
    ],
)
def test_bracketings_are_the_parse_tree_then_numbers(flat, expected):
    candidates = bracketings(random.Random(0), flat)
    n_proper = len(expected) - operand_count(flat) - 1
    # proper sub-expressions in random order, then the whole expression, then each number
    assert sorted(candidates[:n_proper]) == sorted(expected[:n_proper])
    assert candidates[n_proper:] == expected[n_proper:]
    for expr in candidates:
        assert evaluate(expr) == evaluate(flat) and max(depth_labels(expr)) == 1, expr


def test_small_max_seq_len_leaves_room_for_the_matched_brackets():
    splits = generate_splits(42, max_seq_len=25)  # some flat lines need 24 tokens
    for records in splits.values():
        assert all(len(sequence_ids(r.expr, r.result)) <= 25 for r in records)
    assert len(splits["pilot_test_paren_matched"]) == len(splits["pilot_test_flat"])


def test_no_expression_repeated_within_or_across_files(shipped):
    seen = {}
    for name, records in shipped.items():
        exprs = [r.expr for r in records]
        assert len(set(exprs)) == len(exprs), f"{name} repeats an expression"
        for expr in exprs:
            assert expr not in seen, f"{expr!r} is in both {seen[expr]} and {name}"
            seen[expr] = name


# ---------------------------------------------------------------------------- load_jsonl rejects bad records

GOOD = {"expr": "1+2", "result": 3, "depth": [0, 0, 0]}


def write_lines(tmp_path, lines, name="bad.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def expect_error(path, max_seq_len=MAX_SEQ_LEN) -> str:
    with pytest.raises(UserError) as info:
        load_jsonl(path, max_seq_len)
    message = str(info.value)
    assert str(path) in message
    return message


@pytest.mark.parametrize(
    "bad_line, why",
    [
        ('{"expr": "1+2", "result": 3,', "JSON"),
        ('["1+2", 3, [0, 0, 0]]', "object"),
        (json.dumps({"expr": "1+2", "depth": [0, 0, 0]}), "result"),
        (json.dumps({"expr": "1+2", "result": "3", "depth": [0, 0, 0]}), "result"),
        (json.dumps({"expr": "2-1", "result": True, "depth": [0, 0, 0]}), "result"),
        (json.dumps({"expr": "1+2", "result": 3.0, "depth": [0, 0, 0]}), "result"),
        (json.dumps({"expr": 12, "result": 12, "depth": [0, 0]}), "expr"),
        (json.dumps({"expr": "1+2", "result": 3, "depth": "000"}), "depth"),
        (json.dumps({**GOOD, "note": "x"}), "note"),
        (json.dumps({"expr": "1/2", "result": 0, "depth": [0, 0, 0]}), "'/'"),
        (json.dumps({"expr": "1+2", "result": 4, "depth": [0, 0, 0]}), "evaluates to 3"),
        (json.dumps({"expr": "(1+2)", "result": 3, "depth": [0, 0, 0, 0, 0]}), "depth"),
        (json.dumps({"expr": "1+2", "result": 3, "depth": [0, 0]}), "depth"),
        (json.dumps({"expr": "(1+2", "result": 3, "depth": [1, 1, 1, 1]}), "not a valid expression"),
        (json.dumps({"expr": "7", "result": 7, "depth": [0]}), "2 to 4"),
        (json.dumps({"expr": "1+2+3+4+5", "result": 15, "depth": [0] * 9}), "2 to 4"),
    ],
)
def test_load_rejects_bad_record_with_file_and_line(tmp_path, bad_line, why):
    path = write_lines(tmp_path, [json.dumps(GOOD), bad_line, json.dumps(GOOD)])
    message = expect_error(path)
    assert f"{path}:2:" in message
    assert why in message


def test_load_rejects_sequence_longer_than_max_seq_len(tmp_path):
    long = {"expr": "11+22*33", "result": 737, "depth": [0] * 8}  # <BOS>11+22*33 = 737<EOS>: 16 tokens
    assert len(sequence_ids(long["expr"], long["result"])) == 16
    path = write_lines(tmp_path, [json.dumps(GOOD), json.dumps(long)])
    message = expect_error(path, max_seq_len=12)
    assert f"{path}:2:" in message and "max_seq_len" in message
    assert len(load_jsonl(path, 16)) == 2  # exactly at the limit is fine


def test_load_rejects_empty_line(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD), "", json.dumps(GOOD)])
    assert f"{path}:2:" in expect_error(path)


def test_load_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    assert "empty" in expect_error(path)


def test_load_rejects_missing_file(tmp_path):
    assert "not found" in expect_error(tmp_path / "missing.jsonl")


def test_missing_file_in_data_names_the_command_to_run():
    # as for a checkout whose data/ predates a split: the command runs from the repository root
    message = expect_error(DATA_DIR / "no_such_split.jsonl")
    assert "`python -m src.data --seed 42 --out data`" in message


def test_load_reports_first_bad_line(tmp_path):
    bad = json.dumps({"expr": "1+2", "result": 4, "depth": [0, 0, 0]})
    path = write_lines(tmp_path, [json.dumps(GOOD)] * 3 + [bad, "not json"])
    assert f"{path}:4:" in expect_error(path)


def test_load_accepts_good_records(tmp_path):
    records = [make_record(e) for e in ("1+2", "(1+(2*3))", "3-10")]
    path = write_lines(tmp_path, [r.to_json() for r in records])
    assert load_jsonl(path, MAX_SEQ_LEN) == records


# ---------------------------------------------------------------------------- batching

BATCH_EXPRS = ["1+2", "(1+(2*3))", "3-10", "99*99*99*99", "((12+34)-5)*6"]


@pytest.fixture
def batch_records():
    return [make_record(e) for e in BATCH_EXPRS]


def test_make_batch_inputs_and_labels(batch_records):
    b = make_batch(batch_records, MAX_SEQ_LEN)
    assert b.inputs.shape == b.labels.shape == b.answer_mask.shape == b.depth.shape == (len(batch_records), MAX_SEQ_LEN)
    assert b.inputs.dtype == b.labels.dtype == torch.long and b.answer_mask.dtype == torch.bool
    assert len(b) == len(batch_records)
    for i, r in enumerate(batch_records):
        seq = sequence_ids(r.expr, r.result)
        m = len(seq) - 1
        assert b.inputs[i, :m].tolist() == seq[:-1]
        assert b.labels[i, :m].tolist() == seq[1:]
        # shifted by one: the label at j is the input at j + 1
        assert torch.equal(b.labels[i, : m - 1], b.inputs[i, 1:m])
        assert (b.inputs[i, m:] == PAD_ID).all()
        assert (b.labels[i, m:] == IGNORE_INDEX).all()
    assert b.results == [r.result for r in batch_records]


def test_make_batch_answer_mask_eos_and_prompt(batch_records):
    b = make_batch(batch_records, MAX_SEQ_LEN)
    for i, r in enumerate(batch_records):
        answer = str(r.result)
        m = len(sequence_ids(r.expr, r.result)) - 1
        positions = b.answer_mask[i].nonzero().flatten().tolist()
        # exactly the answer digits and <EOS>, contiguous, ending at the last label
        assert positions == list(range(m - len(answer) - 1, m))
        assert decode(b.labels[i][b.answer_mask[i]]) == answer
        assert b.labels[i, positions[-1]].item() == EOS_ID
        assert b.eos_pos[i].item() == m - 1
        assert b.labels[i, b.eos_pos[i]].item() == EOS_ID
        assert (b.labels[i, b.eos_pos[i] + 1 :] == IGNORE_INDEX).all()
        p = b.prompt_len[i].item()
        assert p == len(prompt_ids(r.expr))
        assert b.inputs[i, :p].tolist() == prompt_ids(r.expr)
        assert decode(b.inputs[i, p : m]) == answer  # the answer follows the prompt
        assert b.depth[i, 1 : 1 + len(r.expr)].tolist() == r.depth
        assert (b.depth[i, 0] == -1) and (b.depth[i, 1 + len(r.expr) :] == -1).all()


def test_make_batch_select(batch_records):
    b = make_batch(batch_records, MAX_SEQ_LEN)
    sub = b.select([3, 1])
    assert torch.equal(sub.inputs, b.inputs[[3, 1]])
    assert sub.results == [batch_records[3].result, batch_records[1].result]


def test_make_batch_rejects_too_long(batch_records):
    with pytest.raises(UserError):
        make_batch(batch_records, 12)


def test_make_batch_select_with_boolean_mask(batch_records):
    b = make_batch(batch_records, MAX_SEQ_LEN)
    mask = torch.tensor([False, True, True, False, True])
    sub = b.select(mask)
    assert torch.equal(sub.inputs, b.inputs[mask])
    assert sub.results == [batch_records[i].result for i in (1, 2, 4)]


# ---------------------------------------------------------------------------- --max-seq-len too short

# the shortest sequence each split can hold: <BOS>expr = result<EOS> with one-digit numbers, the fewest
# operands its depth allows (depth d needs d + 1 numbers, at least 2) and a one-digit result; the flat
# split leaves room for the two brackets of its matched twin
SPLIT_MINIMUMS = {
    "pilot_train": 15,  # depth 2: <BOS>((1*1)*1) = 1<EOS>
    "pilot_val": 15,
    "pilot_test_flat": 11,  # depth 0: <BOS>1*1 = 1<EOS>, plus 2
    "pilot_test_paren": 15,
    "pilot_test_depth3": 19,  # <BOS>(((1*1)*1)*1) = 1<EOS>
    "pilot_test_paren_matched": 11,  # <BOS>(1*1) = 1<EOS>
}


@pytest.mark.parametrize("max_depth, expected", [(0, "1*1"), (1, "(1*1)"), (2, "((1*1)*1)"), (3, "(((1*1)*1)*1)")])
def test_shortest_expression_of_each_depth(max_depth, expected):
    expr = data_module.shortest_expression(max_depth)
    assert expr == expected
    record = make_record(expr)
    assert max(record.depth) == max_depth and operand_count(expr) == max(2, max_depth + 1)
    assert record.result == reference_value(expr) and len(str(record.result)) == 1


def test_split_minimums():
    assert {name: tokens for name, (tokens, _) in data_module.split_minimums().items()} == SPLIT_MINIMUMS


def test_no_shipped_record_is_shorter_than_the_shortest_of_its_depth(shipped):
    for name, records in shipped.items():
        for r in records:
            shortest = make_record(data_module.shortest_expression(max(r.depth)))
            assert len(sequence_ids(r.expr, r.result)) >= len(sequence_ids(shortest.expr, shortest.result)), (name, r.expr)


def cli(argv, capsys) -> tuple[int, str]:
    """Exit status and stderr of `python -m src.data`, run in-process as its __main__ block runs it."""
    try:
        rc = run_main(data_cli.main, [str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    return rc, capsys.readouterr().err


@pytest.fixture
def no_generation(monkeypatch):
    """A tripwire: the test fails at once if generation starts (an unfixable bound once looped forever)."""
    def tripped(*args, **kwargs):
        raise AssertionError("generation started; the bad --max-seq-len should have been rejected up front")
    monkeypatch.setattr(data_module, "random_expression", tripped)


@pytest.mark.slow
def test_max_seq_len_5_exits_at_once_with_the_minimum(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "src.data", "--max-seq-len", "5", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("error: --max-seq-len 5: too short for pilot_test_depth3") and "\n" not in message
    assert "19 tokens" in message and "--max-seq-len 19 or more" in message
    assert not out.exists()


def test_max_seq_len_just_below_the_minimum_is_rejected_up_front(tmp_path, capsys, no_generation):
    rc, err = cli(["--max-seq-len", "18", "--out", tmp_path / "out"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "--max-seq-len 18: too short for pilot_test_depth3" in err and "<BOS>(((1*1)*1)*1) = 1<EOS>" in err
    assert not (tmp_path / "out").exists()


def test_max_seq_len_at_the_minimum_passes_the_up_front_check():
    data_module.check_max_seq_len(19)
    with pytest.raises(UserError):
        data_module.check_max_seq_len(18)
    with pytest.raises(UserError, match="too short for pilot_test_depth3"):
        generate_splits(42, max_seq_len=5)  # the library function checks too


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_max_seq_len_not_positive_is_a_usage_error(value, tmp_path, capsys, no_generation):
    rc, err = cli(["--max-seq-len", value, "--out", tmp_path / "out"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "argument --max-seq-len" in err and "positive integer" in err
    assert not (tmp_path / "out").exists()


def test_generation_gives_up_after_a_bounded_number_of_attempts(tmp_path, capsys, monkeypatch):
    # 19 tokens pass the up-front check, but almost no depth-3 expression fits: generation would never end
    monkeypatch.setattr(data_module, "MAX_MISSES", 1000)
    rc, err = cli(["--max-seq-len", "19", "--out", tmp_path / "out"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "--max-seq-len 19: 1000 expressions in a row" in err and "pilot_test_depth3" in err
    assert "raise --max-seq-len" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- bad records, through python -m src.train (docs/RELIABILITY.md)


RECORD = {"expr": "(1+2)*3", "result": 9, "depth": [1, 1, 1, 1, 0, 0, 0]}

DROP = object()  # record_line(field=DROP) leaves the field out


def record_line(**changes) -> str:
    obj = {**RECORD, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not DROP})


LONG_EXPR = "(" * 12 + "1+2" + ")" * 12  # valid, but 33 tokens as "<BOS>expr = 3<EOS>"

# id -> (file, its bad line 3, what the message must say)
BAD_RECORDS = {
    "blank_line": ("train", "", "empty line"),
    "not_json": ("train", '{"expr": "1+2", "result": 3', "not valid JSON"),
    "not_json_in_val": ("val", '{"expr": "1+2" "result": 3}', "not valid JSON"),
    "not_an_object": ("train", "[1, 2, 3]", "expected a JSON object, got list"),
    "missing_field": ("train", record_line(depth=DROP), "missing field 'depth'"),
    "unknown_field": ("train", record_line(note="x"), "unknown field 'note'"),
    "expr_wrong_type": ("train", record_line(expr=123), "field 'expr' must be a string, got int"),
    "result_wrong_type": ("train", record_line(result="9"), "field 'result' must be an integer, got str"),
    "result_bool": ("train", record_line(result=True), "field 'result' must be an integer, got bool"),
    "depth_wrong_type": ("train", record_line(depth="1110000"), "field 'depth' must be a list of integers"),
    "char_outside_vocabulary": ("train", record_line(expr="1x2", depth=[0, 0, 0]), "has character 'x'"),
    "char_outside_grammar": ("train", record_line(expr="8/2", result=4, depth=[0, 0, 0]), "has character '/'"),
    "invalid_expression": ("train", record_line(expr="1++2", result=3, depth=[0, 0, 0, 0]),
                           "is not a valid expression"),
    "too_many_numbers": ("train", record_line(expr="1+2+3+4+5", result=15, depth=[0] * 9), "has 5 numbers"),
    "result_mismatch": ("train", record_line(result=10),
                        "result 10 does not match expr '(1+2)*3', which evaluates to 9"),
    "result_mismatch_in_val": ("val", record_line(result=-9), "result -9 does not match expr '(1+2)*3'"),
    "depth_mismatch": ("train", record_line(depth=[0] * 7),
                       "does not match expr '(1+2)*3'; expected [1, 1, 1, 1, 0, 0, 0]"),
    "sequence_longer_than_max_seq_len": (
        "val", record_line(expr=LONG_EXPR, result=3, depth=[*range(1, 13), 12, 12, 12, *range(11, -1, -1)]),
        "sequence of 33 tokens (<BOS>expr = result<EOS>) is longer than max_seq_len 32",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_bad_record_names_file_and_line(case, tiny, tmp_path, capsys):
    split, bad_line, says = BAD_RECORDS[case]
    data = tmp_path / f"{split}.jsonl"
    data.write_text("\n".join([GOOD_LINES[0], GOOD_LINES[1], bad_line, GOOD_LINES[2]]) + "\n", encoding="utf-8")
    raw = tiny_raw(tiny["data"])
    raw["data"][split] = str(data)
    out = tmp_path / "run"
    result = entry_cli(src.train.main, train_argv(write_yaml(tmp_path / "c.yaml", raw), out), capsys)
    expect_entry_error(result, f"{data}:3: ", says)
    assert not out.exists(), "a run that failed on its data must write nothing"


@pytest.mark.parametrize("content, says", [
    (b"", ": file is empty"),
    ((GOOD_LINES[0] + "\n").encode() + b'{"expr": "1\xff2"}\n', ":2: not UTF-8 text"),
], ids=["empty", "not_utf8"])
def test_data_file_unreadable(tiny, tmp_path, capsys, content, says):
    data = tmp_path / "train.jsonl"
    data.write_bytes(content)
    raw = tiny_raw(tiny["data"])
    raw["data"]["train"] = str(data)
    out = tmp_path / "run"
    result = entry_cli(src.train.main, train_argv(write_yaml(tmp_path / "c.yaml", raw), out), capsys)
    expect_entry_error(result, f"{data}{says}")
    assert not out.exists()
