"""The study's committed report agrees with its committed runs: PRIMARY.md and primary.json are what
`python -m src.report.study` makes from results/study today, and the README counts the runs that are there."""

import json
import re

import pytest

from src.errors import run_main
from src.report import study
from tests.tiny import REPO_ROOT

RESULTS = REPO_ROOT / "results" / "study"
TOTAL = len(study.REGISTERED_SEEDS) * len(study.SCALES)


def committed_seeds() -> list[str]:
    """<config>/seed<S> of every seed whose run and battery are committed."""
    return sorted(f"{d.parent.name}/{d.name}" for d in RESULTS.glob("study_*/seed*")
                  if (d / "summary.json").is_file() and any((d / f).is_file() for f in ("battery.json", "battery.json.gz")))


def answer_sentences(readme: str) -> list[str] | None:
    """The sentences of the README's section '## The answer' (None without one); links are dropped first, since
    their paths hold dots that end no sentence."""
    section = re.search(r"^## The answer\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    if not section:
        return None
    prose = re.sub(r"\]\([^)]*\)", "]", section[1])
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[-*A-Z])", prose.strip()) if s.strip()]


def untied(sentences: list[str]) -> list[str]:
    """The sentences that name no primary test (H1, H2, H3) and are not labelled exploratory."""
    return [s for s in sentences if not re.search(r"\bH[123]\b|exploratory", s, re.I)]


def test_the_readme_counts_the_committed_runs():
    n = len(committed_seeds())
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    if n < TOTAL:
        assert f"({n} of {TOTAL} runs)" in readme, f"README.md should say the study is at {n} of {TOTAL} runs"
    else:  # the study is in: the README answers in at most five sentences, each tied to a test or labelled
        assert not re.search(rf"\(\d+ of {TOTAL} runs\)", readme), "README.md still calls the study under way"
        sentences = answer_sentences(readme)
        assert sentences is not None, "README.md has no section '## The answer'"
        assert 1 <= len(sentences) <= 5, f"the answer has {len(sentences)} sentences, at most 5 allowed"
        assert not untied(sentences), f"sentences tied to no test and not labelled exploratory: {untied(sentences)}"


def test_the_answer_check_counts_sentences_and_finds_an_untied_one():
    readme = ("# T\n\n## The answer\n\n- H1: the 10M model is ahead by +0.29 [0.26, 0.32] "
              "([PRIMARY.md](results/study/PRIMARY.md)).\n- H2 cannot decide at power 0.10. Exploratory: brackets that "
              "change the value cost more at 10M (bracket_cost.png). The pilot is small.\n\n## Next\n\ntext. More.\n")
    sentences = answer_sentences(readme)
    assert len(sentences) == 4
    assert untied(sentences) == ["The pilot is small."]
    assert answer_sentences("# T\n\n## Results\n\nNo answer.\n") is None


@pytest.mark.slow
def test_the_committed_primary_report_is_what_the_committed_runs_give(tmp_path, capsys):
    partial = len(committed_seeds()) < TOTAL
    argv = ["--results", str(RESULTS), "--out", str(tmp_path)] + (["--partial"] if partial else [])
    assert run_main(study.main, argv) == 0
    # the files name where they were read from: the same place, written as the command was given it
    made = json.loads((tmp_path / "primary.json").read_text().replace(json.dumps(str(RESULTS))[1:-1], "results/study"))
    committed = json.loads((RESULTS / "primary.json").read_text())
    for doc in (made, committed):  # where it was read from and written to, not what it says
        doc.pop("results")
        doc["registration"].pop("link")
    assert made == committed, "results/study/primary.json is stale: run python -m src.report.study" + \
        (" --partial" if partial else "")
    made_md = (tmp_path / "PRIMARY.md").read_text().replace(str(RESULTS), "results/study")
    committed_md = (RESULTS / "PRIMARY.md").read_text()
    link = re.compile(r"\]\([^)]*PREREGISTRATION\.md\)")
    assert link.sub("](REGISTRATION)", made_md) == link.sub("](REGISTRATION)", committed_md)
