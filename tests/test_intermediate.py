"""Intermediate-value targets (src.analysis.intermediate): hand-made expressions with known values, an
independent oracle over the shipped test files, the copy baseline, and alignment with the batches
and positions src.analysis.probe reads."""

from pathlib import Path

import pytest
import torch

from src.analysis import intermediate
from src.data import ExpressionError, evaluate, load_jsonl, make_batch, make_record
from src.analysis.intermediate import Target, batch_targets, expression_targets, position_targets
from src.analysis.probe import expression_positions
from src.tokenizer import VOCAB, sequence_ids

REPO_ROOT = Path(__file__).resolve().parent.parent


def targets_by_char(expr: str, operator_target: str = "left_operand") -> list[tuple[int, str, int, int, int]]:
    """(index, character, value, mod10, sign) of every position with a target."""
    return [(k, expr[k], t.value, t.mod10, t.sign)
            for k, t in enumerate(expression_targets(expr, operator_target)) if t is not None]


# ---------------------------------------------------------------------------- hand-made expressions


def test_close_paren_carries_the_value_it_closes():
    # (12+3)*4: the ')' closes 15; the '+' has 12 on its left, the '*' the group's 15
    assert targets_by_char("(12+3)*4") == [(3, "+", 12, 2, 1), (5, ")", 15, 5, 1), (6, "*", 15, 5, 1)]


def test_negative_value_uses_the_last_written_digit_and_sign_minus():
    # -9 is written "-9": mod10 is 9 (|v| mod 10), not Python's -9 % 10 = 1
    assert targets_by_char("(3-12)") == [(2, "-", 3, 3, 1), (5, ")", -9, 9, -1)]
    assert Target("close", -9).mod10 == 9 and Target("close", -9).sign == -1
    assert Target("close", -120).mod10 == 0 and Target("operator", 0).sign == 0


def test_nested_brackets():
    # ((1+2)*3)-4: inner ')' closes 3, '*' has 3 on its left, outer ')' closes 9, '-' has 9
    assert targets_by_char("((1+2)*3)-4") == [(3, "+", 1, 1, 1), (5, ")", 3, 3, 1), (6, "*", 3, 3, 1),
                                              (8, ")", 9, 9, 1), (9, "-", 9, 9, 1)]
    # 5*(2-(3+4)): inner ')' closes 7, outer closes -5
    assert targets_by_char("5*(2-(3+4))") == [(1, "*", 5, 5, 1), (4, "-", 2, 2, 1), (7, "+", 3, 3, 1),
                                              (9, ")", 7, 7, 1), (10, ")", -5, 5, -1)]


def test_operator_left_operand_follows_precedence():
    # at '*' of 2+3*4 the prefix 2+3 is no value under precedence: the left operand is 3
    assert targets_by_char("2+3*4") == [(1, "+", 2, 2, 1), (3, "*", 3, 3, 1)]
    # + and - take the whole group prefix, which is complete there
    assert targets_by_char("2*3+4") == [(1, "*", 2, 2, 1), (3, "+", 6, 6, 1)]
    assert targets_by_char("2+3*4-5") == [(1, "+", 2, 2, 1), (3, "*", 3, 3, 1), (5, "-", 14, 4, 1)]
    # a product chain: the running product, left-associative
    assert targets_by_char("2*3*4-5") == [(1, "*", 2, 2, 1), (3, "*", 6, 6, 1), (5, "-", 24, 4, 1)]
    # a running value of zero has sign 0
    assert targets_by_char("3-3+2*4") == [(1, "-", 3, 3, 1), (3, "+", 0, 0, 0), (5, "*", 2, 2, 1)]
    # inside a group, only the group's own prefix counts
    assert targets_by_char("9-(2+3*4)") == [(1, "-", 9, 9, 1), (4, "+", 2, 2, 1), (6, "*", 3, 3, 1),
                                            (8, ")", 14, 4, 1)]


