"""SIGINT and SIGTERM for the long commands (training, data generation): they stop at a safe point,
with what was written intact."""

from __future__ import annotations

import signal
import sys
import threading

from src.errors import UserError


class Interrupted(UserError):
    """SIGINT or SIGTERM: the run stopped where it could be continued, or before it began."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum  # what the shell reports for a death by that signal


class StopSignals:
    """SIGINT and SIGTERM. While `deferring` (the training loop), a signal is noted and acted on
    after the current step: checkpoint_latest.pt is saved, then Interrupted is raised. At any other
    moment it raises Interrupted at once; every write is atomic, so nothing is left half-written."""

    def __init__(self, run_hint: str):
        self.signum, self.deferring, self.run_hint, self._previous = None, False, run_hint, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum, frame) -> None:
        if self.deferring and self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this step; saving checkpoint_latest.pt",
                  file=sys.stderr, flush=True)
            return
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}; files already written are intact. "
                          + self.run_hint)

    def interrupted(self, runs: list, epoch: int, step: int, epoch_done: bool, resume: str) -> Interrupted:
        """The Interrupted that ends a run (or several seeds' runs, `runs`: SeedRun) whose
        checkpoint_latest.pt was just saved; `resume` is the command that continues it."""
        name = signal.Signals(self.signum).name
        where = f"after epoch {epoch} (step {step})" if epoch_done else f"in epoch {epoch} at step {step}"
        saved = (f"{runs[0].run.path / 'checkpoint_latest.pt'} is saved" if len(runs) == 1 else
                 "checkpoint_latest.pt is saved in each of " + ", ".join(str(r.run.path) for r in runs))
        return Interrupted(self.signum, f"interrupted by {name} {where}: {saved}. Continue with: {resume}")
