"""Parentheses in arithmetic: a 0.66M pilot transformer and its 10.65M scale-up.

`python -m src.<command>` imports this package first, before the command's own
imports (torch takes seconds): Ctrl-C in that time ends in the one line and exit status 130 of any
other moment (src.errors.run_main, which every command runs through, puts the usual handler back).
A script (verify_10m_config.py) asks for the same with `exit_on_sigint_while_importing()`."""

import sys

INTERRUPTED = "interrupted: files already written are intact; a training run continues with --resume\n"


def _importing(frame) -> bool:
    """Whether the signal arrived inside an import (a frame of importlib's bootstrap on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _interrupted_at_start_up(signum, frame):
    """Inside an import the process ends at once (os._exit): an exception raised there is not safe. numpy's C
    extension, interrupted while it initialises, fails its next import with a traceback, and an import may
    lose the exception, so that the command would go on. The command has written nothing yet. Outside an
    import (a module without run_main), SystemExit unwinds as usual."""
    import os

    if _importing(frame):
        os.write(2, INTERRUPTED.encode())
        os._exit(130)
    sys.stderr.write(INTERRUPTED)
    raise SystemExit(130)


def exit_on_sigint_while_importing() -> None:
    """Ctrl-C until run_main starts the command: the one line and exit status 130."""
    import signal

    signal.signal(signal.SIGINT, _interrupted_at_start_up)


if sys.argv[:1] == ["-m"]:  # set so while python -m is still importing the command's module
    exit_on_sigint_while_importing()
