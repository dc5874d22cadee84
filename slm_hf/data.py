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

Every file is written under a temporary name and renamed into place, and ``meta.json`` is written last: a folder
with a ``meta.json`` is complete, and an interrupted run never leaves a truncated file that a later step would read.
Re-running with the same inputs and options reuses the folder.
"""

from __future__ import annotations

import codecs
import fnmatch
import gzip
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from .atomic_files import write_json
from .errors import SLMError
from .tokenization import (
    EOS_TOKEN,
    check_vocab_size,
    load_tokenizer,
    save_tokenizer,
    tokenizer_sha256,
    train_tokenizer,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")
DEFAULT_HUB_DATASET = "roneneldan/TinyStories"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
SAMPLE_FILES = {"train": "tinystories_train.txt.gz", "val": "tinystories_valid.txt.gz"}
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val")
TEXT_SUFFIXES = (".txt", ".txt.gz")
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}

_TOKENIZER_DIR = "tokenizer"
_META_FILE = "meta.json"
_STAGING_PREFIX = ".partial-"
_SEPARATOR = re.compile(rb"^<\|endoftext\|>[ \t\r]*(?:\n|\Z)", re.MULTILINE)
_VALIDATION_FILE_NAME = re.compile(r"(?:^|[-_.\s])(?:validation|valid|val|dev)(?:[-_.\s]|$)", re.IGNORECASE)
_READ_CHUNK = 64 << 20  # bytes read from a text file at a time
_BATCH_STORIES = 2048  # stories per tokenizer call


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

    vocab_size: int = 4096
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


@dataclass
class PreparedData:
    """What `prepare_data` returns: the folder, its meta.json, and whether an existing folder was reused."""

    directory: Path
    meta: dict[str, Any]
    reused: bool = False


@dataclass
class _Corpus:
    """A loaded source: the stories of each split, as `datasets.Dataset`s with one column, `text`."""

    train: Any
    val: Any | None
    description: str
    validation: str = ""  # how the validation split was made, for meta.json


@dataclass
class _SplitStats:
    tokens: int = 0
    stories: int = 0
    bytes: int = 0

    def as_meta(self) -> dict[str, Any]:
        per_token = self.bytes / self.tokens if self.tokens else 0.0
        return {"tokens": self.tokens, "stories": self.stories, "bytes": self.bytes,
                "bytes_per_token": round(per_token, 6)}


@dataclass
class _Source:
    """A resolved `source` argument: what it is, and a cheap identity used to decide whether outputs can be reused."""

    kind: str  # "sample", "text" (local .txt files), "table" (local jsonl/json/parquet), "disk" (save_to_disk), "hub"
    name: str
    files: dict[str, list[Path]] = field(default_factory=dict)  # split ("train"/"val"/"all") -> local files

    def identity(self) -> dict[str, Any]:
        """Names, sizes and modification times of the local files (the way `make` decides), or the Hub id."""
        if self.kind == "hub":
            return {"hub": self.name}
        return {split: [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in paths]
                for split, paths in self.files.items()}


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------


def prepare_data(
    source: str = "sample",
    *,
    out_dir: str | os.PathLike,
    vocab_size: int = 4096,
    tokenizer: str | None = None,
    text_column: str = "text",
    val_fraction: float = 0.05,
    max_stories: int | None = None,
    seed: int = 0,
    data_files: str | list[str] | dict[str, str | list[str]] | None = None,
    tokenizer_train_stories: int = 100_000,
    min_frequency: int = 2,
    num_proc: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> PreparedData:
    """Read stories from `source`, train (or load) a tokenizer, tokenize every story, and write `out_dir`.

    See the module docstring for the sources and the folder layout, and `DataOptions` for the options that shape the
    output. `num_proc` is how many worker processes tokenize; by default the tokenizer's own Rust threads use every
    core in this process, which is the fastest on one machine. `overwrite=True` rebuilds the folder even when it is
    up to date, and replaces data made with a different tokenizer (refused otherwise).

    Raises:
        SLMError: for any problem with the inputs (missing or unreadable source, no stories, missing text column,
            vocabulary too small, output folder holding another tokenizer's data); nothing is written then.
    """
    options = DataOptions(vocab_size=vocab_size, tokenizer=tokenizer, text_column=text_column,
                          val_fraction=val_fraction, max_stories=max_stories, seed=seed, data_files=data_files,
                          tokenizer_train_stories=tokenizer_train_stories, min_frequency=min_frequency)
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise SLMError(f"num_proc must be a positive integer, got {num_proc!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SLMError(f"the output path {out_dir} exists and is not a folder")
    resolved = _resolve_source(source, options)
    reused_tokenizer = load_tokenizer(options.tokenizer) if options.tokenizer is not None else None

    # Everything that identifies the output, except the dataset content of a Hub source (added once loaded).
    fingerprint_inputs = {
        "format_version": FORMAT_VERSION,
        "source": resolved.identity(),
        "options": _options_for_fingerprint(options),
        "tokenizer_sha256": tokenizer_sha256(reused_tokenizer) if reused_tokenizer is not None else None,
    }
    existing = _read_existing_meta(out_dir)
    if resolved.kind != "hub":
        reusable = _reuse(out_dir, existing, _sha256_json(fingerprint_inputs), overwrite)
        if reusable is not None:
            return reusable

    with _datasets_progress(show_progress):
        corpus = _load_corpus(resolved, options)
    if resolved.kind == "hub":
        fingerprint_inputs["source"]["content"] = _dataset_fingerprints(corpus)
        reusable = _reuse(out_dir, existing, _sha256_json(fingerprint_inputs), overwrite)
        if reusable is not None:
            return reusable
    fingerprint = _sha256_json(fingerprint_inputs)

    if reused_tokenizer is None:
        text_tokenizer, tokenizer_name = _train_on_corpus(corpus, options, show_progress), "trained"
    else:
        text_tokenizer, tokenizer_name = reused_tokenizer, options.tokenizer
    digest = tokenizer_sha256(text_tokenizer)
    if existing is not None and not overwrite:
        _refuse_other_tokenizer(out_dir, existing, digest)

    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"path": _TOKENIZER_DIR, "sha256": digest, "name_or_path": tokenizer_name},
        "vocab_size": len(text_tokenizer),
        "eos_token_id": text_tokenizer.eos_token_id,
        "dtype": "uint16" if len(text_tokenizer) <= 65535 else "uint32",
        "splits": {},
        "source": str(source),
        "source_description": corpus.description,
        "validation": corpus.validation,
        "options": asdict(options),
        "inputs_sha256": fingerprint,
    }
    _write_data_folder(out_dir, corpus, text_tokenizer, meta, num_proc, show_progress)
    splits = meta["splits"]
    logger.info("wrote %s: train %s tokens (%s stories), val %s tokens (%s stories), %s, vocab %d", out_dir,
                f"{splits['train']['tokens']:,}", f"{splits['train']['stories']:,}", f"{splits['val']['tokens']:,}",
                f"{splits['val']['stories']:,}", meta["dtype"], meta["vocab_size"])
    return PreparedData(out_dir, meta, reused=False)


def _refuse_other_tokenizer(out_dir: Path, existing: dict[str, Any], digest: str) -> None:
    if not existing:
        raise SLMError(f"{out_dir} has a {_META_FILE} that cannot be read; pass --overwrite to replace the folder")
    previous = existing.get("tokenizer") or {}
    if previous.get("sha256") != digest:
        raise SLMError(f"{out_dir} already holds data made with a different tokenizer "
                       f"({previous.get('name_or_path')!r}, sha256 {str(previous.get('sha256'))[:12]}); "
                       f"choose another --out, or pass --overwrite to replace it")


def _write_data_folder(out_dir: Path, corpus: _Corpus, text_tokenizer, meta: dict[str, Any], num_proc: int | None,
                       show_progress: bool) -> None:
    """Tokenize both splits into a staging folder, fill in meta's per-split counts, then move it all into place."""
    started = time.perf_counter()
    tokenizer_json = text_tokenizer.backend_tokenizer.to_str()
    with _staging_dir(out_dir) as staging:
        save_tokenizer(text_tokenizer, staging / _TOKENIZER_DIR)
        for split, stories in (("train", corpus.train), ("val", corpus.val)):
            stats = _tokenize_to_file(stories, staging / f"{split}.bin", tokenizer_json, meta["eos_token_id"],
                                      np.dtype(meta["dtype"]), num_proc, split, show_progress)
            if stats.stories == 0:
                raise SLMError(f"no stories found in the {split} split of {corpus.description} "
                               f"(every '{meta['options']['text_column']}' value is empty)")
            meta["splits"][split] = stats.as_meta()
        meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["tokenize_seconds"] = round(time.perf_counter() - started, 2)
        write_json(staging / _META_FILE, meta)
        _commit(staging, out_dir)


def read_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The `meta.json` of a prepared data folder (`SLMError` if there is none, or it is from another format)."""
    data_dir = Path(data_dir)
    meta_file = data_dir / _META_FILE
    if not meta_file.is_file():
        raise SLMError(f"{data_dir} is not a prepared data folder (no {_META_FILE}); "
                       f"create it with: python scripts/prepare_data.py --out {data_dir}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SLMError(f"{meta_file} is not valid JSON ({error}); re-run prepare_data with --overwrite") from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise SLMError(f"{meta_file} has format_version {meta.get('format_version')!r}, this slm_hf reads "
                       f"{FORMAT_VERSION}; re-run prepare_data with --overwrite")
    return meta


def load_tokens(data_dir: str | os.PathLike, split: str) -> np.memmap:
    """The token ids of `split` ("train" or "val") of a prepared data folder, as a read-only memmap."""
    if split not in SPLITS:
        raise SLMError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.bin"
    dtype = np.dtype(meta["dtype"])
    expected = meta["splits"][split]["tokens"] * dtype.itemsize
    if not path.is_file() or path.stat().st_size != expected:
        found = path.stat().st_size if path.is_file() else "no file"
        raise SLMError(f"{path} does not match {_META_FILE} (expected {expected} bytes, found {found}); "
                       f"re-run prepare_data with --overwrite")
    return np.memmap(path, dtype=dtype, mode="r")


# ---------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------


def _resolve_source(source: str, options: DataOptions) -> _Source:
    source = str(source)
    if options.data_files is not None and source == "sample":
        raise SLMError("data_files selects files of a Hub dataset; it does not apply to the sample")
    if source == "sample":
        files = {split: [SAMPLE_DIR / name] for split, name in SAMPLE_FILES.items()}
        for paths in files.values():
            if not paths[0].is_file():
                raise SLMError(f"the shipped sample is missing ({paths[0]}); reinstall slm_hf")
        return _Source("sample", "sample", files)
    path = Path(source).expanduser()
    if path.exists():
        if options.data_files is not None:
            raise SLMError("data_files selects files of a Hub dataset; for local data pass the file or folder as the "
                           "source")
        return _resolve_local(path.resolve())
    if _looks_like_hub_id(source):
        return _Source("hub", source)
    raise SLMError(f"no such file or folder: {source}")


def _looks_like_hub_id(name: str) -> bool:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?", name):
        return False
    return not name.endswith(TEXT_SUFFIXES + tuple(TABLE_BUILDERS))


def _resolve_local(path: Path) -> _Source:
    if path.is_file():
        kind = _file_kind(path)
        if kind is None:
            raise SLMError(f"{path}: unsupported file type; use .txt (stories separated by {EOS_TOKEN} lines), "
                           f".jsonl, .json or .parquet")
        _check_not_empty(path)
        return _Source(kind, str(path), {"all": [path]})
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _Source("disk", str(path), {"all": sorted(p for p in path.rglob("*") if p.is_file())})
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    data_files = [p for p in files if _file_kind(p) is not None]
    if not data_files:
        raise SLMError(f"no stories found in {path}: the folder has no .txt, .jsonl, .json or .parquet files")
    kinds = {_file_kind(p) for p in data_files}
    if len(kinds) > 1:
        raise SLMError(f"{path} mixes .txt files with table files (.jsonl/.json/.parquet); put one kind per folder")
    for file in data_files:
        _check_not_empty(file)
    kind = kinds.pop()
    if kind == "text":
        val = [p for p in data_files if _VALIDATION_FILE_NAME.search(_strip_suffix(p.name))]
        train = [p for p in data_files if p not in val]
        if not train:
            raise SLMError(f"{path} has only validation files ({', '.join(p.name for p in val)}); add training files")
        return _Source("text", str(path), {"train": train, "val": val} if val else {"all": train})
    return _Source("table", str(path), {"all": data_files})


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if path.suffix.lower() in TABLE_BUILDERS:
        return "table"
    return None


def _strip_suffix(name: str) -> str:
    for suffix in (*TEXT_SUFFIXES, *TABLE_BUILDERS):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise SLMError(f"{path} is empty")


def _load_corpus(source: _Source, options: DataOptions) -> _Corpus:
    """Load the source's stories, cap them at `max_stories`, and hold out validation stories if needed."""
    if source.kind in ("sample", "text"):
        splits = {split: _stories_dataset(_read_text_files(paths, options.max_stories))
                  for split, paths in source.files.items()}
        description = "the shipped TinyStories sample" if source.kind == "sample" else source.name
        corpus = _corpus_from_splits(splits, description, options)
    elif source.kind == "hub" and _is_text_data_files(options.data_files):
        files = _download_hub_text_files(source.name, options.data_files)
        splits = {split: _stories_dataset(_read_text_files(paths, options.max_stories))
                  for split, paths in files.items()}
        names = ", ".join(path.name for paths in files.values() for path in paths)
        corpus = _corpus_from_splits(splits, f"{source.name} ({names})", options)
    else:
        corpus = _corpus_from_splits(_load_with_datasets(source, options), source.name, options)
    return corpus


def _corpus_from_splits(splits: dict[str, Any], description: str, options: DataOptions) -> _Corpus:
    """Pick the train and validation splits; cap each at max_stories; hold out a fraction if there is no validation."""
    if "train" in splits:
        train = splits["train"]
    elif "all" in splits:
        train = splits["all"]
    elif len(splits) == 1:
        train = next(iter(splits.values()))
    else:
        raise SLMError(f"{description} has no 'train' split (its splits: {', '.join(splits)})")
    val_name = next((name for name in ("val", *VALIDATION_SPLIT_NAMES) if name in splits), None)
    if options.max_stories is not None:
        train = train.select(range(min(len(train), options.max_stories)))
    if len(train) == 0:
        raise SLMError(f"no stories found in {description}")
    if val_name is not None:
        val = splits[val_name]
        if options.max_stories is not None:
            val = val.select(range(min(len(val), options.max_stories)))
        if len(val) == 0:
            raise SLMError(f"no stories found in the validation split of {description}")
        return _Corpus(train, val, description, validation=f"the source's validation split ({val_name!r})")
    n_val = max(1, round(len(train) * options.val_fraction))
    if len(train) - n_val < 1:
        raise SLMError(f"{description} has only {len(train)} stor{'y' if len(train) == 1 else 'ies'}: too few to "
                       f"hold out a validation split (it needs at least 2)")
    held_out = np.sort(np.random.default_rng(options.seed).choice(len(train), size=n_val, replace=False))
    keep = np.ones(len(train), dtype=bool)
    keep[held_out] = False
    return _Corpus(train.select(np.flatnonzero(keep)), train.select(held_out), description,
                   validation=f"a random {options.val_fraction:g} of the stories (seed {options.seed})")


def _stories_dataset(stories: list[str]):
    from datasets import Dataset

    return Dataset.from_dict({"text": stories})


def _read_text_files(paths: Sequence[Path], limit: int | None) -> list[str]:
    stories: list[str] = []
    for path in paths:
        stories.extend(read_stories(path, None if limit is None else limit - len(stories)))
        if limit is not None and len(stories) >= limit:
            break
    return stories


def read_stories(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The stories of a TinyStories-format text file (.txt or .txt.gz): each story followed by a line holding
    exactly <|endoftext|>. Stories are stripped of surrounding whitespace; empty ones are skipped.

    The file is read in chunks; `SLMError` names the file and the byte offset of a NUL byte (a binary file) or of
    the first byte that is not UTF-8 (offsets count decompressed bytes for .gz files).
    """
    path = Path(path)
    stories: list[str] = []
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            buffer, buffer_offset, at_end = b"", 0, False
            while not at_end and (limit is None or len(stories) < limit):
                chunk = file.read(_READ_CHUNK)
                at_end = not chunk
                buffer += chunk
                start = 0
                for match in _SEPARATOR.finditer(buffer):
                    if not at_end and match.end() == len(buffer):
                        break  # the separator line may go on in the next chunk
                    _add_story(stories, path, buffer[start:match.start()], buffer_offset + start)
                    start = match.end()
                if at_end:
                    _add_story(stories, path, buffer[start:], buffer_offset + start)
                buffer, buffer_offset = buffer[start:], buffer_offset + start
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise SLMError(f"cannot read {path}: {error}") from error
    return stories[:limit] if limit is not None else stories


def _add_story(stories: list[str], path: Path, raw: bytes, offset: int) -> None:
    if offset == 0 and raw.startswith(codecs.BOM_UTF8):
        raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
    text = _decode_utf8(raw, path, offset).strip()
    if text:
        stories.append(text)


def _decode_utf8(raw: bytes, path: Path, offset: int, final: bool = True, decoder=None) -> str:
    """Decode `raw` (found at byte `offset` of `path`); `SLMError` at the first invalid byte or NUL byte, whichever
    comes first. With an incremental `decoder`, `raw` may end inside a character (unless `final`)."""
    nul = raw.find(b"\0")
    valid = raw if nul < 0 else raw[:nul]
    try:
        text = decoder.decode(valid, final=final and nul < 0) if decoder else valid.decode("utf-8")
    except UnicodeDecodeError as error:
        start = error.start - (len(error.object) - len(valid))  # an incremental decoder prepends held-back bytes
        raise SLMError(f"{path} is not UTF-8 text: byte 0x{error.object[error.start]:02x} at byte offset "
                       f"{offset + start} is invalid") from error
    if nul >= 0:
        raise SLMError(f"{path} looks binary, not UTF-8 text (NUL byte at byte offset {offset + nul})")
    return text


def _check_utf8_file(path: Path) -> None:
    """Raise `SLMError` naming the byte offset of the first NUL byte or invalid UTF-8 byte in a text-based file."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with open(path, "rb") as file:
        while chunk := file.read(_READ_CHUNK):
            _decode_utf8(chunk, path, offset, final=False, decoder=decoder)
            offset += len(chunk)
    _decode_utf8(b"", path, offset, final=True, decoder=decoder)


def _check_table_file(path: Path) -> None:
    if path.suffix.lower() != ".parquet":  # JSON must be UTF-8; parquet stores its strings as UTF-8 by design
        _check_utf8_file(path)


def _load_with_datasets(source: _Source, options: DataOptions) -> dict[str, Any]:
    """Load a Hub dataset, a local table file or folder, or a saved dataset with the `datasets` library.

    The same `load_dataset(path, data_files=...)` call serves a Hub id and a local folder of parquet/json files
    (`datasets` infers the splits from the file names, as it does on the Hub).
    """
    import datasets

    name = source.name
    try:
        if source.kind == "disk":
            loaded = datasets.load_from_disk(name)
        elif source.kind == "table" and Path(name).is_file():
            _check_table_file(Path(name))
            with _datasets_progress(False):  # a local file converts in a blink: no "Generating train split" bar
                loaded = datasets.load_dataset(TABLE_BUILDERS[Path(name).suffix.lower()], data_files={"train": name})
        else:  # a Hub id, or a local folder of table files: the same call
            for file in source.files.get("all", []):
                _check_table_file(file)
            loaded = datasets.load_dataset(name, data_files=options.data_files)
    except SLMError:
        raise
    except Exception as error:  # the datasets library raises many kinds; all mean "could not read this source"
        what = (f"{name!r} is not a local file or folder, and loading it as a Hub dataset failed"
                if source.kind == "hub" else f"cannot read {name}")
        offline = " (HF_HUB_OFFLINE is set)" if source.kind == "hub" and os.environ.get("HF_HUB_OFFLINE") else ""
        raise SLMError(f"{what}{offline}: {type(error).__name__}: {_first_line(error)}") from error
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return {split: _text_column(dataset, options.text_column, f"{name} ({split})")
            for split, dataset in splits.items()}


def _text_column(dataset, column: str, where: str):
    """`dataset` reduced to its text column, renamed `text`; `SLMError` listing the columns if it is missing."""
    from datasets import Value

    if column not in dataset.column_names:
        raise SLMError(f"no column {column!r} in {where}; its columns are: {', '.join(dataset.column_names)} "
                       f"(choose one with --text-column)")
    feature = dataset.features[column]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise SLMError(f"column {column!r} in {where} holds {feature}, not text (choose another with --text-column)")
    dataset = dataset.select_columns([column])
    return dataset.rename_column(column, "text") if column != "text" else dataset


def _is_text_data_files(data_files) -> bool:
    if data_files is None:
        return False
    patterns = _data_file_patterns(data_files)
    return all(pattern.lower().endswith(TEXT_SUFFIXES) for values in patterns.values() for pattern in values)


def _data_file_patterns(data_files) -> dict[str, list[str]]:
    if isinstance(data_files, str):
        return {"train": [data_files]}
    if isinstance(data_files, (list, tuple)):
        return {"train": list(data_files)}
    return {split: [values] if isinstance(values, str) else list(values) for split, values in data_files.items()}


def _download_hub_text_files(repo_id: str, data_files) -> dict[str, list[Path]]:
    """Download a Hub dataset's TinyStories-format .txt files (patterns may use wildcards) and return local paths."""
    from huggingface_hub import HfApi, hf_hub_download

    patterns = _data_file_patterns(data_files)
    try:
        repo_files = None
        local: dict[str, list[Path]] = {}
        for split, split_patterns in patterns.items():
            names = []
            for pattern in split_patterns:
                if any(char in pattern for char in "*?["):
                    if repo_files is None:
                        repo_files = HfApi().list_repo_files(repo_id, repo_type="dataset")
                    matched = sorted(fnmatch.filter(repo_files, pattern))
                    if not matched:
                        raise SLMError(f"no file in the Hub dataset {repo_id} matches {pattern!r}")
                    names.extend(matched)
                else:
                    names.append(pattern)
            local[split] = [Path(hf_hub_download(repo_id, name, repo_type="dataset")) for name in names]
    except SLMError:
        raise
    except Exception as error:  # network, authentication, missing repo or file: all "could not get the files"
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise SLMError(f"cannot download {data_files!r} from the Hub dataset {repo_id}{offline}: "
                       f"{type(error).__name__}: {_first_line(error)}") from error
    return {("val" if split in VALIDATION_SPLIT_NAMES else split): paths for split, paths in local.items()}


def _dataset_fingerprints(corpus: _Corpus) -> list[str]:
    return [getattr(split, "_fingerprint", "") for split in (corpus.train, corpus.val)]


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer training and tokenization
# ---------------------------------------------------------------------------------------------------------------


def _train_on_corpus(corpus: _Corpus, options: DataOptions, show_progress: bool):
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
                                length=-(-len(train) // _BATCH_STORIES), show_progress=show_progress)
    if len(tokenizer) < options.vocab_size:
        logger.warning("the tokenizer has %d tokens, fewer than the %d asked for: in this little text no more pairs "
                       "occur at least %d times", len(tokenizer), options.vocab_size, options.min_frequency)
    return tokenizer


def _iter_batches(stories, batch_size: int = _BATCH_STORIES) -> Iterator[list]:
    for start in range(0, len(stories), batch_size):
        yield stories[start:start + batch_size]["text"]


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


def _encoded_batches(stories, tokenizer_json: str, eos_id: int, dtype, num_proc: int | None):
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
def _datasets_progress(enabled: bool):
    """Show or hide the `datasets` library's progress bars for the duration of the block."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hide = not enabled and not are_progress_bars_disabled()
    if hide:
        disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            enable_progress_bars()


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


def _tokenize_to_file(stories, path: Path, tokenizer_json: str, eos_id: int, dtype, num_proc: int | None,
                      split: str, show_progress: bool) -> _SplitStats:
    stats = _SplitStats()
    with open(path, "wb") as file, tqdm(total=len(stories), unit=" stories", desc=f"tokenizing {split}",
                                        disable=not show_progress) as progress:
        for ids, n_stories, n_bytes in _encoded_batches(stories, tokenizer_json, eos_id, dtype, num_proc):
            file.write(ids.tobytes())
            stats.tokens += ids.size
            stats.stories += n_stories
            stats.bytes += n_bytes
            progress.update(min(_BATCH_STORIES, len(stories) - progress.n))
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Output folder: reuse, staging and atomic commit
# ---------------------------------------------------------------------------------------------------------------


def _read_existing_meta(out_dir: Path) -> dict[str, Any] | None:
    if not (out_dir / _META_FILE).is_file():
        return None
    try:
        return json.loads((out_dir / _META_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}  # unreadable: never reused, and treated as another tokenizer's data unless overwrite


def _reuse(out_dir: Path, existing: dict | None, fingerprint: str, overwrite: bool) -> PreparedData | None:
    """The existing folder, if it was made from the same inputs and options and is intact; else None."""
    if overwrite or not existing or existing.get("inputs_sha256") != fingerprint:
        return None
    try:
        meta = read_meta(out_dir)
        for split in SPLITS:
            load_tokens(out_dir, split)
        if tokenizer_sha256(load_tokenizer(out_dir / meta["tokenizer"]["path"])) != meta["tokenizer"]["sha256"]:
            return None
    except (SLMError, KeyError, TypeError):
        return None
    logger.info("%s is up to date (same source and options): reusing it; pass --overwrite to rebuild", out_dir)
    return PreparedData(out_dir, meta, reused=True)


@contextmanager
def _staging_dir(out_dir: Path):
    """A fresh staging folder inside `out_dir`, removed on exit; `out_dir` is removed too if this created it empty."""
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SLMError(f"cannot create the data folder {out_dir}: {error.strerror or error}") from error
    _remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=out_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _remove_stale_staging(out_dir: Path) -> None:
    """Remove staging folders left by runs that were killed (their process is gone)."""
    for path in out_dir.glob(f"{_STAGING_PREFIX}*"):
        try:
            pid = int(path.name[len(_STAGING_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _commit(staging: Path, out_dir: Path) -> None:
    """Move the staged files into `out_dir`, each with an atomic rename, meta.json last.

    meta.json goes first, so that until the new one lands the folder reads as unprepared rather than as a mix.
    """
    (out_dir / _META_FILE).unlink(missing_ok=True)
    for name in (_TOKENIZER_DIR, "train.bin", "val.bin"):
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    os.replace(staging / _META_FILE, out_dir / _META_FILE)


def _options_for_fingerprint(options: DataOptions) -> dict[str, Any]:
    values = asdict(options)
    if options.tokenizer is not None:  # the vocabulary comes from the reused tokenizer, whose hash is recorded
        values.pop("vocab_size")
        values.pop("tokenizer_train_stories")
        values.pop("min_frequency")
    return values


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
