"""Intermediate values as probe targets: what a `)` closes and what an operator has so far.

A depth probe can be read off the tokens (count the brackets); these targets cannot, except where
they copy a digit that is already in the input. They are defined on the token positions of
`<BOS>expr = answer<EOS>` (src.tokenizer.sequence_ids): position 0 is <BOS>, position k + 1 is
expr[k]. The model's inputs (Batch.inputs, tokens[:-1]) use the same positions, so a target at
position p is read from the residual stream at input position p, where the model has seen the
tokens 0..p.

Targets (values under standard precedence, left-associative, as src.data.evaluate computes them):

    close      at each ')': the value of the bracketed sub-expression that this ')' closes (the
               innermost pair ending there). "(12+3)*4": the ')' closes 15.
    operator   at each operator (+ - *), one of two definitions (`operator_target`):
      left_operand  (default) the value of the operator's left operand in the parse tree. For + and -
                    this is the whole prefix of the innermost enclosing group up to the operator
                    (+ and - bind loosest and associate to the left, so that prefix is complete):
                    "2*3+4" at '+' is 6, "2+3*4-5" at '-' is 14. For * it is the product so far of
                    the current term: "2+3*4" at '*' is 3 (the prefix "2+3" is not a value under
                    precedence), "2*3*4" at the second '*' is 6, "(1+2)*3" at '*' is 3.
      pending_sum   the sum of the group's terms completed before the operator's own term, i.e. the
                    accumulator of a left-to-right evaluator with precedence. For + and - it equals
                    left_operand; for * it is the group prefix before the current term:
                    "5-3*4" at '*' is 5 (the term 3*4 is still open); where the current term is the
                    group's first ("2*3+4" at '*', "(3*4)" at '*') no term is complete and there is
                    no target (None).
    Elsewhere (<BOS>, digits, '(', " = ", the answer, <EOS>) there is no target.

Each target is a `Target`: the exact value, `mod10` = |value| mod 10 (the last digit of the value as
it is written, "-9" -> 9, not Python's -9 % 10 = 1) and `sign` in {-1, 0, +1}.

Token-copy baseline (`copy_baseline`): predicts mod10 as the last digit token strictly before the
position (the units digit of the number just read) and sign +1 (every number of the grammar is
positive). Where it predicts mod10 right the target is `trivial`: a probe could succeed by copying
a token. This is exactly the case for every left_operand whose operand is a single number
("12+3" at '+': 12 -> 2, the digit just before), and by coincidence elsewhere ("(1*5)" closes 5).
A probe report should show the probe's accuracy beside the baseline's, and on the non-trivial
positions alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src.data import Record, evaluate

KINDS = ("close", "operator")
OPERATOR_TARGETS = ("left_operand", "pending_sum")
NO_TARGET = -1  # tensor entry where a position has no target (sign uses its own mask, since -1 is a sign)


@dataclass(frozen=True)
class Target:
    """An intermediate value at one position: the kind of position ("close" or "operator") and the value."""

    kind: str
    value: int

    @property
    def mod10(self) -> int:
        """|value| mod 10: the units digit of the value as written."""
        return abs(self.value) % 10

    @property
    def sign(self) -> int:
        """-1, 0 or +1."""
        return (self.value > 0) - (self.value < 0)


# ---------------------------------------------------------------------------- one expression


def expression_targets(expr: str, operator_target: str = "left_operand") -> list[Target | None]:
    """One entry per character of `expr`: its Target, or None where the character has none.

    A recursive-descent parse of the grammar (the same structure as src.data.evaluate) that records
    the value of each bracketed group at its ')' and the operator target at each operator. Raises
    ExpressionError (from evaluate) for a string outside the grammar, ValueError for an unknown
    `operator_target`.
    """
    if operator_target not in OPERATOR_TARGETS:
        raise ValueError(f"unknown operator_target {operator_target!r}; one of {', '.join(OPERATOR_TARGETS)}")
    evaluate(expr)  # validates the grammar, with its error messages; the parse below can then trust the text
    text, pos = expr + "\0", 0
    targets: list[Target | None] = [None] * len(expr)

    def record_operator(left_operand: int, pending: int | None) -> None:
        value = left_operand if operator_target == "left_operand" else pending
        if value is not None:
            targets[pos] = Target("operator", value)

    def parse_sum() -> int:
        nonlocal pos
        value = parse_product(pending=None)
        while text[pos] in "+-":
            op = text[pos]
            record_operator(left_operand=value, pending=value)  # every term to the left is complete
            pos += 1
            rhs = parse_product(pending=value)
            value = value + rhs if op == "+" else value - rhs
        return value

    def parse_product(pending: int | None) -> int:
        """`pending`: the value of the group's terms before this one (None for the group's first term)."""
        nonlocal pos
        value = parse_atom()
        while text[pos] == "*":
            record_operator(left_operand=value, pending=pending)
            pos += 1
            value *= parse_atom()
        return value

    def parse_atom() -> int:
        nonlocal pos
        if text[pos] == "(":
            pos += 1
            value = parse_sum()
            targets[pos] = Target("close", value)  # text[pos] is the ')': evaluate accepted the string
            pos += 1
            return value
        start = pos
        while text[pos].isdigit():
            pos += 1
        return int(expr[start:pos])

    parse_sum()
    return targets


def position_targets(expr: str, result: int | None = None, operator_target: str = "left_operand") -> list[Target | None]:
    """One entry per token position of `<BOS>expr = answer<EOS>` (plain answer format): position 0
    (<BOS>) and every position after the expression are None, position k + 1 is expr[k]'s target."""
    result = evaluate(expr) if result is None else result
    tail = len(" = ") + len(str(result)) + 1  # " = ", the answer's characters, <EOS>
    return [None] + expression_targets(expr, operator_target) + [None] * tail