def test_operator_pending_sum_is_the_completed_terms_before_the_current_one():
    # at '*' of 5-3*4 the term 3*4 is open; the completed part of the group is 5
    assert targets_by_char("5-3*4", "pending_sum") == [(1, "-", 5, 5, 1), (3, "*", 5, 5, 1)]
    # a '*' in the group's first term has no completed term: no target there
    assert targets_by_char("2*3+4", "pending_sum") == [(3, "+", 6, 6, 1)]
    assert targets_by_char("((1+2)*3)-4", "pending_sum") == [(3, "+", 1, 1, 1), (5, ")", 3, 3, 1),
                                                             (8, ")", 9, 9, 1), (9, "-", 9, 9, 1)]
    # 9-(2+3*4): inside the group the completed term is 2, not 9
    assert targets_by_char("9-(2+3*4)", "pending_sum")[2] == (6, "*", 2, 2, 1)
    # 3-3+2*4 at '*': the completed terms sum to 0, which is a target (sign 0), unlike "no term"
    assert targets_by_char("3-3+2*4", "pending_sum")[-1] == (5, "*", 0, 0, 0)


def test_no_brackets_no_close_targets_and_lone_number_in_brackets():
    assert [t.kind for t in expression_targets("12+34") if t] == ["operator"]
    assert targets_by_char("(84)-4") == [(3, ")", 84, 4, 1), (4, "-", 84, 4, 1)]


def test_bad_input_is_refused():
    with pytest.raises(ExpressionError):
        expression_targets("(1+2")
    with pytest.raises(ValueError, match="operator_target"):
        expression_targets("1+2", "running_total")


def test_position_targets_follow_the_token_positions():
    expr = "(3-12)*2"
    result = evaluate(expr)
    targets = position_targets(expr)
    tokens = sequence_ids(expr, result)
    assert len(targets) == len(tokens)  # <BOS>expr = -18<EOS>
    assert targets[0] is None and all(t is None for t in targets[len(expr) + 1:])
    for k, ch in enumerate(expr):
        assert VOCAB[tokens[k + 1]] == ch
        assert (targets[k + 1] is not None) == (ch in ")+-*")
    assert targets[6] == Target("close", -9) and targets[7] == Target("operator", -9)


# ---------------------------------------------------------------------------- an independent oracle


def oracle(expr: str) -> dict[int, tuple[int, int | None]]:
    """{index: (left_operand or close value, pending_sum)} from src.data.evaluate on substrings."""
    out, opens = {}, []
    group_start = [0]  # the index where each open group's text begins
    for i, ch in enumerate(expr):
        if ch == "(":
            opens.append(i)
            group_start.append(i + 1)
        elif ch == ")":
            j = opens.pop()
            group_start.pop()
            value = evaluate(expr[j + 1:i])
            out[i] = (value, value)
        elif ch in "+-*":
            g = group_start[-1]
            if ch in "+-":
                value = evaluate(expr[g:i])
                out[i] = (value, value)
                continue
            depth, term_start = 0, g  # the start of the current term: after the group's last + or -
            for k in range(g, i):
                depth += {"(": 1, ")": -1}.get(expr[k], 0)
                if depth == 0 and expr[k] in "+-":
                    term_start = k + 1
            pending = evaluate(expr[g:term_start - 1]) if term_start > g else None
            out[i] = (evaluate(expr[term_start:i]), pending)
    return out


@pytest.mark.parametrize("name", ["pilot_test_paren", "pilot_test_depth3", "pilot_test_paren_matched"])
def test_targets_agree_with_evaluate_on_substrings_of_the_shipped_files(name):
    path = REPO_ROOT / "data" / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    for record in load_jsonl(path, max_seq_len=32):
        expected = oracle(record.expr)
        left = {k: t.value for k, t in enumerate(expression_targets(record.expr)) if t}
        pending = {k: t.value for k, t in enumerate(expression_targets(record.expr, "pending_sum")) if t}
        assert left == {k: v for k, (v, _) in expected.items()}, record.expr
        assert pending == {k: p for k, (_, p) in expected.items() if p is not None}, record.expr


# ---------------------------------------------------------------------------- the copy baseline


