"""Training sets at scale (src/data/trainsets.py, docs/DESIGN.md section 8): nested, held out, reproducible, checked.

Small sets only (2,500 to 20,000 lines); the 2,000,000-line timing is in the module's report, not here.
"""

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import src.data
import src.data.cli
from src.data import trainsets
from src.data import OPERATORS, _PRECEDENCE, depth_labels, make_record, random_expression
from src.errors import UserError
from src.tokenizer import sequence_ids
from src.data.trainsets import (HELD_OUT, check_training_set, ensure_training_set, manifest_path, training_lines,
                           training_set_path, training_set_problem, write_training_set)
from tests.runs import cli, expect_error  # the one runner of an entry point, as its __main__ runs it

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
PILOT = DATA_DIR / "pilot_train.jsonl"
# sha256 of train_5000.jsonl: a change of the stream (generator, seeds, chunks, merge) must bump
# trainsets.GENERATOR_VERSION, so that sets made before it are remade, and update this value
TRAIN_5000_SHA256 = "e77c5998d7b2b010bd2912196e0b3f0efcd12d4989ce3ba1c4dc2e3d41b9b8de"


@pytest.fixture(scope="module")
def lines_20k():
    return list(training_lines(20_000, processes=1))


def exprs_of(lines) -> list[str]:
    return [json.loads(line)["expr"] for line in lines]


# ---------------------------------------------------------------------------- the stream


def test_first_2000_lines_are_pilot_train_byte_for_byte(lines_20k):
    assert "".join(lines_20k[:2000]).encode() == PILOT.read_bytes()
    assert "".join(training_lines(123, processes=1)).encode() == b"".join(PILOT.read_bytes().splitlines(True)[:123])


@pytest.mark.slow
def test_sets_are_nested(lines_20k):
    for n in (1, 1999, 2000, 2001, 2500, 5000, 13_333):
        assert list(training_lines(n, processes=1)) == lines_20k[:n], n


