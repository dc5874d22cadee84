"""Validation during training: the mean loss over fixed validation and training batches, bits per byte, and a
sample story. It returns a record; the `Trainer` logs it and decides about best/."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType

from ..evaluation import bits_per_byte
from .config import TrainingConfig
from .batches import evaluation_batches


class Validation:
    """The fixed batches each validation scores (this process's share of them) and how to score them."""

    def __init__(self, data_dir: Path, config: TrainingConfig, accelerator: Accelerator, tokenizer,
                 bos_token_id: int, val_bytes_per_token: float):
        self.count, self.val_batches, self.train_batches = evaluation_batches(
            data_dir, config, accelerator.process_index, accelerator.num_processes
        )
        self.config, self.accelerator, self.tokenizer = config, accelerator, tokenizer
        self.bos_token_id, self.val_bytes_per_token = bos_token_id, val_bytes_per_token

    def measure(self, model: torch.nn.Module) -> dict[str, Any]:
        """`val/loss`, `val/perplexity`, `val/bits_per_byte`, `train/eval_loss`, and (main process) `sample`."""
        val_loss, train_loss = self.mean_loss(model, self.val_batches), self.mean_loss(model, self.train_batches)
        record = {
            "val/loss": val_loss,
            "val/perplexity": math.exp(min(val_loss, 50)),
            "val/bits_per_byte": bits_per_byte(val_loss, self.val_bytes_per_token),
            "train/eval_loss": train_loss,
        }
        story = self.sample_story(model) if self.accelerator.is_main_process else None
        if story is not None:
            record["sample"] = story
        return record

    def mean_loss(self, model: torch.nn.Module, batches) -> float:
        """Mean loss over this process's share of fixed batches, averaged over all processes."""
        device = self.accelerator.device
        model.eval()
        total = torch.zeros((), device=device)
        with torch.no_grad():
            for inputs, targets in batches:
                inputs, targets = inputs.to(device), targets.to(device)
                total += model(input_ids=inputs, shift_labels=targets, use_cache=False).loss.float()
        model.train()
        return self.accelerator.reduce(total, "sum").item() / self.count

    def sample_story(self, model: torch.nn.Module) -> str | None:
        """A short story from the model, with its own seed: the training's random streams are left untouched."""
        accelerator, config = self.accelerator, self.config
        sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if config.sample_tokens == 0 or sharded:
            return None
        unwrapped = accelerator.unwrap_model(model)
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        unwrapped.eval()
        # Compiled blocks would be recompiled for every length of the growing cache: generate eagerly (torch >= 2.6).
        set_stance = getattr(torch.compiler, "set_stance", None)
        eager = set_stance("force_eager") if config.compile and set_stance else contextlib.nullcontext()
        with torch.random.fork_rng(devices=devices, device_type=accelerator.device.type), torch.no_grad(), eager:
            torch.manual_seed(config.seed)
            prompt = torch.tensor([[self.bos_token_id]], device=accelerator.device)
            story = unwrapped.generate(prompt, attention_mask=torch.ones_like(prompt),
                                       max_new_tokens=config.sample_tokens)
        unwrapped.train()
        return self.tokenizer.decode(story[0, 1:], skip_special_tokens=True).strip()
