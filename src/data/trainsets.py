"""Training sets at scale (docs/DESIGN.md section 8): train_N.jsonl, nested, held-out-free, reproducible.

    python -m src.data --train-size 2000000               # data/generated/train_2000000.jsonl (git-ignored)
    python -m src.data --train-size 200000 --out DIR      # DIR/train_200000.jsonl

The set of size N is the first N lines of one endless stream, so every set is the first N lines of
every larger one:
  1. the 2,000 lines of data/pilot_train.jsonl, byte for byte (N < 2,000 gives its first N lines);
  2. then records of the pilot generator (`random_expression`, `make_record`, `Record.to_json`) with the
     training split's depth mix and length limit: line i (counted from 0) has maximum depth
     `TRAIN_DEPTHS[i % 3]` (0, 1, 2 in turn, as in pilot_train), every sequence fits TRAIN_MAX_SEQ_LEN.
     They are drawn in chunks of CHUNK_SIZE, chunk k from its own `random.Random(f"{TRAIN_SEED}-train-{k}")`,
     so that any number of processes draws the same chunks; the chunks are merged in order, and an
     expression already in the stream or in a held-out file (HELD_OUT: the shipped val and test files)
     is dropped. Line i takes the next kept expression of its depth. The output depends on the code,
     the constants here and the shipped data files only: not on the machine or the number of processes.
     A change to any of them that changes the stream must bump GENERATOR_VERSION (existing sets are then
     remade); tests/test_trainsets.py pins the sha256 of train_5000.jsonl.

Every expression of depth 3 or less fits in 30 tokens, so under max_seq_len 32 the generator can
draw billions of distinct expressions of each depth (2.6e9 flat 4-number ones alone); MAX_TRAIN_SIZE
bounds N by memory, disk and time instead (the duplicate check holds every expression in memory).
Measured on two cores (AMD EPYC VM, `python -m src.data --train-size 2000000`): 38-41 s while both
cores were free (66-70 s of CPU; 169 MB; 650 MB-1 GB of memory at the peak), up to 60-97 s while the host
was busy (two pure-Python loops side by side then ran 2.3 times slower than one alone); 20,000,000 in
8 minutes (1.7 GB, 3.6 GB of memory).

Two kinds of set, side by side (KINDS):
  "plain"           train_N.jsonl, the stream above: the sets the committed extension results were trained
                    on, kept byte for byte (GENERATOR_VERSION 1, pinned by tests/test_trainsets.py).
  "near_twin_free"  train_nt_N.jsonl (`python -m src.data --train-size N --near-twin-free`): the same stream
                    with every line after the shipped 2,000-line prefix dropped whose canonical form
                    (src/data/canonical.py: redundant brackets dropped, + and * chains sorted, - in order)
                    is that of an expression of a held-out file: the shipped val and test files, the
                    matched and precedence pairs, and every base and source of the counterfactual pair
                    files (NEAR_TWIN_HELD_OUT). The prefix is data/pilot_train.jsonl as shipped, so sets of
                    either kind up to 2,000 lines are the same; `near_twin_lines` finds the lines of a set
                    that are near twins of held-out items (none after the prefix, for this kind). Its
                    manifest names the kind and the sha256 of every file whose forms it excludes. The
                    canonical forms are computed in the workers that draw (about 40 us an expression).

Beside each set, `train_N.manifest.json` (schema trainset/1) records N, the seed, the generator version,
the number of lines and bytes, the set's sha256 and the sha256 of each shipped file it was built on.
Both files are written atomically, the set first: an interrupted generation leaves no set, or a set
whose manifest is missing or stale, and either is remade.

For the trainer, when a config names a training set by its size:

    path = ensure_training_set(n)          # -> Path of data/generated/train_N.jsonl: generated if missing
                                           #    (progress bar on stderr from 100,000), verified against its
                                           #    manifest if present (0.2 s at 2,000,000), regenerated with a
                                           #    note on stderr if damaged (repair=False: a UserError instead)
    check_training_set(path, max_seq_len, held_out=[val, test, ...])
                                           # any training file: UserError `file:line: ...` for a sequence
                                           # longer than max_seq_len, an expression on two lines (both
                                           # named) or one that is in a held-out file (file and line named);
                                           # held_out defaults to the shipped val and test files

`check_training_set` takes about a second per million lines of the form `Record.to_json` writes
(2 s at 2,000,000; lines of other forms are parsed in full, slower). It checks the set's rules, not each record's value and depth labels: those are vouched
for by the checksum for a generated set, and by `src.data.load_jsonl` for any other file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import re
import sys
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import count
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from src.data.integrity import file_sha256
from src.errors import ignore_interrupts
from src.rundir.atomic import atomic_write_json, open_temporary, replaced
from src.cli import int_in
from src import config
from src.config import MAX_TRAIN_SIZE, REPO_ROOT
from src.data import (MATCHED_SPLIT, MAX_MISSES, MAX_OPERAND, MAX_OPERANDS, SPLITS, _check_record, evaluate,
                      load_jsonl, make_record, random_expression)
from src.errors import UserError, write_failed
from src.tokenizer import sequence_ids

SCHEMA = "trainset/1"
GENERATOR_VERSION = 1        # bump whenever the stream below changes: old sets are then remade
TRAIN_SPLIT = "pilot_train"
TRAIN_SEED = 42              # the shipped files' seed
TRAIN_MAX_SEQ_LEN = 32       # the shipped files' limit
TRAIN_DEPTHS = SPLITS[TRAIN_SPLIT][1]
HELD_OUT = tuple(name for name in (*SPLITS, MATCHED_SPLIT) if name != TRAIN_SPLIT)
CHUNK_SIZE = 10_000          # slots per independently seeded chunk (part of the stream's definition)
PROGRESS_FROM = 100_000      # a progress bar for sets at least this large
DATA_DIR = REPO_ROOT / "data"
KINDS = config.TRAIN_KINDS  # "plain", "near_twin_free": the values of a config's data.train_kind
NEAR_TWIN_PREFIX = "train_nt_"  # the file name of a near_twin_free set: train_nt_N.jsonl (config.generated_training_set)
# the files whose expressions' canonical forms a near_twin_free set excludes (beyond the prefix)
NEAR_TWIN_HELD_OUT = (*HELD_OUT, "pilot_test_paren_precedence", "counterfactual_value", "counterfactual_operator")

# the form Record.to_json writes; a line of another form is parsed and checked in full
_CANONICAL = re.compile(rb'^\{"expr": "([0-9()+*-]+)", "result": (-?[0-9]+), "depth": \[[0-9, ]*\]\}$', re.M)
_SEQUENCE_EXTRA = len(sequence_ids("", 0)) - 1  # <BOS>, " = ", <EOS>: tokens besides the expr and the result
_LONGEST_RESULT = len(str(MAX_OPERAND**MAX_OPERANDS))  # characters of the largest value (99*99*99*99); the most negative is shorter


# ---------------------------------------------------------------------------- sizes and paths


def parse_train_size(text: str) -> int:
    """argparse type for --train-size: an integer from 1 to MAX_TRAIN_SIZE."""
    value = int_in(1, None)(text)
    if value > MAX_TRAIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text}: at most {MAX_TRAIN_SIZE:,} expressions (the grammar has billions, but a set of {MAX_TRAIN_SIZE:,} "
            "is already 1.7 GB, and the duplicate check holds every expression in memory)")
    return value


def check_train_size(n) -> int:
    """`n` itself, or a UserError for a size that is not an integer from 1 to MAX_TRAIN_SIZE."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_TRAIN_SIZE:
        raise UserError(f"training set size {n!r}: must be an integer from 1 to {MAX_TRAIN_SIZE:,}")
    return n


