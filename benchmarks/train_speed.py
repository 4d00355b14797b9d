"""Training speed: the project's training path against a plain eager loop, in one process.

    python benchmarks/train_speed.py [--configs configs/pilot.yaml configs/scale_10m.yaml] [--json OUT]
    python benchmarks/train_speed.py --batch-size 256 --repeat-data 50 --dropout 0 --profile   # the extension's path

For each config, after warm-up, times optimizer steps of:
  plain        the textbook loop (src.training.reference.reference_training): host batches moved each step,
               loss.item() each step, GradScaler, LambdaLR, unfused AdamW
  device-eager the project's step (data on the device, fused AdamW, loss scaling and bookkeeping
               on the device, no host sync per step), run eagerly
  cuda-graph   the same step captured as one CUDA graph
  compiled+graph  each transformer block compiled with torch.compile (one compilation, reused by
               every layer), then the whole step captured: the default
  model-compiled+graph  the whole loss compiled as one graph, then captured
The project path is timed through Trainer.run_epoch, so shuffling, batching and loss bookkeeping
are included; evaluation is not. Prints steps/s, ms/step, the ratio to plain, compile/capture
time and peak memory. Needs CUDA. `--seeds 1 3 8` also times 3 and 8 seeds side by side
(src.train --seeds), in seed-steps/s. `--batch-size`, `--dropout` and `--repeat-data` (the training set
tiled K times, so that an epoch holds enough batch-256 steps) time the learnability extension's
path; `--profile` counts the kernels of one step of each project variant and lists the slowest.

Paths (`--paths`): today's training path against the faster ones, in examples per second, each
config at its own batch size, seeds side by side, every figure in one process:

    python benchmarks/train_speed.py --paths padded packed packed-bf16 --seeds 1 3 8 --json OUT.json
    python benchmarks/train_speed.py --quick    # a smoke test on the CPU: tiny models, a few steps

  padded       today's path: the config as it is (compiled blocks, one CUDA graph per step)
  packed       the same with training.packing (several examples per row, src/data/packing.py)
  packed-bf16  packed, in bfloat16 autocast (no loss scale, so no skipped step)
  padded-bf16  padded, in bfloat16 autocast
By default the configs are the extension's batch-256 runs of both scales at N = 2,000,000 and the
checklist's 10M run at batch 8. A config that trains on a generated set times it on the generated
set of --train-size examples (made if missing: the lengths, and so the packing, are those of every
generated set), with the config's epochs (the packed rows must hold every step of them). Each row
prints steps/s (optimizer steps of one seed), seed-steps/s and examples/s (of all seeds), and its
ratio to the padded path of the same config and seeds, measured in the same run.
"""

import argparse
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.config import load_config  # noqa: E402
from src.data import load_jsonl, make_batch  # noqa: E402
from src.model import CompactTransformer  # noqa: E402
from src.tokenizer import IGNORE_INDEX  # noqa: E402
from src.training.reference import reference_training  # noqa: E402
from src.training.trainer import DeviceData, SeedRNG, StopAfterSteps, Trainer, run_epochs  # noqa: E402

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


