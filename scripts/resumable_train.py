"""Train a run that may outlast one command: start it, or resume it where an earlier command left it,
and stop it cleanly before a wall-clock budget.

    python scripts/resumable_train.py --budget-s 540 -- --config configs/extension/ext_10m_n2000000.yaml \
        --output-dir runs/ext_10m --seeds 42,43,44 --device cuda --gpu-only --no-progress

Everything after `--` goes to `python -m src.train`. If the run directory (each OUTPUT_DIR/seedS for
--seeds) holds a checkpoint_latest.pt and is not finished, `--resume` is added: the run continues in
the same directory from its checkpoint, bit for bit as if it had never stopped (src.train's resume).
When --budget-s minus --grace-s has passed, the training gets SIGTERM, which src.train answers by
saving checkpoint_latest.pt (in the middle of an epoch if need be) and exiting; the same command run
again continues it. Exit status: 0 when every run is finished (already, or in this call); 75 when the
budget ended it with a checkpoint saved (run the same command again); otherwise src.train's own.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PAUSED = 75  # EX_TEMPFAIL: not done yet, run the same command again


def run_dirs(train_args: list[str]) -> list[Path]:
    """The run directories the src.train arguments name: --output-dir, or OUTPUT_DIR/seedS for --seeds."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # --seed is not --seeds
    p.add_argument("--output-dir")
    p.add_argument("--seeds")
    known, _ = p.parse_known_args(train_args)
    if not known.output_dir:
        raise SystemExit("resumable_train.py: the arguments after -- must give src.train its --output-dir")
    out = Path(known.output_dir)
    if known.seeds is None:
        return [out]
    return [out / f"seed{s.strip()}" for s in known.seeds.split(",") if s.strip()]


def finished(run: Path) -> bool:
    try:
        return json.loads((run / "summary.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def run_with_budget(command: list[str], budget_s: float, grace_s: float) -> tuple[int, bool]:
    """Run `command`; SIGTERM it once `budget_s - grace_s` seconds have passed, SIGKILL it if it has
    not ended `grace_s` later. Returns (exit status, whether the budget ended it)."""
    child = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        return child.wait(timeout=max(budget_s - grace_s, 0.0)), False
    except subprocess.TimeoutExpired:
        pass
    print(f"resumable_train.py: {budget_s - grace_s:.0f} s of the budget passed; stopping the training with SIGTERM "
          "(it saves checkpoint_latest.pt)", file=sys.stderr, flush=True)
    child.send_signal(signal.SIGTERM)
    try:
        return child.wait(timeout=grace_s), True
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait(), True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" in argv:
        cut = argv.index("--")
        own, train_args = argv[:cut], argv[cut + 1:]
    else:
        own, train_args = argv, []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="python scripts/resumable_train.py --budget-s S [--grace-s G] -- SRC.TRAIN ARGS")
    p.add_argument("--budget-s", type=float, required=True, help="wall-clock seconds this call may take in all")
    p.add_argument("--grace-s", type=float, default=60.0, help="seconds kept for the checkpoint after SIGTERM "
                   "(default 60; the 10M run saves in about a second)")
    p.add_argument("--python", default=sys.executable, help="the Python that runs src.train")
    args = p.parse_args(own)
    if not train_args:
        p.error("give src.train's arguments after --, e.g. -- --config C --output-dir D --device cuda")
    if "--resume" in train_args:
        p.error("leave --resume out: it is added when the run directory holds a checkpoint")
    runs = run_dirs(train_args)
    if all(finished(r) for r in runs):
        print(f"resumable_train.py: {', '.join(map(str, runs))}: finished already; nothing to do")
        return 0
    resume = any((r / "checkpoint_latest.pt").is_file() for r in runs)
    command = [args.python, "-m", "src.train", *train_args, *(["--resume"] if resume else [])]
    print(f"resumable_train.py: {'resuming' if resume else 'starting'} {', '.join(map(str, runs))} "
          f"(budget {args.budget_s:.0f} s): {' '.join(command[1:])}", flush=True)
    tic = time.perf_counter()
    rc, stopped = run_with_budget(command, args.budget_s, args.grace_s)
    took = time.perf_counter() - tic
    if rc == 0 and all(finished(r) for r in runs):
        print(f"resumable_train.py: finished in this call ({took:.0f} s)")
        return 0
    if rc == 0 or (stopped and all((r / "checkpoint_latest.pt").is_file() for r in runs)):
        print(f"resumable_train.py: not finished after {took:.0f} s; checkpoint_latest.pt is saved: run the same "
              "command again to continue", flush=True)
        return PAUSED
    if stopped:
        print(f"resumable_train.py: the budget ended the training after {took:.0f} s, before its first checkpoint "
              "(startup: data, compilation); give a longer --budget-s, and move away the run directory it left, "
              "which holds no checkpoint", file=sys.stderr)
    else:
        print(f"resumable_train.py: src.train exited with status {rc} after {took:.0f} s", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
