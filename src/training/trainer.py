"""The fast training path: one seed's Trainer and the loop that interleaves several.

The training step is written once (`Trainer.train_step`) with all of its bookkeeping on the
device: the batch is gathered from the dataset tensor by a device-side permutation, the loss
scale, found-inf flag, learning rate and step counter are tensors, and the optimizer is a fused
AdamW that skips the update when a gradient is non-finite. Nothing in the step reads a value
back to the host, so on CUDA the whole step can be compiled (`training.compile`) and captured
as one CUDA graph (`training.cuda_graph`); on the CPU the same function runs eagerly. With
`training.packing` the same batches are laid out in packed rows (PackedLayout): fewer positions,
the same loss.
`reference_training` is the textbook loop (host batches, GradScaler, LambdaLR, unfused AdamW)
that the tests and the benchmark hold the fast path against.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch

from src.rundir.checkpoint import EPOCH_STATE
from src.config import Config
from src.data import Batch
from src.data.packing import pack_rows, packed_sources, row_width
from src.device import (autocast, uses_loss_scaling)
from src.errors import UserError
from src.model import CompactTransformer
from src.tokenizer import IGNORE_INDEX, PAD_ID

# dynamic loss scaling, as torch.amp.GradScaler's defaults
INIT_SCALE, GROWTH_FACTOR, BACKOFF_FACTOR, GROWTH_INTERVAL = 2.0**16, 2.0, 0.5, 2000
PROGRESS_EVERY = 50  # steps between progress-bar refreshes (each one reads the loss back)
CAPTURE_WARMUP_STEPS = 3  # eager steps before a capture (compiling, allocating), undone afterwards
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


def lr_table(learning_rate: float, warmup: int, total: int, device) -> torch.Tensor:
    """The learning rate of every step 0 .. total + CAPTURE_WARMUP_STEPS, float32 on `device`: the
    step reads its rate from here (one gather) instead of computing the schedule (ten small kernels).
    The values are those of `learning_rate * lr_factor(step)` for a step tensor, bit for bit: the same
    operations in the same dtype, elementwise. Past `total` the rate is 0; only the warm-up steps of
    a capture (undone afterwards) reach there."""
    steps = torch.arange(total + CAPTURE_WARMUP_STEPS + 1, device=device)
    return learning_rate * lr_factor(steps, warmup, total)


def scaled_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all `grads` together, as torch.nn.utils.clip_grad_norm_ computes it (the norm of
    the per-tensor norms, in that order). On gradients of a loss multiplied by a power of two, it is
    that power times the norm of the unscaled gradients, exactly: squaring, adding and the square
    root only move the exponents (short of float32's range: a squared value below 1e-38 or a sum
    above 3e38)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


def clip_scaled_grads_(grads: list[torch.Tensor], norm: torch.Tensor, scale: torch.Tensor, max_norm: float) -> None:
    """clip_grad_norm_(max_norm) of the gradients of a loss multiplied by `scale` (a power of two),
    without dividing them by it first: `norm` is scaled_grad_norm(grads), and the coefficient is the
    one clip_grad_norm_ finds on the unscaled gradients (norm / scale is exact). Multiplying the
    scaled gradients by it and dividing by the scale afterwards (the fused AdamW's grad_scale) gives
    the very values of clipping the unscaled ones: rounding commutes with a power of two."""
    coef = torch.clamp(max_norm / (norm / scale + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef)


def check_step(loss: torch.Tensor, norm: torch.Tensor, found_inf: torch.Tensor, step: torch.Tensor,
               lr: torch.Tensor, lr_table: torch.Tensor) -> None:
    """Before the optimizer: found_inf (1 where the loss or a gradient is not finite: the norm of all
    gradients is then not finite either) and this step's learning rate. In place, exact operations only,
    so that compiled into one kernel (Trainer.accelerate) it gives the eager values bit for bit.
    Unlike torch.amp's unscale_, it also skips a step whose scaled gradients' squared norm overflows
    float32: a gradient above about 1.8e19 / scale (3e14 at the first scale, 2^16)."""
    found_inf.copy_((~(torch.isfinite(loss) & torch.isfinite(norm))).float())
    lr.copy_(torch.index_select(lr_table, 0, step.view(1)).view(()))


def count_step(loss: torch.Tensor, found_inf: torch.Tensor, loss_sum: torch.Tensor, good_steps: torch.Tensor,
               skipped_steps: torch.Tensor, bad_streak: torch.Tensor, max_bad_streak: torch.Tensor,
               step: torch.Tensor, epoch_step: torch.Tensor) -> None:
    """After the optimizer: the running sums of the epoch and the step counters, in place. Exact
    operations only (a float64 sum of the loss, integer counts), so one compiled kernel gives the
    eager values bit for bit."""
    bad = found_inf.long()
    # through a one-element view: Inductor's CPU code (torch 2.13) drops an in-place add to a 0-d
    # float64 input (tests/test_step.py holds the compiled function to the eager one)
    loss_sum.view(1).add_(torch.where(bad.bool(), 0.0, loss.double()).view(1))
    good_steps.add_(1 - bad)
    skipped_steps.add_(bad)
    bad_streak.copy_((bad_streak + 1) * bad)
    torch.maximum(max_bad_streak, bad_streak, out=max_bad_streak)
    step.add_(1)
    epoch_step.add_(1)


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
        # one byte per token (ids 0-34, and -100 for an unsupervised label): 2,000,000 rows of 28
        # positions take 112 MB rather than 896 MB as int64; a step widens only its own batch
        self.inputs = torch.cat([inputs, pad_in]).to(torch.int8).to(device)
        self.labels = torch.cat([labels, pad_lab]).to(torch.int8).to(device)
        # each row's number of input positions (0 for the all-padding row): what packing places
        self.lengths = (self.inputs != PAD_ID).sum(1).to(torch.int8)
        self.packing_reference: dict[int, int] = {}  # epochs -> rows (PackedLayout)
        self.device = device

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """A shuffled order of the examples, padded with the empty row to whole batches."""
        order = torch.randperm(self.n, generator=generator, device=generator.device).to(self.device)
        fill = self.steps_per_epoch * self.batch_size - self.n
        return torch.cat([order, torch.full((fill,), self.n, dtype=torch.long, device=self.device)])


# ---------------------------------------------------------------------------- packed batches

PACK_MARGIN_ROWS = 2  # rows above the reference schedule's most (see PackedLayout)
PACK_REFERENCE_SEED = 0  # the shuffling seed of the reference schedule
PACK_CHUNK_STEPS = 32768  # steps packed in one call while a schedule is searched (34 MB of row fills at batch 256)


class PackedLayout:
    """The packed shape of one seed's training steps (training.packing): `rows` rows of `width`
    positions each (src/data/packing.py), the same for every step of the run.

    The batches are the padded path's (the epoch's permutation, B examples a step, in order); packing
    only says where in the rows each example goes. For static shapes (one compilation, one CUDA graph)
    every step must fit the same number of rows, and none may be dropped or moved to another step. So
    the trainer packs its whole schedule once, when it is made: every epoch's permutation drawn from
    a fresh copy of its shuffling generator (the very permutations the run will draw). `rows` is at
    least the most rows any of those steps fills, so every step fits by construction. To give seeds
    trained side by side one shape (one compilation), it is the most of a reference schedule (the
    same data and epochs, shuffled with PACK_REFERENCE_SEED) plus PACK_MARGIN_ROWS, unless the seed's
    own schedule needs more: the most of 12,500 steps varies by about a row from seed to seed. `rows`
    depends on the seed, the data, the batch size and training.epochs only, so a resumed run packs
    exactly as the run that never stopped. Each epoch's layout is computed again at its start
    (Trainer.start_epoch) and checked against `rows` there.
    """

    def __init__(self, data: DeviceData, seed: int, epochs: int):
        self.width = row_width(data.width)
        self.own = self.most_rows(data, seed, epochs)
        if epochs not in data.packing_reference:  # shared by the seeds that share the data
            data.packing_reference[epochs] = self.most_rows(data, PACK_REFERENCE_SEED, epochs)
        self.reference = data.packing_reference[epochs]
        self.rows = min(max(self.reference + PACK_MARGIN_ROWS, self.own), data.batch_size)

    def most_rows(self, data: DeviceData, seed: int, epochs: int) -> int:
        """The most rows a step fills in `epochs` epochs shuffled as a trainer of `seed` shuffles them."""
        generator = torch.Generator(device=data.device).manual_seed(seed + 1)  # as Trainer.shuffle_gen
        per_call = max(1, PACK_CHUNK_STEPS // data.steps_per_epoch)
        most = 0
        for first in range(0, epochs, per_call):
            orders = torch.cat([data.epoch_order(generator) for _ in range(min(per_call, epochs - first))])
            lengths = data.lengths.index_select(0, orders).view(-1, data.batch_size)
            most = max(most, int(pack_rows(lengths, self.width)[1].max()))
        return most

    def plan(self, data: DeviceData, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each position of the epoch's `order`: where its example starts in its step's rows; and the
        rows each step fills."""
        lengths = data.lengths.index_select(0, order).view(data.steps_per_epoch, data.batch_size)
        start, rows = pack_rows(lengths, self.width)
        return start.flatten(), rows

    def describe(self) -> dict:
        return {"rows": self.rows, "width": self.width, "most_rows_filled": self.own}


