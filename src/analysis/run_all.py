"""The whole post-training battery on one run, in one process.

    python -m src.analysis.run_all --run D [--device cuda] [--only ablate,roles,...] [--limit N]

Runs, in this order, each with its defaults and writing its own files into D:
    ablate        head scan under zero and mean ablation on test_flat, the matched pairs, test_paren
                  and test_depth3 (exact McNemar / paired t, Holm), targeted set chosen on one half
                  and tested on the other                            -> ablation.json
    roles         each head's attention role (matching '(', previous token, operator, '=')
                                                                     -> roles.json
    probe         depth probes at every site against an untrained control, depth 0-2 and depth 3
                                                                     -> probe.json
    patching      activation patching on the matched pairs, both directions, residual stream per
                  layer and position class, every head's output      -> patching.json
    value_probe   intermediate values (what a ')' closes, the running result at an operator),
                  against the control and the copy baseline          -> value_probe.json
One process: Python, torch and the data are loaded once, and each step's own checks (the run, the
checkpoint, the flags) still apply. A step that fails is reported and the others still run; the
exit status is then 1. D/battery.json (schema battery/1) records each step's command, wall time and
outcome, the device and the total: the battery's own benchmark (target: at most 60 s for a 10M
run on an H100).
"""

from __future__ import annotations

import argparse
import importlib
import io
import time
import traceback
from contextlib import redirect_stdout
from pathlib import Path

import torch

from src.rundir.atomic import atomic_write_json
from src.cli import MAX_EXAMPLES, ArgumentParser, comma_list, int_in
from src.errors import UserError, run_main
from src.rundir.results import stamp

STEPS = ("ablate", "roles", "probe", "patching", "value_probe")
OUTPUTS = {"ablate": "ablation.json", "roles": "roles.json", "probe": "probe.json", "patching": "patching.json",
           "value_probe": "value_probe.json"}


def step_main(name: str):
    """The step's main(argv) (imported when the step runs, so that --help stays quick)."""
    return importlib.import_module(f"src.analysis.{name}").main


def run_step(name: str, argv: list[str], quiet: bool) -> dict:
    tic = time.perf_counter()
    sink = io.StringIO()
    try:
        if quiet:
            with redirect_stdout(sink):
                rc = run_main(step_main(name), argv)
        else:
            rc = run_main(step_main(name), argv)
        error = None if rc == 0 else f"exit status {rc}"
    except Exception as err:  # noqa: BLE001  (one step's crash must not cost the others)
        rc, error = 1, f"{type(err).__name__}: {err}"
        traceback.print_exc()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return {"step": name, "command": f"python -m src.analysis.{name} " + " ".join(argv), "status": "ok" if rc == 0 else "failed",
            "error": error, "wall_s": time.perf_counter() - tic}


def parse_args(argv):
    p = ArgumentParser(prog="python -m src.analysis.run_all", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="run directory written by src.train (or src.sweep)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda, passed to every step (default: cuda when available)")
    p.add_argument("--only", type=comma_list(STEPS, what=f"steps from {', '.join(STEPS)}"), default=list(STEPS),
                   metavar="STEP,...", help=f"these steps only, in the battery's order (default: all of {', '.join(STEPS)})")
    p.add_argument("--limit", type=int_in(1, MAX_EXAMPLES), default=None, metavar="N",
                   help="passed to every step: only the first N examples of each split (CPU smoke runs; the "
                   "results are then not the study's figures)")
    p.add_argument("--quiet", action="store_true", help="keep the steps' own tables off the terminal")
    p.add_argument("--debug", action="store_true", help="show a traceback on error")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.run.is_dir():
        raise UserError(f"--run {args.run}: not a directory; pass a run directory written by src.train")
    common = ["--run", str(args.run), "--device", args.device] + (["--limit", str(args.limit)] if args.limit else [])
    tic = time.perf_counter()
    steps = []
    for name in [s for s in STEPS if s in args.only]:
        print(f"== battery: {name}", flush=True)
        steps.append(run_step(name, common, args.quiet))
        s = steps[-1]
        print(f"== battery: {name} {s['status']} in {s['wall_s']:.1f} s" + (f" ({s['error']})" if s["error"] else ""),
              flush=True)
    total = time.perf_counter() - tic
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    record = stamp("battery", {"run": str(args.run), "device": device, "torch": torch.__version__,
              "limit": args.limit, "steps": steps, "outputs": {s["step"]: OUTPUTS[s["step"]] for s in steps},
              "total_s": total, "failed": [s["step"] for s in steps if s["status"] != "ok"]})
    atomic_write_json(args.run / "battery.json", record)
    print(f"battery: {len(steps)} step(s) in {total:.1f} s on {device}; "
          + (f"FAILED: {', '.join(record['failed'])}" if record["failed"] else "all ok")
          + f"; wrote {args.run / 'battery.json'}")
    return 1 if record["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
