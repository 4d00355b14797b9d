"""The counterfactual pair files (src/data/counterfactual.py): alignment, controls, causal-model answers, near
twins kept out, byte-for-byte regeneration, and the errors of a file whose pairs do not align."""

import gzip
import hashlib
import json
from collections import Counter

import pytest

from src.data import cli as data_cli
from src.data import evaluate, load_jsonl
from src.data.canonical import canonical, canonical_set
from src.data.counterfactual import (
    CELLS,
    CONTROLS,
    FILES,
    MANIFEST,
    PER_CELL,
    bracket_pairs,
    fed_operator,
    generate_counterfactuals,
    line_text,
    load_pairs,
    predicted_answer,
    rule_holds,
    template,
)
from src.data.precedence import load_precedence
from src.errors import UserError
from src.rundir.atomic import gzip_bytes
from src.tokenizer import sequence_ids
from tests.test_data import DATA_DIR, EXPECTED_COUNTS, reference_value

SHIPPED = (*EXPECTED_COUNTS, "pilot_test_paren_precedence")


def shipped_text(variable: str) -> str:
    """The lines of a shipped pair file, decompressed."""
    return gzip.decompress((DATA_DIR / FILES[variable]).read_bytes()).decode()


@pytest.fixture(scope="module")
def pairs():
    return {v: load_pairs(DATA_DIR / name, v) for v, name in FILES.items()}


@pytest.fixture(scope="module")
def shipped_forms():
    exprs = [r.expr for name in EXPECTED_COUNTS for r in load_jsonl(DATA_DIR / f"{name}.jsonl", 32)]
    exprs += [p.record.expr for p in load_precedence(DATA_DIR / "pilot_test_paren_precedence.jsonl")]
    return canonical_set(exprs)


# ---------------------------------------------------------------------------- the causal models, by hand


@pytest.mark.parametrize("variable, base, source, bracket, predicted", [
    ("value", "(2+3)*4", "(5+1)*4", (0, 4), 24),        # the bracket takes the value 6
    ("value", "9-(8-6)", "9-(2-7)", (2, 6), 14),        # ... the value -5
    ("value", "(2+3)*4", "(9*9)-1", (0, 4), 324),       # a random source: its inside, in the base's context
    ("value", "((1+2)*3)", "((4+4)*3)", (1, 5), 24),    # depth 2
    ("operator", "(2+3)*4", "(2+3)-4", (0, 4), 1),
    ("operator", "7-(2+3)", "7*(2+3)", (2, 6), 35),
    ("operator", "(2+3)*4", "(7-1)+9", (0, 4), 9),      # a random source: only its operator at the site
])
def test_predicted_answer_by_hand(variable, base, source, bracket, predicted):
    assert predicted_answer(variable, base, source, *bracket) == predicted


@pytest.mark.parametrize("expr, bracket, site, holds", [
    ("(1+2)*3", (0, 4), 5, True),
    ("3*(1+2)", (2, 6), 1, True),
    ("1+(2-3)*4", (2, 6), 7, True),     # * binds tighter: the bracket feeds it
    ("1-(2+3)+4", (2, 6), 7, False),    # the bracket feeds the -, not the + after it
    ("2*(1+2)*3", (2, 6), 7, False),    # left-associative: it feeds the first *
    ("(1+2)", (0, 4), None, True),
    ("(4*(1+2))", (3, 7), 2, True),
])
def test_fed_operator_and_the_rule(expr, bracket, site, holds):
    assert fed_operator(expr, *bracket) == site and rule_holds(expr, *bracket) == holds


def test_template():
    assert template("(12+3)*45") == "(NNoN)oNN"


# ---------------------------------------------------------------------------- the shipped files


def test_counts_per_cell_and_control(pairs):
    for variable, lines in pairs.items():
        by_control = Counter(line["control"] for line in lines)
        bases = PER_CELL[variable] * len(CELLS[variable])
        assert by_control == {c: bases for c in CONTROLS[variable]}
        cells = Counter((line["template_class"]["depth"], line["template_class"]["inner_ops"],
                         line["template_class"]["outer_op"]) for line in lines if line["control"] == "interchange")
        assert cells == {cell: PER_CELL[variable] for cell in CELLS[variable]}
        # 2 operands only as the whole expression in brackets, and those are all near twins of train_2000000
        assert {3, 4} <= {line["template_class"]["operands"] for line in lines} <= {2, 3, 4}


