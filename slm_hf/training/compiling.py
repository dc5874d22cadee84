"""`compile=true`: torch.compile of the transformer blocks and the loss, where the machine has a compiler for it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import torch
from transformers import PreTrainedModel

from ..errors import SLMError


def compile_layers_and_loss(model: torch.nn.Module) -> int:
    """`torch.compile` each transformer block of `model` in place (the classes its `_no_split_modules` names: the
    decoder layers) and its loss function (transformers' `model.loss_function`); returns how many blocks.

    Compiling the pieces, not the whole model, leaves the model's own Python (masks, `generate()`) eager, keeps
    the causal attention on its flash kernels (under compile, transformers builds a full mask instead) and the state
    dict's names unchanged; the blocks are alike, so they share one compiled graph.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise SLMError(f"compile: {type(model).__name__} names no transformer blocks (_no_split_modules) to compile")
    for block in blocks:
        block.compile()
    if isinstance(model, PreTrainedModel):
        model.loss_function = torch.compile(model.loss_function, dynamic=False)
    return len(blocks)


def missing_compiler(device: torch.device) -> str | None:
    """What `torch.compile` lacks on this machine to build its kernels, or None: a C++ compiler for CPU kernels, a C
    compiler for Triton's GPU kernel launchers."""
    if device.type == "cpu":
        names, what = (os.environ.get("CXX"), "g++", "c++", "clang++"), "a C++ compiler (g++)"
    else:
        names, what = (os.environ.get("CC"), "cc", "gcc", "clang"), "a C compiler (gcc)"
    return None if any(name and shutil.which(name) for name in names) else what


def compile_if_asked(model: torch.nn.Module, compile: bool, device: torch.device, precision: str,
                     log: Callable[[str], None]) -> None:
    """Compile `model`'s blocks and loss in place when `compile` asks and the machine can; say why not otherwise."""
    if not compile:
        return
    if missing := missing_compiler(device):
        log(f"warning: compile=true needs {missing}, which this machine lacks: training without compiling")
        return
    compile_layers_and_loss(model)
    if precision == "bf16" and device.type == "cuda":
        log("warning: bf16 with compiled layers diverged in one H100 run on torch 2.11 (BENCHMARKS.md, History) "
            "where fp16 trained well: prefer --mixed-precision fp16 with compile=true")
