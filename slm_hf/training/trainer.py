"""The `Trainer`: one training run, read top to bottom. It owns the run's one mutable state (`TrainingState`: step,
tokens seen, max_steps, best validation loss) and calls narrow components, each taking only what it needs:

- `optim`: the optimizer, the learning-rate schedule (a function of the step and max_steps), one update;
- `batches`: this process's micro-batches of a step; `validation`: a record of the losses at this step;
- `precision`: master weights, the fp16 loss scale; `compiling`; `budget`: max_minutes;
- `checkpoints`: save (complete or absent); `outputs`: where to resume, the model folders (best/, final/);
- `metrics`: metrics.jsonl and the trackers (`write(record)`); `signals`: SIGINT / SIGTERM, a dead launcher.

Exact resume: the batches of step s are drawn from a generator seeded with (seed, s, micro-batch index), the learning
rate is a function of the step, and the checkpoint holds the model, the optimizer, the loss scaler and every
process's random state (dropout). A run killed at any moment (SIGKILL included) and resumed from its newest
checkpoint repeats exactly the losses of an uninterrupted run: bit for bit in fp32 on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from transformers import GenerationConfig, PreTrainedModel

from ..atomic_files import copy_file
from ..configuration_slm import SLMConfig
from ..model_card import sample_stories
from ..modeling_slm import SLMForCausalLM
from ..progress import TrainingProgress
from .batches import TrainingBatches
from .budget import TimeBudget
from .checkpoints import save_checkpoint
from .compiling import compile_if_asked
from .config import TrainingConfig
from .folders import out_of_space_is_an_error
from .launchers import Launch, engine_warning
from .metrics import MetricsLog, flat_hparams, plot_loss_curve
from .optim import Schedule, build_optimizer, optimizer_step, set_learning_rate
from .outputs import Resume, check_batch_shape, device_name, export_model, peak_memory, write_card
from .precision import LossScaleWatch, MasterWeights, Precision
from .signals import StopSignals
from .state import BatchShape, TrainingOutcome, TrainingState
from .validation import Validation

# Sampling defaults saved in generation_config.json: varied but coherent stories that end at <|endoftext|>.
STORY_SAMPLING = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, max_new_tokens=200)


@dataclass
class RunSetup:
    """What `train` decided before the run starts: the resolved config and data, the processes, where to resume."""

    config: TrainingConfig
    data_dir: Path
    out_dir: Path
    meta: dict[str, Any]
    tokenizer: Any
    model_config: SLMConfig
    data_summary: dict[str, Any]
    launch: Launch
    threads_note: str | None
    use_cpu: bool
    distributed: PartialState
    resume: Resume | None
    precision: Precision
    started: float  # time.perf_counter() when train() was called
    progress: TrainingProgress  # the run's messages, and its progress bar (or lines)


class Trainer:
    """Builds the run from a `RunSetup` (the model, its optimizer, the batches, the state to go on from), then
    `fit()` trains to max_steps and writes the model folders."""

    def __init__(self, setup: RunSetup, model_factory: Callable[[SLMConfig], PreTrainedModel] | None = None):
        self.config, self.out_dir, self.progress = setup.config, setup.out_dir, setup.progress
        self.launch, self.precision, self.tokenizer = setup.launch, setup.precision, setup.tokenizer
        self.data_summary, self.started = setup.data_summary, setup.started
        self.accelerator = accelerator = build_accelerator(setup)
        self.shape = batch_shape(self.config, accelerator)
        if setup.resume is not None:
            check_batch_shape(setup.resume, self.shape, quiet=not accelerator.is_main_process)
        if setup.threads_note:
            self.log(setup.threads_note)
        if accelerator.is_main_process and (warning := engine_warning(accelerator.distributed_type.value)):
            self.log(warning)

        model, self.master, optimizer = build_model(setup, model_factory)
        if self.master is not None:
            accelerator.register_for_checkpointing(self.master.module)  # checkpoints hold the fp32 weights
        self.model, self.optimizer = accelerator.prepare(model, optimizer)  # the model the loop runs
        self.weights = self.model if self.master is None else self.master.module  # what model folders export
        self.parameters = sum(p.numel() for p in accelerator.unwrap_model(self.model).parameters())
        self.schedule = Schedule.from_config(self.config)
        self.batches = TrainingBatches.of_data(setup.data_dir, self.config, self.shape, accelerator.process_index,
                                               accelerator.device)
        self.validation = Validation(setup.data_dir, self.config, accelerator, self.tokenizer,
                                     setup.model_config.bos_token_id, setup.meta["splits"]["val"]["bytes_per_token"])

        self.state = self.resume_or_start(setup.resume)  # the one state the loop changes
        self.resumed = setup.resume is not None
        self.prior_wall_time = self.state.wall_time_s  # seconds earlier sessions of this run took
        self.pending: list[tuple[int, int, torch.Tensor, float, torch.Tensor | None]] = []  # metrics not yet written
        self.window_time, self.window_tokens = time.perf_counter(), self.state.tokens  # the tokens/s measurement
        self.step_times: list[float] = []  # seconds of each step (evaluations left out), for the time budget
        self.eval_time: float | None = None  # seconds of the latest evaluation
        self.last_eval: dict[str, Any] | None = None  # the record of this session's latest evaluation
        self.interrupted_by: str | None = None  # the name of the signal that stopped the run
        self.log(f"training {self.parameters / 1e6:.2f}M parameters on {device_name(accelerator)} "
                 f"x{self.shape.processes} ({self.launch.launcher}, distributed type "
                 f"{accelerator.distributed_type.value}), precision {self.precision.name}, {self.shape.describe()}, "
                 f"up to step {self.state.max_steps}")

    def resume_or_start(self, resume: Resume | None) -> TrainingState:
        """The state to go on from: a fresh one, or the checkpoint's (its model, optimizer and random states loaded).
        Opens metrics.jsonl (a resumed run forgets what was logged after its checkpoint) and saves the config."""
        config, accelerator = self.config, self.accelerator
        state = TrainingState(max_steps=config.max_steps, batch=self.shape, precision=self.precision.setting,
                              data=self.data_summary)
        if resume is not None:
            accelerator.load_state(str(resume.checkpoint))
            # load_state restores Accelerate's count of this process's micro-batches, which decides the one that
            # synchronises gradients: a run resumed on another process count (2 x 1 -> 1 x 2) counts its own.
            accelerator.step = resume.state.step * self.shape.accumulation
            state = replace(resume.state, batch=self.shape, precision=self.precision.setting)
            if config.max_steps != resume.state.max_steps and not resume.state.budget_fitted:
                state.max_steps = config.max_steps  # asked to train longer (or shorter): the cosine stretches
            self.log(f"resumed from {resume.checkpoint} (step {state.step}, {state.tokens:,} tokens)")
        trackers = accelerator if config.report_to != "none" else None
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", accelerator.is_main_process,
                                  state.step if resume is not None else None, trackers)
        # The evaluation logged at the checkpoint's step, if any (a run killed while exporting).
        self.resumed_eval = None if resume is None else next(
            (r for r in self.metrics.read() if "val/loss" in r and r["step"] == state.step), None)
        if accelerator.is_main_process:
            config.save(self.out_dir / "train_config.yaml")
        if trackers is not None:
            accelerator.init_trackers("slm_hf", config=flat_hparams(config))
        return state

    # ------------------------------------------------------------------------------------------------ the run
    def fit(self) -> TrainingOutcome:
        """Train to the last step (unless the checkpoint resumed from is there already), then write the model
        folders."""
        state, out_dir = self.state, self.out_dir
        if self.resumed and state.step >= state.max_steps and (out_dir / "final").is_dir():
            self.log(f"{out_dir} is already trained to step {state.step}: nothing to do "
                     f"(final model in {out_dir / 'final'})")
            self.accelerator.end_training()
            return TrainingOutcome(out_dir, out_dir / "final", state.step)
        self.train_steps()
        main = self.accelerator.is_main_process
        curve = plot_loss_curve(self.metrics.read(), out_dir / "loss_curve.png") if main else None
        if self.interrupted_by:
            self.log(f"stopped by {self.interrupted_by} at step {state.step}; checkpoint saved. "
                     "Continue with --resume auto")
            self.accelerator.end_training()
            return TrainingOutcome(out_dir, None, state.step, self.interrupted_by)
        return self.export_final(curve)

    def train_steps(self) -> None:
        """Train until max_steps, or until SIGINT / SIGTERM or the launcher's death (then `interrupted_by` names
        the signal) or the time budget."""
        config, state = self.config, self.state
        budget = TimeBudget(config) if config.max_minutes else None
        loss_scale = LossScaleWatch(self.accelerator)
        self.progress.start(state.max_steps, initial=state.step)
        self.model.train()
        with StopSignals(say=self.log, launcher_pid=self.launch.launcher_pid) as signals:
            while state.step < state.max_steps:
                step_started = time.perf_counter()
                # The rate of the next update: updates skipped by the fp16 loss scaler do not advance the schedule.
                lr = self.schedule.lr(state.step - state.skipped_steps + 1, state.max_steps)
                set_learning_rate(self.optimizer, lr)
                loss, grad_norm = optimizer_step(self.accelerator, self.model, self.optimizer,
                                                 self.batches.of_step(state.step), config.grad_clip, self.master)
                if loss_scale.update_was_skipped():
                    state.skipped_steps += 1
                    self.log(f"step {state.step + 1}: fp16 gradients overflowed, update skipped (loss scale lowered)")
                state.step += 1
                state.tokens += self.shape.tokens_per_step
                self.pending.append((state.step, state.tokens, self.accelerator.reduce(loss, "mean"), lr, grad_norm))
                if state.step % config.log_interval == 0:
                    self.write_pending()
                self.step_times.append(time.perf_counter() - step_started)

                evaluate_now = state.step % config.eval_interval == 0 or state.step == state.max_steps
                refit = budget is not None and budget.fits_now(state.step, state.max_steps, evaluate_now)
                if evaluate_now or (refit and self.eval_time is None):  # refitting needs the cost of an evaluation
                    self.evaluate()
                if refit:
                    self.refit_budget(budget)

                stop, over_budget = self.stop_requests(signals, budget)
                if over_budget and state.step < state.max_steps:
                    self.log(f"time budget of {config.max_minutes:g} min used up at step {state.step}: finishing here")
                    state.max_steps = state.step
                    self.evaluate()
                if state.step % config.save_interval == 0 or state.step == state.max_steps or stop:
                    self.save()
                if stop:
                    self.interrupted_by = signals.received or "SIGTERM"  # another process got the signal
                    break
        self.write_pending()
        self.progress.close()

    def evaluate(self) -> dict[str, Any]:
        """Validate at the current step and log the record; a new best validation loss exports best/."""
        started, state = time.perf_counter(), self.state
        self.write_pending()
        measured = self.validation.measure(self.model)
        story = measured.pop("sample", None)
        record = {"step": state.step, "tokens": state.tokens, **measured, "wall_time_s": round(self.elapsed(), 1)}
        self.log(
            f"step {state.step}: val loss {record['val/loss']:.4f} (perplexity {record['val/perplexity']:.2f}, "
            f"{record['val/bits_per_byte']:.3f} bits/byte), train loss {record['train/eval_loss']:.4f}"
            + (f"\n  sample: {story!r}" if story is not None else "")
        )
        if story is not None:
            record["sample"] = story
        self.metrics.write(record)
        if record["val/loss"] < state.best_val_loss:
            state.best_val_loss, state.best_step = record["val/loss"], state.step
            export_model(self.accelerator, self.weights, self.tokenizer, self.out_dir / "best",
                         self.training_results(record), self.config)
        self.last_eval = record
        self.eval_time = time.perf_counter() - started
        self.restart_speed_window()  # keep evaluation time out of the tokens/s
        return record

    def refit_budget(self, budget: TimeBudget) -> None:
        """max_minutes: set max_steps (in the state, where the schedule and the loop read it) to what fits."""
        state, config = self.state, self.config
        state.max_steps = budget.refit(state.step, self.elapsed(), self.step_times, self.eval_time)
        if state.max_steps != self.progress.total:
            self.log(f"time budget {config.max_minutes:g} min: training to step {state.max_steps}")
        state.budget_fitted = True
        self.progress.set_total(state.max_steps)
        if state.step == 10 and state.max_steps < 2 * config.warmup_steps:
            self.log(f"warning: warmup ({config.warmup_steps:g} steps) takes much of the time budget; "
                     f"lower warmup_steps or raise max_minutes")

    def stop_requests(self, signals: StopSignals, budget: TimeBudget | None) -> tuple[bool, bool]:
        """(stop asked by a signal, time budget used up), agreed by every process: they must stop at the same step."""
        stop = signals.requested() is not None
        over_budget = budget is not None and budget.used_up(self.elapsed())
        if self.shape.processes > 1:
            flags = torch.tensor([stop, over_budget], device=self.accelerator.device, dtype=torch.int32)
            stop, over_budget = (bool(flag) for flag in self.accelerator.reduce(flags, "max").tolist())
        return stop, over_budget

    def save(self) -> None:
        self.write_pending()
        self.state.wall_time_s = self.elapsed()
        save_checkpoint(self.accelerator, self.model, self.out_dir, self.state, self.config)
        self.restart_speed_window()

    def write_pending(self) -> None:
        """Write the steps' metrics not yet written (one host sync for many steps) and refresh the progress bar.

        The last record of each write also carries the training speed since the previous one (`tokens_per_s`).
        """
        if not self.pending:
            return
        now = time.perf_counter()
        losses = torch.stack([loss for _, _, loss, _, _ in self.pending]).tolist()
        speed = (self.state.tokens - self.window_tokens) / max(now - self.window_time, 1e-9)
        self.window_time, self.window_tokens = now, self.state.tokens
        for i, ((step, tokens, _, lr, norm), loss) in enumerate(zip(self.pending, losses)):
            record = {"step": step, "tokens": tokens, "train/loss": loss, "lr": lr}
            if norm is not None:
                record["grad_norm"] = norm.item()
            if self.state.skipped_steps:
                record["skipped_steps"] = self.state.skipped_steps
            if i == len(self.pending) - 1:
                record["tokens_per_s"] = speed
            self.metrics.write(record)
        self.progress.update(self.pending[-1][0], losses[-1], self.pending[-1][3], speed)
        self.pending.clear()

    # ------------------------------------------------------------------------------------------- the end
    def export_final(self, curve: Path | None) -> TrainingOutcome:
        """The model folders: best (lowest validation loss) gets the loss curve and its card, then final (this step)
        is written whole. final/ is the run's last output: once it exists, a resumed run has nothing left to do."""
        state, out_dir, accelerator = self.state, self.out_dir, self.accelerator
        last_eval = self.last_eval
        if last_eval is None and self.resumed_eval is not None and self.resumed_eval["step"] == state.step:
            last_eval = self.resumed_eval  # resumed from the last step's checkpoint: its evaluation is logged
        final_record = last_eval if last_eval is not None and last_eval["step"] == state.step else self.evaluate()
        card = isinstance(accelerator.unwrap_model(self.weights), SLMForCausalLM)  # the card describes SLM models
        samples = None  # the card's stories from best/: final/'s too when both hold this step's weights
        if accelerator.is_main_process and (out_dir / "best").is_dir():
            with out_of_space_is_an_error(f"cannot finish the model folder {out_dir / 'best'}"):
                copy_file(curve, out_dir / "best" / "loss_curve.png")
                if card:
                    samples = sample_stories(out_dir / "best")
                    write_card(out_dir / "best", samples=samples)
        accelerator.wait_for_everyone()
        final_dir = export_model(accelerator, self.weights, self.tokenizer, out_dir / "final",
                                 self.training_results(final_record), self.config, curve, model_card=card,
                                 card_samples=samples if state.best_step == state.step else None)
        accelerator.end_training()
        self.log(
            f"done: step {state.step}, {state.tokens:,} tokens, val loss {final_record['val/loss']:.4f} "
            f"({final_record['val/bits_per_byte']:.3f} bits/byte); best val loss {state.best_val_loss:.4f} at step "
            f"{state.best_step}. Model: {final_dir}"
        )
        return TrainingOutcome(out_dir, final_dir, state.step)

    def training_results(self, record: dict[str, Any]) -> dict[str, Any]:
        """training_results.json of a model folder: the evaluation `record` and the run around it."""
        history = [
            {"step": r["step"], "tokens": r["tokens"], "train/loss": r["train/eval_loss"], "val/loss": r["val/loss"]}
            for r in self.metrics.read()
            if "val/loss" in r and r["step"] <= record["step"]
        ]
        return {
            "step": record["step"],
            "tokens": record["tokens"],
            "wall_time_s": round(self.elapsed(), 1),
            **{key: record[key] for key in ("val/loss", "val/perplexity", "val/bits_per_byte")},
            "train/loss": record["train/eval_loss"],
            "precision": self.precision.name,
            "device": device_name(self.accelerator),
            "num_processes": self.shape.processes,
            "batch": self.shape.to_json(),
            "parameters": self.parameters,
            **peak_memory(self.accelerator.device),
            "config": self.config.to_dict(),
            "data": self.data_summary,
            "history": history,
        }

    # ----------------------------------------------------------------------------------------- bookkeeping
    def elapsed(self) -> float:
        """Seconds this run has taken, earlier sessions included."""
        return self.prior_wall_time + time.perf_counter() - self.started

    def restart_speed_window(self) -> None:
        """Start measuring tokens/s afresh (after an evaluation or a checkpoint, kept out of the speed)."""
        self.window_time, self.window_tokens = time.perf_counter(), self.state.tokens

    def log(self, message: str) -> None:
        self.progress.write(message)