def training_set_path(n: int, out_dir=None, kind: str = "plain") -> Path:
    """Where the set of size `n` lives: `out_dir` (default data/generated/) / train_N.jsonl, or train_nt_N.jsonl
    for the near_twin_free kind."""
    return config.generated_training_set(check_train_size(n), out_dir, _kind(kind))


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"training set kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def manifest_path(path: Path) -> Path:
    """train_N.jsonl -> train_N.manifest.json beside it."""
    return path.with_name(path.name.removesuffix(".jsonl") + ".manifest.json")


def _file_name(name: str) -> str:
    """The file of a shipped split or pair set: NAME.jsonl, the counterfactual pairs gzip-compressed (.jsonl.gz)."""
    from src.data.counterfactual import FILES

    return next((f for f in FILES.values() if f.startswith(name + ".")), f"{name}.jsonl")


def _sources(data_dir: Path, kind: str = "plain") -> dict[str, str]:
    """sha256 of each shipped file a set is built on: the pilot training file and the held-out files."""
    sources = {}
    for name in (TRAIN_SPLIT, *(NEAR_TWIN_HELD_OUT if kind == "near_twin_free" else HELD_OUT)):
        path = data_dir / _file_name(name)
        try:
            sources[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as err:
            raise UserError(f"{path}: cannot be read ({err.strerror or err}); a training set is built on the shipped "
                            "files: restore them with `git checkout data/` or `python -m src.data --seed 42 --out data`") from None
    return sources


# ---------------------------------------------------------------------------- the training-time check


def held_out_files(data_dir=DATA_DIR) -> list[Path]:
    """The shipped validation and test files (HELD_OUT) in `data_dir`."""
    return [Path(data_dir) / f"{name}.jsonl" for name in HELD_OUT]


def _held_out_expressions(files) -> dict[bytes, tuple[str, int]]:
    """Every expression of these files -> (file, line) of its first occurrence."""
    held = {}
    for path in files:
        for line_no, record in enumerate(load_jsonl(path, sys.maxsize), start=1):
            held.setdefault(record.expr.encode(), (str(path), line_no))
    return held


def _parsed_line(path: Path, line_no: int, raw: bytes) -> tuple[bytes, int]:
    """The expr and the sequence length of one line, of any JSON form: parsed and checked in full."""
    match = _CANONICAL.match(raw)
    if match is not None:
        return match.group(1), len(match.group(1)) + len(match.group(2)) + _SEQUENCE_EXTRA
    try:
        record = _check_record(json.loads(raw), sys.maxsize)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}:{line_no}: not UTF-8 text (byte {err.start} of the line); fix or regenerate the file") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{line_no}: not valid JSON ({err.msg}); fix or regenerate the file") from None
    except ValueError as err:
        raise UserError(f"{path}:{line_no}: {err}") from None
    return record.expr.encode(), len(sequence_ids(record.expr, record.result))


