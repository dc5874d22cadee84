"""The one switch that makes a missing optional tool a failure instead of a skip.

Some tests need more than the core install: headless Chromium and transformers.js (tests/test_web.py), llama.cpp
through llama-cpp-python (the GGUF exports), a second venv with transformers 4.x (built from the package index on
first use, tests/other_runtimes.py), a C++ compiler for torch.compile, and lm-evaluation-harness. Where one is
missing, the test calls `unavailable(problem)`: a skip on a developer's machine, a failure where SLM_REQUIRE_ALL=1
(.ci/run sets it), so that CI never passes by skipping what it should have run. Only the CUDA tests skip everywhere.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

SWITCH = "SLM_REQUIRE_ALL"


def unavailable(problem: str) -> NoReturn:
    """Skip the test for `problem` (what is missing), or fail it when SLM_REQUIRE_ALL=1."""
    if os.environ.get(SWITCH) == "1":
        pytest.fail(f"{SWITCH}=1 but {problem}", pytrace=False)
    pytest.skip(problem)


def import_or_unavailable(module: str, install: str) -> ModuleType:
    """`import module`, or `unavailable` saying how to `install` it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        unavailable(f"{module} is not installed ({install})")


def needs_a_compiler() -> None:
    """`unavailable` unless torch.compile can build CPU kernels here (it needs a C++ compiler)."""
    import torch

    from slm_hf.training import missing_compiler

    if missing := missing_compiler(torch.device("cpu")):
        unavailable(f"torch.compile needs {missing}")