_COMPILED_BOOKKEEPING = None


def compiled_step_bookkeeping():
    """check_step and count_step compiled (once per process: the seeds side by side share them)."""
    global _COMPILED_BOOKKEEPING
    if _COMPILED_BOOKKEEPING is None:
        _COMPILED_BOOKKEEPING = (torch.compile(check_step, dynamic=False, fullgraph=True),
                                 torch.compile(count_step, dynamic=False, fullgraph=True))
    return _COMPILED_BOOKKEEPING


def make_optimizer(model, cfg: Config, device: torch.device, lr) -> torch.optim.AdamW:
    t = cfg.training
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay,
                             fused=True, capturable=device.type == "cuda")


# ---------------------------------------------------------------------------- one seed's random state


class SeedRNG:
    """The global random state one seed's run draws from: the CPU generator (weight initialisation,
    dropout on the CPU) and, on CUDA, the device's default generator (dropout on the GPU).

    Each seed keeps its own copy, made active around everything the run does (`with rng:`), so that
    several seeds can train in one process, interleaved step by step, and each draws exactly the
    numbers it would draw alone (torch.manual_seed(seed) in a process of its own). On CUDA the
    default generator is pointed at the seed's own state (Generator.graphsafe_set_state): a CUDA
    graph captured while it is active registers that state, so each seed's graph advances its own
    Philox offset however the graphs' replays interleave."""

    def __init__(self, seed: int, device: torch.device):
        self.cpu = torch.Generator().manual_seed(seed).get_state()
        self.cuda = None
        if device.type == "cuda":
            self.cuda = torch.Generator(device=device).manual_seed(seed)
            self._default = torch.cuda.default_generators[device.index if device.index is not None
                                                          else torch.cuda.current_device()]

    def __enter__(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            self._default.graphsafe_set_state(self.cuda)
        return self

    def __exit__(self, *exc) -> None:
        self.cpu = torch.get_rng_state()


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """Owns the model, optimizer and every piece of training state that a checkpoint holds."""

    def __init__(self, cfg: Config, model: CompactTransformer, data: DeviceData, device: torch.device,
                 precision: str, seed: int, log=print, compile_scope: str | None = None, rng: SeedRNG | None = None):
        """`rng`: the seed's own random state (SeedRNG), for a trainer that shares its process with
        other seeds; None draws from the process's global generators. `compile_scope`: "blocks" or
        "model" (see _compiled_loss); None takes training.compile_scope."""
        self.cfg, self.model, self.data, self.device, self.precision = cfg, model, data, device, precision
        self.seed = seed
        self.rng = rng if rng is not None else contextlib.nullcontext()
        self.stream = None  # the CUDA stream its graph is captured and replayed on, when seeds train side by side
        self.scaled = uses_loss_scaling(precision)  # fp16 only: bf16 has float32's range
        self.compile_scope = compile_scope or cfg.training.compile_scope  # "blocks" (one compiled block, reused) or "model"
        t = cfg.training
        self.total_steps = t.epochs * data.steps_per_epoch
        dev = dict(device=device)
        self.lr = torch.tensor(t.learning_rate * lr_factor(0, t.warmup_steps, self.total_steps), dtype=torch.float32, **dev)
        self.lr_table = lr_table(t.learning_rate, t.warmup_steps, self.total_steps, device)
        self.opt = make_optimizer(model, cfg, device, self.lr)
        # the hooks GradScaler uses: the fused AdamW kernel divides every gradient by grad_scale (the
        # loss scale, a power of two: exact) and skips its update where found_inf is set
        self.found_inf = torch.zeros((), dtype=torch.float32, **dev)
        self.scale = torch.tensor(INIT_SCALE if self.scaled else 1.0, **dev)
        self.opt.found_inf, self.opt.grad_scale = self.found_inf, self.scale
        self.growth_tracker = torch.zeros((), dtype=torch.int32, **dev)
        self.step = torch.zeros((), dtype=torch.long, **dev)
        self.epoch_step = torch.zeros((), dtype=torch.long, **dev)
        self.order = torch.zeros(data.steps_per_epoch * data.batch_size, dtype=torch.long, **dev)
        # training.packing: the rows of every step, and where each example of the epoch's order starts in them
        self.layout = PackedLayout(data, seed, t.epochs) if t.packing else None
        self.place = torch.zeros_like(self.order) if t.packing else None
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
        self.check_step, self.count_step = check_step, count_step  # compiled on CUDA (accelerate)
        self.graph = None
        self.mid_epoch = False  # True between an interruption (or a resume from one) and the epoch's next step
        self.log = log
        self.accelerations = {"compile": False, "cuda_graph": False,
                              "deterministic": torch.are_deterministic_algorithms_enabled(),
                              "packing": self.layout.describe() if self.layout is not None else False}

    # -- the step --------------------------------------------------------------------------

    def _plain_loss(self, inputs, labels, positions=None, segments=None):
        return self.model(inputs, labels, positions=positions, segments=segments).loss

    def step_batch(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The current step's batch, on the device without a host synchronisation: (inputs, labels,
        packed), the B examples at this step's places of the epoch's order. Padded: one row each,
        `packed` empty. With training.packing: layout.rows rows of layout.width positions, and `packed`
        holds the positions and segments (the example) of every token (CompactTransformer.forward)."""
        data = self.data
        places = self.epoch_step * data.batch_size + self.offsets
        idx = self.order.index_select(0, places)
        if self.layout is None:
            return data.inputs.index_select(0, idx).long(), data.labels.index_select(0, idx).long(), {}
        rows, width = self.layout.rows, self.layout.width
        source = packed_sources(idx, self.place.index_select(0, places), data.lengths.index_select(0, idx),
                                data.width, rows, width, empty=data.n)
        inputs = data.inputs.view(-1).index_select(0, source).view(rows, width).long()
        labels = data.labels.view(-1).index_select(0, source).view(rows, width).long()
        packed = {"positions": (source % data.width).view(rows, width),
                  "segments": (source // data.width).view(rows, width)}
        return inputs, labels, packed

    def train_step(self) -> None:
        """One optimizer step, entirely on the device (no host synchronisation)."""
        t = self.cfg.training
        inputs, labels, packed = self.step_batch()
        with autocast(self.device, self.precision):
            loss = self.loss_fn(inputs, labels, **packed)
        (loss * self.scale).backward()
        loss = loss.detach()
        # The gradients stay multiplied by the loss scale: the norm and the clipping work on them as they
        # are, and the optimizer divides by the scale (grad_scale); the same values as unscaling first
        # (torch.amp's unscale_), without that pass over every gradient.
        grads = [p.grad for p in self.params]
        norm = scaled_grad_norm(grads)
        self.check_step(loss, norm, self.found_inf, self.step, self.lr, self.lr_table)
        clip_scaled_grads_(grads, norm, self.scale, t.grad_clip)
        self.opt.step()
        if self.scaled:
            torch._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf,
                                     GROWTH_FACTOR, BACKOFF_FACTOR, GROWTH_INTERVAL)
        self.count_step(loss, self.found_inf, self.loss_sum, self.good_steps, self.skipped_steps, self.bad_streak,
                        self.max_bad_streak, self.step, self.epoch_step)

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
            # the step's scalar bookkeeping, one kernel each instead of about twenty small ones
            self.check_step, self.count_step = compiled_step_bookkeeping()
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
        return lambda inputs, labels, **packed: view(inputs, labels, **packed).loss

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
            for _ in range(CAPTURE_WARMUP_STEPS):
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
        # Captured on a stream of this trainer's own: PyTorch keys cuBLAS workspaces by the capture
        # stream, so graphs captured on one shared stream would share a workspace (a race when seeds
        # replay side by side), and destroying one such graph frees the workspace the others still
        # use (pytorch/pytorch#193402: a segfault or an illegal address on the next replay).
        self.capture_stream = self.stream if self.stream is not None else torch.cuda.Stream(self.device)
        with torch.cuda.graph(self.graph, stream=self.capture_stream):
            self.train_step()
        torch.cuda.synchronize(self.device)

    # -- epochs ----------------------------------------------------------------------------

    def start_epoch(self) -> None:
        self.order.copy_(self.data.epoch_order(self.shuffle_gen))
        self.plan_epoch()
        self.epoch_step.zero_()
        self.loss_sum.zero_()
        self.good_steps.zero_()

    def plan_epoch(self) -> None:
        """With training.packing: the packed layout of the epoch's order (one host synchronisation)."""
        if self.layout is None:
            return
        start, rows = self.layout.plan(self.data, self.order)
        if int(rows.max()) > self.layout.rows:  # cannot happen: layout.rows covers every epoch of the schedule
            raise RuntimeError(f"a step fills {int(rows.max())} packed rows, more than the {self.layout.rows} "
                               "found for the schedule")
        self.place.copy_(start)

    def run_step(self) -> None:
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)
            with self.attention_kernels():
                self.train_step()
        elif self.stream is None:
            self.graph.replay()
        else:
            with torch.cuda.stream(self.stream):
                self.graph.replay()

    def run_epoch(self, bar=None, stop=None) -> bool:
        """One epoch of this trainer alone (see run_epochs); TrainingStopped on a non-finite streak."""
        finished, stopped = run_epochs([self], bar, stop)
        if stopped:
            raise stopped[self]
        return finished

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
            self.plan_epoch()  # the packed layout follows from the order


