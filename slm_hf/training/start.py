"""Starting a run: the Accelerator, the batch shape, the model and its optimizer, the data, and the state to go on
from (a fresh one, or a checkpoint's). `start` returns them as one `Run` and the loop's `LoopState`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from transformers import GenerationConfig, PreTrainedModel

from ..configuration_slm import SLMConfig
from ..data import load_tokens
from ..errors import SLMError
from ..launchers import Launch, engine_warning
from ..modeling_slm import SLMForCausalLM
from ..progress import TrainingProgress
from ..training_config import TrainingConfig
from .batches import TokenWindows
from .compiling import compile_if_asked
from .metrics import MetricsLog, flat_hparams
from .optim import Schedule, build_optimizer
from .outputs import Resume, device_name
from .precision import MasterWeights, Precision
from .state import BatchShape, LoopState, TrainingState

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
    started: float
    progress: TrainingProgress  # the run's messages, and its progress bar (or lines)


@dataclass
class Run:
    """What the loop works with, built once by `start`: it does not change while the loop runs (`LoopState` does)."""

    config: TrainingConfig
    out_dir: Path
    progress: TrainingProgress
    launch: Launch  # how the process was started (the loop watches the launcher)
    accelerator: Accelerator
    shape: BatchShape
    precision: Precision
    model_config: SLMConfig
    tokenizer: Any
    model: torch.nn.Module  # what the loop runs (with master weights: their bf16 compute copy)
    weights: torch.nn.Module  # what the model folders export (fp32 with master weights)
    master: MasterWeights | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: Schedule
    train_windows: TokenWindows
    eval_batch_count: int  # how many fixed batches each evaluation scores, over all processes
    val_batches: list  # this process's share of them, from the validation split
    train_eval_batches: list  # and from the training split
    val_bytes_per_token: float
    metrics: MetricsLog
    parameters: int
    data_summary: dict[str, Any]

    def log(self, message: str) -> None:
        self.progress.write(message)


def start(setup: RunSetup, model_factory: Callable[[SLMConfig], PreTrainedModel] | None) -> tuple[Run, LoopState]:
    config, out_dir = setup.config, setup.out_dir
    accelerator = Accelerator(
        cpu=setup.use_cpu,
        mixed_precision=setup.precision.for_accelerate,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # We step the scheduler once per update ourselves. Accelerate's default steps it once per process per
        # update (it assumes each process adds its batch to one bigger global batch).
        step_scheduler_with_optimizer=False,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )
    shape = batch_shape(config, accelerator)
    if setup.resume is not None:
        check_batch_shape(setup.resume, shape, quiet=not accelerator.is_main_process)
    log = setup.progress.write
    if setup.threads_note:
        log(setup.threads_note)
    if accelerator.is_main_process and (warning := engine_warning(accelerator.distributed_type.value)):
        log(warning)
    model, master, optimizer, schedule = build_model(setup, model_factory)
    if master is not None:
        accelerator.register_for_checkpointing(master.module)  # checkpoints hold the fp32 weights
    # LambdaLR counts the updates done so far; update n + 1 is the next one.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: schedule.lr(done + 1) / schedule.peak)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run = Run(
        config, out_dir, setup.progress, setup.launch, accelerator, shape, setup.precision, setup.model_config,
        setup.tokenizer, model, model if master is None else master.module, master, optimizer, scheduler, schedule,
        *data_batches(setup, accelerator), metrics=None,
        parameters=sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
        data_summary=setup.data_summary,
    )
    state = resume_or_start(run, setup)
    log(f"training {run.parameters / 1e6:.2f}M parameters on {device_name(accelerator)} x{shape.processes} "
        f"({setup.launch.launcher}, distributed type {accelerator.distributed_type.value}), precision "
        f"{setup.precision.name}, {shape.describe()}, up to step {state.saved.max_steps}")
    return run, state


def batch_shape(config: TrainingConfig, accelerator: Accelerator) -> BatchShape:
    """The run's batch shape: decided here, once, from Accelerate's gradient accumulation (which an environment
    variable or a DeepSpeed config may set) and process count."""
    return BatchShape(
        micro_batch_size=config.batch_size,
        micro_batches_per_step=accelerator.gradient_accumulation_steps * accelerator.num_processes,
        processes=accelerator.num_processes,
        block_size=config.block_size,
    )


def check_batch_shape(resume: Resume, shape: BatchShape, quiet: bool) -> None:
    """A run resumes exactly only with the same micro-batches per step (processes x gradient_accumulation_steps):
    the batches of a step are keyed by their index among them. Any split of them over processes goes on exactly
    (2 x 1 as 1 x 2, after a node is lost); another product is refused in one line naming the accumulation that
    would match on this run's process count."""
    saved = resume.state.batch
    if saved is None or saved.micro_batches_per_step == shape.micro_batches_per_step:
        return
    wanted = saved.micro_batches_per_step
    if wanted % shape.processes == 0:
        remedy = f"resume with gradient_accumulation_steps={wanted // shape.processes} to continue the same batches"
    else:
        remedy = (f"no gradient_accumulation_steps matches on {shape.processes} processes: use a process count that "
                  f"divides {wanted}")
    raise SLMError(
        f"{resume.checkpoint} was saved by {saved.processes} process(es) x gradient_accumulation_steps "
        f"{saved.accumulation} ({wanted} micro-batches per step) but this run has {shape.processes} x "
        f"{shape.accumulation} ({shape.micro_batches_per_step}); {remedy}",
        quiet=quiet,
    )


