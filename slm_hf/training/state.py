"""The run's state: the batch shape decided at the start, and what checkpoints persist.

- `BatchShape`: windows per micro-batch, micro-batches per step (Accelerate's, across all processes), processes,
  block size, and from them tokens per step. Decided once, when the Accelerator exists (`trainer.batch_shape`),
  recorded in training_state.json and training_results.json under `batch`; resume checks, the model card and the
  benchmarks read it from there.
- `TrainingState`: the loop's one mutable state, what it must remember across a resume (step, tokens seen,
  max_steps, the best validation loss; training_state.json in each checkpoint; Accelerate saves the model, the
  optimizer, the random states). The `Trainer` owns it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any



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
class TrainingOutcome:
    """What `train` returns."""

    out_dir: Path
    final_dir: Path | None  # None when the run was interrupted
    step: int
    interrupted_by: str | None = None  # the signal's name