def copy_baseline(expr: str) -> list[int | None]:
    """Per character of `expr`, the baseline's mod10 prediction: the last digit strictly before it
    (None where no digit precedes it). Its sign prediction is always +1."""
    predictions, last_digit = [], None
    for ch in expr:
        predictions.append(last_digit)
        if ch.isdigit():
            last_digit = int(ch)
    return predictions


def trivial_targets(expr: str, operator_target: str = "left_operand") -> list[bool | None]:
    """Per character of `expr`: True where the copy baseline gets the target's mod10 right (the
    target may be a token copy), False where it does not, None where there is no target."""
    return [None if target is None else guess == target.mod10
            for target, guess in zip(expression_targets(expr, operator_target), copy_baseline(expr))]


# ---------------------------------------------------------------------------- a batch of records


@dataclass
class TargetBatch:
    """Targets of a list of records as [N, width] tensors, aligned with Batch.inputs / Batch.depth
    (input position p = token position p).

    value        the exact value (0 where there is no target)
    mod10        |value| mod 10, NO_TARGET (-1) where there is no target
    sign         -1, 0 or +1 (0 where there is no target: read it through `mask`)
    close_mask   positions of a ')' (every ')' has a target)
    operator_mask  positions of an operator with a target (under pending_sum, not every operator)
    mask         close_mask | operator_mask
    baseline_mod10  the copy baseline's mod10 prediction, NO_TARGET where no digit precedes
    trivial      mask & (baseline_mod10 == mod10): the baseline gets the target right
    """

    value: torch.Tensor
    mod10: torch.Tensor
    sign: torch.Tensor
    close_mask: torch.Tensor
    operator_mask: torch.Tensor
    baseline_mod10: torch.Tensor
    operator_target: str

    @property
    def mask(self) -> torch.Tensor:
        return self.close_mask | self.operator_mask

    @property
    def trivial(self) -> torch.Tensor:
        return self.mask & (self.baseline_mod10 == self.mod10)

    @property
    def sign_class(self) -> torch.Tensor:
        """sign + 1 in {0, 1, 2}: a class index for a softmax probe (read through `mask`)."""
        return self.sign + 1


