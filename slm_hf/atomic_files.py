"""Files and folders that appear whole or not at all.

Each file is written under a temporary name beside it (`.tmp-NAME`), then renamed into place: a rename within a
folder is atomic, so a reader, a resumed run or a process killed mid-write never sees half a file, only the old one
or the new one. Each folder the project writes (checkpoints, model folders, exports, a data folder's tokenizer) is
built the same way, in a staging folder `.tmp-NAME`, then put in place by `replace_folder`: a kill at any moment
leaves the old folder or the new one, whole.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import SLMError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; once the block ends without error, it replaces `path`.

    On an error the temporary file is removed and `path` keeps what it had::

        with atomic_path("loss_curve.png") as temporary:
            figure.savefig(temporary, format="png")
    """
    path = Path(path)
    temporary = path.with_name(f".tmp-{path.name}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def staged_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `path` (`.tmp-NAME`); once the block ends without error, it replaces
    `path` (`replace_folder`). On an error, or a kill, `path` keeps what it had::

        with staged_folder("exports/llama") as staging:
            save_file(weights, staging / "model.safetensors")
    """
    path = Path(path)
    staging = path.with_name(f"{STAGING_PREFIX}{path.name}")
    restore_folder(path)
    shutil.rmtree(staging, ignore_errors=True)  # a killed earlier write's
    staging.mkdir(parents=True)
    try:
        yield staging
        replace_folder(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


STAGING_PREFIX = ".tmp-"  # a folder (or file) being written
OLD_PREFIX = ".old-"  # a folder being replaced, between the two renames where no atomic exchange exists


def replace_folder(source: Path, target: Path) -> None:
    """Move the complete folder `source` to `target`, replacing what `target` held, so that a kill at any moment
    leaves `target` whole: the old folder or the new one.

    Where the file system can exchange two names atomically (Linux `renameat2(RENAME_EXCHANGE)`), `target` is never
    absent. Elsewhere the old folder is renamed aside to `.old-NAME` first; a kill between the two renames leaves it
    there whole, and `restore_folder` (called by every later write of `target`, and when a run starts) puts it back.
    """
    restore_folder(target)
    if not target.exists():
        os.rename(source, target)
    elif _exchange(source, target):  # `source` now holds the old folder
        shutil.rmtree(source)
    else:
        old = target.with_name(f"{OLD_PREFIX}{target.name}")
        os.rename(target, old)
        os.rename(source, target)
        shutil.rmtree(old)


def restore_folder(target: Path) -> None:
    """Finish a `replace_folder` that a kill interrupted: put the old folder back where no new one arrived, else
    delete it."""
    old = target.with_name(f"{OLD_PREFIX}{target.name}")
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, target)


def _exchange(source: Path, target: Path) -> bool:
    """Swap the names `source` and `target` atomically; False where this system cannot (then nothing changed)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a C library without it (glibc < 2.28)
        return False
    at_current_folder, rename_exchange = -100, 2
    if renameat2(at_current_folder, os.fsencode(source), at_current_folder, os.fsencode(target), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system without the exchange
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    with atomic_path(target) as temporary:
        shutil.copy2(source, temporary)
    return Path(target)


def check_can_create(path: str | os.PathLike, what: str = "output file") -> Path:
    """Raise `SLMError` if `path` could not be written later (its nearest existing ancestor is not a writable
    folder, or `path` itself is a folder), without creating anything: check an output before a long computation."""
    path = Path(path)
    if path.is_dir():
        raise SLMError(f"the {what} {path} is a folder; pass a file name")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SLMError(f"cannot write the {what} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SLMError(f"cannot write the {what} {path}: {ancestor} is not writable")
    return path
