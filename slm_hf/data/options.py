"""The options that decide what a data folder holds: spelled once, here.

`prepare_data(**options)` validates its keyword arguments with `DataOptions`, meta.json records them, and the
fingerprint that decides whether an existing folder can be reused is made from them. scripts/prepare_data.py spells
the same options as flags (it parses them before importing slm_hf, so that `--help` answers before torch is
imported); tests/test_data.py checks that its flags are exactly these fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import SLMError
from ..tokenization import DEFAULT_VOCAB_SIZE, check_vocab_size


@dataclass(frozen=True)
class DataOptions:
    """The options that decide what `prepare_data` writes (and so whether an existing folder can be reused).

    Args:
        vocab_size: vocabulary size of the tokenizer to train; ignored when `tokenizer` is given.
        tokenizer: a tokenizer folder or Hub id to reuse instead of training one (e.g. `"gpt2"`).
        text_column: the column that holds the stories, for tables (jsonl, json, parquet, datasets).
        val_fraction: the share of stories held out for validation when the source has no validation split.
        max_stories: read at most this many stories from each split of the source (all when `None`).
        seed: seed of the random validation hold-out.
        data_files: for a Hub dataset, which of its files to read (as `datasets.load_dataset(data_files=...)`).
        tokenizer_train_stories: train the tokenizer on at most this many stories, spread evenly over the training
            split (for speed on big sources; a few 10k stories give practically the same vocabulary).
        min_frequency: a pair must occur this often to be merged during tokenizer training.
    """

    vocab_size: int = DEFAULT_VOCAB_SIZE
    tokenizer: str | None = None
    text_column: str = "text"
    val_fraction: float = 0.05
    max_stories: int | None = None
    seed: int = 0
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    tokenizer_train_stories: int = 100_000
    min_frequency: int = 2

    def __post_init__(self):
        if self.tokenizer is None:
            check_vocab_size(self.vocab_size)
        if not (isinstance(self.val_fraction, (int, float)) and 0.0 < self.val_fraction < 1.0):
            raise SLMError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction!r}")
        if self.max_stories is not None and (not isinstance(self.max_stories, int) or self.max_stories < 1):
            raise SLMError(f"max_stories must be a positive integer, got {self.max_stories!r}")
        if not isinstance(self.tokenizer_train_stories, int) or self.tokenizer_train_stories < 1:
            raise SLMError(f"tokenizer_train_stories must be a positive integer, got {self.tokenizer_train_stories!r}")
        if not isinstance(self.min_frequency, int) or self.min_frequency < 1:
            raise SLMError(f"min_frequency must be a positive integer, got {self.min_frequency!r}")
        if not self.text_column:
            raise SLMError("text_column must be a column name, got an empty string")


OPTION_NAMES = tuple(option.name for option in fields(DataOptions))


def options_for_fingerprint(options: DataOptions) -> dict[str, Any]:
    values = asdict(options)
    if options.tokenizer is not None:  # the vocabulary comes from the reused tokenizer, whose hash is recorded
        values.pop("vocab_size")
        values.pop("tokenizer_train_stories")
        values.pop("min_frequency")
    return values