def test_copy_baseline_flags_targets_a_token_gives_away():
    # (12+3)*4: '+' has 12, and the digit just read is 2: a copy. ')' closes 15, the digit read is 3;
    # '*' has 15, the digit read is 3 (the ')' is no digit): neither is a copy
    assert intermediate.copy_baseline("(12+3)*4") == [None, None, 1, 2, 2, 3, 3, 3]
    assert intermediate.trivial_targets("(12+3)*4") == [None, None, None, True, None, False, False, None]
    # a value that ends in the digit just read is trivial by coincidence
    assert intermediate.trivial_targets("(1*5)")[4] is True
    # the sign is never given away where the value is negative or zero
    assert intermediate.trivial_targets("(3-12)")[5] is False


# ---------------------------------------------------------------------------- batches


RECORDS = [make_record(e) for e in ["(12+3)*4", "(3-12)", "((1+2)*3)-4", "2+3*4", "2*3*4-5", "5*(2-(3+4))"]]


def test_batch_targets_align_with_the_batch_inputs():
    batch = make_batch(RECORDS, max_seq_len=24)
    targets = batch_targets(RECORDS, 24)
    assert targets.mask.shape == batch.inputs.shape
    close_id, operator_ids = VOCAB.index(")"), [VOCAB.index(c) for c in "+-*"]
    assert (batch.inputs[targets.close_mask] == close_id).all()
    assert torch.isin(batch.inputs[targets.operator_mask], torch.tensor(operator_ids)).all()
    # under left_operand every ')' and every operator of the expression has a target
    in_expr = batch.depth >= 0
    is_target_token = torch.isin(batch.inputs, torch.tensor([close_id, *operator_ids])) & in_expr
    assert torch.equal(targets.mask, is_target_token)
    assert (targets.mod10[~targets.mask] == intermediate.NO_TARGET).all()
    # (3-12): position 6 is the ')' closing -9
    assert (targets.value[1, 6], targets.mod10[1, 6], targets.sign[1, 6], targets.sign_class[1, 6]) == (-9, 9, -1, 0)
    assert targets.trivial[0, 4] and not targets.trivial[0, 6]
    pending = batch_targets(RECORDS, 24, "pending_sum")
    assert not pending.operator_mask[0, 7]  # "(12+3)*4": the '*' of the first term has no pending sum
    with pytest.raises(ValueError, match="width"):
        batch_targets(RECORDS, 8)


def test_targets_at_expression_positions_follow_the_probes_order():
    batch = make_batch(RECORDS, max_seq_len=24)
    targets = batch_targets(RECORDS, 24)
    flat = intermediate.at_expression_positions(targets, batch.depth)
    depth, expr = expression_positions(batch)
    assert torch.equal(flat["expr"], expr) and len(flat["mask"]) == len(depth)
    # the k-th expression position with a target is the k-th target in row-major order
    assert torch.equal(flat["value"][flat["mask"]], targets.value[targets.mask])
    assert int(flat["mask"].sum()) == 3 + 2 + 5 + 2 + 3 + 5  # every ')' and operator of RECORDS
    with pytest.raises(ValueError, match="shape"):
        intermediate.at_expression_positions(targets, batch.depth[:, :10])


def test_baseline_accuracy_per_kind():
    records = [make_record("(12+3)*4"), make_record("(3-12)")]
    report = intermediate.baseline_accuracy(batch_targets(records, 16))
    # close: 15 (read 3) and -9 (read 2): neither right; signs + and -: one right
    assert report["close"] == {"n_positions": 2, "mod10_accuracy": 0.0, "sign_accuracy": 0.5}
    # operators: '+' 12 (read 2, right), '*' 15 (read 3), '-' 3 (read 3, right); all positive
    assert report["operator"] == {"n_positions": 3, "mod10_accuracy": pytest.approx(2 / 3), "sign_accuracy": 1.0}
    assert report["all"]["n_positions"] == 5
    empty = intermediate.baseline_accuracy(batch_targets([make_record("12+3")], 16, "pending_sum"))
    assert empty["close"]["mod10_accuracy"] is None and empty["operator"]["n_positions"] == 1
