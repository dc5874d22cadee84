"""Trained model folders for the evaluate / generate / model card / Hub / demo tests.

`trained_run(tmp_path_factory)` runs the real pipeline once per test session: `prepare_data` on the package's
TinyStories sample (small vocabulary), then `train` with configs/tiny.yaml for a few steps. The run's `final/` is
a Hub-ready folder like any a user gets: weights, code, tokenizer, training_results.json, loss curve, model card.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Real TinyStories validation stories, from the sample the package ships (inside the repository).
SAMPLE_VALID = REPO / "slm_hf" / "sample_data" / "tinystories_valid.txt.gz"
_CACHE: dict[str, Path] = {}
# Python code that makes `import slm_hf` fail, as where it is not installed: a script run after it sees only what a
# Hub user without slm_hf has (the model's remote code).
BLOCK_SLM_HF = """
import importlib.abc, sys
class BlockSLM(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "slm_hf" or name.startswith("slm_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, BlockSLM())
"""


def trained_run(tmp_path_factory) -> Path:
    """The output folder of a short tiny-model training run (built on first use, shared by the session)."""
    if "run" not in _CACHE:
        from slm_hf.data import prepare_data
        from slm_hf.training import train
        from slm_hf.training.config import TrainingConfig

        root = tmp_path_factory.mktemp("share-run")
        data_dir = root / "data"
        prepare_data("sample", out_dir=data_dir, vocab_size=512, show_progress=False)
        config = TrainingConfig.load(REPO / "configs" / "tiny.yaml", ["max_steps=30", "eval_interval=15"])
        outcome = train(config, data_dir, root / "run")
        _CACHE["data"] = data_dir
        _CACHE["run"] = outcome.out_dir
    return _CACHE["run"]


def data_folder(tmp_path_factory) -> Path:
    """The data folder `trained_run` trained on."""
    trained_run(tmp_path_factory)
    return _CACHE["data"]


def python_without_slm_hf(venv: Path) -> Path:
    """The interpreter of a new virtual environment in which slm_hf is not installed: it sees this venv's other
    packages (a `.pth` line naming their folder, whose own `.pth` files, among them slm_hf's editable install, are not
    run), so building it takes a second and no package index."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "packages-but-slm_hf.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    found = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('slm_hf'))"],
                           capture_output=True, text=True, check=True, cwd=venv).stdout.strip()
    assert found == "None", f"slm_hf is importable in {venv}: {found}"
    return python


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for running a script as a subprocess: offline, slm_hf importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env

