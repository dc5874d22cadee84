"""Training and evaluation batches: random windows of a data folder's token array, each batch a function of its key."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SLMError

SCAN_TOKENS = 1 << 24  # tokens compared at a time when finding the story starts


class TokenWindows:
    """Random training windows of a token array: inputs `tokens[i : i + T]`, targets `tokens[i + 1 : i + T + 1]`.

    `i` is drawn from every position, or, with `story_start_token` (the `<|endoftext|>` id), from the positions of
    that token only: each window then opens with a story's beginning, read after its start token.

    Each batch is drawn from its own generator, seeded with `(seed, stream, *key)`: the same key always gives the
    same batch, on any process, before or after a resume. The loop keys training batches by (step, micro-batch
    index across all processes), so the processes see different windows, and 2 processes x 2 micro-batches see
    exactly what 1 process x 4 micro-batches sees.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        stream: int,
        story_start_token: int | None = None,
    ):
        if len(tokens) < block_size + 2:
            raise SLMError(
                f"the data has {len(tokens)} tokens, fewer than one window of block_size {block_size} + 1; "
                f"prepare more stories or lower block_size"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seed, self.stream = seed, stream
        self.offsets = np.arange(block_size + 1)
        last_start = len(tokens) - len(self.offsets)
        self.starts = None
        if story_start_token is not None:
            # One pass over the array, a slice at a time: comparing it whole would allocate a byte per token.
            self.starts = np.concatenate([
                np.flatnonzero(tokens[i : min(i + SCAN_TOKENS, last_start + 1)] == story_start_token) + i
                for i in range(0, last_start + 1, SCAN_TOKENS)
            ])
            if len(self.starts) == 0:
                raise SLMError(f"the data holds no <|endoftext|> (id {story_start_token}) to start windows at")

    def batch(self, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.stream, *key])
        if self.starts is None:
            starts = rng.integers(0, len(self.tokens) - len(self.offsets) + 1, size=self.batch_size)
        else:
            starts = self.starts[rng.integers(0, len(self.starts), size=self.batch_size)]
        windows = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


    def fixed_batches(self, count: int, rank: int, processes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of the batches keyed 0 .. count - 1 (evaluation's fixed batches)."""
        return [self.batch(i) for i in range(rank, count, processes)]