def _expressions_and_lengths(path: Path, data: bytes) -> tuple[list[bytes], list[int]]:
    """Each line's expr (bytes) and the tokens of its sequence; a line that is not a record is a UserError."""
    if not data.endswith(b"\n"):
        line_no = data.count(b"\n") + 1
        raise UserError(f"{path}:{line_no}: the last line has no newline (a truncated file?); regenerate the file")
    exprs, lengths, start = [], [], 0
    while start < len(data):  # in blocks of whole lines, so that only a block's matches are held at once
        end = data.find(b"\n", start + (1 << 24)) + 1 or len(data)
        block = data[start:end]
        found = _CANONICAL.findall(block)
        if len(found) == block.count(b"\n"):  # at most one match a line (anchored to its ends): all canonical
            exprs += [expr for expr, _ in found]
            lengths += [len(expr) + len(result) + _SEQUENCE_EXTRA for expr, result in found]
        else:
            for raw in block.split(b"\n")[:-1]:
                expr, length = _parsed_line(path, len(exprs) + 1, raw)
                exprs.append(expr)
                lengths.append(length)
        start = end
    return exprs, lengths


def check_training_set(path, max_seq_len: int, held_out=None) -> None:
    """A UserError naming the file and line of the first problem of a training file, else None.

    Problems: a line that is not a record, a sequence longer than `max_seq_len` tokens, an expression
    on two lines (both line numbers), an expression that is in a held-out file (that file and its line).
    `held_out`: the validation and test files (default: the shipped ones, `held_out_files()`); a
    trainer passes those its config names.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: training file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not data:
        raise UserError(f"{path}: file is empty; it must hold at least one record")
    exprs, lengths = _expressions_and_lengths(path, data)
    del data
    if max(lengths) > max_seq_len:
        line_no = next(i for i, length in enumerate(lengths, start=1) if length > max_seq_len)
        raise UserError(f"{path}:{line_no}: sequence of {lengths[line_no - 1]} tokens (<BOS>expr = result<EOS>, expr "
                        f"{exprs[line_no - 1].decode()!r}) is longer than max_seq_len {max_seq_len}")
    unique = set(exprs)
    if len(unique) < len(exprs):
        first = {}
        for line_no, expr in enumerate(exprs, start=1):
            earlier = first.setdefault(expr, line_no)
            if earlier != line_no:
                raise UserError(f"{path}:{line_no}: expression {expr.decode()!r} is also on line {earlier}; "
                                "every training expression must be distinct")
    held = _held_out_expressions(held_out_files() if held_out is None else held_out)
    shared = unique & held.keys()
    if shared:
        line_no = min(exprs.index(e) for e in shared) + 1
        expr = exprs[line_no - 1]
        file, held_line = held[expr]
        raise UserError(f"{path}:{line_no}: expression {expr.decode()!r} is held out: it is on line {held_line} of "
                        f"{file}; no training expression may be in a validation or test file")


def near_twin_forms(data_dir=DATA_DIR) -> set[str]:
    """The canonical forms a near_twin_free set excludes: those of every expression of NEAR_TWIN_HELD_OUT (for the
    pair files, every base and source), each file validated as it is read."""
    from src.data.canonical import canonical
    from src.data.counterfactual import load_pairs
    from src.data.precedence import PRECEDENCE_SPLIT, load_precedence

    data_dir, exprs = Path(data_dir), []
    for name in NEAR_TWIN_HELD_OUT:
        path = data_dir / _file_name(name)
        if name == PRECEDENCE_SPLIT:
            exprs += [pair.record.expr for pair in load_precedence(path)]
        elif name.startswith("counterfactual_"):
            exprs += [line[side]["expr"] for line in load_pairs(path) for side in ("base", "source")]
        else:
            exprs += [record.expr for record in load_jsonl(path, sys.maxsize)]
    return {canonical(e) for e in exprs}


def near_twin_lines(path, forms: set[str], start: int = 0) -> list[int]:
    """Line numbers (from 1) of the lines after the first `start` of a training file whose canonical form is in `forms`."""
    from src.data.canonical import canonical

    with open(path, "rb") as fh:
        return [line_no for line_no, raw in enumerate(fh, start=1)
                if line_no > start and canonical(json.loads(raw)["expr"]) in forms]


# ---------------------------------------------------------------------------- generation


_EXCLUDED_FORMS: frozenset = frozenset()  # in each worker: the forms a near_twin_free stream drops


def _set_excluded_forms(forms: frozenset) -> None:
    global _EXCLUDED_FORMS
    _EXCLUDED_FORMS = forms


def _init_worker(forms: frozenset) -> None:
    """A generation worker: Ctrl-C is the parent's to handle (it stops the pool), and the excluded forms."""
    ignore_interrupts()
    _set_excluded_forms(forms)


