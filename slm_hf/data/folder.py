"""The data folder: the on-disk contract between data preparation and training.

A prepared folder holds `tokenizer/`, `train.bin`, `val.bin` (flat token ids, dtype in meta.json) and `meta.json`,
written last: a folder with a meta.json is complete. Training reads it through `read_meta` and `load_tokens` only.
Here too: reusing an up-to-date folder, and the staging folder whose files are renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import replace_folder
from ..errors import SLMError, folder_problem
from ..tokenization import load_tokenizer, tokenizer_sha256

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")
TOKENIZER_DIR = "tokenizer"
META_FILE = "meta.json"
_STAGING_PREFIX = ".partial-"


@dataclass
class PreparedData:
    """What `prepare_data` returns: the folder, its meta.json, and whether an existing folder was reused."""

    directory: Path
    meta: dict[str, Any]
    reused: bool = False


def read_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The `meta.json` of a prepared data folder (`SLMError` if there is none, or it is from another format)."""
    data_dir = Path(data_dir)
    meta_file = data_dir / META_FILE
    if folder_problem(data_dir):
        raise SLMError(f"data folder {data_dir} {folder_problem(data_dir)}; "
                       f"create it with: python scripts/prepare_data.py --out {data_dir}")
    if not meta_file.is_file():
        raise SLMError(f"{data_dir} is not a prepared data folder (no {META_FILE}); "
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
        raise SLMError(f"{path} does not match {META_FILE} (expected {expected} bytes, found {found}); "
                       f"re-run prepare_data with --overwrite")
    return np.memmap(path, dtype=dtype, mode="r")


def read_existing_meta(out_dir: Path) -> dict[str, Any] | None:
    if not (out_dir / META_FILE).is_file():
        return None
    try:
        return json.loads((out_dir / META_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}  # unreadable: never reused, and treated as another tokenizer's data unless overwrite


def reuse(out_dir: Path, existing: dict | None, fingerprint: str, overwrite: bool) -> PreparedData | None:
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
def staging_dir(out_dir: Path):
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


def commit(staging: Path, out_dir: Path) -> None:
    """Move the staged files into `out_dir`, each with an atomic rename, meta.json last.

    meta.json goes first, so that until the new one lands the folder reads as unprepared rather than as a mix.
    """
    (out_dir / META_FILE).unlink(missing_ok=True)
    replace_folder(staging / TOKENIZER_DIR, out_dir / TOKENIZER_DIR)
    for name in ("train.bin", "val.bin"):
        os.replace(staging / name, out_dir / name)
    os.replace(staging / META_FILE, out_dir / META_FILE)
