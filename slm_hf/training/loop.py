"""The training loop, top to bottom: one optimizer update per step, then logging, evaluation, the time budget,
stop requests and checkpoints; after it, the model folders.

Exact resume: the batches of step s are drawn from a generator seeded with (seed, s, micro-batch index), the learning
rate is a function of the step, and the checkpoint holds the model, the optimizer, the scheduler, the loss scaler and
every process's random state (dropout). A run killed at any moment (SIGKILL included) and resumed from its newest
checkpoint repeats exactly the losses of an uninterrupted run: bit for bit in fp32 on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from ..atomic_files import copy_file
from ..modeling_slm import SLMForCausalLM
from .budget import TimeBudget
from .checkpoints import save_checkpoint
from .evals import evaluate
from .folders import out_of_space_is_an_error
from .metrics import plot_loss_curve, write_pending
from .optim import optimizer_step
from .outputs import export_model, training_results, write_card
from .precision import LossScaleWatch
from .signals import StopSignals
from .start import Run
from .state import LoopState, TrainingOutcome


def train_and_export(run: Run, state: LoopState) -> TrainingOutcome:
    """Train to the last step (unless the checkpoint resumed from is there already), then write the model folders."""
    saved, out_dir = state.saved, run.out_dir
    if state.resumed and saved.step >= saved.max_steps and (out_dir / "final").is_dir():
        run.log(f"{out_dir} is already trained to step {saved.step}: nothing to do "
                f"(final model in {out_dir / 'final'})")
        run.accelerator.end_training()
        return TrainingOutcome(out_dir, out_dir / "final", saved.step)
    train_steps(run, state)
    curve = plot_loss_curve(run.metrics.read(), out_dir / "loss_curve.png") if run.accelerator.is_main_process else None
    if state.interrupted_by:
        run.log(f"stopped by {state.interrupted_by} at step {saved.step}; checkpoint saved. "
                "Continue with --resume auto")
        run.accelerator.end_training()
        return TrainingOutcome(out_dir, None, saved.step, state.interrupted_by)
    return export_final(run, state, curve)


def train_steps(run: Run, state: LoopState) -> None:
    """Train until max_steps, or until SIGINT / SIGTERM or the launcher's death (then `state.interrupted_by` names
    the signal) or the time budget."""
    config, saved = run.config, state.saved
    budget = TimeBudget(config) if config.max_minutes else None
    loss_scale = LossScaleWatch(run.accelerator)
    run.progress.start(saved.max_steps, initial=saved.step)
    run.model.train()
    with StopSignals(say=run.log, launcher_pid=run.launch.launcher_pid) as signals:
        while saved.step < saved.max_steps:
            step_started = time.perf_counter()
            lr = run.scheduler.get_last_lr()[0]
            batches = micro_batches(run, saved.step)
            loss, grad_norm = optimizer_step(run.accelerator, run.model, run.optimizer, batches, config.grad_clip,
                                             run.master)
            if loss_scale.update_was_skipped():
                saved.skipped_steps += 1
                run.log(f"step {saved.step + 1}: fp16 gradients overflowed, update skipped (loss scale lowered)")
            else:
                run.scheduler.step()
            saved.step += 1
            saved.tokens += run.shape.tokens_per_step
            state.pending.append((saved.step, run.accelerator.reduce(loss, "mean"), lr, grad_norm))
            if saved.step % config.log_interval == 0:
                write_pending(run, state)
            state.step_times.append(time.perf_counter() - step_started)

            evaluate_now = saved.step % config.eval_interval == 0 or saved.step == saved.max_steps
            refit = budget is not None and budget.fits_now(saved.step, saved.max_steps, evaluate_now)
            if evaluate_now or (refit and state.eval_time is None):  # refitting needs the cost of an evaluation
                evaluate(run, state)
            if refit:
                refit_budget(run, state, budget)

            stop, over_budget = stop_requests(run, state, signals, budget)
            if over_budget and saved.step < saved.max_steps:
                run.log(f"time budget of {config.max_minutes:g} min used up at step {saved.step}: finishing here")
                saved.max_steps = saved.step
                evaluate(run, state)
            if saved.step % config.save_interval == 0 or saved.step == saved.max_steps or stop:
                save(run, state)
            if stop:
                state.interrupted_by = signals.received or "SIGTERM"  # another process got the signal
                break
    write_pending(run, state)
    run.progress.close()


def micro_batches(run: Run, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's micro-batches of `step`: numbers rank, rank + processes, ... of the step's
    micro_batches_per_step, so the union over processes does not depend on how many there are."""
    device, processes, rank = run.accelerator.device, run.shape.processes, run.accelerator.process_index
    for micro in range(run.shape.accumulation):
        inputs, targets = run.train_windows.batch(step, micro * processes + rank)
        yield to_device(inputs, device), to_device(targets, device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a batch to the accelerator without waiting for it (from pinned memory): no host sync per step."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def refit_budget(run: Run, state: LoopState, budget: TimeBudget) -> None:
    saved, config = state.saved, run.config
    saved.max_steps = run.schedule.max_steps = budget.refit(state)
    if saved.max_steps != run.progress.total:
        run.log(f"time budget {config.max_minutes:g} min: training to step {saved.max_steps}")
    saved.budget_fitted = True
    run.progress.set_total(saved.max_steps)
    if saved.step == 10 and saved.max_steps < 2 * config.warmup_steps:
        run.log(f"warning: warmup ({config.warmup_steps:g} steps) takes much of the time budget; "
                f"lower warmup_steps or raise max_minutes")


def stop_requests(run: Run, state: LoopState, signals: StopSignals, budget: TimeBudget | None) -> tuple[bool, bool]:
    """(stop asked by a signal, time budget used up), agreed by every process: they must stop at the same step."""
    stop = signals.requested() is not None
    over_budget = budget is not None and budget.used_up(state)
    if run.shape.processes > 1:
        flags = torch.tensor([stop, over_budget], device=run.accelerator.device, dtype=torch.int32)
        stop, over_budget = (bool(flag) for flag in run.accelerator.reduce(flags, "max").tolist())
    return stop, over_budget


def save(run: Run, state: LoopState) -> None:
    write_pending(run, state)
    state.saved.wall_time_s = state.elapsed()
    save_checkpoint(run.accelerator, run.model, run.out_dir, state.saved, run.config)
    state.restart_speed_window()


def export_final(run: Run, state: LoopState, curve) -> TrainingOutcome:
    """The model folders: best (lowest validation loss) gets the loss curve and its card, then final (this step) is
    written whole. final/ is the run's last output: once it exists, a resumed run has nothing left to do."""
    saved, out_dir, accelerator = state.saved, run.out_dir, run.accelerator
    last_eval = state.last_eval
    if last_eval is None and state.resumed_eval is not None and state.resumed_eval["step"] == saved.step:
        last_eval = state.resumed_eval  # resumed from the last step's checkpoint: its evaluation is logged already
    final_record = last_eval if last_eval is not None and last_eval["step"] == saved.step else evaluate(run, state)
    card = isinstance(accelerator.unwrap_model(run.weights), SLMForCausalLM)  # the card describes SLM models
    if accelerator.is_main_process and (out_dir / "best").is_dir():
        with out_of_space_is_an_error(f"cannot finish the model folder {out_dir / 'best'}"):
            copy_file(curve, out_dir / "best" / "loss_curve.png")
            if card:
                write_card(out_dir / "best")
    accelerator.wait_for_everyone()
    results = training_results(run, state, final_record)
    final_dir = export_model(
        accelerator, run.weights, run.tokenizer, out_dir / "final", results, run.config, curve, model_card=card
    )
    accelerator.end_training()
    run.log(
        f"done: step {saved.step}, {saved.tokens:,} tokens, val loss {final_record['val/loss']:.4f} "
        f"({final_record['val/bits_per_byte']:.3f} bits/byte); best val loss {saved.best_val_loss:.4f} at step "
        f"{saved.best_step}. Model: {final_dir}"
    )
    return TrainingOutcome(out_dir, final_dir, saved.step)