SDPA_BACKENDS = {"default": None, "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


def time_project(cfg, batch, device, fp16, seed, epochs, compile_, graph, scope, profile=False, sdpa="default",
                 seeds=1):
    """One project variant; `sdpa` forces one attention backend of scaled_dot_product_attention for
    compilation, capture and the timed steps alike; `seeds` trainers run side by side (as
    `python -m src.train --seeds` runs them), and steps/s counts the steps of all of them."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = SDPA_BACKENDS[sdpa]
    with sdpa_kernel([getattr(SDPBackend, backend)]) if backend else contextlib.nullcontext():
        return _time_project(cfg, batch, device, fp16, seed, epochs, compile_, graph, scope, profile, seeds)


def _time_project(cfg, batch, device, fp16, seed, epochs, compile_, graph, scope, profile, seeds):
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, compile=compile_, cuda_graph=graph))
    torch._dynamo.reset()  # each variant compiles from scratch, as a fresh training process would
    data = DeviceData(batch, cfg, device)
    trainers = []
    tic = time.perf_counter()
    for s in range(seed, seed + seeds):
        rng = SeedRNG(s, device)
        with rng:
            model = CompactTransformer(cfg.model).to(device)
        trainer = Trainer(cfg, model, data, device, "fp16" if fp16 else "fp32", s, log=lambda *_: None,
                          compile_scope=scope, rng=rng)
        if seeds > 1:
            trainer.stream = torch.cuda.Stream(device)  # as src.train --seeds: captured and replayed there
        with rng:
            trainer.accelerate()
        trainers.append(trainer)
    run_epochs(trainers)  # warm-up epoch (eager path: first calls; compiled path: already captured)
    setup = time.perf_counter() - tic
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize(device)
    tic = time.perf_counter()
    for _ in range(epochs):
        run_epochs(trainers)
    elapsed = time.perf_counter() - tic
    steps = epochs * data.steps_per_epoch * seeds
    trainer = trainers[0]
    out = {"seeds": seeds, "steps_per_s": steps / elapsed, "ms_per_step": 1000 * elapsed / steps, "setup_s": setup,
           "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
           "final_train_loss": trainer.mean_loss()}
    if profile:
        out["profile"] = profile_step(trainer, device)
    return out


def profile_step(trainer, device, steps: int = 20) -> dict:
    """Kernels launched per step (CUDA kernels and memory copies/sets) and the slowest kernels."""
    from torch.profiler import ProfilerActivity, profile

    trainer.start_epoch()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            trainer.run_step()
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name = {}
    for e in kernels:
        total, count = by_name.get(e.name, (0.0, 0))
        by_name[e.name] = (total + e.device_time, count + 1)
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:12]
    gpu_us = sum(t for t, _ in by_name.values())
    most = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:12]
    row = lambda name, t, c: {"name": name[:90], "us_per_step": t / steps, "calls_per_step": c / steps}  # noqa: E731
    return {"kernels_per_step": len(kernels) / steps, "gpu_busy_ms_per_step": gpu_us / 1000 / steps,
            "top_kernels": [row(name, t, c) for name, (t, c) in top],
            "most_launched": [row(name, t, c) for name, (t, c) in most]}


def print_profile(prof: dict | None) -> None:
    if not prof:
        return
    print(f"      {prof['kernels_per_step']:.0f} kernels per step, GPU busy {prof['gpu_busy_ms_per_step']:.3f} "
          "ms per step; slowest:")
    for k in prof["top_kernels"]:
        print(f"        {k['us_per_step']:8.1f} us  x{k['calls_per_step']:.0f}  {k['name']}")


# ---------------------------------------------------------------------------- paths (--paths)

PATHS = {  # name -> (training.packing, precision; None: the config's own)
    "padded": (False, None),
    "packed": (True, None),
    "packed-bf16": (True, "bf16"),
    "padded-bf16": (False, "bf16"),
}
PATH_CONFIGS = ["configs/extension/ext_10m_n2000000.yaml", "configs/extension/ext_pilot_n2000000.yaml",
                "configs/scale_10m.yaml"]
QUICK_MODEL = {"d_model": 32, "num_layers": 2, "num_heads": 4, "d_ff": 64}
SCHEMA = "train_speed/1"


def path_config(cfg, path: str, quick: bool):
    packing, precision = PATHS[path]
    training = dataclasses.replace(cfg.training, packing=packing, precision=precision or cfg.training.precision)
    model = dataclasses.replace(cfg.model, **QUICK_MODEL) if quick else cfg.model
    return dataclasses.replace(cfg, training=training, model=model)


def training_records(cfg, train_size: int):
    """The records a config's path is timed on, and where they come from."""
    from src.data.trainsets import ensure_training_set

    max_len = cfg.model.max_seq_len
    if cfg.data.train_size:
        n = min(cfg.data.train_size, train_size)
        path = ensure_training_set(n, progress=False)
        return load_jsonl(path, max_len, verified=True), f"generated set of {n:,} ({path.name})"
    return load_jsonl(cfg.data.path("train"), max_len), str(cfg.data.train)


def advance(trainers, steps: int) -> None:
    """`steps` more steps of every trainer (side by side), across epoch ends."""
    target = int(trainers[0].step) + steps
    while (left := target - int(trainers[0].step)) > 0:
        run_epochs(trainers, stop=StopAfterSteps(left))


def time_path(cfg, data, device, first_seed: int, seeds: int, warmup: int, steps: int, profile: bool = False,
              compile_scope: str | None = None) -> dict:
    """`seeds` trainers of `cfg` side by side (as src.train --seeds), accelerated as the config says;
    after `warmup` steps, `steps` timed steps of each; with `profile`, then the kernels of 20 more steps of
    the first (profile_step)."""
    cuda = device.type == "cuda"
    trainers = []
    tic = time.perf_counter()
    for s in range(first_seed, first_seed + seeds):
        rng = SeedRNG(s, device)
        with rng:
            model = CompactTransformer(cfg.model).to(device)
        trainer = Trainer(cfg, model, data, device, cfg.training.precision, s, log=lambda *_: None, rng=rng,
                          compile_scope=compile_scope)
        if seeds > 1 and cuda:
            trainer.stream = torch.cuda.Stream(device)  # as src.train --seeds: captured and replayed there
        with rng:
            trainer.accelerate()
        trainers.append(trainer)
    advance(trainers, warmup)
    setup = time.perf_counter() - tic
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    advance(trainers, steps)
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - tic
    first = trainers[0]
    layout = first.layout
    positions = layout.rows * layout.width if layout else data.batch_size * data.width
    return {"seeds": seeds, "precision": cfg.training.precision, "packing": first.accelerations["packing"],
            "accelerations": {k: v for k, v in first.accelerations.items() if k != "packing"},
            "timed_steps": steps, "steps_per_s": steps / elapsed, "seed_steps_per_s": steps * seeds / elapsed,
            "examples_per_s": steps * seeds * data.batch_size / elapsed, "ms_per_step": 1000 * elapsed / steps,
            "positions_per_step": positions, "setup_s": setup,
            "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
            "final_train_loss": first.mean_loss(), "skipped_steps": int(first.skipped_steps),
            **({"profile": profile_step(first, device)} if profile and cuda else {})}


def compare_paths(args) -> int:
    quick = args.quick
    device = torch.device("cpu" if quick else "cuda")
    if not quick and not torch.cuda.is_available():
        print("benchmarks/train_speed.py --paths needs a CUDA device (--quick runs on the CPU)", file=sys.stderr)
        return 1
    if quick:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    else:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; fp16 and bf16 come from autocast
    paths = args.paths or list(PATHS)[:3]
    seeds_list = args.seeds or ([1, 2] if quick else [1, 3, 8])
    warmup, steps = (1, 2) if quick else (args.warmup_steps, args.steps)
    train_size = 1024 if quick else args.train_size
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {gpu}   torch {torch.__version__}   paths: {', '.join(paths)}   seeds: {seeds_list}", flush=True)
    results = {"schema": SCHEMA, "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
               "command": "python benchmarks/train_speed.py " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
               "quick": quick, "warmup_steps": warmup, "timed_steps": steps, "rows": [], "skipped": []}
    start = time.perf_counter()

    def save():
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    for config_path in args.configs or PATH_CONFIGS:
        base = load_config(config_path)
        records, source = training_records(base, train_size)
        batch = make_batch(records, base.model.max_seq_len, base.data.answer_format)
        padded = {}
        for path in paths:
            cfg = path_config(base, path, quick)
            torch._dynamo.reset()  # each path compiles once (its shapes), reused by its seed counts
            data = DeviceData(batch, cfg, device)
            for seeds in seeds_list:
                label = f"{base.name} {path} x{seeds}"
                if args.budget_s and time.perf_counter() - start > args.budget_s:
                    print(f"  {label}: skipped (past --budget-s {args.budget_s:g})", flush=True)
                    results["skipped"].append(label)
                    continue
                print(f"  [{time.perf_counter() - start:6.0f} s] timing {label} ...", flush=True)
                row = {"config": base.name, "config_path": str(config_path), "path": path,
                       "batch_size": cfg.training.batch_size, "parameters": CompactTransformer(cfg.model).num_parameters(),
                       "train_examples": len(records), "train_data": source, "data_width": data.width}
                row.update(time_path(cfg, data, device, args.seed, seeds, warmup, steps, args.profile and seeds == 1,
                                     args.compile_scope))
                if path == "padded":
                    padded[seeds] = row["examples_per_s"]
                row["ratio_to_padded"] = row["examples_per_s"] / padded[seeds] if seeds in padded else None
                results["rows"].append(row)
                print(f"      {row['steps_per_s']:9.1f} steps/s  {row['seed_steps_per_s']:9.1f} seed-steps/s  "
                      f"{row['examples_per_s']:11.0f} examples/s  x{row['ratio_to_padded'] or float('nan'):.2f} "
                      f"padded  (setup {row['setup_s']:.1f} s, loss {row['final_train_loss']:.3f})", flush=True)
                print_profile(row.get("profile"))
                save()
                gc.collect()  # the row's trainers and CUDA graphs, before the next row allocates
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print_path_table(results)
    save()
    return 0


def print_path_table(results: dict) -> None:
    print(f"\nGPU: {results['gpu']}   torch {results['torch']}")
    print(f"  {'config':<22}{'path':<13}{'seeds':>6}{'steps/s':>10}{'seed-steps/s':>14}{'examples/s':>12}"
          f"{'x padded':>10}{'rows x width':>14}{'setup s':>9}")
    for r in results["rows"]:
        shape = f"{r['packing']['rows']} x {r['packing']['width']}" if r["packing"] else f"{r['batch_size']} x {r['data_width']}"
        ratio = f"{r['ratio_to_padded']:.2f}" if r["ratio_to_padded"] is not None else "-"
        print(f"  {r['config']:<22}{r['path']:<13}{r['seeds']:>6}{r['steps_per_s']:>10.1f}{r['seed_steps_per_s']:>14.1f}"
              f"{r['examples_per_s']:>12.0f}{ratio:>10}{shape:>14}{r['setup_s']:>9.1f}")
    if results["skipped"]:
        print(f"  skipped (time budget): {', '.join(results['skipped'])}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=None, help="configs to time (default: configs/pilot.yaml "
                   "configs/scale_10m.yaml; with --paths: " + " ".join(PATH_CONFIGS) + ")")
    p.add_argument("--plain-steps", type=int, default=300, help="timed steps of the plain loop")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs of each project variant")
    p.add_argument("--fp32", action="store_true", help="time without float16 autocast")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=None, help="override training.batch_size (e.g. 256)")
    p.add_argument("--dropout", type=float, default=None, help="override model.dropout (the extension uses 0)")
    p.add_argument("--repeat-data", type=int, default=1, metavar="K", help="tile the training set K times")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--no-plain", action="store_true", help="skip the plain loop")
    p.add_argument("--profile", action="store_true", help="kernel count and slowest kernels of one step (with --paths: "
                   "of each one-seed row)")
    p.add_argument("--sdpa", nargs="+", default=["default"], choices=list(SDPA_BACKENDS),
                   help="attention backends to time each variant with (default: PyTorch's choice)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="N",
                   help="numbers of seeds to train side by side (src.train --seeds), e.g. 1 3 8; steps/s is then "
                   "seed-steps/s, the steps of all seeds per second (default: 1; with --paths 1 3 8; --quick 1 2)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=None,
                   help="compare training paths in examples/s (see above), e.g. padded packed packed-bf16")
    p.add_argument("--steps", type=int, default=300, help="--paths: timed steps of each seed")
    p.add_argument("--warmup-steps", type=int, default=30, help="--paths: steps before timing (after compilation)")
    p.add_argument("--train-size", type=int, default=200_000,
                   help="--paths: the generated training set a config of a generated set is timed on")
    p.add_argument("--budget-s", type=float, default=None,
                   help="--paths: skip the rows that would start after this many seconds (listed as skipped)")
    p.add_argument("--compile-scope", choices=["blocks", "model"], default=None,
                   help="--paths: what training.compile compiles: each block or the whole loss (default: the "
                   "config's training.compile_scope)")
    p.add_argument("--quick", action="store_true", help="--paths on the CPU: tiny models, 1 + 2 steps, seeds 1 and 2, "
                   "1,024 training examples (a smoke test of the code, not a measurement)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.paths or args.quick:
        return compare_paths(args)
    args.configs = args.configs or ["configs/pilot.yaml", "configs/scale_10m.yaml"]
    args.seeds = args.seeds or [1]
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
        if args.batch_size:
            cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, batch_size=args.batch_size))
        if args.dropout is not None:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=args.dropout))
        records = load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len) * args.repeat_data
        batch = make_batch(records, cfg.model.max_seq_len)
        rows = {} if args.no_plain else {"plain": time_plain(cfg, batch, device, fp16, args.seed, args.plain_steps, warmup=20)}
        for name in args.variants:
            compile_, graph, scope = VARIANTS[name]
            for sdpa in args.sdpa:
                for seeds in args.seeds:
                    label = name if sdpa == "default" else f"{name} sdpa={sdpa}"
                    label += f" x{seeds} seeds" if seeds > 1 else ""
                    print(f"  timing {cfg.name} {label} ...", flush=True)
                    try:
                        rows[label] = time_project(cfg, batch, device, fp16, args.seed, args.epochs, compile_, graph,
                                                   scope, args.profile and seeds == 1, sdpa, seeds)
                    except RuntimeError as err:  # a backend that cannot run this shape or dtype
                        print(f"  {label}: not run ({str(err).splitlines()[0][:160]})")
        base = rows["plain"]["steps_per_s"] if "plain" in rows else float("nan")
        for r in rows.values():
            r["ratio_to_plain"] = r["steps_per_s"] / base
        results["configs"][cfg.name] = {"batch_size": cfg.training.batch_size, "dropout": cfg.model.dropout,
                                        "train_examples": len(records), "variants": rows}
        print(f"\n{cfg.name} (batch {cfg.training.batch_size}, {CompactTransformer(cfg.model).num_parameters():,} parameters)")
        print(f"  {'path':<36}{'steps/s':>10}{'ms/step':>10}{'x plain':>9}{'setup s':>9}{'peak MB':>9}")
        for name, r in rows.items():
            print(f"  {name:<36}{r['steps_per_s']:>10.1f}{r['ms_per_step']:>10.3f}{r['ratio_to_plain']:>9.1f}"
                  f"{r.get('setup_s', float('nan')):>9.1f}{r['peak_memory_mb']:>9.0f}")
            print_profile(r.get("profile"))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
