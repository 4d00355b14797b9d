"""One exception type for mistakes a user can fix, and the one place that reports them.

Entry points wrap `main` in `run_main`: a `UserError` becomes one or two plain lines on stderr
and exit status 2; a traceback is printed only with `--debug`.
"""

import errno
import sys


class GpuOnlyError(RuntimeError):
    """--gpu-only could not be honoured; raised before anything is read, built or written."""


class UserError(Exception):
    """A bad input: says what is wrong, where (file:line, config key, flag) and what to do."""

    exit_code = 2


def write_failed(path, err: OSError) -> UserError:
    """The UserError for a file that could not be written (full disk, lost mount, permissions)."""
    message = f"{path}: could not be written ({err.strerror or err}); the previous version, if any, is intact"
    if err.errno == errno.ENOSPC:
        message += ". The disk is full: free some space and run again (a training run continues with --resume)"
    return UserError(message)


def ignore_interrupts() -> None:
    """The initializer of worker processes: SIGINT and SIGTERM are the parent's to handle (it stops its
    workers and removes its temporary files), so that Ctrl-C, which reaches the whole process group,
    does not end a worker half-way through a task and leave the pool broken."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


MAX_MESSAGE = 1000  # characters: no input, however large, makes a long message


def bounded(message: str) -> str:
    """One line of at most MAX_MESSAGE characters."""
    message = " ".join(str(message).split())
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 40] + f" ... ({len(message)} characters)"


def run_main(main, argv=None) -> int:
    """Run `main(argv)`; turn a UserError into a short message and exit status 2.

    Nothing ends in a traceback without --debug: an OSError nobody translated is reported by its
    file and reason (exit 2), and any other exception as what it is, a bug (exit 1)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    import signal

    if getattr(signal.getsignal(signal.SIGINT), "__name__", "") == "_interrupted_at_start_up":  # src/__init__.py's
        signal.signal(signal.SIGINT, signal.default_int_handler)
    directory = sys.modules.get("src.rundir.directory")
    held = set(directory._SHARED) if directory is not None else set()
    try:
        return _run(main, argv, debug)
    finally:
        directory = sys.modules.get("src.rundir.directory")
        for run in set(directory._SHARED) - held if directory is not None else ():
            directory.release_shared(run)  # the shared locks this command took on the runs it read


def _run(main, argv, debug: bool) -> int:
    try:
        return main(argv) or 0
    except UserError as err:
        if debug:
            raise
        print(f"error: {bounded(err)}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {bounded(where + (err.strerror or str(err)))}; nothing half-written is left (every output "
              "is written atomically)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted: files already written are intact; a training run continues with --resume",
              file=sys.stderr)
        return 130
    except GpuOnlyError as err:
        # the device policy's refusals are RuntimeErrors by contract (the checklist's GPU-only rule): reported plainly
        if debug:
            raise
        print(f"error: {bounded(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # a bug: say so in one line; --debug shows where
        if debug:
            raise
        print(f"error: internal error ({type(err).__name__}: {bounded(err)[:300]}). This is a bug: rerun with --debug "
              "for the traceback and report it", file=sys.stderr)
        return 1
