"""scripts/schedule_figure.py: its table is the one results/schedules/README.md shows, and a budget keeps its
colour in both panels."""

import importlib.util
from pathlib import Path

from tests.tiny import REPO_ROOT

spec = importlib.util.spec_from_file_location("schedule_figure", REPO_ROOT / "scripts" / "schedule_figure.py")
schedule_figure = importlib.util.module_from_spec(spec)
spec.loader.exec_module(schedule_figure)


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("| pilot (", "| 10M ("))]


def test_the_committed_table_is_what_the_committed_runs_give(tmp_path, capsys):
    assert schedule_figure.main(["--out", str(tmp_path)]) == 0
    made = table_rows(capsys.readouterr().out)
    assert (tmp_path / "val_curves.png").stat().st_size > 10_000
    committed = table_rows((REPO_ROOT / "results" / "schedules" / "README.md").read_text())
    assert made == committed
    assert any("| 10M (10.65M) | 4x | packed | 42 |" in row for row in made)


def test_a_budget_has_one_colour_in_both_panels():
    runs = {"pilot": {"1x": Path("a"), "1x fp32": Path("b"), "2x": Path("c"), "4x": Path("d")},
            "10m": {"1x": Path("e"), "2x": Path("f"), "4x": Path("g"), "16x": Path("h")}}
    colour = schedule_figure.budget_colours(runs)
    assert list(colour) == ["1x", "1x fp32", "2x", "4x", "16x"]
    assert len(set(colour.values())) == len(colour)
