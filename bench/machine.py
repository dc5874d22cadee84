"""What a benchmark figure ran on: the CPU model (as `lscpu` names it), threads, torch and the commit.

Every figure in BENCHMARKS.md names the CPU it was measured on: these machines come as an AMD EPYC without AMX or an
Intel Xeon with AMX, and the same recipe runs at very different speeds on the two.
"""

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name, e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8488C"."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def describe() -> dict:
    """The machine facts a results file records beside its figures."""
    import torch  # here, not at the top: bench_launchers times start-ups and imports no torch itself

    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": commit()}