def test_alignment_and_sequences(pairs):
    for lines in pairs.values():
        for line in lines:
            base, source = line["base"]["expr"], line["source"]["expr"]
            assert len(base) == len(source) and template(base) == template(source) == line["template"]
            for i, (a, b) in enumerate(zip(base, source)):  # one to one: a digit faces a digit, a bracket itself
                assert a == b or (a.isdigit() and b.isdigit()) or (a in "+-*" and b in "+-*"), (base, source, i)
            open_, close = line["bracket"]
            assert (open_, close) in bracket_pairs(base) and rule_holds(base, open_, close) and rule_holds(source, open_, close)
            for expr, answer in ((base, line["base"]["result"]), (source, line["source"]["result"]), (base, line["predicted"])):
                assert len(sequence_ids(expr, answer)) <= 32


def test_controls_do_what_they_say(pairs):
    for line in pairs["value"]:
        base, source, (o, c) = line["base"]["expr"], line["source"]["expr"], line["bracket"]
        outside_same = base[:o + 1] == source[:o + 1] and base[c:] == source[c:]
        intervened = base[:o + 1] + source[o + 1:c] + base[c:]
        assert line["predicted"] == reference_value(intervened)  # Python's own parser: an independent check
        assert line["base_value"] == evaluate(base[o + 1:c]) and line["source_value"] == evaluate(source[o + 1:c])
        if line["control"] == "interchange":
            assert outside_same and line["predicted"] == line["source"]["result"] != line["base"]["result"]
        elif line["control"] == "value_preserving":
            assert outside_same and base != source and line["source_value"] == line["base_value"]
            assert line["predicted"] == line["base"]["result"]
        else:
            assert line["predicted"] != line["base"]["result"]
    for line in pairs["operator"]:
        base, source, site = line["base"]["expr"], line["source"]["expr"], line["sites"]["operator"]
        assert line["template_class"]["outer_op"] == base[site] != source[site]
        assert line["predicted"] == reference_value(base[:site] + source[site] + base[site + 1:]) != line["base"]["result"]
        if line["control"] == "interchange":
            assert base[:site] + base[site + 1:] == source[:site] + source[site + 1:]
            assert line["predicted"] == line["source"]["result"]
        assert line["base_value"] is None and line["source_value"] is None


def test_controls_share_their_base(pairs):
    for variable, lines in pairs.items():
        groups = {}
        for line in lines:
            groups.setdefault(line["base_id"], []).append(line)
        assert all([l["control"] for l in g] == list(CONTROLS[variable]) for g in groups.values())
        assert all(len({l["base"]["expr"] for l in g}) == 1 for g in groups.values())
        assert len({canonical(g[0]["base"]["expr"]) for g in groups.values()}) == len(groups)  # each base once


def test_no_base_or_source_is_a_near_twin_of_a_shipped_or_recorded_expression(pairs, shipped_forms):
    twins_path = DATA_DIR / data_cli.TWINS_FILE
    recorded = set(json.loads(twins_path.read_text())["forms"]) if twins_path.is_file() else set()
    for lines in pairs.values():
        forms = {canonical(line[side]["expr"]) for line in lines for side in ("base", "source")}
        assert not forms & shipped_forms and not forms & recorded


def test_manifest_matches_the_files():
    manifest = json.loads((DATA_DIR / MANIFEST).read_text())
    assert manifest["schema"] == "counterfactual_manifest/2" and manifest["seed"] == 42
    assert sorted(manifest["files"]) == sorted(FILES.values())
    for name, info in manifest["files"].items():
        packed = (DATA_DIR / name).read_bytes()
        data = gzip.decompress(packed)
        assert info["sha256"] == hashlib.sha256(packed).hexdigest() and info["bytes"] == len(packed)
        assert info["content_sha256"] == hashlib.sha256(data).hexdigest() and info["content_bytes"] == len(data)
        assert info["lines"] == data.count(b"\n")
    for name, sha in manifest["excluded_shipped_files"].items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == sha


def test_first_lines_regenerate_byte_for_byte(shipped_forms):
    twins_path = DATA_DIR / data_cli.TWINS_FILE
    recorded = json.loads(twins_path.read_text())["forms"] if twins_path.is_file() else ()
    lines, _stats = generate_counterfactuals(42, shipped_forms, recorded, 32, stop_after=1500)
    for variable, name in FILES.items():
        text = "".join(map(line_text, lines[variable]))
        assert len(lines[variable]) > 200 and shipped_text(variable).startswith(text), name


