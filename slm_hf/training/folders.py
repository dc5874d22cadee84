"""Folder operations of a run that a kill must not leave half done: deleting folders, removing what a killed run
left, and turning a full disk into one line that names what could not be written. (Replacing a folder:
`slm_hf.atomic_files.replace_folder`.)"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from ..atomic_files import OLD_PREFIX, STAGING_PREFIX, restore_folder
from ..errors import SLMError

# Names of unfinished writes (atomic_files, save_checkpoint, export_model) and of folders being deleted
# (remove_dir): what a killed process leaves behind, removed when a run starts or resumes.
LEFTOVER_PREFIXES = (STAGING_PREFIX, ".trash-")
# errno values of a write that failed for lack of space: a full disk, a quota, a file-size limit.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FULL_DISK_BYTES = 1 << 20  # a write that failed with less free space than this failed for lack of it


def remove_dir(path: Path) -> None:
    """Delete a folder: rename it first, so a kill during the deletion leaves no half folder under its name (only a
    `.trash-` folder, which the next start removes)."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def remove_leftovers(out_dir: Path) -> list[Path]:
    """Delete what killed runs left in `out_dir`: `.tmp-` files and folders of unfinished writes, `.trash-` folders
    of unfinished deletions (in the run folder, checkpoints/, best/ and final/); put back an old folder that a kill
    left aside while replacing it (`.old-`). Returns what was removed."""
    removed = []
    for folder in (out_dir, out_dir / "checkpoints", out_dir / "best", out_dir / "final"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(OLD_PREFIX):
                restore_folder(folder / path.name.removeprefix(OLD_PREFIX))
            elif path.name.startswith(LEFTOVER_PREFIXES):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def out_of_space_is_an_error(what: str, partial: Path | None = None, clean_up: bool = True):
    """Turn a write that fails for lack of space (full disk, quota, file-size limit) into an `SLMError` naming
    `what`, after deleting the half-written folder `partial`. Other errors pass through unchanged."""
    try:
        yield
    except Exception as error:
        reason = _out_of_space_reason(error, partial)
        if reason is None:
            raise
        if clean_up and partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise SLMError(f"{what}: {reason}; earlier checkpoints and model folders are intact") from error


def _out_of_space_reason(error: BaseException, written: Path | None) -> str | None:
    """Why a write failed, if for lack of space. The `OSError` is searched for in the error's chain; torch's zip
    writer and safetensors drop it ("unexpected pos", "IoError"), so the disk is then checked: its free space, and
    the file-size limit (RLIMIT_FSIZE) against the files written into `written`."""
    cause: BaseException | None = error
    seen = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in OUT_OF_SPACE:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    if written is None or not written.is_dir() or isinstance(error, (SLMError, KeyboardInterrupt)):
        return None
    if shutil.disk_usage(written).free < FULL_DISK_BYTES:
        return os.strerror(errno.ENOSPC).lower()
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, ValueError, OSError):  # not on this platform
        return None
    if limit != resource.RLIM_INFINITY and any(
        path.is_file() and path.stat().st_size >= limit for path in written.rglob("*")
    ):
        return f"{os.strerror(errno.EFBIG).lower()} (the file size limit, ulimit -f, is {limit:,} bytes)"
    return None
