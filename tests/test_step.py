"""The training step's arithmetic outside the model (src/training/trainer.py): the learning rate read
from a table, gradient clipping on the loss-scaled gradients with the division by the scale left to
the fused AdamW, and the bookkeeping kernels. Each gives the values of the textbook order (unscale,
clip_grad_norm_, the schedule computed each step) bit for bit, so runs trained before and after are
the same runs.
"""

import pytest
import torch

from src.data import load_jsonl, make_batch
from src.config import load_config
from src.model import CompactTransformer
from src.training.trainer import (CAPTURE_WARMUP_STEPS, DeviceData, Trainer, check_step, clip_scaled_grads_,
                                  count_step, lr_factor, lr_table, scaled_grad_norm)
from tests.test_train import assert_same_tensors, write_tiny_config


@pytest.mark.parametrize("warmup,total", [(10, 16), (500, 12500), (1000, 250016)])
def test_lr_table_is_the_schedule_bit_for_bit(warmup, total):
    table = lr_table(1e-3, warmup, total, torch.device("cpu"))
    assert table.dtype == torch.float32 and len(table) == total + CAPTURE_WARMUP_STEPS + 1
    every = list(range(0, total, max(1, total // 3000))) + list(range(max(0, warmup - 3), warmup + 3)) + [total - 1]
    for step in every:
        expected = 1e-3 * lr_factor(torch.tensor(step), warmup, total)  # what each step computed before
        assert torch.equal(table[step], expected), step
    assert (table[total:] == 0).all()


def gradients(seed: int, spread: float) -> list[torch.Tensor]:
    """Gradient-like tensors of several shapes, their magnitudes spread over `spread` decades."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(384, 1152), (1152,), (384, 384), (384,), (1536, 384), (35, 384)]
    return [torch.randn(s, generator=gen) * 10 ** (spread * (torch.rand(1, generator=gen).item() - 0.5))
            for s in shapes]


@pytest.mark.parametrize("scale", [2.0**16, 2.0**3, 1.0])
@pytest.mark.parametrize("max_norm", [1.0, 1e6])  # clipped, and a coefficient of 1
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipping_scaled_gradients_then_dividing_equals_unscale_then_clip_grad_norm(scale, max_norm, seed):
    """What the optimizer receives (the clipped scaled gradients divided by the scale) equals the
    textbook order's clipped unscaled gradients, bit for bit."""
    unscaled = gradients(seed, spread=6)
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in unscaled]
    for p, g in zip(params, unscaled):
        p.grad = g.clone()
    textbook = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    scaled = [g * scale for g in unscaled]  # what backward gives for the loss times the scale
    norm = scaled_grad_norm(scaled)
    assert torch.equal(norm / scale, textbook)
    clip_scaled_grads_(scaled, norm, torch.tensor(scale), max_norm)
    for p, g in zip(params, scaled):
        assert torch.equal(g / scale, p.grad)


@pytest.mark.parametrize("scale", [2.0**16, 1.0])
def test_fused_adamw_with_grad_scale_equals_it_on_unscaled_gradients(scale):
    """The optimizer's division by grad_scale, in the fused AdamW this project trains with."""
    unscaled = gradients(3, spread=4)
    runs = []
    for with_scale in (False, True):
        params = [torch.nn.Parameter(torch.ones_like(g)) for g in unscaled]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=True)
        if with_scale:
            opt.grad_scale = torch.tensor(scale)
        for step in range(3):
            for p, g in zip(params, unscaled):
                p.grad = (g * (step + 1)) * (scale if with_scale else 1.0)
            opt.step()
        runs.append({f"p{i}": p.detach() for i, p in enumerate(params)})
    assert_same_tensors(*runs)


class TextbookStep(Trainer):
    """The step in the textbook order (torch.amp's unscale_, clip_grad_norm_, the schedule computed on
    the device each step, the bookkeeping op by op), as this project trained before: the reference."""

    def train_step(self) -> None:
        t = self.cfg.training
        inputs, labels, packed = self.step_batch()
        loss = self.loss_fn(inputs, labels, **packed)
        (loss * self.scale).backward()
        grads = [p.grad for p in self.params]
        self.found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self.scale.reciprocal())
        self.found_inf.copy_(torch.maximum(self.found_inf, (~torch.isfinite(loss.detach())).float()))
        torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip, foreach=True)
        self.lr.copy_(t.learning_rate * lr_factor(self.step, t.warmup_steps, self.total_steps))
        self.opt.grad_scale = None
        self.opt.step()
        if self.scaled:
            torch._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf, 2.0, 0.5, 2000)
        count_step(loss.detach(), self.found_inf, self.loss_sum, self.good_steps, self.skipped_steps,
                   self.bad_streak, self.max_bad_streak, self.step, self.epoch_step)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])  # the loss scaled by 2^16, and not scaled
