"""What a run logs: metrics.jsonl (train/loss every step, val/... at every evaluation), the trackers, and the loss
curve plotted from it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic_files import atomic_path, write_text
from ..training_config import TrainingConfig
from .state import LoopState

if TYPE_CHECKING:  # annotations only: start imports this module
    from .start import Run


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line. Only the main process writes."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            path.unlink(missing_ok=True)
        else:  # forget what a killed run logged after its last checkpoint: the resumed run logs it again
            kept = [record for record in self.read() if record["step"] <= resume_step]
            write_text(path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_pending(run: Run, state: LoopState) -> None:
    """Write the steps' metrics not yet written (one host sync for many steps) and refresh the progress bar.

    The last record of each write also carries the training speed since the previous one (`tokens_per_s`).
    """
    if not state.pending:
        return
    now = time.perf_counter()
    losses = torch.stack([loss for _, loss, _, _ in state.pending]).tolist()
    norms = [None if norm is None else norm.item() for _, _, _, norm in state.pending]
    speed = (state.saved.tokens - state.window_tokens) / max(now - state.window_time, 1e-9)
    state.window_time, state.window_tokens = now, state.saved.tokens
    for i, ((step, _, lr, _), loss, norm) in enumerate(zip(state.pending, losses, norms)):
        record = {"step": step, "tokens": step * run.shape.tokens_per_step, "train/loss": loss, "lr": lr}
        if norm is not None:
            record["grad_norm"] = norm
        if state.saved.skipped_steps:
            record["skipped_steps"] = state.saved.skipped_steps
        if i == len(state.pending) - 1:
            record["tokens_per_s"] = speed
        run.metrics.write(record)
        log_to_trackers(run, record)
    run.progress.update(state.pending[-1][0], losses[-1], state.pending[-1][2], speed)
    state.pending.clear()


def log_to_trackers(run: Run, record: dict[str, Any]) -> None:
    if run.config.report_to != "none":
        run.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def flat_hparams(config: TrainingConfig) -> dict[str, Any]:
    """The config as flat scalars, for trackers (TensorBoard's hparams take no lists or dicts)."""
    flat = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, list):
            flat[key] = str(value)
        elif value is not None:
            flat[key] = value
    return flat


def plot_loss_curve(records: list[dict[str, Any]], path: Path) -> Path:
    """Train and validation loss against tokens seen, as a PNG."""
    # matplotlib is imported here, at the end of a run: importing it costs a second that a run's start, and every
    # `import slm_hf.training`, would pay for nothing.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["tokens"], r["train/loss"]) for r in records if "train/loss" in r]
    val = [(r["tokens"], r["val/loss"]) for r in records if "val/loss" in r]
    train_eval = [(r["tokens"], r["train/eval_loss"]) for r in records if "train/eval_loss" in r]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    if train:
        axes.plot(*zip(*train), color="tab:blue", alpha=0.35, linewidth=0.8, label="train (each step)")
    if train_eval:
        axes.plot(*zip(*train_eval), color="tab:blue", marker=".", label="train (fixed batches)")
    if val:
        axes.plot(*zip(*val), color="tab:orange", marker=".", label="validation")
    axes.set_xlabel("tokens seen")
    axes.set_ylabel("cross-entropy loss (nats per token)")
    return save_figure(figure, axes, path)


def save_figure(figure, axes, path: Path) -> Path:
    """Finish a one-axes plot (grid, legend) and write it to `path` as a PNG, atomically; the figure is closed."""
    import matplotlib.pyplot as plt

    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
    return path
