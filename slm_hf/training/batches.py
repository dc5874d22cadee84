"""Training and evaluation batches: random windows of a data folder's token array, each batch a function of its key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..data import load_tokens
from ..errors import SLMError
from .config import TrainingConfig
from .state import BatchShape

# The random stream of each use of the windows: training, validation batches, training-split evaluation batches.
TRAIN_STREAM, VAL_STREAM, TRAIN_EVAL_STREAM = 0, 1, 2


class TokenWindows:
    """Random windows of a token array: inputs `tokens[i : i + T]`, targets `tokens[i + 1 : i + T + 1]`, `i` drawn
    from every position.

    Each batch is drawn from its own generator, seeded with `(seed, stream, *key)`: the same key always gives the
    same batch, on any process, before or after a resume. Training batches are keyed by (step, micro-batch index
    across all processes), so the processes see different windows, and 2 processes x 2 micro-batches see exactly
    what 1 process x 4 micro-batches sees.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, stream: int):
        if len(tokens) < block_size + 2:
            raise SLMError(
                f"the data has {len(tokens)} tokens, fewer than one window of block_size {block_size} + 1; "
                f"prepare more stories or lower block_size"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seed, self.stream = seed, stream
        self.offsets = np.arange(block_size + 1)

    def batch(self, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.stream, *key])
        starts = rng.integers(0, len(self.tokens) - len(self.offsets) + 1, size=self.batch_size)
        windows = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def fixed_batches(self, count: int, rank: int, processes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the batches keyed 0 .. count - 1 (evaluation's fixed batches)."""
        return [self.batch(i) for i in range(rank, count, processes)]


class TrainingBatches:
    """This process's micro-batches of each step, on its device (the Trainer's, and the benchmarks')."""

    def __init__(self, windows: TokenWindows, shape: BatchShape, rank: int, device: torch.device):
        self.windows, self.shape, self.rank, self.device = windows, shape, rank, device

    @classmethod
    def of_data(cls, data_dir: Path, config: TrainingConfig, shape: BatchShape, rank: int,
                device: torch.device) -> TrainingBatches:
        """The training split of a data folder, in the windows the config asks for."""
        tokens = load_tokens(data_dir, "train")
        return cls(TokenWindows(tokens, config.block_size, config.batch_size, config.seed, TRAIN_STREAM), shape, rank,
                   device)

    def of_step(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches numbered rank, rank + processes, ... of the step's micro_batches_per_step, so the
        union over processes does not depend on how many there are."""
        for micro in range(self.shape.accumulation):
            inputs, targets = self.windows.batch(step, micro * self.shape.processes + self.rank)
            yield to_device(inputs, self.device), to_device(targets, self.device)


def evaluation_batches(data_dir: Path, config: TrainingConfig, rank: int, processes: int) -> tuple[int, list, list]:
    """(count, this process's validation batches, its training-split batches): fixed batches for evaluation, their
    count a multiple of the number of processes (each process scores its share)."""
    count = -(-config.eval_iters // processes) * processes
    shares = [
        TokenWindows(load_tokens(data_dir, split), config.block_size, config.batch_size, config.seed, stream)
        .fixed_batches(count, rank, processes)
        for split, stream in (("val", VAL_STREAM), ("train", TRAIN_EVAL_STREAM))
    ]
    return count, *shares


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a batch to the accelerator without waiting for it (from pinned memory): no host sync per step."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
