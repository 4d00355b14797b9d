"""The exploratory whole-bracket report (src/report/bracket_span.py): its table is the interchange files' own
figures, the committed BRACKET.md is what the report makes from the committed files, and bad input says what
to run."""

import gzip
import json
import shutil

import pytest

from src.errors import UserError
from src.report import bracket_span
from tests.conftest import REPO_ROOT

COMMITTED = REPO_ROOT / "results" / "study" / "exploratory"


def _copy(tmp_path, names=("bracket_pilot.json",)):
    """The committed files (stored compressed) into tmp_path, under the names given, unpacked."""
    for name in names:
        (tmp_path / name).write_bytes(gzip.decompress((COMMITTED / (name + ".gz")).read_bytes()))
    return tmp_path


def test_the_table_holds_each_site_s_figures_from_the_interchange_file(tmp_path):
    d = _copy(tmp_path)
    assert bracket_span.main(["--dir", str(d)]) == 0
    result = json.loads((d / "bracket_pilot.json").read_text())
    cells = result["variables"]["value"]["controls"]["interchange"]["cells"]
    kept = result["variables"]["value"]["controls"]["value_preserving"]["cells"]
    md = (d / "BRACKET.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| resid L")]
    assert rows, md
    for line in rows:
        site = line.split(" | ")[0][2:]
        fig = {c["position_class"]: c["iia"] for c in cells if c["site"] == site}
        expected = [fig[cls] for cls in ("inside", "close", "bracket")]
        expected.append(next(c["kept_base"] for c in kept if c["site"] == site and c["position_class"] == "bracket"))
        shown = line.strip("| ").split(" | ")[3:]
        assert shown == [f"{p['value']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]" for p in expected], line
    first = next(c for c in cells if c["position_class"] == "bracket" and c["kind"] != "head"
                 and c["iia"]["value"] < bracket_span.FALLEN)
    assert f"first falls below {bracket_span.FALLEN} at {first['site']}" in md
    assert (d / "bracket_span.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_committed_report_is_what_the_committed_files_make(tmp_path):
    names = [n for n in bracket_span.SCALES.values() if (COMMITTED / (n + ".gz")).exists()]
    assert names, "no committed interchange file in results/study/exploratory"
    d = tmp_path
    for name in names:  # as committed, compressed
        shutil.copy(COMMITTED / (name + ".gz"), d / (name + ".gz"))
    assert bracket_span.main(["--dir", str(d)]) == 0
    made = (d / "BRACKET.md").read_text().replace(str(d), "results/study/exploratory")
    assert made == (COMMITTED / "BRACKET.md").read_text()


def test_no_file_names_the_command_that_makes_one(tmp_path):
    with pytest.raises(UserError, match=r"neither bracket_pilot.json nor bracket_10m.json.*--classes inside,close,bracket"):
        bracket_span.main(["--dir", str(tmp_path)])


def test_a_file_without_the_whole_bracket_class_says_how_to_make_it(tmp_path):
    d = _copy(tmp_path)
    result = json.loads((d / "bracket_pilot.json").read_text())
    for control in result["variables"]["value"]["controls"].values():
        control["cells"] = [c for c in control["cells"] if c["position_class"] != "bracket"]
    (d / "bracket_pilot.json").write_text(json.dumps(result))
    with pytest.raises(UserError, match=r"bracket_pilot.json: position classes \['close', 'inside'\], not inside, "
                                        r"close, bracket; make it with `python -m src.analysis.interchange"):
        bracket_span.main(["--dir", str(d)])
