"""The optimizer side of a step: the learning-rate schedule, the optimizer (AdamW), and one optimizer update from its
micro-batches."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from .config import TrainingConfig
from .precision import MasterWeights


@dataclass(frozen=True)
class Schedule:
    """Linear warmup, then cosine decay (or warmup-stable-decay): the learning rate of each optimizer update.

    `lr(n, max_steps)` is the rate of update n = 1, 2, ... max_steps. `max_steps` is an argument, not a field: the
    run's state holds it, and a time budget changes it there (`Trainer.refit_budget`). Warmup goes linearly from
    `start_factor * peak` (at n = 0) to `peak` (at n = warmup_steps). Then `shape` "cosine": a half cosine from
    `peak` to `minimum` (at n = max_steps). This expresses the reference tutorial's `LinearLR(start_factor=1/3)` then
    `CosineAnnealingLR(eta_min=min_lr)`: with its min_lr above the peak the "decay" rises, which the seed preset keeps
    on purpose. Or `shape` "wsd": `peak` until the last `decay_fraction` of the steps, then linear to `minimum`; a
    time budget that refits `max_steps` moves only the start of that decay.
    """

    peak: float
    minimum: float
    warmup_steps: float
    start_factor: float = 0.0
    shape: str = "cosine"
    decay_fraction: float = 0.2

    def lr(self, n: float, max_steps: int) -> float:
        if n < self.warmup_steps:
            return self.peak * (self.start_factor + (1 - self.start_factor) * n / self.warmup_steps)
        if self.shape == "wsd":
            decay_steps = self.decay_fraction * max_steps
            progress = min(max((n - (max_steps - decay_steps)) / max(decay_steps, 1), 0.0), 1.0)
            return self.peak + (self.minimum - self.peak) * progress
        progress = min((n - self.warmup_steps) / max(max_steps - self.warmup_steps, 1), 1.0)
        return self.minimum + (self.peak - self.minimum) * 0.5 * (1 + math.cos(math.pi * progress))

    @classmethod
    def from_config(cls, config: TrainingConfig) -> Schedule:
        return cls(config.learning_rate, config.min_lr, config.warmup_steps, config.warmup_start_factor,
                   config.lr_schedule, config.decay_fraction)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the rate `lr` (the schedule's, for the next update)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices of linear layers (not on norms, biases, embeddings), unless the config
    says `decay_all_parameters` (as the reference tutorial does). Fused kernels where PyTorch has them."""
    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    decay, no_decay = [], []
    for parameter in model.parameters():  # each tied parameter once
        if not parameter.requires_grad:
            continue
        decayed = config.decay_all_parameters or (parameter.ndim >= 2 and id(parameter) not in embeddings)
        (decay if decayed else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = dict(lr=config.learning_rate, betas=config.betas, eps=config.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # no fused kernel for these parameters' device or dtype
        return torch.optim.AdamW(groups, **kwargs)


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    grad_clip: float | None,
    master: MasterWeights | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer update from `gradient_accumulation_steps` micro-batches; returns (mean loss, gradient norm).

    `accelerator.accumulate` skips the gradient all-reduce on all but the last micro-batch, and
    `accelerator.backward` already divides each loss by the number of micro-batches (do not divide again).
    The losses stay on the device: reading them would wait for the accelerator at every step. With `master`
    weights, `model` is their bf16 `compute` copy and `optimizer` holds the fp32 `module`.
    """
    losses = []
    for inputs, targets in micro_batches:
        with accelerator.accumulate(model):
            loss = model(input_ids=inputs, shift_labels=targets, use_cache=False).loss
            accelerator.backward(loss)
        losses.append(loss.detach())
    if not accelerator.sync_gradients:
        raise RuntimeError("gradient accumulation is out of step: the last micro-batch did not synchronise")
    if master is not None:
        master.gradients_to_master()
    parameters = (master.module if master is not None else model).parameters()
    grad_norm = accelerator.clip_grad_norm_(parameters, grad_clip) if grad_clip else None
    optimizer.step()  # with fp16, the loss scaler skips it when gradients overflowed
    optimizer.zero_grad(set_to_none=True)
    if master is not None:
        master.master_to_compute()
    return torch.stack(losses).mean(), grad_norm
