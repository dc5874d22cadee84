"""Training: a hand-written Accelerate loop, from a config file to Hub-ready model folders.

    accelerate launch scripts/train.py --config configs/cpu-demo.yaml --data data/sample --out runs/cpu-demo
    python scripts/train.py --config configs/tiny.yaml --data data/sample learning_rate=1e-3   # 1 process

No `transformers.Trainer`: every step is here. Reading order:

- `run`: `train()`, which checks the inputs and decides the run (data, processes, precision, resume), then
- `trainer`: the `Trainer`, which builds the model, optimizer and batches, owns the run's state, and trains top to
  bottom, then writes the model folders.

What they use: `config` (`TrainingConfig`, the YAML config), `launchers` and `run_lock` (checked by `run`),
`state` (the batch shape, what checkpoints persist), `optim` (schedule, optimizer, one update), `batches` (training
windows), `validation` (the losses at a step), `precision` (its choice, master weights), `compiling`, `budget`
(max_minutes), `checkpoints`, `outputs` (the run's folder, where to resume, the exported model folders), `metrics`
(metrics.jsonl, the trackers, the loss curve), `signals` (SIGINT / SIGTERM), `folders` (deleting folders, leftovers,
full disks). See docs/architecture.md.

Several processes (DDP, FSDP, DeepSpeed, several machines) run the same code: see docs/training.md.
"""

import logging

from .batches import TokenWindows, TrainingBatches
from .checkpoints import MANIFEST_FILE, STATE_FILE, checkpoint_problem, latest_checkpoint, list_checkpoints
from .compiling import compile_layers_and_loss, missing_compiler
from .metrics import plot_loss_curve
from .optim import Schedule, build_optimizer, optimizer_step
from .precision import LossScaleWatch, MasterWeights, Precision, resolve_precision
from .run import train
from .state import BatchShape, TrainingOutcome, TrainingState
from .trainer import Trainer

# save_state warns at every checkpoint that the tied lm_head.weight is not stored: expected, it is reloaded tied.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)

__all__ = [
    "MANIFEST_FILE",
    "STATE_FILE",
    "BatchShape",
    "LossScaleWatch",
    "MasterWeights",
    "Precision",
    "Schedule",
    "TokenWindows",
    "Trainer",
    "TrainingBatches",
    "TrainingOutcome",
    "TrainingState",
    "build_optimizer",
    "checkpoint_problem",
    "compile_layers_and_loss",
    "latest_checkpoint",
    "list_checkpoints",
    "missing_compiler",
    "optimizer_step",
    "plot_loss_curve",
    "resolve_precision",
    "train",
]