def build_model(setup: RunSetup, model_factory: Callable[[SLMConfig], PreTrainedModel] | None):
    """The model, initialised identically on every process (then dropout differs per process), its optimizer and
    learning-rate schedule, and its master weights under bf16 on a CPU. Returns (model the loop runs, master
    weights or None, optimizer, schedule)."""
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
    device = setup.distributed.device
    compile_if_asked(model, config.compile, device, setup.precision.setting, setup.progress.write)
    return model, master, optimizer, Schedule.from_config(config)


def data_batches(setup: RunSetup, accelerator: Accelerator) -> tuple[TokenWindows, int, list, list, float]:
    """Random training windows; fixed validation and training batches for evaluation (a multiple of the number of
    processes, each process scoring its share); the validation split's bytes per token (for bits per byte)."""
    config, meta, data_dir = setup.config, setup.meta, setup.data_dir
    processes, rank = accelerator.num_processes, accelerator.process_index
    story_start = meta["eos_token_id"] if config.window_starts == "stories" else None
    train_windows = TokenWindows(
        load_tokens(data_dir, "train"), config.block_size, config.batch_size, config.seed, 0, story_start
    )
    eval_batch_count = -(-config.eval_iters // processes) * processes
    val_windows = TokenWindows(load_tokens(data_dir, "val"), config.block_size, config.batch_size, config.seed, 1)
    train_eval_windows = TokenWindows(train_windows.tokens, config.block_size, config.batch_size, config.seed, 2)
    return (
        train_windows,
        eval_batch_count,
        val_windows.fixed_batches(eval_batch_count, rank, processes),
        train_eval_windows.fixed_batches(eval_batch_count, rank, processes),
        meta["splits"]["val"]["bytes_per_token"],
    )


def resume_or_start(run: Run, setup: RunSetup) -> LoopState:
    """The state to go on from: a fresh one, or the checkpoint's (its model, optimizer and random states loaded).
    Opens metrics.jsonl (a resumed run forgets what was logged after its checkpoint) and saves the config."""
    config, accelerator, resume = run.config, run.accelerator, setup.resume
    saved = TrainingState(max_steps=config.max_steps, batch=run.shape, precision=run.precision.setting,
                          data=setup.data_summary)
    if resume is not None:
        accelerator.load_state(str(resume.checkpoint))
        # load_state restores Accelerate's count of this process's micro-batches, which decides the one that
        # synchronises gradients: a run resumed on another process count (2 x 1 -> 1 x 2) counts its own.
        accelerator.step = resume.state.step * run.shape.accumulation
        saved = replace(resume.state, batch=run.shape, precision=run.precision.setting)
        if config.max_steps != resume.state.max_steps and not resume.state.budget_fitted:
            saved.max_steps = config.max_steps  # asked to train longer (or shorter): the cosine stretches
        run.log(f"resumed from {resume.checkpoint} (step {saved.step}, {saved.tokens:,} tokens)")
    run.schedule.max_steps = saved.max_steps
    main = accelerator.is_main_process
    run.metrics = MetricsLog(run.out_dir / "metrics.jsonl", main, saved.step if resume is not None else None)
    state = LoopState(saved, prior_wall_time=saved.wall_time_s, started=setup.started, resumed=resume is not None,
                      window_tokens=saved.tokens)
    if resume is not None:  # the evaluation logged at the checkpoint's step, if any (a run killed while exporting)
        logged = run.metrics.read()
        state.resumed_eval = next((r for r in logged if "val/loss" in r and r["step"] == saved.step), None)
    if main:
        config.save(run.out_dir / "train_config.yaml")
    if config.report_to != "none":
        accelerator.init_trackers("slm_hf", config=flat_hparams(config))
    return state


__all__ = ["Run", "RunSetup", "start"]
