"""Files that appear whole or not at all.

Each file is written under a temporary name beside it (`.tmp-NAME`), then renamed into place: a rename within a
folder is atomic, so a reader, a resumed run or a process killed mid-write never sees half a file, only the old one
or the new one. (Folders, such as checkpoints and model folders, follow the same rule in `slm_hf.training`.)
"""

from __future__ import annotations

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
