"""What a run logs: metrics.jsonl (train/loss every step, val/... at every evaluation), the trackers, and the loss
curve plotted from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..atomic_files import atomic_path, write_text
from .config import TrainingConfig


class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, written by the main process; and the trackers, if any."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None, trackers: Accelerator | None = None):
        self.path, self.enabled, self.trackers = path, enabled, trackers
        if not enabled:
            return
        if resume_step is None:
            path.unlink(missing_ok=True)
        else:  # forget what a killed run logged after its last checkpoint: the resumed run logs it again
            kept = [record for record in self.read() if record["step"] <= resume_step]
            write_text(path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` (it has a `step`) to metrics.jsonl and send its numbers to the trackers."""
        if self.trackers is not None:
            numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
            self.trackers.log(numbers, step=record["step"])
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