def batch_targets(records: list[Record], width: int, operator_target: str = "left_operand") -> TargetBatch:
    """Targets of `records` over `width` positions (the Batch's max_seq_len): a record's targets
    sit at positions 1..len(expr), so an expression longer than width - 1 characters is a ValueError."""
    n = len(records)
    value = torch.zeros(n, width, dtype=torch.long)
    mod10 = torch.full((n, width), NO_TARGET, dtype=torch.long)
    sign = torch.zeros(n, width, dtype=torch.long)
    close_mask = torch.zeros(n, width, dtype=torch.bool)
    operator_mask = torch.zeros(n, width, dtype=torch.bool)
    baseline = torch.full((n, width), NO_TARGET, dtype=torch.long)
    for i, record in enumerate(records):
        if len(record.expr) + 1 > width:
            raise ValueError(f"expression {record.expr!r} has {len(record.expr)} characters; "
                             f"positions 1..{len(record.expr)} do not fit width {width}")
        targets = expression_targets(record.expr, operator_target)
        for k, (target, guess) in enumerate(zip(targets, copy_baseline(record.expr))):
            p = k + 1  # token position of expr[k]
            if guess is not None:
                baseline[i, p] = guess
            if target is None:
                continue
            value[i, p], mod10[i, p], sign[i, p] = target.value, target.mod10, target.sign
            (close_mask if target.kind == "close" else operator_mask)[i, p] = True
    return TargetBatch(value, mod10, sign, close_mask, operator_mask, baseline, operator_target)


def at_expression_positions(targets: TargetBatch, depth: torch.Tensor) -> dict[str, torch.Tensor]:
    """The targets at the expression positions (`depth >= 0`, Batch.depth), flattened in the order
    src.analysis.probe.collect_features and expression_positions read them (row by row), so that
    `features[out["mask"]]` are the features of the positions with a target.

    Keys: value, mod10, sign, sign_class, mask, close_mask, operator_mask, trivial, baseline_mod10,
    expr (each position's expression index, as expression_positions gives it)."""
    keep = depth.cpu() >= 0
    if keep.shape != targets.mask.shape:
        raise ValueError(f"depth has shape {tuple(keep.shape)}, the targets {tuple(targets.mask.shape)}")
    if (targets.mask & ~keep).any():
        raise ValueError("a target lies outside the expression positions: the records and the batch differ")
    expr = torch.arange(keep.shape[0])[:, None].expand_as(keep)
    fields = {"value": targets.value, "mod10": targets.mod10, "sign": targets.sign, "sign_class": targets.sign_class,
              "mask": targets.mask, "close_mask": targets.close_mask, "operator_mask": targets.operator_mask,
              "trivial": targets.trivial, "baseline_mod10": targets.baseline_mod10, "expr": expr}
    return {name: tensor[keep] for name, tensor in fields.items()}


def baseline_accuracy(targets: TargetBatch) -> dict[str, dict]:
    """The copy baseline's accuracy per kind of position (close, operator, all): mod10 (last digit
    before the position; its accuracy is the share of positions that are `trivial`) and sign (always
    +1), with the number of positions. A probe's accuracy is read against these."""
    masks = {"close": targets.close_mask, "operator": targets.operator_mask, "all": targets.mask}
    out = {}
    for name, mask in masks.items():
        n = int(mask.sum())
        if n == 0:
            out[name] = {"n_positions": 0, "mod10_accuracy": None, "sign_accuracy": None}
            continue
        mod10_right = int((targets.baseline_mod10 == targets.mod10)[mask].sum())
        sign_right = int((targets.sign == 1)[mask].sum())
        out[name] = {"n_positions": n, "mod10_accuracy": mod10_right / n, "sign_accuracy": sign_right / n}
    return out
