"""Shared fixtures: real TinyStories text from the package's shipped sample, and small prepared data folders.

Everything here runs offline (HF_HUB_OFFLINE=1) and builds its files under pytest's temporary folders.
"""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The test workers (pytest-xdist, one per core) share the machine: one thread each, for the tests and for the scripts
# they start. Two threads per worker on two cores made the tiny models' many small operations wait on threads another
# worker held (the same tests took twice as long). A test of the launchers' thread choice sets its own environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file by a plugin: it read the environment already
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = REPO_ROOT / "scripts"

# `make test` gives each pytest-xdist worker whole files (--dist loadfile) in collection order
# (--no-loadscope-reorder): the longest files go first, so that the two workers end together instead of one running
# the last long file alone. The order comes from the per-test durations of a full run (pytest --durations=0).
LONGEST_FILES_FIRST = ["test_launchers.py", "test_training.py", "test_multinode.py", "test_hub.py", "test_soak.py",
                       "test_serve.py", "test_prepare_memory.py", "test_readme.py", "test_model_card.py",
                       "test_app.py", "test_lm_eval.py", "test_export.py", "test_evaluation.py", "test_modeling.py"]


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order stays


@pytest.fixture(scope="session")
def sample_stories():
    """The shipped sample's stories: {"train": [...] (11,952), "val": [...] (300)}."""
    from slm_hf.data import SAMPLE_DIR, SAMPLE_FILES, read_stories

    return {split: read_stories(SAMPLE_DIR / name) for split, name in SAMPLE_FILES.items()}


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A prepared data folder (tokenizer/, train.bin, val.bin, meta.json) from the first 400 stories of the shipped
    sample's training split and its 300 validation stories, with a 512-token vocabulary (the `tiny` preset's)."""
    from slm_hf.data import prepare_data

    out_dir = tmp_path_factory.mktemp("data") / "tiny"
    prepare_data("sample", out_dir=out_dir, vocab_size=512, max_stories=400, show_progress=False)
    return out_dir


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Point the `datasets` cache at a temporary folder, in this process and in scripts run as subprocesses."""
    import datasets

    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


@pytest.fixture
def run_script():
    """`run_script("prepare_data.py", "--out", path, ...)` runs scripts/<name> with this interpreter, offline, from the
    repository root, and returns the `subprocess.CompletedProcess` (text stdout/stderr)."""
    import subprocess

    def run(name, *args, env=None, timeout=300):
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        return subprocess.run([sys.executable, str(SCRIPTS_DIR / name), *map(str, args)], capture_output=True,
                              text=True, env=full_env, timeout=timeout, cwd=REPO_ROOT)

    return run
