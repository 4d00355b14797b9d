"""Train a CompactTransformer: the entrypoint of both runs.

    python -m src.train --config configs/scale_10m.yaml --output-dir runs/scale_10m \
        --seed 42 --device cuda --fp16 --gpu-only

The training step is written once (`Trainer.train_step`) with all of its bookkeeping on the
device: the batch is gathered from the dataset tensor by a device-side permutation, the loss
scale, found-inf flag, learning rate and step counter are tensors, and the optimizer is a fused
AdamW that skips the update when a gradient is non-finite. Nothing in the step reads a value
back to the host, so on CUDA the whole step can be compiled (`training.compile`) and captured
as one CUDA graph (`training.cuda_graph`); on the CPU the same function runs eagerly.
`reference_training` is the textbook loop (host batches, GradScaler, LambdaLR, unfused AdamW)
that the tests and the benchmark hold the fast path against.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import math
import platform
import signal
import sys
import threading
import time
import warnings

import torch
import yaml
from tqdm import tqdm

from src.cli import MAX_SEED, int_in
from src.checkpoint import EPOCH_STATE, load_training_checkpoint, model_from_checkpoint
from src.config import Config, check_data_paths, config_from_dict, load_config
from src.data import Batch, load_jsonl, make_batch
from src.device import DESCRIPTION, autocast, check_precision, resolve_device, run_precision, uses_loss_scaling
from src.errors import UserError, run_main
from src.evaluate import evaluate_batch
from src.model import CompactTransformer
from src.rundir import RunDir
from src.runfiles import SCHEMAS
from src.tokenizer import IGNORE_INDEX, PAD_ID

# dynamic loss scaling, as torch.amp.GradScaler's defaults
INIT_SCALE, GROWTH_FACTOR, BACKOFF_FACTOR, GROWTH_INTERVAL = 2.0**16, 2.0, 0.5, 2000
PROGRESS_EVERY = 50  # steps between progress-bar refreshes (each one reads the loss back)
OOM_ADVICE = (
    "CUDA out of memory. Nothing was retried and nothing was scaled down. To fit the run, edit the "
    "config by hand: training.batch_size, or the model size (model.d_model, model.num_layers, "
    "model.d_ff, model.max_seq_len); or free the GPU of other processes."
)


class TrainingStopped(UserError):
    """Training stopped on purpose (non-finite loss, or a diverged validation loss); the last good
    checkpoint is intact. `status` goes into summary.json, `result` is what was done."""

    exit_code = 3

    def __init__(self, message: str, status: str = "stopped_non_finite", result: dict | None = None):
        super().__init__(message)
        self.status, self.result = status, result




# ---------------------------------------------------------------------------- schedule


def lr_factor(step, warmup: int, total: int):
    """Linear warm-up over `warmup` steps, then linear decay to zero at `total` steps.

    Works on a Python number or a device tensor, so the CUDA graph computes it in place.
    """
    if isinstance(step, torch.Tensor):
        s = step.to(torch.float32)
        warm = (s + 1) / max(warmup, 1)
        decay = ((total - s) / max(total - warmup, 1)).clamp(min=0.0)
        return torch.where(s < warmup, warm, decay)
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    return max(0.0, (total - step) / max(total - warmup, 1))


# ---------------------------------------------------------------------------- data on the device


class DeviceData:
    """Training data as padded tensors on the device, with one all-padding row at the end.

    An epoch's permutation is padded to a whole number of batches with the index of that row,
    which carries no supervised label: the mean loss over supervised positions of a padded final
    batch equals that of the short batch, so every step has the same shape.

    The columns are cut to the longest sequence of the data (28 input positions for the pilot's
    training set, of model.max_seq_len = 32): the model is causal, so the padding after a sequence
    never changes its outputs, and the columns where every row is padding would be computed for
    nothing. The loss and the gradients are those of the full width; only the summation order of
    the matrix products can differ.
    """

    def __init__(self, batch: Batch, cfg: Config, device: torch.device):
        labels = batch.labels
        if cfg.training.loss_on == "answer":
            labels = labels.masked_fill(~batch.answer_mask, IGNORE_INDEX)
        width = max(int((batch.inputs != PAD_ID).sum(1).max()), 1) if len(batch) else batch.inputs.shape[1]
        inputs, labels = batch.inputs[:, :width], labels[:, :width]
        self.width = width
        self.n = len(batch)
        self.batch_size = cfg.training.batch_size
        self.steps_per_epoch = math.ceil(self.n / self.batch_size)
        pad_in = torch.full((1, width), PAD_ID, dtype=torch.long)
        pad_lab = torch.full((1, width), IGNORE_INDEX, dtype=torch.long)
        self.inputs = torch.cat([inputs, pad_in]).to(device)
        self.labels = torch.cat([labels, pad_lab]).to(device)
        self.device = device

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """A shuffled order of the examples, padded with the empty row to whole batches."""
        order = torch.randperm(self.n, generator=generator, device=generator.device).to(self.device)
        fill = self.steps_per_epoch * self.batch_size - self.n
        return torch.cat([order, torch.full((fill,), self.n, dtype=torch.long, device=self.device)])


def make_optimizer(model, cfg: Config, device: torch.device, lr) -> torch.optim.AdamW:
    t = cfg.training
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay,
                             fused=True, capturable=device.type == "cuda")


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """Owns the model, optimizer and every piece of training state that a checkpoint holds."""

    def __init__(self, cfg: Config, model: CompactTransformer, data: DeviceData, device: torch.device,
                 precision: str, seed: int, log=print, compile_scope: str = "blocks"):
        self.cfg, self.model, self.data, self.device, self.precision = cfg, model, data, device, precision
        self.scaled = uses_loss_scaling(precision)  # fp16 only: bf16 has float32's range
        self.compile_scope = compile_scope  # "blocks" (one compiled block, reused) or "model" (benchmark only)
        t = cfg.training
        self.total_steps = t.epochs * data.steps_per_epoch
        dev = dict(device=device)
        self.lr = torch.tensor(t.learning_rate * lr_factor(0, t.warmup_steps, self.total_steps), dtype=torch.float32, **dev)
        self.opt = make_optimizer(model, cfg, device, self.lr)
        # the fused AdamW kernel skips its update where found_inf is set (the hook GradScaler uses)
        self.found_inf = torch.zeros((), dtype=torch.float32, **dev)
        self.opt.found_inf = self.found_inf
        self.scale = torch.tensor(INIT_SCALE if self.scaled else 1.0, **dev)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, **dev)
        self.step = torch.zeros((), dtype=torch.long, **dev)
        self.epoch_step = torch.zeros((), dtype=torch.long, **dev)
        self.order = torch.zeros(data.steps_per_epoch * data.batch_size, dtype=torch.long, **dev)
        self.offsets = torch.arange(data.batch_size, **dev)
        # running sums, read back only at progress refreshes and epoch ends
        self.loss_sum = torch.zeros((), dtype=torch.float64, **dev)
        self.good_steps = torch.zeros((), dtype=torch.long, **dev)
        self.skipped_steps = torch.zeros((), dtype=torch.long, **dev)
        self.bad_streak = torch.zeros((), dtype=torch.long, **dev)
        self.max_bad_streak = torch.zeros((), dtype=torch.long, **dev)
        self.shuffle_gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.params = list(model.parameters())
        self.loss_fn = self._plain_loss
        self.graph = None
        self.mid_epoch = False  # True between an interruption (or a resume from one) and the epoch's next step
        self.log = log
        self.accelerations = {"compile": False, "cuda_graph": False}

    # -- the step --------------------------------------------------------------------------

    def _plain_loss(self, inputs, labels):
        return self.model(inputs, labels).loss

    def train_step(self) -> None:
        """One optimizer step, entirely on the device (no host synchronisation)."""
        t = self.cfg.training
        idx = self.order.index_select(0, self.epoch_step * self.data.batch_size + self.offsets)
        inputs, labels = self.data.inputs.index_select(0, idx), self.data.labels.index_select(0, idx)
        with autocast(self.device, self.precision):
            loss = self.loss_fn(inputs, labels)
        (loss * self.scale).backward()
        grads = [p.grad for p in self.params]
        self.found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self.scale.reciprocal())
        self.found_inf.copy_(torch.maximum(self.found_inf, (~torch.isfinite(loss.detach())).float()))
        torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip, foreach=True)
        self.lr.copy_(t.learning_rate * lr_factor(self.step, t.warmup_steps, self.total_steps))
        self.opt.step()
        if self.scaled:
            torch._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf,
                                     GROWTH_FACTOR, BACKOFF_FACTOR, GROWTH_INTERVAL)
        bad = self.found_inf.long()
        self.loss_sum.add_(torch.where(bad.bool(), 0.0, loss.detach().double()))
        self.good_steps.add_(1 - bad)
        self.skipped_steps.add_(bad)
        self.bad_streak.copy_((self.bad_streak + 1) * bad)
        torch.maximum(self.max_bad_streak, self.bad_streak, out=self.max_bad_streak)
        self.step.add_(1)
        self.epoch_step.add_(1)

    # -- acceleration ----------------------------------------------------------------------

    def attention_kernels(self):
        """On CUDA, the memory-efficient kernels of scaled_dot_product_attention (the math kernels
        where they cannot run): for these short sequences (at most 32 tokens) they beat the cuDNN
        kernels PyTorch picks by default, by 5% at batch 8 and 8-9% at batch 256 (BENCHMARKS.md,
        an H200). Compilation, capture and eager steps all run inside it."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def accelerate(self) -> None:
        """Compile and capture the step where the config asks for it and CUDA allows it."""
        t = self.cfg.training
        if self.device.type != "cuda":
            if t.compile or t.cuda_graph:
                self.log("note: training.compile / training.cuda_graph apply on CUDA only; running the eager step")
            return
        self.accelerations["attention"] = "memory-efficient"
        if t.compile:
            self.loss_fn = self._compiled_loss()
            self.accelerations["compile"] = self.compile_scope
        if t.cuda_graph:
            with self.attention_kernels():
                self._capture()
            self.accelerations["cuda_graph"] = True

    def _compiled_loss(self):
        """The loss through compiled code. By default each block is compiled on its own: the blocks
        share one code object, so Inductor compiles one block's forward and backward and the other
        layers reuse it ("regional compilation"), which cuts a cold start's compilation several-fold.
        The model itself is left untouched (evaluation and analysis run it eagerly): training goes
        through a shallow view of it whose block list holds the compiled wrappers of the same blocks."""
        if self.compile_scope == "model":
            return torch.compile(self._plain_loss, dynamic=False)
        view = copy.copy(self.model)
        view._modules = dict(self.model._modules)
        view._modules["blocks"] = torch.nn.ModuleList(torch.compile(b, dynamic=False) for b in self.model.blocks)
        return lambda inputs, labels: view(inputs, labels).loss

    def _state_tensors(self) -> list[torch.Tensor]:
        state = [p.data for p in self.params]
        for s in self.opt.state.values():
            state += [v for v in s.values() if isinstance(v, torch.Tensor)]
        return state + [self.scale, self.growth_tracker, self.step, self.epoch_step, self.lr, self.loss_sum,
                        self.good_steps, self.skipped_steps, self.bad_streak, self.max_bad_streak]

    def _capture(self) -> None:
        """Warm up (compiling, creating optimizer state), restore every state tensor, then capture.

        The warm-up steps must not count: everything they changed is put back in place, so the
        captured graph starts from exactly the state the eager step would have started from.
        """
        if not self.opt.state:  # create optimizer state (zeros) so the snapshot covers it
            for p in self.params:
                p.grad = torch.zeros_like(p)
            self.found_inf.fill_(1.0)  # a skipped step: creates state, changes no weight
            self.opt.step()
            for s in self.opt.state.values():
                s["step"].zero_()
        saved = [x.clone() for x in self._state_tensors()]
        rng = torch.cuda.get_rng_state(self.device)
        order = self.order.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                self.train_step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        with torch.no_grad():
            for x, s in zip(self._state_tensors(), saved):
                x.copy_(s)
        self.order.copy_(order)
        torch.cuda.set_rng_state(rng, self.device)
        self.opt.zero_grad(set_to_none=True)  # gradients then live in the graph's memory pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.train_step()
        torch.cuda.synchronize(self.device)

    # -- epochs ----------------------------------------------------------------------------

    def start_epoch(self) -> None:
        self.order.copy_(self.data.epoch_order(self.shuffle_gen))
        self.epoch_step.zero_()
        self.loss_sum.zero_()
        self.good_steps.zero_()

    def run_step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.opt.zero_grad(set_to_none=True)
            with self.attention_kernels():
                self.train_step()

    def run_epoch(self, bar=None, stop=None) -> bool:
        """One pass over the training data, or the rest of it after a resume in the middle of an
        epoch. The host reads the device only every PROGRESS_EVERY steps (progress bar, non-finite
        check) and once at the end of the epoch. Returns False when `stop` (a StopSignals) asked
        for an end after a step: the epoch is then unfinished, its state ready for a checkpoint."""
        if not self.mid_epoch:
            self.start_epoch()
        first, self.mid_epoch = int(self.epoch_step), False
        n = self.data.steps_per_epoch
        if bar is not None:
            bar.update(first)
        for i in range(first, n):
            if stop is not None and stop.signum is not None:
                self.check_finite()
                self.mid_epoch = True
                return False
            self.run_step()
            if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == n:
                self.check_finite()
                if bar is not None:
                    bar.set_postfix(loss=f"{self.mean_loss():.4f}", lr=f"{float(self.lr):.2e}", refresh=False)
                    bar.update(i + 1 - bar.n)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return True

    def check_finite(self) -> None:
        streak = int(self.max_bad_streak)
        if streak >= self.cfg.training.max_bad_steps:
            raise TrainingStopped(
                f"stopped: {streak} consecutive steps had a non-finite loss or gradient "
                f"(training.max_bad_steps = {self.cfg.training.max_bad_steps}); the last good checkpoint is "
                f"intact. Lower training.learning_rate (now {self.cfg.training.learning_rate:g}) in the config and "
                "start a new run (a resumed run keeps its config), or check the data."
            )

    def mean_loss(self) -> float:
        good = int(self.good_steps)
        return float(self.loss_sum) / good if good else float("nan")

    # -- checkpoint state ------------------------------------------------------------------

    def state_dict(self) -> dict:
        rng = {"cpu": torch.get_rng_state(), "shuffle": self.shuffle_gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            "optimizer": self.opt.state_dict(),
            "scaler": {"scale": self.scale.cpu(), "growth_tracker": self.growth_tracker.cpu()},
            "step": int(self.step),
            "skipped_steps": int(self.skipped_steps),
            "rng": rng,
            "epoch_step": 0,  # an epoch's end
        }
        if self.mid_epoch:  # interrupted: the step within the epoch, its shuffled order and running sums
            state["epoch_step"] = int(self.epoch_step)
            state["epoch_state"] = {name: getattr(self, name).cpu() for name in EPOCH_STATE}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        for group in self.opt.param_groups:  # the step function writes this very tensor
            group["lr"] = self.lr
        self.scale.copy_(state["scaler"]["scale"])
        self.growth_tracker.copy_(state["scaler"]["growth_tracker"])
        self.step.fill_(state["step"])
        self.lr.copy_(self.cfg.training.learning_rate *
                      lr_factor(state["step"], self.cfg.training.warmup_steps, self.total_steps))
        self.skipped_steps.fill_(state["skipped_steps"])
        torch.set_rng_state(state["rng"]["cpu"])
        self.shuffle_gen.set_state(state["rng"]["shuffle"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        if state.get("epoch_step", 0) > 0:  # interrupted in the middle of an epoch
            order = state["epoch_state"]["order"]
            if order.shape != self.order.shape or state["epoch_step"] >= self.data.steps_per_epoch:
                raise UserError(f"the checkpoint was interrupted at step {state['epoch_step']} of an epoch of "
                                f"{order.numel() // self.data.batch_size} steps; this training data gives epochs of "
                                f"{self.data.steps_per_epoch} steps. Resume with the run's own data")
            self.mid_epoch = True
            self.epoch_step.fill_(state["epoch_step"])
            for name in EPOCH_STATE:
                getattr(self, name).copy_(state["epoch_state"][name])


# ---------------------------------------------------------------------------- the reference loop


def reference_training(cfg: Config, model: CompactTransformer, inputs: torch.Tensor, labels: torch.Tensor, device,
                       precision: str, seed: int, steps: int, on_step=None) -> list[float]:
    """The textbook loop: host-side batches of the given rows (`labels` already restricted to what
    the loss covers) in a seeded shuffled order with a short last batch, `loss.item()` every step,
    torch.amp.GradScaler, LambdaLR and the unfused AdamW. It shares no data code with the Trainer;
    the same mathematics as Trainer.train_step, which the tests and the benchmark hold against it.
    Returns the losses."""
    t, n = cfg.training, len(inputs)
    steps_per_epoch = math.ceil(n / t.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, betas=(t.beta1, t.beta2),
                            weight_decay=t.weight_decay, foreach=False)
    total = t.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t.warmup_steps, total))
    scaler = torch.amp.GradScaler(device.type, enabled=uses_loss_scaling(precision))
    gen = torch.Generator(device=device).manual_seed(seed + 1)  # the shuffling seed of the Trainer
    losses, order = [], None
    model.train()
    for step in range(steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(n, generator=gen, device=device).cpu()
        idx = order[(step % steps_per_epoch) * t.batch_size:][: t.batch_size]
        x, y = inputs[idx].to(device), labels[idx].to(device)
        with autocast(device, precision):
            loss = model(x, y).loss
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step)
    return losses