def test_no_duplicates_and_nothing_held_out(lines_20k):
    exprs = exprs_of(lines_20k)
    assert len(set(exprs)) == len(exprs) == 20_000
    for name in HELD_OUT:
        held = set(exprs_of((DATA_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()))
        assert len(held) >= 200 and not held & set(exprs), name


def test_records_are_the_pilot_generators(lines_20k):
    # the same record format, the training split's depths in turn, every sequence within 32 tokens
    for i, line in enumerate(lines_20k):
        record = json.loads(line)
        assert line == make_record(record["expr"]).to_json() + "\n"
        assert max(depth_labels(record["expr"])) == i % 3, i
        assert len(sequence_ids(record["expr"], record["result"])) <= 30  # the longest any expression can need


@pytest.mark.slow
def test_output_does_not_depend_on_the_number_of_processes(lines_20k):
    for processes in (2, 3):
        assert list(training_lines(20_000, processes=processes)) == lines_20k, processes


@pytest.mark.slow
def test_files_are_reproducible_and_pinned(tmp_path):
    a = write_training_set(5000, tmp_path / "a", processes=1)
    b = write_training_set(5000, tmp_path / "b", processes=2)
    assert a.name == "train_5000.jsonl" and a.read_bytes() == b.read_bytes()
    assert hashlib.sha256(a.read_bytes()).hexdigest() == TRAIN_5000_SHA256
    manifest = json.loads(manifest_path(a).read_text(encoding="utf-8"))
    assert manifest["schema"] == "trainset/1" and manifest["n"] == 5000 and manifest["seed"] == 42
    assert manifest["sha256"] == TRAIN_5000_SHA256 and manifest["bytes"] == a.stat().st_size
    assert manifest_path(a).read_bytes() == manifest_path(b).read_bytes()
    assert sorted(p.name for p in a.parent.iterdir()) == ["train_5000.jsonl", "train_5000.manifest.json"]  # no .tmp left


# ---------------------------------------------------------------------------- the faster generator draws as before


def _reference_tree(rng, n_operands):
    """src.data._random_tree as it was written with randint and choice."""
    if n_operands == 1:
        return rng.randint(1, 99)
    n_left = rng.randint(1, n_operands - 1)
    return (rng.choice(OPERATORS), _reference_tree(rng, n_left), _reference_tree(rng, n_operands - n_left))


def _reference_render(rng, node, p_extra):
    if isinstance(node, int):
        return str(node)
    op, left, right = node
    parts = []
    for side, child in (("left", left), ("right", right)):
        text = _reference_render(rng, child, p_extra)
        if not isinstance(child, int):
            child_prec, prec = _PRECEDENCE[child[0]], _PRECEDENCE[op]
            needed = child_prec < prec or (side == "right" and child_prec == prec and op == "-")
            if needed or rng.random() < p_extra:
                text = f"({text})"
        parts.append(text)
    return parts[0] + op + parts[1]


def _reference_expression(rng, max_depth):
    n_operands = rng.randint(max(2, max_depth + 1), 4)
    while True:
        expr = _reference_render(rng, _reference_tree(rng, n_operands), 0.5)
        if max_depth > 0 and rng.random() < 0.25:
            expr = f"({expr})"
        if max(depth_labels(expr)) == max_depth:
            return expr


@pytest.mark.parametrize("seed", [0, 42, "42-train-7"])
def test_random_expression_draws_as_randint_and_choice_did(seed):
    fast, reference = random.Random(seed), random.Random(seed)
    for i in range(3000):
        assert random_expression(fast, i % 4) == _reference_expression(reference, i % 4), i
    assert fast.random() == reference.random()  # and leaves the generator in the same state


@pytest.mark.parametrize("n", [1, 2, 3, 4, 99, 100, 128, 1000])
def test_below_draws_as_randrange(n):
    fast, reference = random.Random(n), random.Random(n)
    assert [src.data._below(fast.getrandbits, n) for _ in range(500)] == [reference.randrange(n) for _ in range(500)]


def test_depth_labels_unchanged():
    for expr in ("(1+(2*3))", "1+2", "((1+2))", "(1+2)*(3+4)", ")(", ""):
        depth, labels = 0, []
        for ch in expr:
            depth += {"(": 1, ")": -1}.get(ch, 0)
            labels.append(depth)
        assert depth_labels(expr) == labels


# ---------------------------------------------------------------------------- checksum: damage is found


@pytest.fixture(scope="module")
def made_once(tmp_path_factory):
    return write_training_set(2500, tmp_path_factory.mktemp("sets"), processes=1)


@pytest.fixture
def made(made_once, tmp_path):
    """A fresh copy of one generated set (and its manifest) for each test to damage."""
    (tmp_path / "sets").mkdir()
    for source in (made_once, manifest_path(made_once)):
        shutil.copy2(source, tmp_path / "sets" / source.name)
    return tmp_path / "sets" / made_once.name


def test_verified_set_is_kept(made, capsys):
    mtime = made.stat().st_mtime_ns
    assert training_set_problem(made) is None
    assert ensure_training_set(2500, made.parent, repair=False) == made
    assert made.stat().st_mtime_ns == mtime and capsys.readouterr().err == ""


@pytest.mark.parametrize("damage, says", [
    ("truncate", "bytes where its manifest says"),
    ("flip", "sha256 differs"),
    ("no_manifest", "manifest train_2500.manifest.json is missing"),
    ("bad_manifest", "unreadable"),
    ("old_version", "another generator_version"),
    ("no_bytes", "'bytes' is missing or not a whole number"),
    ("nul_sha256", "sha256 differs"),
])
def test_damaged_set_is_found_and_remade(made, damage, says, capsys):
    good = made.read_bytes()
    if damage == "truncate":
        made.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        made.write_bytes(good.replace(b'"result": 1', b'"result": 2', 1))
        assert len(made.read_bytes()) == len(good)
    elif damage == "no_manifest":
        manifest_path(made).unlink()
    elif damage == "bad_manifest":
        manifest_path(made).write_text("{", encoding="utf-8")
    else:
        meta = json.loads(manifest_path(made).read_text(encoding="utf-8"))
        changed = {"old_version": {**meta, "generator_version": 0},
                   "no_bytes": {k: v for k, v in meta.items() if k != "bytes"},
                   "nul_sha256": {**meta, "sha256": meta["sha256"][:10] + "\u0000" + meta["sha256"][11:]}}[damage]
        manifest_path(made).write_text(json.dumps(changed), encoding="utf-8")
    assert says in training_set_problem(made)
    with pytest.raises(UserError, match=f"{made}: .*{says}.*--train-size 2500"):
        ensure_training_set(2500, made.parent, repair=False)
    # one process: the stream is the same for any number (test_output_does_not_depend_on_the_number_of_processes),
    # and a pool of them costs more than the 2,500 lines; test_command_writes_the_set runs the pool
    assert ensure_training_set(2500, made.parent, processes=1) == made
    assert f"note: {made}: " in capsys.readouterr().err
    assert made.read_bytes() == good and training_set_problem(made) is None


def test_missing_set_is_generated_without_a_note(tmp_path, capsys):
    path = ensure_training_set(2001, tmp_path, processes=1)  # one process, as in the test above
    assert path == training_set_path(2001, tmp_path) and training_set_problem(path) is None
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_two_processes_making_one_set_take_turns(tmp_path):
    # runs of a sweep started together: one makes the set, the other finds it made and verified
    command = [sys.executable, "-m", "src.data", "--train-size", "5000", "--out", str(tmp_path), "--processes", "1"]
    procs = [subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "note:" not in err, err
    path = tmp_path / "train_5000.jsonl"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == TRAIN_5000_SHA256 and training_set_problem(path) is None
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_interrupted_generation_leaves_no_set(tmp_path, monkeypatch):
    def broken(*args):
        yield ["half\n"]
        raise KeyboardInterrupt

    monkeypatch.setattr(trainsets, "_blocks", broken)
    with pytest.raises(KeyboardInterrupt):
        write_training_set(5000, tmp_path, processes=1)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- the training-time check


def write(tmp_path, lines, name="train.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def pilot_lines(n):
    return PILOT.read_text(encoding="utf-8").splitlines()[:n]


def test_check_accepts_pilot_and_generated_sets(made):
    check_training_set(PILOT, 32)
    check_training_set(made, 32)


def test_check_names_both_lines_of_a_duplicate(tmp_path):
    lines = pilot_lines(10)
    path = write(tmp_path, lines[:7] + [lines[3]] + lines[7:])
    with pytest.raises(UserError) as info:
        check_training_set(path, 32)
    expr = json.loads(lines[3])["expr"]
    assert f"{path}:8: expression {expr!r} is also on line 4" in str(info.value)


def test_check_names_the_held_out_file_and_line(tmp_path):
    held = (DATA_DIR / "pilot_test_paren.jsonl").read_text(encoding="utf-8").splitlines()[41]
    path = write(tmp_path, pilot_lines(5) + [held])
    with pytest.raises(UserError) as info:
        check_training_set(path, 32)
    message = str(info.value)
    assert f"{path}:6: expression {json.loads(held)['expr']!r} is held out" in message
    assert f"line 42 of {DATA_DIR / 'pilot_test_paren.jsonl'}" in message


def test_check_takes_the_held_out_files_a_config_names(tmp_path):
    path = write(tmp_path, pilot_lines(20))
    other_val = write(tmp_path, [make_record("1+2").to_json(), pilot_lines(20)[17]], name="val.jsonl")
    check_training_set(path, 32, held_out=[])
    with pytest.raises(UserError, match=f"{path}:18: .* is held out: it is on line 2 of {other_val}"):
        check_training_set(path, 32, held_out=[DATA_DIR / "pilot_val.jsonl", other_val])


def test_check_finds_a_sequence_too_long(tmp_path):
    path = write(tmp_path, pilot_lines(3) + [make_record("99*99*99*98").to_json()])  # 24 tokens
    with pytest.raises(UserError, match=f"{path}:4: sequence of 24 tokens .* is longer than max_seq_len 23"):
        check_training_set(path, 23)
    check_training_set(path, 24)


def test_check_reads_other_json_forms_and_reports_bad_lines(tmp_path):
    other = json.dumps({"depth": [0, 0, 0], "result": 3, "expr": "1+2"}, separators=(",", ":"))
    check_training_set(write(tmp_path, pilot_lines(3) + [other]), 32)
    wrong = json.dumps({"expr": "1+2", "result": 4, "depth": [0, 0, 0]}, separators=(",", ":"))
    path = write(tmp_path, pilot_lines(3) + [wrong])
    with pytest.raises(UserError, match=f"{path}:4: result 4 does not match"):
        check_training_set(path, 32)
    path.write_bytes(path.read_bytes()[:-5])  # cut short: no newline at the end
    with pytest.raises(UserError, match=f"{path}:4: .*no newline"):
        check_training_set(path, 32)


# ---------------------------------------------------------------------------- the command line


def test_command_writes_the_set(tmp_path, capsys):
    argv = ["--train-size", "2500", "--out", tmp_path / "sets", "--processes", "2", "--seed", "42"]  # 42: the fixed seed
    rc, out, err = cli(src.data.cli.main, argv, capsys)
    assert rc == 0, err
    path = tmp_path / "sets" / "train_2500.jsonl"
    assert f"{path}: 2500 records, sha256 " in out
    assert path.read_bytes().startswith(PILOT.read_bytes())


@pytest.mark.parametrize("value, says", [
    ("0", "at least 1"), ("-5", "at least 1"), ("abc", "integer written in digits"), ("1e6", "integer written in digits"),
    ("2.5", "integer written in digits"), ("", "integer written in digits"),
    (str(trainsets.MAX_TRAIN_SIZE + 1), f"at most {trainsets.MAX_TRAIN_SIZE:,} expressions"),
])
def test_bad_train_size_is_a_clear_error_and_writes_nothing(tmp_path, capsys, value, says):
    out = tmp_path / "sets"
    message = expect_error(cli(src.data.cli.main, ["--train-size", value, "--out", out], capsys), "--train-size", says,
                           usage=True)
    assert "Traceback" not in message and not out.exists()


@pytest.mark.parametrize("flag", [["--seed", "43"], ["--max-seq-len", "30"]])
def test_seed_and_max_seq_len_do_not_apply_to_a_training_set(tmp_path, capsys, flag):
    out = tmp_path / "sets"
    expect_error(cli(src.data.cli.main, ["--train-size", "2500", *flag, "--out", out], capsys), "apply to the six files",
                 usage=True)
    assert not out.exists()


def test_api_refuses_bad_sizes(tmp_path):
    for n in (0, -1, 2.5, "100", True, trainsets.MAX_TRAIN_SIZE + 1):
        with pytest.raises(UserError, match="training set size"):
            ensure_training_set(n, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_help_explains_the_flag(capsys):
    rc, out, _ = cli(src.data.cli.main, ["--help"], capsys)
    assert rc == 0 and "--train-size N" in out and "pilot_train.jsonl" in " ".join(out.split())
