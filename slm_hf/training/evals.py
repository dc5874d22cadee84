"""Evaluation during training: the mean loss over fixed validation and training batches, bits per byte, a sample
story, and the best model folder (best/) when the validation loss is the lowest yet."""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from accelerate import DistributedType

from ..evaluation import bits_per_byte
from .metrics import log_to_trackers, write_pending
from .outputs import export_model, training_results
from .state import LoopState

if TYPE_CHECKING:  # annotations only: start imports this module
    from .start import Run


def mean_loss(run: Run, batches) -> float:
    """Mean loss over this process's share of fixed batches, averaged over all processes."""
    model, device = run.model, run.accelerator.device
    model.eval()
    total = torch.zeros((), device=device)
    with torch.no_grad():
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            total += model(input_ids=inputs, shift_labels=targets, use_cache=False).loss.float()
    model.train()
    return run.accelerator.reduce(total, "sum").item() / run.eval_batch_count


def sample_story(run: Run) -> str | None:
    """A short story from the model, with its own seed: the training's random streams are left untouched."""
    accelerator, config = run.accelerator, run.config
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if config.sample_tokens == 0 or sharded:
        return None
    unwrapped = accelerator.unwrap_model(run.model)
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    unwrapped.eval()
    # Compiled blocks would be recompiled for every length of the growing cache: generate eagerly (torch >= 2.6).
    set_stance = getattr(torch.compiler, "set_stance", None)
    eager = set_stance("force_eager") if config.compile and set_stance else contextlib.nullcontext()
    with torch.random.fork_rng(devices=devices, device_type=accelerator.device.type), torch.no_grad(), eager:
        torch.manual_seed(config.seed)
        prompt = torch.tensor([[run.model_config.bos_token_id]], device=accelerator.device)
        mask = torch.ones_like(prompt)
        story = unwrapped.generate(prompt, attention_mask=mask, max_new_tokens=config.sample_tokens)
    unwrapped.train()
    return run.tokenizer.decode(story[0, 1:], skip_special_tokens=True).strip()


def evaluate(run: Run, state: LoopState) -> dict[str, Any]:
    """Evaluate at the current step: log the record (and a sample story), and export best/ on a new best loss."""
    started = time.perf_counter()
    write_pending(run, state)
    saved = state.saved
    val_loss, train_loss = mean_loss(run, run.val_batches), mean_loss(run, run.train_eval_batches)
    record = {
        "step": saved.step,
        "tokens": saved.tokens,
        "val/loss": val_loss,
        "val/perplexity": math.exp(min(val_loss, 50)),
        "val/bits_per_byte": bits_per_byte(val_loss, run.val_bytes_per_token),
        "train/eval_loss": train_loss,
        "wall_time_s": round(state.elapsed(), 1),
    }
    story = sample_story(run) if run.accelerator.is_main_process else None
    log_to_trackers(run, record)
    run.log(
        f"step {saved.step}: val loss {val_loss:.4f} (perplexity {record['val/perplexity']:.2f}, "
        f"{record['val/bits_per_byte']:.3f} bits/byte), train loss {train_loss:.4f}"
        + (f"\n  sample: {story!r}" if story is not None else "")
    )
    if story is not None:
        record["sample"] = story
    run.metrics.write(record)
    if val_loss < saved.best_val_loss:
        saved.best_val_loss, saved.best_step = val_loss, saved.step
        results = training_results(run, state, record)
        export_model(run.accelerator, run.weights, run.tokenizer, run.out_dir / "best", results, run.config)
    state.last_eval = record
    state.eval_time = time.perf_counter() - started
    state.restart_speed_window()  # keep evaluation time out of the tokens/s
    return record