class StopAfterSteps:
    """A `stop` for run_epochs that asks for an end after `steps` more steps (as a signal would):
    for timing a number of steps, or stopping a test in the middle of an epoch."""

    def __init__(self, steps: int):
        self.left = steps

    @property
    def signum(self):  # run_epochs reads it once before each step
        self.left -= 1
        return None if self.left >= 0 else "steps"


def run_epochs(trainers: list[Trainer], bar=None, stop=None) -> tuple[bool, dict]:
    """One pass over the training data for each trainer, or the rest of it after a resume in the
    middle of an epoch. Several trainers (seeds) run side by side, step by step, each with its own
    random state and, when captured, its graph on a CUDA stream of its own, so that their steps
    overlap on the GPU. The host reads the device only every PROGRESS_EVERY steps (progress bar,
    non-finite check) and once at the end of the epoch.

    Returns (finished, stopped): finished is False when `stop` (a StopSignals) asked for an end after
    a step (the epochs are then unfinished, their state ready for a checkpoint); stopped maps each
    trainer that hit training.max_bad_steps to its TrainingStopped; it took no step after that, and
    the others went on."""
    if not trainers:
        return True, {}
    n = trainers[0].data.steps_per_epoch
    if any(t.data.steps_per_epoch != n for t in trainers):
        raise ValueError("trainers that run side by side must have epochs of the same number of steps")
    first = {}
    for t in trainers:
        if not t.mid_epoch:
            t.start_epoch()
        first[t], t.mid_epoch = int(t.epoch_step), False
    device = trainers[0].device
    side_by_side = len(trainers) > 1
    if device.type == "cuda":
        for t in trainers:
            if t.stream is not None:
                t.stream.wait_stream(torch.cuda.current_stream(device))
    live, stopped = list(trainers), {}
    if bar is not None:
        bar.update(min(first.values()))

    def check(i: int) -> None:
        if device.type == "cuda" and side_by_side:
            torch.cuda.synchronize(device)
        for t in list(live):
            if first[t] <= i:
                try:
                    t.check_finite()
                except TrainingStopped as err:
                    stopped[t] = err
                    live.remove(t)

    with contextlib.ExitStack() as active:
        if not side_by_side:
            active.enter_context(trainers[0].rng)
        for i in range(min(first.values()), n):
            if stop is not None and stop.signum is not None:
                check(i - 1)
                for t in live:
                    t.mid_epoch = True
                return False, stopped
            for t in live:
                if i >= first[t]:
                    if side_by_side:
                        with t.rng:
                            t.run_step()
                    else:
                        t.run_step()
            if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == n:
                check(i)
                if not live:
                    break
                if bar is not None:
                    losses = " ".join(f"{t.mean_loss():.4f}" for t in live)
                    bar.set_postfix(loss=losses, lr=f"{float(live[0].lr):.2e}", refresh=False)
                    bar.update(i + 1 - bar.n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return True, stopped
