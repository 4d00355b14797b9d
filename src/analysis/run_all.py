"""The whole post-training battery on one run, in one process.

    python -m src.analysis.run_all --run D [--device cuda] [--only ablate,roles,...] [--limit N]

Runs, in this order, each with its defaults and writing its own files into D:
    evaluate      exact_match and the other metrics on every held-out file, the bracket cost of both kinds
                  (redundant, precedence-changing) and the near-twin-free subsets       -> eval.json
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
    interchange   interchange interventions on the counterfactual pair files: IIA of each causal variable
                  at every site and position class, with its controls  -> interchange.json
One process: the run is opened once (its checkpoint read, the model built) and each data file read
once; every step is a function of that opened run and its own flags, whose checks still apply. A
failure that every step shares (the run cannot be opened: no checkpoint yet, a training still
writing into it, an interrupted run) stops the battery before its first step, with one message and
no battery.json. A step that fails alone is reported and the others still run; the exit status is
then 1. D/battery.json (schema battery/1) records each step's command, wall time and outcome, the
device and the total: the battery's own benchmark (target: at most 90 s for a 10M run, interchange
interventions included; BENCHMARKS.md has the measured times).
Under --limit N every file is named NAME.limitN.json (battery.limitN.json too), beside the full-data
ones.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
import time
import traceback
from contextlib import redirect_stdout

import torch

from src.analysis.common import Run, RunData, add_run_arguments, limited_name, open_run
from src.cli import ArgumentParser, comma_list
from src.errors import UserError, bounded, run_main
from src.rundir.atomic import atomic_write_json
from src.rundir.results import stamp

STEPS = ("evaluate", "ablate", "roles", "probe", "patching", "value_probe", "interchange")
OUTPUTS = {"evaluate": "eval.json", "ablate": "ablation.json", "roles": "roles.json", "probe": "probe.json",
           "patching": "patching.json", "value_probe": "value_probe.json", "interchange": "interchange.json"}
RUNNERS = {"evaluate": "evaluate_run", "ablate": "ablate_run", "roles": "roles_run", "probe": "probe_run",
           "patching": "patching_run", "value_probe": "value_probe_run",
           "interchange": "interchange_run"}  # each module's function of (Run, RunData, its parsed flags)


def step_module(name: str):
    """The step's module (imported when the step runs, so that --help stays quick)."""
    return importlib.import_module(f"src.analysis.{name}")


def run_step(name: str, run: Run, data: RunData, argv: list[str], quiet: bool) -> dict:
    """One step on the opened run: its own flags parsed from `argv` (its defaults, its checks), then its
    function called; a failure is recorded, never raised."""
    tic = time.perf_counter()
    error = None
    try:
        module = step_module(name)
        args = module.build_parser().parse_args(argv)
        with redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            getattr(module, RUNNERS[name])(run, data, args)
    except UserError as err:
        error = str(err)
        print(f"error: {bounded(err)}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001  (one step's crash must not cost the others)
        error = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return {"step": name, "command": f"python -m src.analysis.{name} " + " ".join(argv),
            "status": "ok" if error is None else "failed", "error": error, "wall_s": time.perf_counter() - tic}


def parse_args(argv):
    p = ArgumentParser(prog="python -m src.analysis.run_all", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--only", type=comma_list(STEPS, what=f"steps from {', '.join(STEPS)}"), default=list(STEPS),
                   metavar="STEP,...", help=f"these steps only, in the battery's order (default: all of {', '.join(STEPS)})")
    p.add_argument("--quiet", action="store_true", help="keep the steps' own tables off the terminal")
    return p.parse_args(argv)


def step_argv(args) -> list[str]:
    """The run flags every step is given: the battery's own."""
    argv = ["--run", str(args.run), "--device", args.device, "--checkpoint", args.checkpoint,
            "--precision", args.precision]
    return argv + (["--limit", str(args.limit)] if args.limit else []) + (["--no-progress"] if args.no_progress else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    tic = time.perf_counter()
    run = open_run(args)  # what every step shares: a failure here ends the battery with one message
    data = RunData(run.cfg, run.limit, run.device)
    common = step_argv(args)
    if run.limit is not None:
        print(run.titled("battery"), flush=True)
    steps = []
    for name in [s for s in STEPS if s in args.only]:
        print(f"== battery: {name}", flush=True)
        steps.append(run_step(name, run, data, common, args.quiet))
        s = steps[-1]
        print(f"== battery: {name} {s['status']} in {s['wall_s']:.1f} s" + (f" ({s['error']})" if s["error"] else ""),
              flush=True)
    total = time.perf_counter() - tic
    device = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu"
    record = stamp("battery", {"run": str(run.path), "checkpoint": run.checkpoint, "device": device,
                               "torch": torch.__version__, "limit": run.limit, "steps": steps,
                               "outputs": {s["step"]: limited_name(OUTPUTS[s["step"]], run.limit) for s in steps},
                               "total_s": total, "failed": [s["step"] for s in steps if s["status"] != "ok"]})
    path = run.output("battery.json")
    atomic_write_json(path, record)
    print(f"battery: {len(steps)} step(s) in {total:.1f} s on {device}; "
          + (f"FAILED: {', '.join(record['failed'])}" if record["failed"] else "all ok") + f"; wrote {path}")
    return 1 if record["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
