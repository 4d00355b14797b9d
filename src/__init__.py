"""Parentheses in arithmetic: a 0.66M pilot transformer and its 10.65M scale-up.

`python -m src.<command>` imports this package first, before the command's own
imports (torch takes seconds): Ctrl-C in that time ends in the one line and exit status 130 of any
other moment (src.errors.run_main, which every command runs through, puts the usual handler back)."""

import sys

if sys.argv[:1] == ["-m"]:  # set so while python -m is still importing the command's module
    import signal

    def _interrupted_at_start_up(signum, frame):
        sys.stderr.write("interrupted: files already written are intact; a training run continues with --resume\n")
        raise SystemExit(130)

    signal.signal(signal.SIGINT, _interrupted_at_start_up)
