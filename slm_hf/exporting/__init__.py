"""Exports of a trained SLM model folder for other runtimes.

    export_model("runs/cpu-demo/final", "llama", "exports/llama")   # LlamaForCausalLM folder, no remote code
    export_model("runs/cpu-demo/final", "gguf", "exports/gguf", gguf_type="q8_0")   # llama.cpp
    export_model("runs/cpu-demo/final", "onnx", "exports/onnx")     # onnxruntime, transformers.js

Our architecture with its default settings (rotary positions, RMSNorm, SwiGLU, no biases) is mathematically a
Llama: the same half-rotation rotary embedding, the same normalisation and feed-forward network. Only the weights
are laid out differently (one fused query/key/value projection, one fused gate/up projection), so every export goes
through `to_llama.llama_state_dict`, and models that a Llama cannot express (learned positions, LayerNorm, a GELU
feed-forward network, biases) are refused in one line by `to_llama.check_llama_compatible`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..choices import EXPORT_TARGETS
from ..errors import SLMError


def export_model(model_dir: str | os.PathLike, target: str, out_dir: str | os.PathLike, **options) -> Path:
    """Export the SLM model folder `model_dir` for `target` (one of `slm_hf.choices.EXPORT_TARGETS`) into
    `out_dir`; returns the path written (the folder, or the .gguf file). `options` go to the target's exporter."""
    if target == "llama":
        from .to_llama import export_llama

        return export_llama(model_dir, out_dir, **options)
    if target == "gguf":
        from .to_gguf import export_gguf

        return export_gguf(model_dir, out_dir, **options)
    if target == "onnx":
        from .to_onnx import export_onnx

        return export_onnx(model_dir, out_dir, **options)
    raise SLMError(f"unknown export target {target!r}; choose one of {', '.join(EXPORT_TARGETS)}")


__all__ = ["export_model"]
