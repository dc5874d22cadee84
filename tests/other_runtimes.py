"""Runtimes other than this venv's, for the export tests: a second virtual environment with transformers 4.x.

`transformers4_python()` builds it on first use (about two minutes: torch from the same wheel as this venv's,
transformers 4.x from the package index) under ~/.cache/slm_hf-tests/, outside the repository, and reuses it on
every later run. It returns its interpreter, or calls `must_run.unavailable` with the reason when it cannot be
built (no network to the package index, no space): a skip, or a failure in CI.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from must_run import unavailable

CACHE = Path(os.environ.get("SLM_TEST_CACHE", Path.home() / ".cache" / "slm_hf-tests"))
TRANSFORMERS_4_SPEC = "transformers>=4.45,<5"
BUILD_TIMEOUT_S = 900


def transformers4_python() -> Path:
    """The interpreter of a venv with transformers 4.x and this venv's torch version (built once per machine)."""
    import torch

    torch_spec = f"torch=={torch.__version__.split('+')[0]}"
    venv = CACHE / "transformers4-venv"
    python = venv / "bin" / "python"
    complete = venv / ".complete"
    wanted = f"{torch_spec} {TRANSFORMERS_4_SPEC}\n"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "transformers4-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (pytest-xdist, or two checkouts)
        if complete.is_file() and complete.read_text() == wanted and python.is_file():
            return python
        log = CACHE / "transformers4-venv.log"
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "-q", torch_spec, TRANSFORMERS_4_SPEC],
        ]
        with log.open("w") as output:
            for step in steps:
                try:
                    done = subprocess.run(step, stdout=output, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    unavailable(f"building the transformers 4.x venv took over {BUILD_TIMEOUT_S} s (log: {log})")
                if done.returncode != 0:
                    unavailable(f"the transformers 4.x venv could not be built ({' '.join(step[-2:])} failed; "
                                f"log: {log})")
        complete.write_text(wanted)
    return python
