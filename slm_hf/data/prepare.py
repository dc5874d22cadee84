"""`prepare_data`: source -> corpus -> tokenizer -> staged token files -> the committed data folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import write_json
from ..errors import SLMError
from ..tokenization import load_tokenizer, save_tokenizer, tokenizer_sha256
from .folder import (
    FORMAT_VERSION,
    META_FILE,
    TOKENIZER_DIR,
    PreparedData,
    commit,
    read_existing_meta,
    reuse,
    staging_dir,
)
from .options import DataOptions, options_for_fingerprint
from .sources import Corpus, dataset_fingerprints, datasets_progress, load_corpus, resolve_source
from .tokenize import tokenize_to_file, train_on_corpus

logger = logging.getLogger(__name__)


def prepare_data(
    source: str = "sample",
    *,
    out_dir: str | os.PathLike,
    num_proc: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    **options: Any,
) -> PreparedData:
    """Read stories from `source`, train (or load) a tokenizer, tokenize every story, and write `out_dir`.

    `options` are `DataOptions`' fields (vocab_size, tokenizer, text_column, val_fraction, max_stories, seed,
    data_files, tokenizer_train_stories, min_frequency): the options that shape the output, and their defaults.
    See slm_hf.data for the sources and the folder layout. `num_proc` is how many worker processes tokenize; by
    default the tokenizer's own Rust threads use every core in this process, which is the fastest on one machine.
    `overwrite=True` rebuilds the folder even when it is up to date, and replaces data made with a different
    tokenizer (refused otherwise).

    Raises:
        SLMError: for any problem with the inputs (missing or unreadable source, no stories, missing text column,
            vocabulary too small, output folder holding another tokenizer's data); nothing is written then.
    """
    options = DataOptions(**options)
    if num_proc is not None and (not isinstance(num_proc, int) or num_proc < 1):
        raise SLMError(f"num_proc must be a positive integer, got {num_proc!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SLMError(f"the output path {out_dir} exists and is not a folder")
    resolved = resolve_source(source, options)
    reused_tokenizer = load_tokenizer(options.tokenizer) if options.tokenizer is not None else None

    # Everything that identifies the output, except the dataset content of a Hub source (added once loaded).
    fingerprint_inputs = {
        "format_version": FORMAT_VERSION,
        "source": resolved.identity(),
        "options": options_for_fingerprint(options),
        "tokenizer_sha256": tokenizer_sha256(reused_tokenizer) if reused_tokenizer is not None else None,
    }
    existing = read_existing_meta(out_dir)
    if resolved.kind != "hub":
        reusable = reuse(out_dir, existing, _sha256_json(fingerprint_inputs), overwrite)
        if reusable is not None:
            return reusable

    with datasets_progress(show_progress):
        corpus = load_corpus(resolved, options)
    if resolved.kind == "hub":
        fingerprint_inputs["source"]["content"] = dataset_fingerprints(corpus)
        reusable = reuse(out_dir, existing, _sha256_json(fingerprint_inputs), overwrite)
        if reusable is not None:
            return reusable
    fingerprint = _sha256_json(fingerprint_inputs)

    if reused_tokenizer is None:
        text_tokenizer, tokenizer_name = train_on_corpus(corpus, options, show_progress), "trained"
    else:
        text_tokenizer, tokenizer_name = reused_tokenizer, options.tokenizer
    digest = tokenizer_sha256(text_tokenizer)
    if existing is not None and not overwrite:
        _refuse_other_tokenizer(out_dir, existing, digest)

    meta = _meta(source, corpus, options, text_tokenizer, tokenizer_name, digest, fingerprint)
    _write_data_folder(out_dir, corpus, text_tokenizer, meta, num_proc, show_progress)
    splits = meta["splits"]
    logger.info("wrote %s: train %s tokens (%s stories), val %s tokens (%s stories), %s, vocab %d", out_dir,
                f"{splits['train']['tokens']:,}", f"{splits['train']['stories']:,}", f"{splits['val']['tokens']:,}",
                f"{splits['val']['stories']:,}", meta["dtype"], meta["vocab_size"])
    return PreparedData(out_dir, meta, reused=False)


def _meta(source: str, corpus: Corpus, options: DataOptions, text_tokenizer, tokenizer_name: str, digest: str,
          fingerprint: str) -> dict[str, Any]:
    """meta.json, but for the per-split counts that tokenizing adds."""
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"path": TOKENIZER_DIR, "sha256": digest, "name_or_path": tokenizer_name},
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


def _refuse_other_tokenizer(out_dir: Path, existing: dict[str, Any], digest: str) -> None:
    if not existing:
        raise SLMError(f"{out_dir} has a {META_FILE} that cannot be read; pass --overwrite to replace the folder")
    previous = existing.get("tokenizer") or {}
    if previous.get("sha256") != digest:
        raise SLMError(f"{out_dir} already holds data made with a different tokenizer "
                       f"({previous.get('name_or_path')!r}, sha256 {str(previous.get('sha256'))[:12]}); "
                       f"choose another --out, or pass --overwrite to replace it")


def _write_data_folder(out_dir: Path, corpus: Corpus, text_tokenizer, meta: dict[str, Any], num_proc: int | None,
                       show_progress: bool) -> None:
    """Tokenize both splits into a staging folder, fill in meta's per-split counts, then move it all into place."""
    started = time.perf_counter()
    tokenizer_json = text_tokenizer.backend_tokenizer.to_str()
    with staging_dir(out_dir) as staging:
        save_tokenizer(text_tokenizer, staging / TOKENIZER_DIR)
        for split, stories in (("train", corpus.train), ("val", corpus.val)):
            stats = tokenize_to_file(stories, staging / f"{split}.bin", tokenizer_json, meta["eos_token_id"],
                                      np.dtype(meta["dtype"]), num_proc, split, show_progress)
            if stats.stories == 0:
                raise SLMError(f"no stories found in the {split} split of {corpus.description} "
                               f"(every '{meta['options']['text_column']}' value is empty)")
            meta["splits"][split] = stats.as_meta()
        meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["tokenize_seconds"] = round(time.perf_counter() - started, 2)
        write_json(staging / META_FILE, meta)
        commit(staging, out_dir)


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()
