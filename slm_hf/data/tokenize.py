"""Tokenizer training on a corpus, and encoding of its stories into a flat token file (each story followed by the
end-of-text id), with the tokenizer's Rust threads, one thread, or worker processes."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from ..tokenization import train_tokenizer
from .options import DataOptions
from .sources import Corpus

logger = logging.getLogger(__name__)

BATCH_STORIES = 2048  # stories per tokenizer call


@dataclass
class SplitStats:
    tokens: int = 0
    stories: int = 0
    bytes: int = 0

    def as_meta(self) -> dict[str, Any]:
        per_token = self.bytes / self.tokens if self.tokens else 0.0
        return {"tokens": self.tokens, "stories": self.stories, "bytes": self.bytes,
                "bytes_per_token": round(per_token, 6)}


def train_on_corpus(corpus: Corpus, options: DataOptions, show_progress: bool):
    """Train the tokenizer on at most `tokenizer_train_stories` training stories, spread evenly over the split."""
    train = corpus.train
    if len(train) > options.tokenizer_train_stories:
        picks = np.unique(np.linspace(0, len(train) - 1, options.tokenizer_train_stories).round().astype(np.int64))
        train = train.select(picks)
    logger.info("training a byte-level BPE tokenizer (vocab %d) on %s stories", options.vocab_size, f"{len(train):,}")

    def batches() -> Iterator[list[str]]:
        for batch in _iter_batches(train):
            yield [text for text in _clean(batch)]

    tokenizer = train_tokenizer(batches(), options.vocab_size, min_frequency=options.min_frequency,
                                length=-(-len(train) // BATCH_STORIES), show_progress=show_progress)
    if len(tokenizer) < options.vocab_size:
        logger.warning("the tokenizer has %d tokens, fewer than the %d asked for: in this little text no more pairs "
                       "occur at least %d times", len(tokenizer), options.vocab_size, options.min_frequency)
    return tokenizer


def _iter_batches(stories) -> Iterator[list]:
    """The stories (a `datasets.Dataset` or `StoryFiles`) in batches, streamed."""
    batch_size = BATCH_STORIES  # read at each call, not fixed when the function is defined
    for batch in stories.iter(batch_size=batch_size):
        yield batch["text"]


def _clean(batch: list) -> list[str]:
    return [text.strip() for text in batch if text is not None and text.strip()]


def _encode(tokenizer: Tokenizer, batch: list, eos_id: int, dtype) -> tuple[np.ndarray, int, int]:
    """Tokenize a batch of stories, each followed by `eos_id`: (flat token ids, number of stories, UTF-8 bytes)."""
    texts = _clean(batch)
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    lengths = [len(encoding.ids) + 1 for encoding in encodings]
    ids = np.fromiter(itertools.chain.from_iterable(encoding.ids + [eos_id] for encoding in encodings),
                      dtype=dtype, count=sum(lengths))
    return ids, len(texts), sum(len(text.encode("utf-8")) for text in texts)


def _plain_tokenizer(tokenizer_json: str) -> Tokenizer:
    """The Rust tokenizer without the padding or truncation a saved tokenizer.json may carry (transformers leaves
    its last padding settings there, and some Hub tokenizers truncate): every story must be whole and unpadded."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


_worker_state: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, eos_id: int, dtype) -> None:
    _worker_state.update(tokenizer=_plain_tokenizer(tokenizer_json), eos_id=eos_id, dtype=dtype)


def _encode_in_worker(batch: list) -> tuple[np.ndarray, int, int]:
    return _encode(_worker_state["tokenizer"], batch, _worker_state["eos_id"], _worker_state["dtype"])


def encoded_batches(stories, tokenizer_json: str, eos_id: int, dtype, num_proc: int | None):
    """Yield `_encode` results batch by batch, in order: with the tokenizer's Rust threads in this process (default),
    single-threaded (num_proc=1), or in `num_proc` worker processes."""
    if num_proc is None:
        tokenizer = _plain_tokenizer(tokenizer_json)
        # Say so explicitly: an earlier `datasets.map(num_proc=...)` in this process leaves the C environment's
        # TOKENIZERS_PARALLELISM=false behind (it restores only the Python mapping), which would silently
        # single-thread the Rust encoder.
        with _tokenizers_parallelism(True):
            for batch in _iter_batches(stories):
                yield _encode(tokenizer, batch, eos_id, dtype)
        return
    if num_proc == 1:
        tokenizer = _plain_tokenizer(tokenizer_json)
        with _tokenizers_parallelism(False):
            for batch in _iter_batches(stories):
                yield _encode(tokenizer, batch, eos_id, dtype)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # Workers are single-threaded; saying so up front also keeps tokenizers from warning about the fork.
    with _tokenizers_parallelism(False), context.Pool(num_proc, _init_worker, (tokenizer_json, eos_id, dtype)) as pool:
        yield from pool.imap(_encode_in_worker, _iter_batches(stories), chunksize=1)


@contextmanager
def _tokenizers_parallelism(enabled: bool):
    """Set TOKENIZERS_PARALLELISM for the duration of the block (tokenizers reads it at each call)."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def tokenize_to_file(stories, path: Path, tokenizer_json: str, eos_id: int, dtype, num_proc: int | None,
                      split: str, show_progress: bool) -> SplitStats:
    stats = SplitStats()
    with open(path, "wb") as file, tqdm(total=len(stories), unit=" stories", desc=f"tokenizing {split}",
                                        disable=not show_progress) as progress:
        for ids, n_stories, n_bytes in encoded_batches(stories, tokenizer_json, eos_id, dtype, num_proc):
            file.write(ids.tobytes())
            stats.tokens += ids.size
            stats.stories += n_stories
            stats.bytes += n_bytes
            progress.update(min(BATCH_STORIES, len(stories) - progress.n))
    return stats
