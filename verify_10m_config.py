"""Check a config before a long run: exact parameter count against its target, and CUDA status.

    python verify_10m_config.py                          # configs/scale_10m.yaml
    python verify_10m_config.py --config configs/pilot.yaml
    python verify_10m_config.py --require-cuda           # also exit 1 without a CUDA device
    python verify_10m_config.py --require-cuda --then-train --config configs/scale_10m.yaml --output-dir D ...

Exit status 1, with an [ERROR] line, when the count is more than 10% off the config's
target_parameters, the config is invalid, or (with --require-cuda) CUDA is not available.

--then-train: once every check has passed, the training follows in this same process, with the
arguments after it given to `python -m src.train` (and the config they name is the one checked);
nothing is trained when a check fails. One Python start and one torch import instead of two: the
launchers (train_10m_scale.sh, .bat) run it this way, as a fresh process costs seconds. The exit
status is then the training's own.
"""

import argparse
from pathlib import Path

from src import exit_on_sigint_while_importing
from src.cli import interrupted  # light: ready before torch is
from src.errors import UserError, run_main

if __name__ == "__main__":
    exit_on_sigint_while_importing()  # until run_main: Ctrl-C inside torch's import ends at once


try:  # importing torch takes seconds: a Ctrl-C then ends as one at any later moment does (run_main)
    import torch

    from src.config import load_config
    from src.model import CompactTransformer
except KeyboardInterrupt:
    if __name__ != "__main__":
        raise
    raise SystemExit(run_main(interrupted)) from None

TOLERANCE = 0.10
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "scale_10m.yaml"


def human(n: int) -> str:
    """10651776 -> '10.65M', 10000000 -> '10M', 660000 -> '0.66M'."""
    text = f"{n / 1e6:.2f}".rstrip("0").rstrip(".")
    return f"{text}M"


def cuda_status() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, f"CUDA: not available (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})"
    props = torch.cuda.get_device_properties(0)
    return True, f"CUDA: available - {props.name}, {props.total_memory / 1024**3:.1f} GB (torch {torch.__version__})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help=f"YAML config to check (default: {DEFAULT_CONFIG}, or the --config "
                        "given after --then-train)")
    parser.add_argument("--require-cuda", action="store_true", help="exit 1 when no CUDA device is available")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    parser.add_argument("--then-train", nargs=argparse.REMAINDER, metavar="TRAIN_ARG",
                        help="last: once every check has passed, train in this same process, the arguments that "
                        "follow being `python -m src.train`'s (see `python -m src.train --help`); its --config is "
                        "the config checked. Nothing is trained when a check fails")
    args = parser.parse_args(argv)
    if args.then_train is not None:
        from src.train import parse_args as training_args  # its usage errors, before any check

        train_config = training_args(args.then_train).config
        if args.config and train_config and Path(args.config).resolve() != Path(train_config).resolve():
            raise UserError(f"--config {args.config} and the training's --config {train_config} differ: the config "
                            "checked must be the one trained; give it once, after --then-train")
        args.config = args.config or train_config
    args.config = args.config or str(DEFAULT_CONFIG)
    passed = checks(args)
    if args.then_train is None:
        return 0 if passed else 1
    if not passed:
        print("[ERROR] A check failed (above). Not training.")
        return 1
    from src.train import main as train

    print("== training: python -m src.train " + " ".join(args.then_train), flush=True)
    return train(args.then_train)


def checks(args) -> bool:
    """Print the parameter count against the target and the CUDA status; True when every check passed."""
    try:
        cfg = load_config(args.config)
    except UserError as err:
        print(f"[ERROR] Invalid configuration: {err}")
        return False
    total = CompactTransformer(cfg.model).num_parameters()
    target = cfg.target_parameters
    diff = (total - target) / target
    print(f"Total parameters: {total:,}")
    print(f"                  {human(total)}")
    print(f"Target: {human(target)}")
    print(f"Difference: {diff:+.1%}".replace("+", ""))
    ok = abs(diff) <= TOLERANCE
    print("[OK] Configuration verified" if ok else f"[ERROR] Parameter count is more than {TOLERANCE:.0%} off the target")
    has_cuda, line = cuda_status()
    print(line)
    if args.require_cuda and not has_cuda:
        print("[ERROR] CUDA is required (--require-cuda) but not available")
        return False
    return ok


if __name__ == "__main__":
    raise SystemExit(run_main(main))
