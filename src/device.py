"""Device and precision: which device a command runs on, and how its arithmetic is done.

One policy for every entry point (training and the analyses), so that a run's precision travels
with it: `training.precision` in the config (`--fp16` sets it to fp16), stored in every
checkpoint, checked on `--resume`, and the default of the analysis commands.

    fp32  plain float32 (TF32 matmuls are switched off: fp32 means fp32)
    fp16  float16 autocast with dynamic loss scaling in training; needs a CUDA GPU
    bf16  bfloat16 autocast, no loss scaling (bfloat16 has float32's range); needs a CUDA GPU
          that supports it (compute capability 8.0 or later)
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch

from src.config import PRECISIONS
from src.errors import GpuOnlyError, UserError

AUTOCAST_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16}
DESCRIPTION = {
    "fp32": "fp32",
    "fp16": "fp16 mixed (autocast float16, dynamic loss scaling)",
    "bf16": "bf16 mixed (autocast bfloat16, no loss scaling)",
}


def resolve_device(requested: str, gpu_only: bool, precision: str = "fp32") -> tuple[torch.device, str | None]:
    """The device to run on and, when CUDA was asked for but is missing, why we fell back.

    Order matters: the GPU-only checks raise RuntimeError (GpuOnlyError) before anything else.
    """
    if gpu_only:
        if requested != "cuda":
            raise GpuOnlyError(f"GPU-only mode requires --device cuda (got --device {requested}). Aborting.")
        if not torch.cuda.is_available():
            raise GpuOnlyError("CUDA requested but not available. Aborting. (--gpu-only forbids CPU training.)")
    if requested not in ("cpu", "cuda"):
        raise UserError(f"--device {requested!r} is not a device this script knows; use cpu or cuda")
    fallback = None
    if requested == "cuda" and not torch.cuda.is_available():
        fallback = "CUDA requested but not available; running on the CPU instead"
        bar = "!" * 78
        print(f"{bar}\nWARNING: {fallback}.\nWARNING: pass --gpu-only to abort instead. The summary records this "
              f"fallback.\n{bar}", file=sys.stderr)
        warnings.warn(fallback, RuntimeWarning, stacklevel=2)
        requested = "cpu"
    device = torch.device(requested)
    check_precision(precision, device)
    return device, fallback


def check_precision(precision: str, device: torch.device) -> None:
    """A UserError when `device` cannot run `precision` (never a crash half-way through a run)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if device.type != "cuda":
        flag = "--fp16" if precision == "fp16" else f"training.precision {precision}"
        raise UserError(f"{flag} needs a CUDA device: {precision} autocast on the CPU is not what the runs specify. "
                        "Use precision fp32 (drop --fp16, or set training.precision: fp32) or run on --device cuda.")
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError(f"precision bf16: the GPU {name} (compute capability {major}.{minor}) does not support "
                        "bfloat16; use training.precision fp16 or fp32")
    if precision == "fp16" and (major, minor) < (5, 3):
        raise UserError(f"precision fp16: the GPU {name} (compute capability {major}.{minor}) has no native float16 "
                        "arithmetic; use training.precision fp32")


# Threads for CPU training when the user has not chosen (OMP_NUM_THREADS unset). Both models are
# small (the pilot's largest matrix product per step is 1,024 x 128 x 384, a tenth of a GFLOP), so
# splitting each op between threads buys little and costs a hand-over per op. Measured on a 2-core machine that other jobs shared (load average 6-10; pilot, batch 32,
# fp32, 30 training steps, three interleaved repetitions): 1 thread 1.2, 2.7 and 2.1 steps/s;
# 2 threads 0.2, 0.3 and 0.1; torch's default (2 here) 0.3, 0.2 and 1.4. On busy cores a thread
# that waits for its partner stalls the whole step; one thread never waits.
CPU_TRAIN_THREADS = 1


def set_cpu_threads() -> int:
    """Set torch's intra-op threads for CPU training and return the number used.

    OMP_NUM_THREADS, when the user sets it, wins: torch has read it at start-up and it is left
    alone. Otherwise the count is CPU_TRAIN_THREADS (see its comment for the measured reason).
    """
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    torch.set_num_threads(CPU_TRAIN_THREADS)
    return CPU_TRAIN_THREADS


def set_deterministic(on: bool) -> None:
    """`training.deterministic`: PyTorch's deterministic kernels for the whole process, or its fastest ones.

    The training path repeats bit for bit without it (measured on an H100: BENCHMARKS.md, "Two
    trainings of one seed"), since its one kernel found to add in a varying order, nn.Embedding's
    backward, was replaced (src.model.embed_lookup). This is the guarantee on top: PyTorch picks a
    deterministic kernel wherever it has one and raises where it has none, and cuBLAS gets a fixed
    workspace (CUBLAS_WORKSPACE_CONFIG, unless the environment sets one), at 9-17% of the batch-256
    speed. Call it before the first CUDA matrix product.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)


def autocast(device: torch.device | str, precision: str):
    """Autocast to the precision's dtype on CUDA; a no-op context for fp32 (and on the CPU)."""
    if precision in AUTOCAST_DTYPE and torch.device(device).type == "cuda":
        return torch.amp.autocast("cuda", dtype=AUTOCAST_DTYPE[precision])
    return contextlib.nullcontext()


def uses_loss_scaling(precision: str) -> bool:
    """Only float16 needs a loss scale: its range is too narrow for small gradients."""
    return precision == "fp16"


def run_precision(ckpt: dict, run_dir: Path | None = None) -> str:
    """The precision a checkpoint's run trained in.

    Checkpoints store it (`precision`); older ones do not, and their config predates the key, so
    the run's summary.json (`fp16`) decides; failing that, the config's value (fp32 by default).
    """
    if ckpt.get("precision") in PRECISIONS:
        return ckpt["precision"]
    if run_dir is not None:
        try:
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
            if isinstance(summary, dict) and isinstance(summary.get("fp16"), bool):
                return "fp16" if summary["fp16"] else "fp32"
        except (OSError, ValueError):
            pass
    precision = ((ckpt.get("config") or {}).get("training") or {}).get("precision", "fp32")
    return precision if precision in PRECISIONS else "fp32"
