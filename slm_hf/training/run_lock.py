"""One run, one output folder: an exclusive lock on `--out` for the lifetime of a training run.

Two runs writing the same folder would rotate each other's checkpoints and replace each other's model folders.
The run's main process holds a `filelock` lock on `OUT/.run.lock` (an OS lock: it is released when the process
ends, however it ends, SIGKILL included) and writes who holds it into `OUT/.run.lock.json`, which a refused run
reads to name the holder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import SLMError

LOCK_NAME = ".run.lock"
HOLDER_NAME = ".run.lock.json"


class RunLock:
    """`acquire()` takes the folder's lock (creating the folder), or raises `SLMError` naming the run holding it."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self._lock = FileLock(self.out_dir / LOCK_NAME)
        self._holder = self.out_dir / HOLDER_NAME

    def acquire(self) -> None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise SLMError(
                f"{self.out_dir} is in use by another training run ({self._describe_holder()}); wait for it to end "
                f"or choose another --out"
            ) from None
        except OSError as error:
            raise SLMError(f"cannot write to the output folder {self.out_dir}: {error.strerror or error}") from error
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        self._holder.write_text(json.dumps(holder), encoding="utf-8")

    def release(self) -> None:
        self._holder.unlink(missing_ok=True)
        self._lock.release()

    def _describe_holder(self) -> str:
        try:
            holder = json.loads(self._holder.read_text(encoding="utf-8"))
            return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
        except (OSError, ValueError, KeyError):
            return "its holder did not say who it is"


__all__ = ["RunLock", "LOCK_NAME", "HOLDER_NAME"]
