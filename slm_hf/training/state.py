"""The run's state: the batch shape decided at the start, what checkpoints persist, and what the loop changes.

- `BatchShape`: windows per micro-batch, micro-batches per step (Accelerate's, across all processes), processes,
  block size, and from them tokens per step. Decided once, when the Accelerator exists (`start.batch_shape`),
  recorded in training_state.json and training_results.json under `batch`; resume checks, the model card and the
  benchmarks read it from there.
- `TrainingState`: what the loop must remember across a resume (training_state.json in each checkpoint;
  Accelerate saves the model, the optimizer, the random states).
- `LoopState`: `TrainingState` plus what one session of the loop keeps in memory (metrics not yet written, the
  speed window, the last evaluation, the budget's timings): the one object the loop's helpers change.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class BatchShape:
    """How many tokens one optimizer update sees, and how they are split between micro-batches and processes."""

    micro_batch_size: int  # windows per micro-batch and process (the config's batch_size)
    micro_batches_per_step: int  # across all processes: what the batches and the schedule depend on
    processes: int
    block_size: int  # tokens per window

    @property
    def accumulation(self) -> int:
        """Micro-batches per step on each process (Accelerate's gradient_accumulation_steps)."""
        return self.micro_batches_per_step // self.processes

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batches_per_step * self.micro_batch_size * self.block_size

    def describe(self) -> str:
        return (f"{self.tokens_per_step:,} tokens per step ({self.processes} process(es) x {self.accumulation} "
                f"micro-batches x {self.micro_batch_size} x {self.block_size})")

    def to_json(self) -> dict[str, int]:
        return {**asdict(self), "tokens_per_step": self.tokens_per_step}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchShape:
        return cls(**{option.name: data[option.name] for option in fields(cls)})


@dataclass
class TrainingState:
    """What the loop itself must remember across a resume (Accelerate saves the model, optimizer, RNGs...)."""

    step: int = 0
    tokens: int = 0
    max_steps: int = 0  # the configured one, or what fits in max_minutes once measured
    budget_fitted: bool = False  # max_steps comes from max_minutes (a resumed run keeps fitting it)
    best_val_loss: float = math.inf
    best_step: int = 0
    skipped_steps: int = 0  # fp16 updates skipped by the loss scaler (overflow)
    wall_time_s: float = 0.0
    batch: BatchShape | None = None
    precision: str = "no"  # Accelerate's setting: no, fp16 or bf16 (a resumed run keeps it)
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        state = asdict(self)
        state["best_val_loss"] = None if math.isinf(self.best_val_loss) else self.best_val_loss
        state["batch"] = None if self.batch is None else self.batch.to_json()
        return state

    @classmethod
    def from_json(cls, data: dict[str, Any], micro_batch_size: int, block_size: int) -> TrainingState:
        """The state of training_state.json; one saved before `batch` was recorded gets it from its
        micro_batches_per_step and num_processes, and from its config (`micro_batch_size`, `block_size`)."""
        saved = dict(data)
        if saved.get("batch") is None and "micro_batches_per_step" in saved:
            saved["batch"] = {"micro_batch_size": micro_batch_size, "block_size": block_size,
                              "micro_batches_per_step": saved["micro_batches_per_step"],
                              "processes": saved.get("num_processes", 1)}
        state = cls(**{key: value for key, value in saved.items() if key in cls.__dataclass_fields__})
        if state.best_val_loss is None:
            state.best_val_loss = math.inf
        if isinstance(state.batch, dict):
            state.batch = BatchShape.from_json(state.batch)
        return state


@dataclass
class LoopState:
    """The run's state while the loop runs: the persisted `saved` state and this session's bookkeeping."""

    saved: TrainingState
    prior_wall_time: float  # seconds earlier sessions of this run took
    started: float  # time.perf_counter() when this session's train() was called
    resumed: bool = False  # this session continues from a checkpoint
    pending: list[tuple[int, torch.Tensor, float, torch.Tensor | None]] = field(default_factory=list)
    window_time: float = field(default_factory=time.perf_counter)  # start of the tokens/s measurement
    window_tokens: int = 0
    last_eval: dict[str, Any] | None = None  # the record of this session's latest evaluation
    resumed_eval: dict[str, Any] | None = None  # the evaluation logged at the resumed checkpoint's step, if any
    step_times: list[float] = field(default_factory=list)  # seconds of each step (evaluations left out)
    eval_time: float | None = None  # seconds of the latest evaluation
    interrupted_by: str | None = None  # the name of the signal that stopped the run

    def elapsed(self) -> float:
        """Seconds this run has taken, earlier sessions included."""
        return self.prior_wall_time + time.perf_counter() - self.started

    def restart_speed_window(self) -> None:
        """Start measuring tokens/s afresh (after an evaluation or a checkpoint, kept out of the speed)."""
        self.window_time, self.window_tokens = time.perf_counter(), self.saved.tokens


@dataclass
class TrainingOutcome:
    """What `train` returns."""

    out_dir: Path
    final_dir: Path | None  # None when the run was interrupted
    step: int
    interrupted_by: str | None = None  # the signal's name
