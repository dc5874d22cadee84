"""What a benchmark figure ran on, and the one way a benchmark writes its results file.

Every figure in BENCHMARKS.md names the CPU it was measured on: these machines come as an AMD EPYC without AMX or an
Intel Xeon with AMX, and the same recipe runs at very different speeds on the two. `write_results` is the only writer
of bench/results/*.json: the script that measured a figure writes it, with the machine, the commit, the shape and the
command beside it, and `bench/report.py` renders BENCHMARKS.md from those files.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where write_results writes and bench/report.py reads; SLM_BENCH_RESULTS redirects both (make bench BENCH_QUICK=1
# writes its smoke-run figures elsewhere, so that they are never committed as results).
RESULTS_DIR = Path(os.environ.get("SLM_BENCH_RESULTS") or ROOT / "bench" / "results")
# The shape every side-by-side benchmark measures, and the one bench/report.py calls current: the cpu-demo preset's.
CPU_DEMO_CONFIG = ROOT / "configs" / "cpu-demo.yaml"

# The CPU flags that decide how fast bf16 arithmetic runs here (lscpu's names).
RELEVANT_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx2")


def _lscpu() -> dict[str, str]:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in output.splitlines() if ":" in line)


def cpu_model() -> str:
    """The CPU's model name, e.g. "AMD EPYC" or "Intel(R) Xeon(R) Platinum 8488C"."""
    name = _lscpu().get("Model name", "").strip()
    return name or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """Which of RELEVANT_FLAGS this CPU has."""
    flags = set(_lscpu().get("Flags", "").split())
    return [flag for flag in RELEVANT_FLAGS if flag in flags]


def cpu_slug() -> str:
    """A short file-name word for the CPU kind: "amd", "intel" or "cpu"."""
    name = cpu_model().lower()
    return "amd" if "amd" in name else "intel" if "intel" in name else "cpu"


def commit() -> str | None:
    """The checkout's commit, with "+changes" where tracked files differ from it (the code measured is not HEAD's)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}+changes" if changed else head


def describe() -> dict:
    """The machine facts a results file records beside its figures (and the GPU's, where CUDA is present)."""
    import torch  # here, not at the top: bench_launchers times start-ups and imports no torch itself
    import transformers

    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": len(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "commit": commit(), **(gpu_description() or {})}


def gpu_description() -> dict | None:
    """The GPU's name and count, the CUDA version torch was built with and the driver's, where CUDA is present."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip().split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        driver = ""
    return {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "cuda": torch.version.cuda,
            "driver": driver or None}


def write_results(benchmark: str, results: dict, *, shape: dict | None = None, command: list[str] | None = None,
                  out: Path | None = None) -> Path:
    """Write one benchmark's results as bench/results/<benchmark>_<cpu>_<date>.json (or `out`) and return the path.

    `shape` is the model's shape (hidden size, layers, heads, ...) where a model was measured; `command` defaults to
    the command line that ran this process.
    """
    today = datetime.date.today().isoformat()
    path = Path(out) if out else RESULTS_DIR / f"{benchmark}_{cpu_slug()}_{today}.json"
    record = {"benchmark": benchmark, "date": today, "machine": describe(), "shape": shape,
              "command": " ".join(command if command is not None else [Path(sys.executable).name, *sys.argv]),
              "results": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


# The fields of a model's shape that a results file names (bench/report.py compares them with configs/cpu-demo.yaml).
SHAPE_NAMES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "vocab_size", "max_position_embeddings")


def cpu_demo_shape(config_path: Path = CPU_DEMO_CONFIG):
    """(TrainingConfig, SLMConfig) of the benchmarked shape: the cpu-demo preset's model and batch, with the default
    vocabulary (the shipped sample's, which cpu-demo trains on)."""
    from slm_hf.configuration_slm import DEFAULT_VOCAB_SIZE
    from slm_hf.training.config import TrainingConfig

    config = TrainingConfig.load(config_path)
    return config, config.model_config(vocab_size=DEFAULT_VOCAB_SIZE, eos_token_id=0)


def model_shape(config) -> dict:
    """The shape fields of an SLMConfig (or any config with the same attribute names) that a results file names."""
    return {name: getattr(config, name) for name in SHAPE_NAMES if getattr(config, name, None) is not None}


