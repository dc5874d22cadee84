"""The SLM model as ONNX with a key/value cache, for onnxruntime and transformers.js.

    export_onnx("runs/cpu-demo/final", "exports/onnx")   # the Llama folder + onnx/model.onnx

The folder is the Llama export (`to_llama`) with `onnx/model.onnx` added, the layout transformers.js loads
(`AutoModelForCausalLM.from_pretrained(folder, {dtype: "fp32"})`). The graph has the inputs and outputs of
Hugging Face's decoder-only ONNX exports:

    inputs   input_ids (batch, sequence) int64, attention_mask (batch, past + sequence) int64,
             position_ids (batch, sequence) int64, past_key_values.{i}.key / .value (batch, kv_heads, past, head_dim)
    outputs  logits (batch, sequence, vocab), present.{i}.key / .value (batch, kv_heads, past + sequence, head_dim)

The first call passes empty caches (past = 0); each later call passes the previous call's presents and the new
tokens only. The graph is traced from `LlamaGraph`, a plain-tensor Llama forward written for export (no cache
objects, no mask helpers), over the same weights as the Llama folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from ..atomic_files import staged_folder
from .to_llama import (
    check_llama_compatible,
    check_output_folder,
    import_export_dependency,
    llama_state_dict,
    load_slm_weights,
    read_slm_config,
    write_llama_folder,
)

ONNX_OPSET = 17
ONNX_FILE = "onnx/model.onnx"


def _llama_graph_class():
    """`LlamaGraph` (exporting/onnx_graph.py), imported on first use so that importing this module does not import
    torch."""
    from .onnx_graph import LlamaGraph

    return LlamaGraph


def onnx_names(layers: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names."""
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the Llama folder of `model_dir` into `out_dir` with `onnx/model.onnx` (KV cache) added.

    Raises:
        SLMError: not an SLM folder, not Llama-compatible, `out_dir` not empty (without `overwrite`), or the
            `onnx` package missing.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_slm_config(model_dir)
    check_llama_compatible(config, target="onnx")
    import_export_dependency("onnx", target="onnx")  # torch.onnx needs it
    weights = llama_state_dict(load_slm_weights(model_dir), config)
    check_output_folder(out_dir, overwrite)
    with staged_folder(out_dir) as staging:  # the Llama folder and its graph appear together
        write_llama_folder(model_dir, staging, config, weights, write_card=True)
        _write_graph(_llama_graph_class()(weights, config).eval(), config, staging / ONNX_FILE)
    return out_dir


def _write_graph(graph, config: dict[str, Any], path: Path) -> None:
    """Trace `graph` (the Llama export's forward pass with a key/value cache) into the ONNX file `path`."""
    import torch

    layers = config["num_hidden_layers"]
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    input_names, output_names = onnx_names(layers)
    # Example inputs: 2 sequences of 3 new tokens after 4 cached ones (sizes the tracer must not specialise on).
    example = (
        torch.zeros(2, 3, dtype=torch.long),
        torch.ones(2, 7, dtype=torch.long),
        torch.arange(4, 7).expand(2, 3),
        *[torch.zeros(2, kv_heads, 4, head_dim) for _ in range(2 * layers)],
    )
    dynamic_axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
                    "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    dynamic_axes.update({name: {0: "batch", 2: "past"} for name in input_names[3:]})
    dynamic_axes.update({name: {0: "batch", 2: "total"} for name in output_names[1:]})
    path.parent.mkdir(exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(graph, example, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET, dynamo=False)


def onnx_greedy(model_path: str | os.PathLike, config: dict[str, Any], prompt_ids: list[int], new_tokens: int,
                session=None) -> list[int]:
    """Greedy-decode `new_tokens` after `prompt_ids` with onnxruntime and the exported graph's key/value cache
    (the whole prompt in the first call, then one token a call); `config` is the folder's config.json."""
    import numpy as np
    import onnxruntime

    if session is None:
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    layers, kv_heads = config["num_hidden_layers"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    past_names = onnx_names(layers)[0][3:]
    past = {name: np.zeros((1, kv_heads, 0, head_dim), np.float32) for name in past_names}
    length, new = len(prompt_ids), np.array([prompt_ids], dtype=np.int64)
    generated = []
    for _ in range(new_tokens):
        logits, *presents = session.run(None, {
            "input_ids": new,
            "attention_mask": np.ones((1, length), dtype=np.int64),
            "position_ids": np.arange(length - new.shape[1], length, dtype=np.int64)[None],
            **past,
        })
        past = dict(zip(past_names, presents))
        token = int(logits[0, -1].argmax())
        generated.append(token)
        new, length = np.array([[token]], dtype=np.int64), length + 1
    return generated
