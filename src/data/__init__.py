"""Arithmetic expressions: grammar, safe evaluation, depth labels, generation, loading, batching.

Grammar: 2 to 4 integers from 1 to 99, binary operators + - *, usual precedence (* before + -,
left-associative), and parentheses. Values are computed by a recursive-descent parser over the
string; nothing is ever passed to Python's `eval`.

    python -m src.data --seed 42 --out data     # writes the six files of docs/DESIGN.md sections 4 and 5
    python -m src.data --train-size 200000      # data/generated/train_200000.jsonl (src/data/trainsets.py, section 8)

The command line is src/data/cli.py (run by src/data/__main__.py), kept apart so that src.data.trainsets,
which builds on this generator, is imported by the command and never by the library.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from itertools import accumulate, repeat
from pathlib import Path

import torch

from src.data import integrity
from src.rundir.atomic import write_files_together
from src.config import REPO_ROOT
from src.errors import UserError
from src.tokenizer import (ANSWER_SEPARATOR, BOS_ID, CHARACTERS, EOS_ID, IGNORE_INDEX, PAD_ID, answer_text, encode,
                           sequence_ids)

OPERATORS = "+-*"
MIN_OPERAND, MAX_OPERAND = 1, 99
MIN_OPERANDS, MAX_OPERANDS = 2, 4
EXPR_CHARACTERS = set("0123456789()" + OPERATORS)
FIELDS = ("expr", "result", "depth")

# name -> (number of examples, maximum nesting depths to draw from, in turn)
SPLITS = {
    "pilot_train": (2000, (0, 1, 2)),
    "pilot_val": (200, (0, 1, 2)),
    "pilot_test_flat": (2000, (0,)),
    "pilot_test_paren": (2000, (1, 2)),
    "pilot_test_depth3": (2000, (3,)),
}
# line i is line i of pilot_test_flat with one pair of value-preserving brackets added (docs/DESIGN.md section 5)
MATCHED_SPLIT, MATCHED_SOURCE = "pilot_test_paren_matched", "pilot_test_flat"
# generation gives up after this many expressions in a row that are too long or already taken
# (--max-seq-len 21, the shortest that works for seed 42, needs at most about 4,500)
MAX_MISSES = 50_000
MAX_FRESH_EXCLUDE = 2_000_000  # --fresh-test avoids the largest training set of the extension (DESIGN.md section 8)


# ---------------------------------------------------------------------------- evaluation


class ExpressionError(ValueError):
    """The string is not an expression of the grammar."""


def _apply(op: str, left: int, right: int) -> int:
    return left + right if op == "+" else left - right if op == "-" else left * right


def _tree(op: str, left, right):
    return (op, left, right)


def _parse(expr: str, combine):
    """The one parser of the grammar: standard precedence (* before + -, left-associative), numbers from
    1 to 99 without leading zeros, brackets; `combine(op, left, right)` folds each operation (into a value,
    or into a tree node). Raises ExpressionError saying what is wrong and where."""
    # a sentinel past the end instead of a bounds check at every step: "\0", like the end, matches nothing below
    text, pos = expr + "\0", 0

    def parse_sum():
        nonlocal pos
        node = parse_product()
        while text[pos] in "+-":
            op = text[pos]
            pos += 1
            node = combine(op, node, parse_product())
        return node

    def parse_product():
        nonlocal pos
        node = parse_atom()
        while text[pos] == "*":
            pos += 1
            node = combine("*", node, parse_atom())
        return node

    def parse_atom():
        nonlocal pos
        if text[pos] == "(":
            pos += 1
            node = parse_sum()
            if text[pos] != ")":
                raise ExpressionError(f"expected ')' at position {pos}")
            pos += 1
            return node
        start = pos
        while text[pos].isdigit():
            pos += 1
        if start == pos:
            raise ExpressionError(f"expected a number or '(' at position {pos}")
        digits = expr[start:pos]
        if digits[0] == "0" or not MIN_OPERAND <= int(digits) <= MAX_OPERAND:
            raise ExpressionError(f"number {digits} at position {start} is not an integer from 1 to 99")
        return int(digits)

    if not expr:
        raise ExpressionError("empty expression")
    node = parse_sum()
    if pos != len(expr):
        raise ExpressionError(f"unexpected {expr[pos]!r} at position {pos}")
    return node


def evaluate(expr: str) -> int:
    """Exact integer value of `expr` under standard precedence (never Python's eval); raises ExpressionError."""
    return _parse(expr, _apply)


def parse(expr: str):
    """The parse tree of `expr`: an int leaf or (op, left, right), the form `_random_tree` draws; for the
    analyses of structure (src/data/canonical.py). Checked as `evaluate` checks; raises ExpressionError."""
    return _parse(expr, _tree)


_BRACKET_STEP = {"(": 1, ")": -1}


def depth_labels(expr: str) -> list[int]:
    """Nesting depth at each character: '(' counts once open, ')' once closed."""
    return list(accumulate(map(_BRACKET_STEP.get, expr, repeat(0))))  # a running sum: C speed, for the generator


def operand_count(expr: str) -> int:
    return sum(1 for i, ch in enumerate(expr) if ch.isdigit() and (i == 0 or not expr[i - 1].isdigit()))


# ---------------------------------------------------------------------------- generation


def _below(getrandbits, n: int) -> int:
    """A random integer from 0 to n - 1, drawn exactly as random.Random draws it (`_randbelow`: getrandbits of
    n's bit length until the value is below n), without the three layers of calls above it.

    `rng.randint(a, b)` is `a + _below(rng.getrandbits, b - a + 1)` and `rng.choice(s)` is
    `s[_below(rng.getrandbits, len(s))]`, draw for draw: the generator's hot path (python -m src.data
    --train-size draws millions of expressions), and the shipped files stay byte for byte the same
    (tests/test_data.py regenerates them; tests/test_trainsets.py compares with randint and choice).
    """
    k = n.bit_length()
    r = getrandbits(k)
    while r >= n:
        r = getrandbits(k)
    return r


_OPERAND_VALUES = MAX_OPERAND - MIN_OPERAND + 1
_OPERAND_BITS = _OPERAND_VALUES.bit_length()


def _random_tree(getrandbits, n_operands: int):
    """A random binary expression tree: an int leaf or (op, left, right), from `rng.getrandbits`.

    Draw for draw what `rng.randint` (operands, the left part's size) and `rng.choice` (operators) draw, through
    `_below`; a leaf, the commonest node, draws inline."""
    if n_operands == 1:
        r = getrandbits(_OPERAND_BITS)
        while r >= _OPERAND_VALUES:
            r = getrandbits(_OPERAND_BITS)
        return MIN_OPERAND + r
    n_left = 1 + _below(getrandbits, n_operands - 1)
    op = OPERATORS[_below(getrandbits, len(OPERATORS))]
    return (op, _random_tree(getrandbits, n_left), _random_tree(getrandbits, n_operands - n_left))


_PRECEDENCE = {"+": 1, "-": 1, "*": 2}


def _render(rng: random.Random, node, p_extra: float) -> str:
    """Text of a tree: parentheses where precedence requires them, and optional ones at random."""
    if type(node) is int:
        return str(node)
    op, left, right = node
    prec = _PRECEDENCE[op]
    # brackets the value needs: a lower-precedence child (a*(b+c)), and a sum or difference on
    # the right of '-' (a-(b+c)); others only at random (drawn only where not needed)
    left_text = _render(rng, left, p_extra)
    if type(left) is not int and (_PRECEDENCE[left[0]] < prec or rng.random() < p_extra):
        left_text = f"({left_text})"
    right_text = _render(rng, right, p_extra)
    if type(right) is not int:
        right_prec = _PRECEDENCE[right[0]]
        if right_prec < prec or (right_prec == prec and op == "-") or rng.random() < p_extra:
            right_text = f"({right_text})"
    return left_text + op + right_text


def random_expression(rng: random.Random, max_depth: int) -> str:
    """An expression whose maximum nesting depth is exactly `max_depth`."""
    # depth d needs at least d + 1 operands: every pair of brackets encloses an operation
    fewest = max(MIN_OPERANDS, max_depth + 1)
    n_operands = fewest + _below(rng.getrandbits, MAX_OPERANDS - fewest + 1)
    while True:
        tree = _random_tree(rng.getrandbits, n_operands)
        expr = _render(rng, tree, p_extra=0.5)
        if max_depth > 0 and rng.random() < 0.25:
            expr = f"({expr})"  # the whole expression in brackets, as in "(1+(2*3))"
        if max(depth_labels(expr)) == max_depth:
            return expr


@dataclass(frozen=True)
class Record:
    expr: str
    result: int
    depth: list

    def to_json(self) -> str:
        depth = list(self.depth)
        if type(self.result) is int and EXPR_CHARACTERS.issuperset(self.expr) and set(map(type, depth)) <= {int}:
            # the bytes json.dumps writes (nothing to escape; a list of ints prints as JSON), twice as fast:
            # the training sets' hot path
            return f'{{"expr": "{self.expr}", "result": {self.result}, "depth": {depth}}}'
        return json.dumps({"expr": self.expr, "result": self.result, "depth": depth})


def make_record(expr: str) -> Record:
    return Record(expr, evaluate(expr), depth_labels(expr))


def bracketings(rng: random.Random, flat: str) -> list[str]:
    """`flat` (no brackets) with one pair of brackets added, value unchanged, in order of preference.

    First the proper sub-expressions of its parse tree in random order: a product's left part
    (`(4*5)*6`), a product term of a sum (`3+(4*5)`), a left part of the sum chain (`(3+4*5)-6`).
    Then the whole expression, the only operation of a 2-operand one. Last a lone number (`(84)-4`),
    a placement the generator never makes, so that one of them is in no other file.
    """
    numbers = [(m.start(), m.end()) for m in re.finditer(r"\d+", flat)]
    ops = [flat[end] for _, end in numbers[:-1]]  # ops[k] joins numbers k and k + 1
    # the parse tree's operations as spans of numbers [i, j]: standard precedence, left-associative
    spans, term_start = [], 0
    for j in range(1, len(numbers)):
        if ops[j - 1] in "+-":
            term_start = j
        if term_start < j:
            spans.append((term_start, j))  # a product term, or its left part
        if term_start > 0 and (j == len(numbers) - 1 or ops[j] in "+-"):
            spans.append((0, j))  # the sum chain up to the end of a term
    whole = (0, len(numbers) - 1)
    proper = sorted(set(spans) - {whole})
    rng.shuffle(proper)
    candidates = []
    for i, j in proper + [whole] + [(i, i) for i in range(len(numbers))]:
        start, end = numbers[i][0], numbers[j][1]
        candidates.append(f"{flat[:start]}({flat[start:end]}){flat[end:]}")
    return candidates


def shortest_expression(max_depth: int) -> str:
    """The shortest expression of nesting depth `max_depth`: depth d needs d + 1 numbers (at least 2),
    one operator between each two, and d pairs of brackets; its value, 1, is one digit."""
    expr, n_operands = str(MIN_OPERAND), max(MIN_OPERANDS, max_depth + 1)
    for i in range(n_operands - 1):
        expr = f"{expr}*{MIN_OPERAND}"
        if i >= n_operands - 1 - max_depth:
            expr = f"({expr})"
    return expr


def split_minimums() -> dict[str, tuple[int, str]]:
    """Each split -> the fewest tokens its longest-needed shortest sequence takes, and that sequence."""
    def shortest(expr: str, extra: int = 0) -> tuple[int, str]:
        return len(sequence_ids(expr, evaluate(expr))) + extra, f"<BOS>{expr} = {evaluate(expr)}<EOS>"

    minimums = {}
    for name, (_, depths) in SPLITS.items():
        # every depth of the split is drawn in turn; the flat source leaves room for its twin's brackets
        minimums[name] = max(shortest(shortest_expression(d), 2 if name == MATCHED_SOURCE else 0) for d in depths)
    minimums[MATCHED_SPLIT] = shortest(f"({shortest_expression(0)})")
    return minimums


def check_max_seq_len(max_seq_len: int) -> None:
    """A UserError, before anything is generated, if some split cannot fit even its shortest expression."""
    name, (tokens, example) = max(split_minimums().items(), key=lambda item: item[1][0])
    if max_seq_len < tokens:
        raise UserError(f"--max-seq-len {max_seq_len}: too short for {name}, whose shortest possible sequence is "
                        f"{tokens} tokens ({example}); use --max-seq-len {tokens} or more (the shipped files use 32)")


def generate_splits(seed: int, max_seq_len: int = 32, exclude: set[str] | None = None,
                    only=None) -> dict[str, list[Record]]:
    """Every split of docs/DESIGN.md sections 4 and 5; no expression appears twice, within or across splits.
    `exclude`: expressions none of the splits may hold (e.g. every file a model has seen); `only`: these
    splits of SPLITS (the matched pairs are made whenever their source is)."""
    check_max_seq_len(max_seq_len)
    rng = random.Random(seed)
    seen: set[str] = set(exclude or ())
    splits = {}
    for name, (count, depths) in SPLITS.items():
        if only is not None and name not in only:
            continue
        # a flat expression leaves room for the two brackets its matched twin adds
        limit = max_seq_len - 2 if name == MATCHED_SOURCE else max_seq_len
        records, misses = [], 0
        while len(records) < count:
            expr = random_expression(rng, depths[len(records) % len(depths)])
            record = make_record(expr)
            if expr in seen or len(sequence_ids(expr, record.result)) > limit:
                misses += 1
                if misses >= MAX_MISSES:  # too few expressions fit: never loop forever
                    raise UserError(
                        f"--max-seq-len {max_seq_len}: {misses} expressions in a row were too long or already taken, "
                        f"with {len(records)} of the {count} records of {name} found; "
                        "raise --max-seq-len (the shipped files use 32)")
                continue
            misses = 0
            seen.add(expr)
            records.append(record)
        splits[name] = records
    if MATCHED_SOURCE not in splits:
        return splits
    # a generator of its own, so that the files above are the same with or without this one
    rng = random.Random(f"{seed}-{MATCHED_SPLIT}")
    matched = []
    for flat in splits[MATCHED_SOURCE]:
        expr = next(e for e in bracketings(rng, flat.expr) if e not in seen)
        record = make_record(expr)
        assert record.result == flat.result and max(record.depth) == 1, (flat.expr, expr)
        seen.add(expr)
        matched.append(record)
    splits[MATCHED_SPLIT] = matched
    return splits


def write_splits(splits: dict[str, list[Record]], out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {out_dir}: could not be created ({err.strerror or err}); choose another directory") from None
    files = {f"{name}.jsonl": "".join(r.to_json() + "\n" for r in records).encode() for name, records in splits.items()}
    write_files_together(out_dir, files, integrity.MANIFEST, integrity.MANIFEST_SCHEMA)  # a whole, with a manifest


# ---------------------------------------------------------------------------- loading


def _check_record(obj, max_seq_len: int) -> Record:
    """The record in `obj`, or ValueError saying what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise ValueError(f"missing field {missing[0]!r} (a record has {', '.join(FIELDS)})")
    extra = sorted(set(obj) - set(FIELDS))
    if extra:
        raise ValueError(f"unknown field {extra[0]!r} (a record has {', '.join(FIELDS)})")
    expr, result, depth = obj["expr"], obj["result"], obj["depth"]
    if not isinstance(expr, str):
        raise ValueError(f"field 'expr' must be a string, got {type(expr).__name__}")
    if not isinstance(result, int) or isinstance(result, bool):
        raise ValueError(f"field 'result' must be an integer, got {type(result).__name__}")
    if not isinstance(depth, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in depth):
        raise ValueError("field 'depth' must be a list of integers")
    bad = [ch for ch in expr if ch not in EXPR_CHARACTERS]
    if bad:
        raise ValueError(f"expr {expr!r} has character {bad[0]!r}, outside the grammar's 0-9 + - * ( )")
    try:
        value = evaluate(expr)
    except ExpressionError as err:
        raise ValueError(f"expr {expr!r} is not a valid expression: {err}") from None
    if not MIN_OPERANDS <= operand_count(expr) <= MAX_OPERANDS:
        raise ValueError(f"expr {expr!r} has {operand_count(expr)} numbers; the grammar allows 2 to 4")
    if value != result:
        raise ValueError(f"result {result} does not match expr {expr!r}, which evaluates to {value}")
    if depth != depth_labels(expr):
        raise ValueError(f"depth {depth} does not match expr {expr!r}; expected {depth_labels(expr)}")
    length = len(sequence_ids(expr, result))
    if length > max_seq_len:
        raise ValueError(
            f"sequence of {length} tokens (<BOS>expr = result<EOS>) is longer than max_seq_len {max_seq_len}; "
            "shorten the expression or raise model.max_seq_len"
        )
    return Record(expr, result, depth)


MAX_LINE_BYTES = 4096  # one record: an expression of at most a few dozen tokens, its result and depth labels


def load_jsonl(path, max_seq_len: int, verified: bool = False, max_records: int | None = None) -> list[Record]:
    """Every record of a JSONL file, validated; a UserError names the file and line of the first bad one.
    `max_records`: only the first that many lines are read (the analyses' share of a large training set).

    `verified`: the file is a generated training set whose checksum was just verified against the
    manifest its generator wrote (src.data.trainsets.ensure_training_set), so each line is parsed but not
    validated again (value, depth labels, length): 2,000,000 lines in seconds instead of a minute."""
    if verified:
        return _load_verified(Path(path))[:max_records]
    path = Path(path)
    integrity.check_generated(path)  # a file of an interrupted or mixed generation is refused
    if not path.is_file():
        out = path.parent.resolve()
        out = out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out  # the command runs from the repository root
        raise UserError(f"{path}: data file not found; generate it with `python -m src.data --seed 42 --out {out}`")
    records = []
    with path.open("rb") as fh:  # bytes, so that a line that is not UTF-8 is reported by its number
        for line_no, raw in enumerate(fh, start=1):
            if max_records is not None and line_no > max_records:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}:{line_no}: not UTF-8 text (byte {err.start} of the line); fix or regenerate the file") from None
            if not line.strip():
                raise UserError(f"{path}:{line_no}: empty line; every line must hold one JSON record")
            if len(raw) > MAX_LINE_BYTES:  # bounds nesting and size before json.loads and the parser recurse
                raise UserError(f"{path}:{line_no}: a line of {len(raw)} bytes, more than the {MAX_LINE_BYTES} a record "
                                "may take; fix or regenerate the file")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{line_no}: not valid JSON ({err.msg}); fix or regenerate the file") from None
            except (ValueError, RecursionError) as err:  # an integer of thousands of digits, a deep nesting
                raise UserError(f"{path}:{line_no}: not a usable JSON record ({str(err)[:80]})") from None
            try:
                records.append(_check_record(obj, max_seq_len))
            except RecursionError:
                raise UserError(f"{path}:{line_no}: the expression nests too deeply; fix or regenerate the file") from None
            except ValueError as err:
                raise UserError(f"{path}:{line_no}: {err}") from None
    if not records:
        raise UserError(f"{path}: file is empty; it must hold at least one record")
    return records


def _load_verified(path: Path) -> list[Record]:
    with path.open("rb") as fh:
        records = [Record(obj["expr"], obj["result"], obj["depth"]) for obj in map(json.loads, fh)]
    if not records:
        raise UserError(f"{path}: file is empty; it must hold at least one record")
    return records


# ---------------------------------------------------------------------------- batching


@dataclass
class Batch:
    """Padded tensors for a list of records, all of width `max_seq_len`.

    inputs[i]      <BOS>expr = result   (tokens[:-1]), <PAD> after
    labels[i]      expr = result<EOS>   (tokens[1:]), -100 after
    answer_mask    label positions of the answer digits and <EOS>
    eos_pos        label position of <EOS>
    prompt_len     length of <BOS>expr = , where greedy decoding starts
    depth          bracket depth of each input position (-1 outside the expression)
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    answer_mask: torch.Tensor
    eos_pos: torch.Tensor
    prompt_len: torch.Tensor
    depth: torch.Tensor
    results: list

    def to(self, device) -> "Batch":
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**fields)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def select(self, idx) -> "Batch":
        fields = {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        positions = torch.arange(len(self))[torch.as_tensor(idx)]  # index list or boolean mask
        fields["results"] = [self.results[i] for i in positions.tolist()]
        return Batch(**fields)


def _token_table() -> torch.Tensor:
    """Character code -> token id, for the characters of the vocabulary; -1 for every other code."""
    table = torch.full((256,), -1, dtype=torch.long)
    for ch in CHARACTERS:
        table[ord(ch)] = encode(ch)[0]
    return table


_TOKEN_OF_BYTE = _token_table()


def _ragged(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every element of rows of the given lengths, laid end to end."""
    rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    return rows, torch.arange(int(lengths.sum())) - starts[rows]


def make_batch(records: list[Record], max_seq_len: int, answer_format: str = "plain") -> Batch:
    """The records as padded tensors (see Batch), answers written in `answer_format` ("plain" or
    "reversed", src.tokenizer.answer_text). Built with whole-tensor operations rather than a loop
    over records: 2,000,000 records take seconds, not minutes; tests/test_extension.py holds it against
    the record-by-record construction (sequence_ids, prompt_ids)."""
    n = len(records)
    exprs = [r.expr for r in records]
    texts = [f"{e}{ANSWER_SEPARATOR}{answer_text(r.result, answer_format)}" for e, r in zip(exprs, records)]
    text_len = torch.tensor([len(t) for t in texts], dtype=torch.long)
    seq_len = text_len + 2  # <BOS> text <EOS>
    too_long = (seq_len > max_seq_len).nonzero()
    if len(too_long):
        i = int(too_long[0])
        raise UserError(f"expression {exprs[i]!r} needs {int(seq_len[i])} tokens, more than max_seq_len {max_seq_len}")
    ids = _TOKEN_OF_BYTE[torch.frombuffer(bytearray("".join(texts).encode("ascii", "replace")), dtype=torch.uint8).long()]
    if len(ids) and int(ids.min()) < 0:
        encode(texts[int(torch.searchsorted(torch.cumsum(text_len, 0), int((ids < 0).nonzero()[0]), right=True))])
    tokens = torch.full((n, max_seq_len + 1), PAD_ID, dtype=torch.long)  # <BOS> text <EOS> <PAD>...
    tokens[:, 0] = BOS_ID
    rows, cols = _ragged(text_len)
    tokens[rows, cols + 1] = ids
    tokens[torch.arange(n), text_len + 1] = EOS_ID
    m = (seq_len - 1).unsqueeze(1)  # positions with an input and a label
    position = torch.arange(max_seq_len).unsqueeze(0)
    used = position < m
    inputs = tokens[:, :max_seq_len].masked_fill(~used, PAD_ID)
    labels = tokens[:, 1:].masked_fill(~used, IGNORE_INDEX)
    expr_len = torch.tensor([len(e) for e in exprs], dtype=torch.long)
    prompt_len = expr_len + 1 + len(ANSWER_SEPARATOR)  # <BOS>expr = ; label position j predicts token j+1
    answer_mask = used & (position >= prompt_len.unsqueeze(1) - 1)
    depth = torch.full((n, max_seq_len), -1, dtype=torch.long)
    rows, cols = _ragged(expr_len)
    depth[rows, cols + 1] = torch.tensor([d for r in records for d in r.depth], dtype=torch.long)
    return Batch(inputs, labels, answer_mask, m.squeeze(1) - 1, prompt_len, depth, [r.result for r in records])
