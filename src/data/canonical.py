"""The canonical form of an expression: near twins share it (docs/CAUSAL_MODELS.md, section "Near twins").

    canonical("5+3") == canonical("3+5") == "3+5"
    canonical("(2*3)+4") == canonical("4+2*3") == "2*3+4"
    canonical("5-3") != canonical("3-5")

Definition, on the parse tree of `src.data.parse` (standard precedence, left-associative):
  1. Chains. A maximal group of `+` nodes is one chain, whatever the brackets: `a+(b+c)`, `(a+b)+c` and
     `a+b+c` are the chain [a, b, c]; likewise `*`. A `-` node is never part of a chain: it stays a binary
     node, its left and right operands in order.
  2. Sorted operands. The operands of each `+` chain and of each `*` chain (numbers, other chains, `-`
     nodes) are sorted by their own canonical text, as strings; in a `+` chain the `-` operands come
     first (sorted among themselves), so that the first of them needs no bracket. Nothing else moves:
     `-` is neither commuted nor re-associated, and `+` and `*` are not distributed.
  3. Brackets only where the tree needs them. The result is written with the fewest brackets that give
     this tree back: a `+` or `-` operand of a `*` chain, a `+` or `-` right operand of `-`, and a `-`
     operand of a `+` chain anywhere but first (`a-b+(c-d)`; first, `a-b+c` parses to the same tree).
     Every other bracket is redundant (its removal leaves the tree, up to step 1, as it is) and is dropped.

So `3+5`, `5+3` and `(5+3)` are one form, `(2*3)+4` and `4+2*3` another, `a-b+c` and `c+(a-b)` one
(the `+` node's two operands commute), but `a-b+c` and `a+c-b` are two (that would move a `-`), as are
`a+(b-c)` and `a+b-c` (the bracket makes `b-c` an operand of `+`; without it `a+b` is the operand of `-`),
and `5-3` and `3-5`. The form is itself an expression of the grammar with the same value, and
canonical(canonical(e)) == canonical(e).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from src.data import parse
from src.data.integrity import file_sha256
from src.errors import UserError
from src.rundir.atomic import atomic_write_text

_CHAIN_OPS = ("+", "*")


def _collect(node, op: str, out: list) -> None:
    """The operands of the maximal `op` chain rooted at `node`, left to right."""
    if type(node) is not int and node[0] == op:
        _collect(node[1], op, out)
        _collect(node[2], op, out)
    else:
        out.append(node)


def _form(node) -> tuple[str, str]:
    """(kind, text) of the canonical form of `node`: kind "n" (a number), "+", "*" or "-"."""
    if type(node) is int:
        return "n", str(node)
    op = node[0]
    if op == "-":
        _, left_text = _form(node[1])
        right_kind, right_text = _form(node[2])
        if right_kind in "+-":
            right_text = f"({right_text})"
        return "-", f"{left_text}-{right_text}"
    operands: list = []
    _collect(node, op, operands)
    # by text; in a + chain the - operands first, where the first one needs no bracket (a-b+c, not c+(a-b))
    forms = sorted((_form(child) for child in operands), key=lambda form: (op == "+" and form[0] != "-", form[1]))
    parts = []
    for i, (kind, text) in enumerate(forms):
        if (op == "*" and kind in "+-") or (op == "+" and kind == "-" and i > 0):
            text = f"({text})"
        parts.append(text)
    return op, op.join(parts)


def canonical(expr: str) -> str:
    """The canonical form of `expr` (module docstring); ExpressionError if it is not an expression of the grammar."""
    return _form(parse(expr))[1]


def canonical_set(exprs: Iterable[str]) -> set[str]:
    """The canonical forms of these expressions."""
    return {canonical(e) for e in exprs}


# ---------------------------------------------------------------------------- the forms of a training set, cached

CACHE_SCHEMA = "canonical_forms/1"
FORM_VERSION = 1  # bump whenever `canonical` changes what it returns: every cache is then remade
CACHE_FROM_BYTES = 10_000_000  # a training file at least this large has its forms cached beside it (~100,000 lines)
_CHUNK = 20_000


def cache_path(path: Path) -> Path:
    """train_N.jsonl -> train_N.canonical.txt beside it."""
    return path.with_name(path.name.removesuffix(".jsonl") + ".canonical.txt")



def _forms_of_lines(lines: list[bytes]) -> list[str]:
    return [canonical(json.loads(raw)["expr"]) for raw in lines]


def training_forms(path, processes: int = 1, progress: bool | None = None) -> set[str]:
    """The canonical forms of every expression of a training file (JSON lines with an "expr").

    A file of CACHE_FROM_BYTES or more has them cached beside it (`cache_path`: a JSON header naming the file's
    sha256 and size, then one form a line, sorted), so that a 2,000,000-line set is canonicalised once, not at
    every evaluation; a cache whose header does not match the file is remade. `processes` > 1 canonicalises in
    that many worker processes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: training file not found")
    size = path.stat().st_size
    cache = cache_path(path) if size >= CACHE_FROM_BYTES else None
    sha256 = None
    if cache is not None and cache.is_file():
        sha256, _ = file_sha256(path)
        with cache.open(encoding="utf-8") as fh:
            try:
                header = json.loads(fh.readline())
            except ValueError:
                header = None
            if (isinstance(header, dict) and header.get("schema") == CACHE_SCHEMA and header.get("sha256") == sha256
                    and header.get("bytes") == size and header.get("form_version") == FORM_VERSION):
                forms = set(fh.read().splitlines())
                if len(forms) == header.get("forms"):
                    return forms
        print(f"note: {cache}: does not match {path.name}; remaking it", file=sys.stderr)
    with path.open("rb") as fh:
        lines = fh.read().splitlines()
    chunks = [lines[i:i + _CHUNK] for i in range(0, len(lines), _CHUNK)]
    forms: set[str] = set()
    show = len(lines) >= 100_000 if progress is None else progress
    with tqdm(total=len(lines), desc=f"canonical forms of {path.name}", unit=" lines", unit_scale=True,
              disable=not show, file=sys.stderr) as bar:
        if processes > 1 and len(chunks) > 1:
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
            with ProcessPoolExecutor(processes, mp_context=context) as pool:
                for chunk, found in zip(chunks, pool.map(_forms_of_lines, chunks)):
                    forms.update(found)
                    bar.update(len(chunk))
        else:
            for chunk in chunks:
                forms.update(_forms_of_lines(chunk))
                bar.update(len(chunk))
    if cache is not None:
        if sha256 is None:
            sha256, _ = file_sha256(path)
        header = {"schema": CACHE_SCHEMA, "form_version": FORM_VERSION, "source": path.name, "sha256": sha256,
                  "bytes": size, "forms": len(forms)}
        try:
            atomic_write_text(cache, json.dumps(header) + "\n" + "".join(f + "\n" for f in sorted(forms)))
        except OSError as err:  # a read-only directory: the forms are still returned
            print(f"note: {cache}: not written ({err.strerror or err}); the forms are recomputed next time", file=sys.stderr)
    return forms
