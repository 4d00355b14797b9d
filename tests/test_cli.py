"""The argument parsing of src/cli.py that every analysis command shares: numbers in range and written in
digits, strict comma lists, refused before anything is read or written. docs/RELIABILITY.md lists the cases.
"""

import pytest

from src.analysis import ablate, probe
from tests.analysis_runs import (
    ANALYSES,
    copy_run,
    expect_error,
    expect_user_error,
    snapshot,
)
from tests.runs import cli

# ---------------------------------------------------------------------------- numeric and list flags of the analysis commands (docs/RELIABILITY.md)


BAD_FLAGS = [
    # (tool, argv, what the message must name)
    ("probe", ["--resamples", "0"], "--resamples"),
    ("probe", ["--resamples", "99"], "--resamples"),
    ("probe", ["--resamples", "1e11"], "--resamples"),
    ("probe", ["--resamples", str(10**11)], "--resamples"),
    ("probe", ["--l2", "nan"], "--l2"),
    ("probe", ["--l2", "inf"], "--l2"),
    ("probe", ["--l2", "-1"], "--l2"),
    ("probe", ["--l2", "abc"], "--l2"),
    ("probe", ["--max-iter", "0"], "--max-iter"),
    ("probe", ["--max-iter", str(10**9)], "--max-iter"),
    ("probe", ["--seed", "-1"], "--seed"),
    ("probe", ["--seed", str(2**64)], "--seed"),
    ("probe", ["--splits", "test_nope"], "--splits"),
    ("probe", ["--splits", "test_flat", "test_flat"], "--splits"),
    ("roles", ["--splits", "test_paren", "test_paren"], "--splits"),
    ("roles", ["--splits", "test_nope"], "--splits"),
    ("ablate", ["--max-set-size", "0"], "--max-set-size"),
    ("ablate", ["--max-set-size", "-3"], "--max-set-size"),
    ("ablate", ["--max-set-size", "1e11"], "--max-set-size"),
    ("ablate", ["--max-set-size", str(10**11)], "--max-set-size"),
    ("ablate", ["--heads", ","], "--heads"),
    ("ablate", ["--heads", ""], "--heads"),
    ("ablate", ["--heads", "0.1,,1.2"], "--heads"),
    ("ablate", ["--heads", "0.1,0.1"], "--heads"),
    ("ablate", ["--heads", "0.1.2"], "--heads"),
    ("ablate", ["--heads", "9.0"], "--heads"),
    ("ablate", ["--modes", "zero,,mean"], "--modes"),
    ("ablate", ["--modes", ","], "--modes"),
    ("ablate", ["--modes", ""], "--modes"),
    ("ablate", ["--modes", "zero,zero"], "--modes"),
    ("ablate", ["--modes", "median"], "--modes"),
    ("ablate", ["--resamples", "1e11"], "--resamples"),
    *[(tool, ["--limit", limit], "--limit") for tool in ANALYSES for limit in ("0", "-5", "1e11", "x")],
]


@pytest.mark.parametrize("tool, argv, flag", BAD_FLAGS, ids=[f"{t}{' '.join(a)}" for t, a, _ in BAD_FLAGS])
def test_bad_flags_are_refused_before_anything_is_read_or_written(analysis_run, tmp_path, capsys, tool, argv, flag):
    run = copy_run(analysis_run, tmp_path)
    before = snapshot(run)
    err = expect_error(cli(ANALYSES[tool], ["--run", run, "--device", "cpu", *argv], capsys), flag)
    assert len(err.strip().splitlines()) <= 2, err  # the usage line and one error line at most
    assert snapshot(run) == before


def test_resamples_has_a_stated_maximum(capsys):
    from src.cli import MAX_RESAMPLES

    assert MAX_RESAMPLES == 10**6
    expect_user_error(cli(probe.main, ["--run", "x", "--resamples", str(MAX_RESAMPLES + 1)], capsys),
                      "--resamples 1000001", "at most 1000000")


@pytest.mark.parametrize("argv", [["--heads", "0.1, 1.2"], ["--heads", "L0-H1,L1-H2"], ["--modes", "mean,zero"]])
def test_good_lists_still_parse(argv):
    parser = ablate.build_parser()
    args = parser.parse_args(["--run", "x", *argv])
    assert args.heads in (None, [(0, 1), (1, 2)]) and args.modes in (["zero", "mean"], ["mean", "zero"])


def test_cli_helpers():
    import argparse

    from src.cli import comma_list, float_in, int_in

    assert int_in(1, 5)("5") == 5 and int_in(1, None)(str(10**20)) == 10**20
    for bad in ("0", "6", "1e3", "1.0", "", " ", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            int_in(1, 5)(bad)
    assert float_in(0, None)("1e-4") == 1e-4 and float_in(0, 1)("1") == 1.0
    for bad in ("nan", "inf", "-inf", "-1e-9", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            float_in(0, None)(bad)
    parse = comma_list(choices=("a", "b"))
    assert parse("a,b") == ["a", "b"] and parse(" b , a ") == ["b", "a"]
    for bad in ("", ",", "a,", ",a", "a,,b", "a,a", "c"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_a_parser_from_a_docstring_shows_the_first_paragraph_above_the_flags_and_the_rest_below_as_written():
    from src.cli import ArgumentParser

    p = ArgumentParser.from_doc("python -m x", "What it does.\n\n    python -m x --n 3\n\nMore text.")
    p.add_argument("--n", type=int, default=1, help="how many")
    text = p.format_help()
    assert text.index("What it does.") < text.index("options:") < text.index("  --n N  ") < text.index(
        "    python -m x --n 3\n\nMore text.")