@pytest.mark.slow
def test_regenerated_byte_for_byte(tmp_path):
    splits = {name: load_jsonl(DATA_DIR / f"{name}.jsonl", 32) for name in EXPECTED_COUNTS}
    data_cli.write_pair_files(splits, tmp_path, 42, 32)
    for name in (*FILES.values(), MANIFEST, "pilot_test_paren_precedence.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


# ---------------------------------------------------------------------------- bad input


def _bad_file(tmp_path, edit):
    lines = shipped_text("value").splitlines()[:4]
    obj = json.loads(lines[2])
    edit(obj)
    lines[2] = json.dumps(obj)
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _set(obj, base, source):
    obj["base"] = {"expr": base, "result": evaluate(base)}
    obj["source"] = {"expr": source, "result": evaluate(source)}


@pytest.mark.parametrize("edit, message", [
    (lambda o: _set(o, "12+(3*4)", "12+(3*45)"), "do not align: 8 and 9 characters"),
    (lambda o: _set(o, "12+(3*4)", "1+(23*4)"), "do not align: their templates differ at character 1"),
    (lambda o: _set(o, "12+(3*4)", "12+3*(4)"), "do not align: their templates differ at character 3"),
    (lambda o: o.update(template=o["template"][::-1]), "template"),
    (lambda o: o.update(predicted=o["predicted"] + 1), "causal model's answer"),
    (lambda o: o.update(bracket=[o["bracket"][0], o["bracket"][1] + 1]), "not a bracket pair"),
    (lambda o: o["sites"].update(open=o["sites"]["open"] + 1), "sites"),
    (lambda o: o.pop("base"), "missing field 'base'"),
    (lambda o: o.update(control="shuffled"), "control"),
])
def test_misaligned_or_bad_pair_names_file_and_line(tmp_path, edit, message):
    path = _bad_file(tmp_path, edit)
    with pytest.raises(UserError, match=message) as err:
        load_pairs(path)
    assert f"{path}:3:" in str(err.value)


def test_the_shipped_files_are_small_and_compressed_reproducibly():
    for variable, name in FILES.items():
        packed = (DATA_DIR / name).read_bytes()
        assert len(packed) < 1_000_000, name  # 2.7 and 1.8 MB of lines
        assert packed[:2] == b"\x1f\x8b" and packed[4:8] == b"\0\0\0\0"  # gzip, time stamp 0
        assert gzip_bytes(shipped_text(variable).encode()) == packed


def _gzip_file(tmp_path, data: bytes, name="counterfactual_value.jsonl.gz"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_plain_file_and_the_first_lines_read_alike(tmp_path):
    text = "".join(shipped_text("value").splitlines(keepends=True)[:9])
    plain = tmp_path / "pairs.jsonl"
    plain.write_text(text)
    packed = _gzip_file(tmp_path, gzip_bytes(text.encode()))
    assert load_pairs(plain, "value") == load_pairs(packed, "value") == [json.loads(x) for x in text.splitlines()]
    assert load_pairs(packed, "value", limit=4) == load_pairs(plain)[:4]


def _damaged_member(tmp_path):
    packed = bytearray((DATA_DIR / FILES["value"]).read_bytes())
    packed[len(packed) // 2:len(packed) // 2 + 64] = bytes(64)  # 64 bytes of the deflate stream zeroed
    return _gzip_file(tmp_path, bytes(packed))


@pytest.mark.parametrize("make, message", [
    (_damaged_member, r"unreadable \((Error -3 while decompressing|CRC check failed).*\): damaged or truncated"),
    (lambda tmp: _gzip_file(tmp, (DATA_DIR / FILES["value"]).read_bytes()[:50_000]),  # cut off
     r"unreadable \(Compressed file ended before the end-of-stream marker.*\): damaged or truncated"),
    (lambda tmp: _gzip_file(tmp, (DATA_DIR / FILES["value"]).read_bytes()[:-4]),  # the size field cut off
     r"unreadable \(.+\): damaged or truncated"),
    (lambda tmp: _gzip_file(tmp, b"\x1f\x8b\x08"),  # a header cut off
     r"unreadable \(.+\): damaged or truncated"),
    (lambda tmp: _gzip_file(tmp, b"not gzip at all\n"), r"unreadable \(Not a gzipped file"),
    (lambda tmp: _gzip_file(tmp, gzip_bytes(b"{" + b" " * 70_000 + b"}\n")), r"\.gz:1: a line longer than 65,536 bytes"),
    (lambda tmp: _gzip_file(tmp, gzip_bytes(shipped_text("value").encode()[:1000])), r"\.gz:3: not valid JSON"),
    (lambda tmp: _gzip_file(tmp, gzip_bytes(b"\xff\n")), r"\.gz:1: not UTF-8 text"),
    (lambda tmp: _gzip_file(tmp, gzip_bytes(b"")), r"\.gz: file is empty"),
])
def test_a_damaged_or_truncated_file_is_a_one_line_error_naming_it(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(UserError, match=message) as err:
        load_pairs(path, "value")
    text = str(err.value)
    assert text.startswith(str(path)) and "\n" not in text and ("regenerate" in text or "empty" in text)


def test_a_decompression_bomb_stops_at_the_bound(tmp_path, monkeypatch):
    from src.data import counterfactual
    monkeypatch.setattr(counterfactual, "MAX_FILE_BYTES", 10_000)  # the shipped file holds 2.7 MB
    with pytest.raises(UserError, match=r"\.gz: more than 10,000 bytes decompressed"):
        load_pairs(DATA_DIR / FILES["value"])


def _generated_dir(tmp_path):
    """A copy of data/ as `python -m src.data --out` leaves it: the splits, the pair files and their manifest."""
    out = tmp_path / "data"
    out.mkdir()
    for name in (*(f"{n}.jsonl" for n in SHIPPED), *FILES.values(), MANIFEST):
        (out / name).write_bytes((DATA_DIR / name).read_bytes())
    return out


def test_pair_files_of_another_generation_than_their_directory_are_refused(tmp_path):
    # a generation over an old directory, stopped after the splits were replaced and before the pair files were:
    # the pair files (and their manifest) are the old generation's, drawn free of other files' near twins
    out = _generated_dir(tmp_path)
    assert len(load_pairs(out / FILES["operator"], "operator", limit=3)) == 3
    (out / "pilot_test_flat.jsonl").write_bytes((DATA_DIR / "pilot_test_paren.jsonl").read_bytes())  # another file
    with pytest.raises(UserError, match=r"counterfactual_operator.jsonl.gz: made against other data files than those "
                       r"beside it \(pilot_test_flat.jsonl differs from what counterfactual_manifest.json records\)"):
        load_pairs(out / FILES["operator"], "operator")


def test_a_pair_file_not_the_one_its_manifest_lists_is_refused(tmp_path):
    # stopped after one pair file was replaced: the other generation's file beside the old manifest
    out = _generated_dir(tmp_path)
    text = "".join(shipped_text("value").splitlines(keepends=True)[:30])
    (out / FILES["value"]).write_bytes(gzip_bytes(text.encode()))
    with pytest.raises(UserError, match=r"counterfactual_value.jsonl.gz: not the file counterfactual_manifest.json "
                       r"lists \(its sha256 differs\)"):
        load_pairs(out / FILES["value"], "value")
    (out / MANIFEST).write_text("{")
    with pytest.raises(UserError, match=r"counterfactual_manifest.json: unreadable"):
        load_pairs(out / FILES["value"], "value")


def test_wrong_variable_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="variable 'value', expected 'operator'"):
        load_pairs(DATA_DIR / FILES["value"], "operator")
    with pytest.raises(UserError, match="python -m src.data"):
        load_pairs(tmp_path / "absent.jsonl")


@pytest.mark.parametrize("argv, message", [
    (["--near-twin-free"], "--near-twin-free goes with --train-size N"),
    (["--counterfactual-against", "2000", "--seed", "7"], "regenerates the seed-42 pair files"),
])
def test_flags_that_do_not_go_together(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        data_cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_damaged_twins_file_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / data_cli.TWINS_FILE).write_text('{"schema": "other"}')
    monkeypatch.setattr(data_cli, "REPO_ROOT", tmp_path)
    with pytest.raises(UserError, match="git checkout data/counterfactual_train_twins.json"):
        data_cli._recorded_twins(42)
