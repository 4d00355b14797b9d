"""How far two trainings of one seed drift apart on the GPU, and what makes them repeat bit for bit.

    python benchmarks/rerun_noise.py [--configs C ...] [--modes M ...] [--repeat-data 64] [--json OUT]

For each config and mode, seed 42 is trained twice from the same initial weights on the same batches
(the shipped training set tiled --repeat-data times, one epoch, the config's own batch size, precision,
dropout and accelerations), and the two runs' final weights are compared: the largest absolute
difference, and how many parameter tensors differ at all. 0 means the training path is repeatable
bit for bit. The second run's steps/s (compiled and captured already) tells what a mode costs.

Modes (each in a process of its own, since determinism and cuBLAS settings are process-wide):
  default        the project's path (memory-efficient attention, compiled blocks, CUDA graph; the
                 token embedding's backward a matrix product in a fixed order, src.model.embed_lookup)
  scatter-embedding  the same with nn.Embedding's own backward (atomic adds into the table's rows),
                 the path before the fixed-order embedding backward
  deterministic  training.deterministic: true (src.device.set_deterministic): deterministic
                 kernels where PyTorch has them, an error where it has none, and a fixed cuBLAS
                 workspace (CUBLAS_WORKSPACE_CONFIG=:4096:8)
  deterministic-warn  the same with warn_only=True: kernels without a deterministic version run
                 anyway, and the warnings name them
  math           attention through scaled_dot_product_attention's math kernels only
  eager          no compilation (the step still captured as a CUDA graph)
  cublas         only CUBLAS_WORKSPACE_CONFIG=:4096:8, without deterministic algorithms

Needs CUDA. Prints one line per config x mode; --json writes them all.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("default", "scatter-embedding", "deterministic", "deterministic-warn", "math", "eager", "cublas")


def one(config: str, mode: str, repeat: int, where: str = "cuda") -> dict:
    """Train seed 42 twice under `mode` (in this process) and compare the weights."""
    import torch

    sys.path.insert(0, str(ROOT))
    from src.config import load_config
    from src.data import load_jsonl, make_batch
    from src.device import set_deterministic
    from src.model import CompactTransformer
    from src.training.trainer import DeviceData, SeedRNG, Trainer, run_epochs

    if mode == "deterministic":
        set_deterministic(True)  # what training.deterministic: true does, before any CUDA work
    elif mode == "deterministic-warn":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if mode == "scatter-embedding":
        import torch.nn.functional as F

        import src.model

        src.model.embed_lookup = lambda weight, tokens: F.embedding(tokens, weight)
    if mode == "cublas":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if mode == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        Trainer.attention_kernels = lambda self: sdpa_kernel([SDPBackend.MATH])
    device = torch.device(where)
    import src.model  # which backward the token embedding takes here, read off autograd's own node

    probe = torch.zeros(3, 2, requires_grad=True)
    embedding_backward = type(src.model.embed_lookup(probe, torch.tensor([0, 2])).grad_fn).__name__
    cfg = load_config(config)
    if mode == "eager":
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, compile=False))
    records = load_jsonl(ROOT / "data" / "pilot_train.jsonl", cfg.model.max_seq_len) * repeat
    data = DeviceData(make_batch(records, cfg.model.max_seq_len), cfg, device)

    def sync(dev):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def train() -> tuple[list, float]:
        rng = SeedRNG(42, device)
        with rng:
            model = CompactTransformer(cfg.model).to(device)
        trainer = Trainer(cfg, model, data, device, cfg.training.precision, 42, log=lambda *a: None, rng=rng)
        with rng:
            trainer.accelerate()
        sync(device)
        tic = time.perf_counter()
        run_epochs([trainer])
        sync(device)
        return [p.detach().float().cpu() for p in trainer.params], data.steps_per_epoch / (time.perf_counter() - tic)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, _ = train()
        second, steps_per_s = train()
    diffs = [float((a - b).abs().max()) for a, b in zip(first, second)]
    notes = sorted({str(w.message).split("\n")[0][:200] for w in caught
                    if "determinis" in str(w.message).lower()})
    return {"config": config, "mode": mode, "batch_size": cfg.training.batch_size,
            "precision": cfg.training.precision, "steps": data.steps_per_epoch,
            "max_weight_difference": max(diffs), "tensors_differing": sum(d > 0 for d in diffs),
            "tensors": len(diffs), "steps_per_s": steps_per_s, "embedding_backward": embedding_backward, "determinism_warnings": notes,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--configs", nargs="+", default=["configs/extension/ext_pilot_n2000000.yaml",
                                                    "configs/extension/ext_10m_n2000000.yaml"],
                   help="configs to train (default: the extension's N = 2,000,000 configs of both scales; "
                        "their training set is replaced by the shipped one, tiled)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to compare (default: all)")
    p.add_argument("--repeat-data", type=int, default=64,
                   help="tile the shipped 2,000-expression training set this many times: one epoch (default 64: "
                        "500 steps at batch 256)")
    p.add_argument("--json", help="write every result to this file")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (default); cpu only to try the script, where nothing is compiled or captured")
    p.add_argument("--one", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)  # the per-mode child
    args = p.parse_args(argv)
    if args.repeat_data < 1:
        p.error("--repeat-data must be at least 1")
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.repeat_data, args.device)))
        return 0
    results = []
    for config in args.configs:
        for mode in args.modes:
            child = subprocess.run([sys.executable, __file__, "--one", config, mode, "--repeat-data",
                                    str(args.repeat_data), "--device", args.device], capture_output=True, text=True, cwd=ROOT)
            if child.returncode != 0:
                print(f"{config} {mode}: failed\n{child.stderr[-3000:]}", file=sys.stderr)
                results.append({"config": config, "mode": mode, "error": child.stderr[-3000:]})
                continue
            r = json.loads(child.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{Path(config).stem} {mode}: {r['steps']} steps, max weight difference "
                  f"{r['max_weight_difference']:.3g} ({r['tensors_differing']}/{r['tensors']} tensors differ), "
                  f"{r['steps_per_s']:.0f} steps/s" + "".join(f"\n    warning: {w}" for w in r["determinism_warnings"]),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