def test_the_step_equals_the_textbook_order_bit_for_bit(tmp_path, precision):
    """Two epochs (64 steps, through warm-up and decay, dropout on), one of them a NaN loss (skipped,
    the scale halved): weights, optimizer state, loss scale and every counter equal bit for bit."""
    cfg = load_config(write_tiny_config(tmp_path, learning_rate=3e-3))
    batch = make_batch(load_jsonl(cfg.data.path("train"), cfg.model.max_seq_len), cfg.model.max_seq_len)
    cpu = torch.device("cpu")
    trainers = []
    for kind in (Trainer, TextbookStep):
        torch.manual_seed(0)
        model = CompactTransformer(cfg.model)
        trainer = kind(cfg, model, DeviceData(batch, cfg, cpu), cpu, precision=precision, seed=5, log=lambda *a: None)
        plain, calls = trainer._plain_loss, []

        def loss_fn(inputs, labels, plain=plain, calls=calls):
            calls.append(1)
            return plain(inputs, labels) * (float("nan") if len(calls) == 6 else 1.0)

        trainer.loss_fn = loss_fn
        torch.manual_seed(1)  # dropout
        for _ in range(2):
            trainer.run_epoch()
        trainers.append(trainer)
    fast, textbook = trainers
    assert int(fast.skipped_steps) == 1 and int(fast.step) == 2 * fast.data.steps_per_epoch
    assert_same_tensors(fast.model.state_dict(), textbook.model.state_dict())
    for a, b in zip(fast.opt.state.values(), textbook.opt.state.values()):
        assert_same_tensors(a, b)
    for name in ("scale", "growth_tracker", "step", "epoch_step", "lr", "loss_sum", "good_steps", "skipped_steps",
                 "bad_streak", "max_bad_streak"):
        assert torch.equal(getattr(fast, name), getattr(textbook, name)), name
    assert float(fast.scale) == (2.0**15 if precision == "fp16" else 1.0)


def test_check_step_flags_a_non_finite_loss_or_norm_and_reads_the_rate():
    table = torch.tensor([0.5, 0.25, 0.125])
    found_inf, lr = torch.zeros(()), torch.zeros(())
    for loss, norm, flagged in [(1.0, 2.0, 0.0), (float("nan"), 2.0, 1.0), (1.0, float("inf"), 1.0)]:
        check_step(torch.tensor(loss), torch.tensor(norm), found_inf, torch.tensor(1), lr, table)
        assert float(found_inf) == flagged and float(lr) == 0.25


def bookkeeping_state(device):
    return dict(loss_sum=torch.zeros((), dtype=torch.float64, device=device),
                **{k: torch.zeros((), dtype=torch.long, device=device)
                   for k in ("good_steps", "skipped_steps", "bad_streak", "max_bad_streak", "step", "epoch_step")})


def run_bookkeeping(fn_check, fn_count, device) -> dict:
    """Twelve steps of check_step and count_step with losses of many magnitudes, three of them NaN."""
    state = bookkeeping_state(device)
    found_inf, lr = torch.zeros((), device=device), torch.zeros((), device=device)
    table = lr_table(1e-3, 4, 12, device)
    gen = torch.Generator().manual_seed(0)
    rates = []
    for i in range(12):
        loss = (torch.rand((), generator=gen) * 10.0 ** (i % 5 - 2)).to(device)
        if i in (3, 4, 9):
            loss = loss * float("nan")
        fn_check(loss, torch.tensor(1.0, device=device), found_inf, state["step"], lr, table)
        fn_count(loss, found_inf, **state)
        rates.append(lr.clone())
    return {**state, "rates": torch.stack(rates)}


def test_count_step_sums_the_good_steps_and_tracks_the_streak():
    state = run_bookkeeping(check_step, count_step, torch.device("cpu"))
    assert int(state["good_steps"]) == 9 and int(state["skipped_steps"]) == 3
    assert int(state["max_bad_streak"]) == 2 and int(state["bad_streak"]) == 0
    assert int(state["step"]) == int(state["epoch_step"]) == 12 and torch.isfinite(state["loss_sum"])


@pytest.mark.gpu
def test_compiled_bookkeeping_equals_the_eager_one_on_cuda():
    """torch.compile fuses check_step and count_step into a kernel each; every value stays bit for bit."""
    from src.training.trainer import compiled_step_bookkeeping

    cuda = torch.device("cuda")
    eager = run_bookkeeping(check_step, count_step, cuda)
    compiled = run_bookkeeping(*compiled_step_bookkeeping(), cuda)
    assert_same_tensors(eager, compiled)


@pytest.mark.slow
def test_compiled_bookkeeping_equals_the_eager_one_on_the_cpu():
    """The same on the CPU, where Inductor generates C++ (skipped where it finds no compiler)."""
    from src.training.trainer import compiled_step_bookkeeping
    from tests.test_train import cpu_compile_unsupported

    reason = cpu_compile_unsupported()
    if reason:
        pytest.skip(reason)
    cpu = torch.device("cpu")
    eager = run_bookkeeping(check_step, count_step, cpu)
    assert_same_tensors(eager, run_bookkeeping(*compiled_step_bookkeeping(), cpu))