def _draw_chunk_near_twin_free(chunk: int) -> list[str | None]:
    """Chunk `chunk` of the plain stream, each expression whose canonical form is excluded replaced by None."""
    from src.data.canonical import canonical

    return [None if canonical(expr) in _EXCLUDED_FORMS else expr for expr in _draw_chunk(chunk)]


def _draw_chunk(chunk: int) -> list[str]:
    """Chunk `chunk` of the stream: CHUNK_SIZE expressions of depths TRAIN_DEPTHS in turn, each within the length."""
    rng = random.Random(f"{TRAIN_SEED}-train-{chunk}")
    exprs, misses = [], 0
    while len(exprs) < CHUNK_SIZE:
        expr = random_expression(rng, TRAIN_DEPTHS[len(exprs) % len(TRAIN_DEPTHS)])
        # as the pilot split filters; evaluated only where even the longest result might not fit (never at 32)
        if (len(expr) + _LONGEST_RESULT + _SEQUENCE_EXTRA > TRAIN_MAX_SEQ_LEN
                and len(sequence_ids(expr, evaluate(expr))) > TRAIN_MAX_SEQ_LEN):
            misses += 1
            if misses >= MAX_MISSES:
                raise UserError(f"chunk {chunk}: {misses} expressions in a row longer than {TRAIN_MAX_SEQ_LEN} tokens")
            continue
        misses = 0
        exprs.append(expr)
    return exprs