# ---------------------------------------------------------------------------- signals


class Interrupted(UserError):
    """SIGINT or SIGTERM: the run stopped where it could be continued, or before it began."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum  # what the shell reports for a death by that signal


class StopSignals:
    """SIGINT and SIGTERM. While `deferring` (the training loop), a signal is noted and acted on
    after the current step: checkpoint_latest.pt is saved, then Interrupted is raised. At any other
    moment it raises Interrupted at once; every write is atomic, so nothing is left half-written."""

    def __init__(self, run_hint: str):
        self.signum, self.deferring, self.run_hint, self._previous = None, False, run_hint, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum, frame) -> None:
        if self.deferring and self.signum is None:
            self.signum = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this step; saving checkpoint_latest.pt",
                  file=sys.stderr, flush=True)
            return
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}; files already written are intact. "
                          + self.run_hint)

    def interrupted(self, run: RunDir, epoch: int, step: int, epoch_done: bool) -> Interrupted:
        name = signal.Signals(self.signum).name
        where = f"after epoch {epoch} (step {step})" if epoch_done else f"in epoch {epoch} at step {step}"
        return Interrupted(self.signum, f"interrupted by {name} {where}: "
                           f"{run.path / 'checkpoint_latest.pt'} is saved. Continue with: "
                           f"python -m src.train --output-dir {run.path} --resume")


# ---------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m src.train",
                                description="Train a CompactTransformer (../shared/SPEC.md sections 2, 3, 7).")
    p.add_argument("--config", help="YAML config, e.g. configs/pilot.yaml or configs/scale_10m.yaml (required unless "
                   "--resume, which takes the run's own config; given with --resume, it may differ from the run's "
                   "only in training.epochs)")
    p.add_argument("--output-dir", required=True, help="run directory: config, metrics, checkpoints, summary "
                   "(one training at a time: the directory is locked while a run writes into it)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED),  # torch seeds are 64-bit; seed + 1 seeds shuffling
                   default=None, help="seed of weights, dropout and shuffling (default: 42; on --resume the run's own)")
    p.add_argument("--device", default="cuda", help="cuda or cpu (default: cuda; without --gpu-only a missing "
                   "CUDA falls back to the CPU with a warning recorded in summary.json)")
    p.add_argument("--fp16", action="store_true", help="float16 autocast in training and evaluation with dynamic "
                   "loss scaling; requires CUDA. Sets training.precision to fp16 (the config may also say fp32 or bf16)")
    p.add_argument("--gpu-only", action="store_true", help="abort (RuntimeError) unless --device cuda and CUDA is "
                   "available; checked before anything is read or written")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its checkpoint_latest.pt, "
                   "with its own config, seed and precision; a run killed after its last epoch is finished (summary) "
                   "without training again")
    p.add_argument("--stop-after-epoch", type=int_in(1, 10**9), default=None, metavar="N", help="end this invocation after epoch "
                   "N, with checkpoint_latest.pt written (the schedule still spans the configured epochs; continue "
                   "with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    args = p.parse_args(argv)
    if args.config is None and not args.resume:
        p.error("the following arguments are required: --config (only --resume may leave it out: it takes the "
                "run's own config)")
    return args


def with_precision(cfg: Config, precision: str) -> Config:
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, precision=precision))


def flat(d: dict, prefix: str = "") -> dict:
    """{"training": {"epochs": 4}} -> {"training.epochs": 4}"""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resumed_settings(args, ckpt: dict, run: RunDir) -> tuple[Config, int, list[dict]]:
    """The run's own config and seed. A --config or --seed that differs from them is an error
    listing the differences, except training.epochs: changing it is allowed, and recorded."""
    where = run.path / "checkpoint_latest.pt"
    own = with_precision(config_from_dict(ckpt["config"], f"{where} (its config)"), run_precision(ckpt, run.path))
    diffs, given = [], None
    if args.config is not None:
        given = load_config(args.config)
        if args.fp16:
            given = with_precision(given, "fp16")
        theirs = flat(given.to_dict())
        diffs += [f"{key}: run {value!r}, {args.config} {theirs.get(key)!r}" for key, value in flat(own.to_dict()).items()
                  if key != "training.epochs" and theirs.get(key) != value]
    elif args.fp16 and own.training.precision != "fp16":
        diffs.append(f"training.precision: run {own.training.precision!r}, --fp16")
    seed = ckpt.get("seed")
    if args.seed is not None and seed is not None and args.seed != seed:
        diffs.append(f"seed: run {seed}, --seed {args.seed}")
    if diffs:
        raise UserError(f"--resume: a resumed run keeps its own config and seed, and these differ from the run in "
                        f"{run.path}: {'; '.join(diffs)}. Resume without them (only training.epochs may change), "
                        "or start a new run in another --output-dir")
    if seed is None:  # a checkpoint written before checkpoints recorded their seed
        seed = 42 if args.seed is None else args.seed
        print(f"note: {where} does not record its seed; using {seed}", file=sys.stderr)
    changes = list(ckpt.get("epoch_changes", []))
    if given is not None and given.training.epochs != own.training.epochs:
        if given.training.epochs < ckpt["epoch"]:
            raise UserError(f"--resume: {args.config} has training.epochs = {given.training.epochs}, but the run in "
                            f"{run.path} is already at epoch {ckpt['epoch']}")
        changes.append({"at_epoch": ckpt["epoch"], "from": own.training.epochs, "to": given.training.epochs})
        print(f"note: training.epochs changes from {own.training.epochs} to {given.training.epochs} at epoch "
              f"{ckpt['epoch']} (recorded in summary.json and the checkpoints; the learning-rate schedule is "
              "stretched to the new length)", file=sys.stderr)
        own = dataclasses.replace(own, training=dataclasses.replace(own.training, epochs=given.training.epochs))
    return own, seed, changes


def main(argv=None) -> int:
    args = parse_args(argv)
    # The checklist's hard constraint: nothing is read, built or written before this check.
    device, fallback = resolve_device(args.device, args.gpu_only, "fp16" if args.fp16 else "fp32")
    hint = (f"Continue with: python -m src.train --output-dir {args.output_dir} --resume" if args.resume else
            "A run that wrote a checkpoint continues with --resume")
    with StopSignals(hint) as stop, contextlib.ExitStack() as cleanup:
        run = None
        if args.resume:
            run = RunDir(args.output_dir, resume=True)
            cleanup.callback(run.release)
            ckpt = load_training_checkpoint(run.path / "checkpoint_latest.pt")
            cfg, seed, epoch_changes = resumed_settings(args, ckpt, run)
            source = f"{run.path / 'config.yaml'}"
        else:
            cfg = load_config(args.config)
            cfg = with_precision(cfg, "fp16") if args.fp16 else cfg
            seed, ckpt, epoch_changes, source = 42 if args.seed is None else args.seed, None, [], args.config
        return train(cfg, args, device, fallback, seed, ckpt, epoch_changes, source, run, stop, cleanup)


def train(cfg: Config, args, device, fallback, seed: int, ckpt: dict | None, epoch_changes: list, source: str,
          run: RunDir | None, stop: StopSignals, cleanup: contextlib.ExitStack) -> int:
    """Check the inputs, then train (or finish) the run; `run` is None for a new run, whose
    directory is created and locked only once every input has passed its checks."""
    precision = cfg.training.precision
    check_precision(precision, device)
    check_data_paths(cfg, source)
    if args.stop_after_epoch is not None and args.stop_after_epoch > cfg.training.epochs:
        raise UserError(f"--stop-after-epoch {args.stop_after_epoch} is beyond training.epochs "
                        f"({cfg.training.epochs}) of {source}")
    t0 = time.time()
    max_len = cfg.model.max_seq_len
    train_records = load_jsonl(cfg.data.path("train"), max_len)
    val_batch = make_batch(load_jsonl(cfg.data.path("val"), max_len), max_len).to(device)
    if run is None:
        run = RunDir(args.output_dir, resume=False)
        cleanup.callback(run.release)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; fp16 and bf16 come from autocast
        warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores")
    model = CompactTransformer(cfg.model).to(device)
    data = DeviceData(make_batch(train_records, max_len), cfg, device)
    trainer = Trainer(cfg, model, data, device, precision, seed)
    run_info = {"seed": seed, "precision": precision, "epoch_changes": epoch_changes}

    start_epoch, best = 0, {"val_loss": float("inf"), "epoch": None, "metrics": None}
    if ckpt is not None:
        latest = run.path / "checkpoint_latest.pt"
        model.load_state_dict(model_from_checkpoint(ckpt, latest, cfg.model).state_dict())
        summary = run.read_summary()
        if ckpt["epoch"] >= cfg.training.epochs and summary is not None and summary.get("status") == "completed":
            raise UserError(f"--resume: the run in {run.path} already finished all {ckpt['epoch']} epochs "
                            f"(training.epochs = {cfg.training.epochs}); nothing to resume")
        if args.stop_after_epoch is not None and args.stop_after_epoch <= ckpt["epoch"]:
            raise UserError(f"--stop-after-epoch {args.stop_after_epoch}: the run in {run.path} is already at "
                            f"epoch {ckpt['epoch']}; give a later epoch")
        trainer.load_state_dict(ckpt)
        start_epoch, best = ckpt["epoch"], ckpt["best"]
        run.keep_metrics_until(start_epoch)
        if epoch_changes != ckpt.get("epoch_changes", []):
            run.write_text("config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if start_epoch >= cfg.training.epochs:
            print(f"Finishing the run: epoch {start_epoch} (step {ckpt['step']}) is its last; no training is left")
            finish_last_epoch(run, ckpt, trainer, val_batch)
        else:
            print(f"Resuming from epoch {start_epoch} (step {ckpt['step']})"
                  + (f", {ckpt['epoch_step']} steps into epoch {start_epoch + 1}" if ckpt.get("epoch_step") else ""))
    else:
        run.write_text("config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    print_header(cfg, args, seed, device, fallback, model, train_records, val_batch)
    try:
        result = train_loop(cfg, args, run, trainer, val_batch, start_epoch, best, run_info, stop)
    except torch.cuda.OutOfMemoryError as err:
        detail = str(err).splitlines()[0][:200] if str(err) else "no detail"
        raise UserError(f"{OOM_ADVICE} (PyTorch said: {detail})") from None
    except TrainingStopped as stopped:
        run.write_json("summary.json", make_summary(cfg, run_info, args, device, fallback, trainer, stopped.result,
                                                    time.time() - t0, status=stopped.status))
        raise
    summary = make_summary(cfg, run_info, args, device, fallback, trainer, result, time.time() - t0)
    run.write_json("summary.json", summary)
    rate = f" ({summary['train_steps_per_s']:.0f} steps/s while training)" if summary["train_steps_per_s"] else ""
    print(f"Done: {summary['steps']} steps in {summary['wall_time_s']:.1f} s{rate}; best epoch {summary['best_epoch']}")
    return 0


def finish_last_epoch(run: RunDir, ckpt: dict, trainer: Trainer, val_batch) -> None:
    """A run killed after its last checkpoint_latest.pt but before its summary: put back what the
    end of its last epoch writes after that checkpoint (checkpoint_best.pt, a lost metrics row)."""
    epoch = ckpt["epoch"]
    if not any(r["epoch"] == epoch for r in run.metrics()):
        print(f"warning: metrics.jsonl has no row for epoch {epoch}; evaluating the checkpoint on the validation "
              "set again (the epoch's mean training loss is not recoverable)", file=sys.stderr)
        val = evaluate_batch(trainer.model, val_batch, precision=trainer.precision, with_intervals=False)
        run.append_metrics({"schema": SCHEMAS["metrics"], "epoch": epoch, "step": ckpt["step"], "train_loss": None,
                            "lr": float(trainer.lr), "skipped_steps": ckpt["skipped_steps"], "val": val})
    if ckpt["best"]["epoch"] == epoch:
        run.link("checkpoint_latest.pt", "checkpoint_best.pt")


def print_header(cfg, args, seed, device, fallback, model, train_records, val_batch) -> None:
    line = "=" * 70
    print(line)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(f"GPU: {props.name}")
        print(f"GPU memory: {props.total_memory / 1024**3:.1f} GB")
    else:
        print(f"Device: CPU ({platform.processor() or platform.machine()})" + (f"  [FALLBACK: {fallback}]" if fallback else ""))
    print(f"FP16 Mixed Precision: {'ENABLED' if cfg.training.precision == 'fp16' else 'DISABLED'}")
    print(f"Precision: {DESCRIPTION[cfg.training.precision]}")
    print(f"Parameters: {model.num_parameters():,}")
    print(f"Train data: {cfg.data.path('train')} ({len(train_records)} examples)")
    print(f"Val data:   {cfg.data.path('val')} ({len(val_batch)} examples)")
    print(f"Seed: {seed}   Output: {args.output_dir}")
    print("Config:")
    print("  " + yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip().replace("\n", "\n  "))
    print(line, flush=True)


def diverged(val: dict) -> bool:
    """A validation loss that is not finite, or whose perplexity overflows, means the weights diverged."""
    return not math.isfinite(val["loss"]) or not math.isfinite(val["perplexity"])


def train_loop(cfg: Config, args, run: RunDir, trainer: Trainer, val_batch, start_epoch: int, best: dict,
               run_info: dict, stop: StopSignals) -> dict:
    t = cfg.training
    device = trainer.device
    tic = time.perf_counter()
    if start_epoch < t.epochs:  # nothing to accelerate when a resume only finishes the run
        trainer.accelerate()
    timing = {"compile_and_capture_s": time.perf_counter() - tic, "eval_s": 0.0, "checkpoint_s": 0.0}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps_per_epoch = trainer.data.steps_per_epoch
    train_time, epoch, first_step = 0.0, start_epoch, int(trainer.step)

    def checkpoint(names: list[str], epoch: int) -> None:
        ckpt = {"model_config": dataclasses.asdict(cfg.model), "config": cfg.to_dict(), "model": trainer.model.state_dict(),
                "epoch": epoch, "best": best, **run_info, **trainer.state_dict()}
        tic = time.perf_counter()
        run.save_checkpoint(names, ckpt)
        timing["checkpoint_s"] += time.perf_counter() - tic

    def so_far(epoch: int) -> dict:
        return {"epoch": epoch, "best": best, "train_time": train_time, "steps": int(trainer.step) - first_step,
                "timing": timing}

    stop.deferring = True
    for epoch in range(start_epoch + 1, t.epochs + 1):
        tic = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{t.epochs}", disable=args.no_progress,
                   leave=False, dynamic_ncols=True)
        try:
            finished = trainer.run_epoch(bar, stop)
        except TrainingStopped as stopped:  # main writes the summary of what was done
            train_time += time.perf_counter() - tic
            stopped.result = so_far(epoch - 1)
            raise
        finally:
            bar.close()
        train_time += time.perf_counter() - tic
        if not finished:  # SIGINT or SIGTERM in the middle of the epoch
            checkpoint(["checkpoint_latest.pt"], epoch - 1)
            raise stop.interrupted(run, epoch, int(trainer.step), epoch_done=False)
        record = {"schema": SCHEMAS["metrics"], "epoch": epoch, "step": int(trainer.step), "train_loss": trainer.mean_loss(),
                  "lr": float(trainer.lr), "skipped_steps": int(trainer.skipped_steps)}
        if device.type == "cuda":
            record["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        improved = False
        if epoch % t.eval_interval == 0 or epoch == t.epochs:
            tic = time.perf_counter()
            val = evaluate_batch(trainer.model, val_batch, precision=trainer.precision, with_intervals=False)
            timing["eval_s"] += time.perf_counter() - tic
            if diverged(val):
                raise TrainingStopped(
                    f"stopped: the model diverged: its validation loss after epoch {epoch} is {val['loss']:.4g} "
                    f"(perplexity {val['perplexity']:.4g}). Nothing of epoch {epoch} was saved; the last good checkpoint "
                    f"is intact. Lower training.learning_rate (now {t.learning_rate:g}) in the config and start a new "
                    "run (a resumed run keeps its config)", status="stopped_diverged", result=so_far(epoch - 1))
            record["val"] = val
            improved = val["loss"] < best["val_loss"]
            if improved:
                best = {"val_loss": val["loss"], "epoch": epoch, "metrics": val}
            run.append_metrics(record)
            print(f"epoch {epoch:3d}  train_loss {record['train_loss']:.4f}  val_loss {val['loss']:.4f}  "
                  f"exact_match {val['exact_match']:.3f}  end_of_answer_acc {val['end_of_answer_acc']:.3f}"
                  + (f"  peak_mem {record['peak_gpu_memory_mb']:.0f} MB" if "peak_gpu_memory_mb" in record else ""),
                  flush=True)
        stop_here = epoch == args.stop_after_epoch
        names = [f"checkpoint_epoch_{epoch}.pt"] if epoch % t.save_interval == 0 else []
        if epoch % t.save_interval == 0 or epoch == t.epochs or stop_here or stop.signum is not None:
            names.append("checkpoint_latest.pt")
        if improved:
            names.append("checkpoint_best.pt")
        if names:
            checkpoint(names, epoch)
        if stop.signum is not None:  # a signal during the evaluation or the checkpoint
            raise stop.interrupted(run, epoch, int(trainer.step), epoch_done=True)
        if stop_here:
            break
    stop.deferring = False
    return so_far(epoch)


def make_summary(cfg, run_info: dict, args, device, fallback, trainer: Trainer, result: dict, wall: float,
                 status=None) -> dict:
    steps = int(trainer.step)
    if status is None:
        status = "completed" if result["epoch"] == cfg.training.epochs else "stopped_after_epoch"
    precision = cfg.training.precision
    summary = {
        "schema": SCHEMAS["summary"],
        "status": status,
        "config": cfg.name,
        "seed": run_info["seed"],
        "device": device.type,
        "requested_device": args.device,
        "device_fallback": fallback is not None,
        "fallback_reason": fallback,
        "gpu_name": None,
        "gpu_memory_gb": None,
        "precision": DESCRIPTION[precision],
        "fp16": precision == "fp16",
        "peak_gpu_memory_mb": None,
        "parameters": trainer.model.num_parameters(),
        "epochs": result["epoch"],
        "epoch_changes": run_info["epoch_changes"],
        "steps": steps,
        "skipped_steps": int(trainer.skipped_steps),
        "wall_time_s": wall,
        "train_time_s": result["train_time"],
        "train_steps_per_s": result["steps"] / result["train_time"] if result["train_time"] else None,
        "accelerations": trainer.accelerations,
        "timing": result["timing"],
        "best_epoch": result["best"]["epoch"],
        "best_val_metrics": result["best"]["metrics"],
        "torch_version": torch.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        summary.update(gpu_name=props.name, gpu_memory_gb=round(props.total_memory / 1024**3, 1),
                       peak_gpu_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20)
    return summary


if __name__ == "__main__":
    raise SystemExit(run_main(main))
