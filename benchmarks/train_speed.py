"""Training speed: the project's training path against a plain eager loop, in one process.

    python benchmarks/train_speed.py [--configs configs/pilot.yaml configs/scale_10m.yaml] [--json OUT]

For each config, after warm-up, times optimizer steps of:
  plain        the textbook loop (src.train.reference_training): host batches moved each step,
               loss.item() each step, GradScaler, LambdaLR, unfused AdamW
  device-eager the project's step (data on the device, fused AdamW, loss scaling and bookkeeping
               on the device, no host sync per step), run eagerly
  cuda-graph   the same step captured as one CUDA graph
  compiled+graph  each transformer block compiled with torch.compile (one compilation, reused by
               every layer), then the whole step captured: the default
  model-compiled+graph  the whole loss compiled as one graph, then captured
The project path is timed through Trainer.run_epoch, so shuffling, batching and loss bookkeeping
are included; evaluation is not. Prints steps/s, ms/step, the ratio to plain, compile/capture
time and peak memory. Needs CUDA.
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.config import load_config  # noqa: E402
from src.data import load_jsonl, make_batch  # noqa: E402
from src.model import CompactTransformer  # noqa: E402
from src.tokenizer import IGNORE_INDEX
from src.train import DeviceData, Trainer, reference_training  # noqa: E402

VARIANTS = {  # name -> (compile, cuda_graph, compile_scope)
    "device-eager": (False, False, "blocks"),
    "cuda-graph": (False, True, "blocks"),
    "compiled+graph": (True, True, "blocks"),  # the default: each block compiled, one compilation reused
    "model-compiled+graph": (True, True, "model"),  # the whole loss compiled as one graph
}


def time_plain(cfg, batch, device, fp16, seed, steps, warmup):
    torch.manual_seed(seed)
    model = CompactTransformer(cfg.model).to(device)
    marks = {}

    def on_step(i):
        if i == warmup - 1 or i == warmup + steps - 1:
            torch.cuda.synchronize(device)
            marks[i] = time.perf_counter()

    torch.cuda.reset_peak_memory_stats(device)
    labels = batch.labels if cfg.training.loss_on == "all" else batch.labels.masked_fill(~batch.answer_mask, IGNORE_INDEX)
    reference_training(cfg, model, batch.inputs, labels, device, "fp16" if fp16 else "fp32", seed, warmup + steps,
                       on_step=on_step)
    elapsed = marks[warmup + steps - 1] - marks[warmup - 1]
    return {"steps_per_s": steps / elapsed, "ms_per_step": 1000 * elapsed / steps,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def time_project(cfg, batch, device, fp16, seed, epochs, compile_, graph, scope):
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, compile=compile_, cuda_graph=graph))
    torch._dynamo.reset()  # each variant compiles from scratch, as a fresh training process would
    torch.manual_seed(seed)
    model = CompactTransformer(cfg.model).to(device)
    trainer = Trainer(cfg, model, DeviceData(batch, cfg, device), device, "fp16" if fp16 else "fp32", seed, log=lambda *_: None,
                      compile_scope=scope)
    tic = time.perf_counter()
    trainer.accelerate()
    trainer.run_epoch()  # warm-up epoch (eager path: first calls; compiled path: already captured)
    setup = time.perf_counter() - tic
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize(device)
    tic = time.perf_counter()
    for _ in range(epochs):
        trainer.run_epoch()
    elapsed = time.perf_counter() - tic
    steps = epochs * trainer.data.steps_per_epoch
    return {"steps_per_s": steps / elapsed, "ms_per_step": 1000 * elapsed / steps, "setup_s": setup,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
            "final_train_loss": trainer.mean_loss()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["configs/pilot.yaml", "configs/scale_10m.yaml"])
    p.add_argument("--plain-steps", type=int, default=300, help="timed steps of the plain loop")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of each project variant")
    p.add_argument("--fp32", action="store_true", help="time without float16 autocast")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/train_speed.py needs a CUDA device", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    fp16 = not args.fp32
    gpu = torch.cuda.get_device_name(device)
    print(f"GPU: {gpu}   torch {torch.__version__}   precision: {'fp16 autocast' if fp16 else 'fp32'}")
    results = {"gpu": gpu, "torch": torch.__version__, "fp16": fp16, "configs": {}}
    for path in args.configs:
        cfg = load_config(path)
        batch = make_batch(load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len), cfg.model.max_seq_len)
        rows = {"plain": time_plain(cfg, batch, device, fp16, args.seed, args.plain_steps, warmup=20)}
        for name, (compile_, graph, scope) in VARIANTS.items():
            rows[name] = time_project(cfg, batch, device, fp16, args.seed, args.epochs, compile_, graph, scope)
        base = rows["plain"]["steps_per_s"]
        for r in rows.values():
            r["ratio_to_plain"] = r["steps_per_s"] / base
        results["configs"][cfg.name] = {"batch_size": cfg.training.batch_size, "variants": rows}
        print(f"\n{cfg.name} (batch {cfg.training.batch_size}, {CompactTransformer(cfg.model).num_parameters():,} parameters)")
        print(f"  {'path':<22}{'steps/s':>10}{'ms/step':>10}{'x plain':>9}{'setup s':>9}{'peak MB':>9}")
        for name, r in rows.items():
            print(f"  {name:<22}{r['steps_per_s']:>10.1f}{r['ms_per_step']:>10.3f}{r['ratio_to_plain']:>9.1f}"
                  f"{r.get('setup_s', float('nan')):>9.1f}{r['peak_memory_mb']:>9.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