def build_accelerator(setup: RunSetup) -> Accelerator:
    config = setup.config
    return Accelerator(
        cpu=setup.use_cpu,
        mixed_precision=setup.precision.for_accelerate,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(setup.out_dir), logging_dir=str(setup.out_dir / "logs")),
    )


def batch_shape(config: TrainingConfig, accelerator: Accelerator) -> BatchShape:
    """The run's batch shape: decided here, once, from Accelerate's gradient accumulation (which an environment
    variable or a DeepSpeed config may set) and process count."""
    return BatchShape(
        micro_batch_size=config.batch_size,
        micro_batches_per_step=accelerator.gradient_accumulation_steps * accelerator.num_processes,
        processes=accelerator.num_processes,
        block_size=config.block_size,
    )


def build_model(setup: RunSetup, model_factory: Callable[[SLMConfig], PreTrainedModel] | None):
    """The model, initialised identically on every process (then dropout differs per process), its optimizer, and
    its master weights under bf16 on a CPU. Returns (model the loop runs, master weights or None, optimizer)."""
    config, model_config = setup.config, setup.model_config
    set_seed(config.seed)
    model = (model_factory or SLMForCausalLM)(model_config)
    special_ids = {key: getattr(model_config, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    model.generation_config = GenerationConfig(**STORY_SAMPLING, **special_ids)
    setup.tokenizer.model_max_length = model_config.max_position_embeddings
    set_seed(config.seed, device_specific=True)
    optimizer = build_optimizer(model, config)
    master = None
    if setup.precision.master_weights:
        master = MasterWeights(model)
        model = master.compute
    compile_if_asked(model, config.compile, setup.distributed.device, setup.precision.setting, setup.progress.write)
    return model, master, optimizer
