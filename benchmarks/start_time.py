"""Start-up time of a new Python process with and without cached bytecode.

    python -m benchmarks.start_time                                  # torch, its compiler, src.train
    python -m benchmarks.start_time --imports json --repeats 1       # any import statement's modules

Every process the launcher starts (`verify_10m_config.py`, `src.train`, the compiler's workers) imports
torch. Python reads a module's cached bytecode (`__pycache__/*.pyc`) when there is one and compiles the
source otherwise; pip writes that cache when it installs a package, but an environment with
`PYTHONDONTWRITEBYTECODE=1` and a package tree without `__pycache__` compiles torch's Python source in every
process. This times both in one call, each import in a new process, with `PYTHONPYCACHEPREFIX` pointing at a
new, empty folder so that neither case reads a cache the installation already has:

- without bytecode: `PYTHONDONTWRITEBYTECODE=1`, nothing is read or written, every module compiled;
- with bytecode: writing allowed; the first process writes the cache (its time is printed apart), the later
  ones read it.

It prints the median of `--repeats` processes for each case and their ratio, and writes them with `--out`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

DEFAULT_IMPORTS = ["torch, torch._dynamo, torch._inductor.compile_fx", "src.train"]


def time_import(modules: str, env: dict) -> float:
    """Wall seconds of a new process that runs `import <modules>`; raises on a failed import."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", f"import {modules}"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`import {modules}` failed in a new process: {last}")
    return seconds


def measure(modules: str, repeats: int) -> dict:
    """Median start-up time of `import <modules>` without bytecode and with a bytecode cache, in fresh prefixes."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    with tempfile.TemporaryDirectory() as tmp:
        without = dict(base, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(Path(tmp) / "none"))
        cached = dict(base, PYTHONPYCACHEPREFIX=str(Path(tmp) / "pyc"))
        no_bytecode = [time_import(modules, without) for _ in range(repeats)]
        writing = time_import(modules, cached)
        with_bytecode = [time_import(modules, cached) for _ in range(repeats)]
        written = sum(len(files) for _, _, files in os.walk(Path(tmp) / "pyc"))
    median_without, median_with = statistics.median(no_bytecode), statistics.median(with_bytecode)
    return {
        "imports": modules,
        "repeats": repeats,
        "without_bytecode_s": no_bytecode,
        "first_with_cache_writing_s": writing,
        "with_bytecode_s": with_bytecode,
        "median_without_s": median_without,
        "median_with_s": median_with,
        "ratio_without_over_with": median_without / median_with,
        "bytecode_files_written": written,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imports", action="append", default=None, metavar="MODULES",
                        help="what one process imports, as after `import` (repeatable; default: "
                             + "; ".join(DEFAULT_IMPORTS) + ")")
    parser.add_argument("--repeats", type=int, default=3, help="processes timed per case (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    rows = []
    for modules in tqdm(args.imports or DEFAULT_IMPORTS, desc="imports", unit="case"):
        try:
            row = measure(modules, args.repeats)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        rows.append(row)
        print(f"import {modules}: without bytecode {row['median_without_s']:.2f} s, with it "
              f"{row['median_with_s']:.2f} s (median of {args.repeats}; {row['ratio_without_over_with']:.2f}x; "
              f"the first process, writing {row['bytecode_files_written']} files, "
              f"{row['first_with_cache_writing_s']:.2f} s)", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"schema": "start_time/1", "python": sys.version.split()[0], "executable": sys.executable,
                   "results": rows}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
