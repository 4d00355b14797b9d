"""argparse types shared by every command line: numbers range-checked, lists parsed strictly.

A bad value is refused before anything is read, built or written. With the standard
argparse.ArgumentParser it ends in argparse's own error (the usage line, then `error: argument
--flag: ...`, exit 2); the analysis commands use `ArgumentParser` below, which makes every command-line
mistake a one-line UserError (`error: --flag VALUE: what is wrong`, exit 2 through run_main):

    int_in(low, high)                 an integer written in digits, low <= n <= high (None: no bound)
    float_in(low, high, finite=True)  a number, low <= x <= high; nan and inf refused unless finite=False
    comma_list(choices, item)         "a,b": no empty item, no item twice, each one of `choices`
                                      (or turned into a value by `item`, which raises ValueError)

Sizes that allocate memory or time in proportion to a flag (bootstrap resamples, iterations) have
stated maxima here, so that `--resamples 1e11` is an error and not an allocation that never ends.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable, Iterable

from src.errors import UserError

MAX_RESAMPLES = 10**6      # bootstrap resamples: 10^6 x a few thousand expressions is already minutes
MAX_EXAMPLES = 10**9       # --limit: far above any split; a larger number is a typo
MAX_ITERATIONS = 10**5     # L-BFGS iterations per probe fit
MAX_SEED = 2**63 - 2       # torch seeds are 64-bit (the same bound as src.train --seed)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors: one line naming the flag and the value, exit status 2
    through src.errors.run_main, never a usage dump or a SystemExit half-way through a caller."""

    @classmethod
    def from_doc(cls, prog: str, doc: str) -> "ArgumentParser":
        """A parser whose description is the module docstring's first paragraph and whose epilog is the
        rest, kept as written (the report commands' --help is their docstring)."""
        first, *rest = doc.split("\n\n")
        return cls(prog=prog, description=first, epilog="\n\n".join(rest),
                   formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str):
        found = re.match(r"argument ([^:]+): (.*)$", message, re.S)
        if found:
            flag = found.group(1).split("/")[-1]
            message = f"{flag} {found.group(2)}"
        raise UserError(f"{' '.join(message.split())} (see {self.prog} --help)")


def _show(text: str) -> str:
    """The value as a message shows it: quoted where spaces or a leading comma would hide it, and
    shortened past 60 characters (a 100,000-digit seed makes a message of one line, not of 100,000)."""
    if len(text) > 60:
        return f"{text[:24]!r}...{text[-12:]!r} ({len(text):,} characters)"
    return text if text.strip() and text == text.strip() and "," not in text[:1] else repr(text)


def _item(text: str) -> str:
    """One item of a list as a message quotes it, shortened like _show."""
    return repr(text) if len(text) <= 60 else _show(text)


def _bounds(low, high) -> str:
    if low is not None and high is not None:
        return f"at least {low} and at most {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def int_in(low: int | None, high: int | None) -> Callable[[str], int]:
    """argparse type: an integer written in digits (no 1e6, no 2.0) from `low` to `high`."""
    def parse(text: str) -> int:
        stripped = text.strip()
        digits = stripped.lstrip("+-")
        value = int(stripped) if digits.isascii() and digits.isdigit() and len(digits) <= 30 else None
        if value is None or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{_show(text)}: must be an integer written in digits, {_bounds(low, high)}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message when the parse fails otherwise
    return parse


def float_in(low: float | None, high: float | None, finite: bool = True) -> Callable[[str], float]:
    """argparse type: a number from `low` to `high`; nan and +-inf are refused when `finite`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        ok = value is not None and not math.isnan(value) and (not finite or math.isfinite(value))
        if not ok or (low is not None and value < low) or (high is not None and value > high):
            what = "a finite number (not nan or inf)" if finite else "a number (not nan)"
            raise argparse.ArgumentTypeError(f"{_show(text)}: must be {what}, {_bounds(low, high)}")
        return value

    parse.__name__ = "number"
    return parse


def comma_list(choices: Iterable[str] | None = None, item: Callable[[str], object] | None = None,
               what: str = "a comma-separated list of distinct items") -> Callable[[str], list]:
    """argparse type: a comma-separated list; an empty item, a repeated item or an unknown one is an error.

    Items are stripped of spaces; `item` turns each into its value (its ValueError says what is
    wrong with the item), and repeats are found on those values (so 0.1 and L0-H1 are one head).
    Every message ends with `what`, the form the flag takes."""
    choices = tuple(choices) if choices is not None else None

    def fail(text: str, why: str):
        raise argparse.ArgumentTypeError(f"{_show(text)}: {why}; write {what}")

    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            fail(text, "an empty item (no empty items)")
        values = []
        for p in parts:
            if choices is not None and p not in choices:
                fail(text, f"unknown item {_item(p)}")
            try:
                value = item(p) if item is not None else p
            except ValueError as err:
                fail(text, f"{_item(p)}: {err}")
            if value in values:
                fail(text, f"{_item(p)} is listed twice")
            values.append(value)
        return values

    parse.__name__ = "list"
    return parse


def distinct(values: list, flag: str, choices: Iterable[str] | None = None) -> list:
    """The values of an `nargs` flag, checked like a comma_list: a UserError naming the flag for a
    value given twice or one that is not among `choices`."""
    choices = tuple(choices) if choices is not None else None
    for i, value in enumerate(values):
        if choices is not None and value not in choices:
            raise UserError(f"{flag}: unknown value {value!r}; choose from {' '.join(choices)}")
        if value in values[:i]:
            raise UserError(f"{flag}: {value!r} is given twice; name each once")
    return list(values)


from src.rundir.paths import check_output_file  # noqa: E402,F401 - re-exported: the analysis commands import it here


def interrupted(argv=None) -> int:
    """What an entry point runs through src.errors.run_main when Ctrl-C arrives while its imports
    (torch takes seconds) are still running: the one line and exit status 130 of any other moment."""
    raise KeyboardInterrupt


def path_arg(text: str):
    """argparse type: a path, never empty (`Path("")` is the current directory, so `--out ''` would write there)."""
    from pathlib import Path

    if text == "":
        raise argparse.ArgumentTypeError("'': the path is empty; give a path ('.' for the current directory)")
    return Path(text)


path_arg.__name__ = "path"


def seed_value(text: str) -> int:
    """One seed of --seeds: an integer in [0, MAX_SEED] (ValueError says what is wrong)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError("not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"out of range [0, {MAX_SEED}]")
    return value
