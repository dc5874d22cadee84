"""The data pipeline: stories -> a trained tokenizer -> flat token files the training loop reads.

    prepare_data("sample", out_dir="data/sample")        # the TinyStories sample shipped with the package
    prepare_data("roneneldan/TinyStories", out_dir="data/tinystories")   # a Hub dataset, via datasets.load_dataset
    prepare_data("stories.txt", out_dir="data/mine", val_fraction=0.05)  # local files, or a folder of them
    tokens = load_tokens("data/sample", "train")          # np.memmap of token ids
    meta = read_meta("data/sample")

A prepared data folder holds:

- ``tokenizer/``: a Hugging Face tokenizer folder (``AutoTokenizer.from_pretrained`` loads it offline),
- ``train.bin`` and ``val.bin``: every story's token ids followed by the end-of-text id, concatenated, as a flat
  array of uint16 (uint32 when the vocabulary exceeds 65,535 tokens), nanoGPT style,
- ``meta.json``: the tokenizer's path and content hash, the vocabulary size, the dtype, per split the number of
  tokens, stories and UTF-8 bytes of story text (end-of-text separators count as 0 bytes), and the source and options.

Sources:

- ``"sample"``: about 12,000 TinyStories stories (2.5M tokens) shipped inside the package (``slm_hf/sample_data/``).
- a local path: a ``.txt`` (or ``.txt.gz``) file of stories each followed by a line holding exactly
  ``<|endoftext|>`` (the TinyStories files' format), a ``.jsonl`` / ``.json`` / ``.parquet`` file with a text column,
  a folder of such files, or a folder written by ``Dataset.save_to_disk``.
- anything else is taken as a Hub dataset id and read with ``datasets.load_dataset``, with its ``train`` and
  ``validation`` splits (``data_files`` selects files; ``.txt`` files in the TinyStories format are downloaded and
  split on ``<|endoftext|>`` lines, since the ``text`` loader would make one row per line).

Validation: the source's validation split when it has one (a split named ``validation``, ``valid`` or ``val``; for
a folder of ``.txt`` files, files with such a word in their name), else a seeded random ``val_fraction`` of the
stories. Stories are stripped of surrounding whitespace; empty ones are skipped.

Memory: text files (the sample, local ``.txt``, the Hub's ``.txt`` files) are streamed, never held whole: the
tokenizer trains on at most ``tokenizer_train_stories`` stories picked evenly over the split, and encoding reads
and writes one batch at a time, so the full TinyStories (1.9 GB of text) prepares in the memory the sample needs
(bench/bench_prepare_scale.py). Tables and Hub datasets go through ``datasets`` and its memory-mapped Arrow cache.

Every file is written under a temporary name and renamed into place, and ``meta.json`` is written last: a folder
with a ``meta.json`` is complete, and an interrupted run never leaves a truncated file that a later step would read.
Re-running with the same inputs and options reuses the folder.

The stages, one module each: `options` (what shapes the output), `sources` (what a source names, loaded as
train/validation stories), `stories` (the TinyStories text format), `tokenize` (tokenizer training, encoding),
`folder` (the on-disk contract training reads: read_meta, load_tokens), `prepare` (prepare_data, which runs them).
"""

from .folder import FORMAT_VERSION, META_FILE, SPLITS, PreparedData, load_tokens, read_meta
from .options import DataOptions
from .prepare import prepare_data
from .sources import SAMPLE_DIR, SAMPLE_FILES
from .stories import read_stories
from .tokenize import encoded_batches

__all__ = [
    "FORMAT_VERSION",
    "META_FILE",
    "SAMPLE_DIR",
    "SAMPLE_FILES",
    "SPLITS",
    "DataOptions",
    "PreparedData",
    "encoded_batches",
    "load_tokens",
    "prepare_data",
    "read_meta",
    "read_stories",
]