def _lines(exprs: list[str]) -> list[str]:
    """The JSONL lines of these expressions' records."""
    return [make_record(expr).to_json() + "\n" for expr in exprs]


def default_processes() -> int:
    """The CPU cores this process may use, at most 16 (beyond that, merging the chunks here is the bottleneck)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, 16)


class _InProcess:
    """The one method of an executor that the stream uses, run here and now (for processes=1)."""

    def submit(self, fn, *args) -> Future:
        future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _kept_lines(seen: set[str], processes: int, first_line: int,
                excluded_forms: frozenset | None = None) -> Iterator[tuple[list[int], list[str]]]:
    """Chunks 0, 1, 2, ... in order, each as the slots and lines of its expressions not yet in `seen` (added to it).

    Two steps per chunk, both in the workers: draw the expressions, then (once the expressions already taken
    are dropped, here, in chunk order) format the records of those kept: a third of the draws are dropped at
    2,000,000 (the 2-number expressions run out), and formatting them would be wasted."""
    draw = _draw_chunk if excluded_forms is None else _draw_chunk_near_twin_free
    if processes == 1:
        pool = _InProcess()
        if excluded_forms is not None:
            _set_excluded_forms(excluded_forms)
    else:  # fork on Linux, where it is safe: spawn would import torch again in each worker
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
        pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_init_worker,
                                   initargs=(excluded_forms or frozenset(),))
    misses = [0] * len(TRAIN_DEPTHS)
    with pool:
        draws, formats = deque(), deque()  # a few chunks ahead of each step, never the whole (endless) stream
        try:
            for chunk in count():
                draws.append(pool.submit(draw, chunk))
                if len(draws) < processes:
                    continue
                slots, kept = [], []
                for slot, expr in enumerate(draws.popleft().result()):
                    depth = slot % len(TRAIN_DEPTHS)
                    if expr is None or expr in seen:  # None: a near twin of a held-out item
                        misses[depth] += 1
                        if misses[depth] >= MAX_MISSES:  # not below MAX_TRAIN_SIZE, but never loop forever
                            raise UserError(f"{misses[depth]} expressions of depth {TRAIN_DEPTHS[depth]} in a row were "
                                            f"already taken, after line {first_line:,}: the generator cannot produce "
                                            "a training set this large")
                        continue
                    misses[depth] = 0
                    seen.add(expr)
                    slots.append(slot)
                    kept.append(expr)
                formats.append((slots, pool.submit(_lines, kept)))
                if len(formats) < processes:
                    continue
                slots, lines = formats.popleft()
                yield slots, lines.result()
        finally:
            for future in (*draws, *(f for _, f in formats)):
                future.cancel()


def _blocks(n: int, processes: int | None, data_dir: Path, kind: str = "plain") -> Iterator[list[str]]:
    """The first `n` lines of the stream (module docstring), in blocks."""
    check_train_size(n)
    pilot_path = data_dir / f"{TRAIN_SPLIT}.jsonl"
    pilot = load_jsonl(pilot_path, TRAIN_MAX_SEQ_LEN)  # validated, so that the set starts from a sound file
    pilot_lines = pilot_path.read_text(encoding="utf-8").splitlines(keepends=True)
    held = _held_out_expressions(held_out_files(data_dir))
    seen = {e.decode() for e in held}
    for line_no, record in enumerate(pilot, start=1):  # checked, not assumed
        if record.expr in seen:
            where = held.get(record.expr.encode())
            raise UserError(f"{pilot_path}:{line_no}: expression {record.expr!r} is "
                            + (f"held out (line {where[1]} of {where[0]})" if where else "on an earlier line")
                            + "; restore the shipped files with `git checkout data/`")
        seen.add(record.expr)
    yield pilot_lines[:n]
    if n <= len(pilot_lines):
        return
    queues = [deque() for _ in TRAIN_DEPTHS]  # kept lines of each depth, not yet placed
    position = len(pilot_lines)
    excluded = frozenset(near_twin_forms(data_dir)) if _kind(kind) == "near_twin_free" else None
    for slots, lines in _kept_lines(seen, processes or default_processes(), position, excluded):
        for slot, line in zip(slots, lines):
            queues[slot % len(TRAIN_DEPTHS)].append(line)
        block = []
        while queues[position % len(TRAIN_DEPTHS)]:  # line i takes the next kept line of its depth
            block.append(queues[position % len(TRAIN_DEPTHS)].popleft())
            position += 1
            if position == n:
                yield block
                return
        yield block


def training_lines(n: int, processes: int | None = None, data_dir=DATA_DIR, kind: str = "plain") -> Iterator[str]:
    """The first `n` lines of the stream (module docstring), each ending in a newline."""
    for block in _blocks(n, processes, Path(data_dir), kind):
        yield from block


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{directory}: could not be created ({err.strerror or err}); choose another directory") from None


def _manifest(n: int, lines: int, size: int, sha256: str, sources: dict[str, str], kind: str = "plain") -> dict:
    meta = {"schema": SCHEMA, "n": n, "seed": TRAIN_SEED, "generator_version": GENERATOR_VERSION,
            "chunk_size": CHUNK_SIZE, "max_seq_len": TRAIN_MAX_SEQ_LEN, "depths": list(TRAIN_DEPTHS),
            "lines": lines, "bytes": size, "sha256": sha256, "sources": sources}
    if kind != "plain":  # a plain set's manifest stays as it was, so that existing sets verify
        meta["kind"] = kind
    return meta


def write_training_set(n: int, out_dir=None, processes: int | None = None, progress: bool | None = None,
                       data_dir=DATA_DIR, kind: str = "plain") -> Path:
    """Generate the set of size `n` into `out_dir` (default data/generated/), checked, with its manifest."""
    path = training_set_path(n, out_dir, kind)
    data_dir = Path(data_dir)
    sources = _sources(data_dir, kind)
    _make_dir(path.parent)
    show = n >= PROGRESS_FROM if progress is None else progress
    digest, size, written = hashlib.sha256(), 0, 0
    # a temporary name of its own (two trainers may make the same set at once); renamed once complete and checked
    fd, tmp = open_temporary(path)  # created exclusively, no link followed
    try:
        with open(fd, "wb") as fh, tqdm(total=n, desc=path.name, unit=" lines", unit_scale=True,
                                             disable=not show, file=sys.stderr) as bar:
            for block in _blocks(n, processes, data_dir, kind):
                data = "".join(block).encode()
                fh.write(data)
                digest.update(data)
                size, written = size + len(data), written + len(block)
                bar.update(len(block))
            fh.flush()
            os.fsync(fh.fileno())
        if written != n:  # not reached: the stream is endless
            raise AssertionError(f"{written} lines written for a set of {n}")
        check_training_set(tmp, TRAIN_MAX_SEQ_LEN, held_out_files(data_dir))  # checked, not assumed
        replaced(tmp, path)
    except BaseException as err:  # Ctrl-C, a full disk, a failed check: no half file is left
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_failed(path, err) from None
        raise
    atomic_write_json(manifest_path(path), _manifest(n, written, size, digest.hexdigest(), sources, kind))
    return path


# ---------------------------------------------------------------------------- verification



def training_set_problem(path, data_dir=DATA_DIR, kind: str = "plain") -> str | None:
    """What is wrong with the generated set at `path` (None if it matches its manifest and this generator)."""
    path = Path(path)
    manifest = manifest_path(path)
    if not path.is_file():
        return "missing"
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"its manifest {manifest.name} is missing (an interrupted generation?)"
    except (OSError, ValueError) as err:
        return f"its manifest {manifest.name} is unreadable ({str(err)[:100]})"
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        return f"its manifest {manifest.name} is not of schema {SCHEMA}"
    prefix = NEAR_TWIN_PREFIX if _kind(kind) == "near_twin_free" else "train_"
    n = path.name.removeprefix(prefix).removesuffix(".jsonl")
    expected = _manifest(int(n) if n.isdigit() else -1, 0, 0, "", _sources(Path(data_dir), kind), kind)
    for key in ("n", "seed", "generator_version", "chunk_size", "max_seq_len", "depths", "sources", "kind"):
        if meta.get(key) != expected.get(key):
            what = "the shipped data files" if key == "sources" else key
            return f"made with another {what} ({manifest.name} says {str(meta.get(key))[:100]})"
    if not isinstance(meta.get("bytes"), int) or isinstance(meta.get("bytes"), bool):
        return f"its manifest {manifest.name}'s 'bytes' is missing or not a whole number"
    try:
        sha256, size = file_sha256(path)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if size != meta.get("bytes"):
        return f"{size:,} bytes where its manifest says {meta.get('bytes'):,} (truncated or damaged)"
    if sha256 != meta.get("sha256"):
        return "its sha256 differs from its manifest's (damaged)"
    return None


@contextmanager
def _one_at_a_time(path: Path):
    """An exclusive lock on a file beside `path` (where the system has flock), so that two processes making the
    same set (runs of a sweep started together) take turns: the second finds the set made and verified."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_training_set(n: int, out_dir=None, *, processes: int | None = None, progress: bool | None = None,
                        repair: bool = True, data_dir=DATA_DIR, kind: str = "plain") -> Path:
    """The path of the set of size `n` in `out_dir` (default data/generated/), sound and verified.

    Missing: generated. Present: verified against its manifest. Damaged, truncated, without a manifest
    or made by another generator version or from other shipped files: regenerated with a note on stderr,
    or with `repair=False` a UserError saying what is wrong and what to do. `processes` (default: the
    cores available) changes only the speed; `progress` (default: from 100,000 lines) a bar on stderr.
    """
    path = training_set_path(n, out_dir, kind)
    _make_dir(path.parent)
    with _one_at_a_time(path):
        problem = training_set_problem(path, data_dir, kind)
        if problem is None:
            return path
        if problem != "missing":
            if not repair:
                flag = " --near-twin-free" if kind == "near_twin_free" else ""
                raise UserError(f"{path}: {problem}; delete it, or remake it with `python -m src.data --train-size {n}{flag} "
                                f"--out {path.parent}`")
            print(f"note: {path}: {problem}; regenerating it", file=sys.stderr)
        return write_training_set(n, out_dir, processes, progress, data_dir, kind)
