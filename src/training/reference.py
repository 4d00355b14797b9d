"""The textbook training loop that the tests and the benchmark hold the fast path against."""

from __future__ import annotations

import math

import torch

from src.config import Config
from src.device import (autocast, uses_loss_scaling)
from src.model import CompactTransformer
from src.training.trainer import lr_factor


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
