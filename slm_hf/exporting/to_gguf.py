"""The SLM model as one GGUF file for llama.cpp, written with the `gguf` package (llama.cpp's own writer).

    export_gguf("runs/cpu-demo/final", "exports/gguf", gguf_type="q8_0")   # -> exports/gguf/slm-cpu-demo-q8_0.gguf

The file describes a `llama` architecture (see `to_llama` for why the model is one), built straight from our weights
and tokenizer: no llama.cpp checkout and no conversion script. Two things differ from the Hugging Face layout:

- llama.cpp's `llama` rotates adjacent pairs of a head's dimensions (0 with 1, 2 with 3, ...), where we rotate the
  two halves (0 with head_dim/2, ...). Reordering the rows of the query and key projections within each head
  (`interleave_rotary_halves`) turns one into the other; the attention scores, hence everything else, are unchanged.
- The tokenizer is stored as GPT-2-style byte-level BPE (`tokenizer.ggml.model = gpt2`) with GPT-2's
  pre-tokenizer, which is the one ours uses; llama.cpp's conversion script cannot tell that from a freshly trained
  vocabulary, a writer that knows it can. `<|endoftext|>` is put before every text (`add_bos_token`), as in the
  Llama export, so prompts start the way the stories did in training.

Weight types: `f32`; `f16` (every matrix in half precision); `q8_0` (every matrix whose rows split into blocks of 32
in llama.cpp's 8-bit format, the rest f16). Norm weights stay f32 in all three, as llama.cpp expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_path
from ..choices import GGUF_TYPES
from ..errors import SLMError
from .to_llama import (
    _export_name,
    check_llama_compatible,
    import_export_dependency,
    llama_state_dict,
    load_slm_weights,
    read_slm_config,
)

# Hugging Face Llama weight names (after `llama_state_dict`) -> GGUF tensor names; `{i}` is the layer.
_TENSOR_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
Q8_0_BLOCK = 32


def interleave_rotary_halves(weight, heads: int):
    """Reorder the rows of a query or key projection (heads x head_dim rows) from the half-rotation layout to the
    adjacent-pairs layout: within each head, rows (0, half, 1, half + 1, ...)."""
    rows, columns = weight.shape
    head_dim = rows // heads
    return weight.reshape(heads, 2, head_dim // 2, columns).swapaxes(1, 2).reshape(rows, columns)


def gguf_tensor_name(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"]:
        layer = parts[2]
        template = ".".join(parts[:2] + ["{i}"] + parts[3:])
        return _TENSOR_NAMES[template].format(i=layer)
    return _TENSOR_NAMES[name]


def read_tokenizer(model_dir: Path) -> tuple[list[str], list[int], list[str]]:
    """Tokens (in id order), their GGUF token types, and the BPE merges ("a b") of `model_dir/tokenizer.json`."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise SLMError(f"{model_dir} has no tokenizer.json; export a model folder that training wrote")
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer["model"]
    if model.get("type") != "BPE" or (tokenizer.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise SLMError(f"{path}: only byte-level BPE tokenizers (slm_hf's) can be written to gguf")
    vocab = dict(model["vocab"])
    special = {token["content"]: token["id"] for token in tokenizer.get("added_tokens", []) if token.get("special")}
    vocab.update(special)
    by_id = {index: token for token, index in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise SLMError(f"{path}: the token ids are not contiguous from 0")
    tokens = [by_id[index] for index in range(len(by_id))]
    types = [int(gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL) for token in tokens]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    return tokens, types, merges


def export_gguf(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    gguf_type: str = "f16",
    overwrite: bool = False,
) -> Path:
    """Write `out_dir/<model name>-<gguf_type>.gguf` for llama.cpp from the SLM model folder `model_dir`.

    Raises:
        SLMError: not an SLM folder, not Llama-compatible, an unknown `gguf_type`, `gguf` not installed, or the
            file exists (without `overwrite`).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if gguf_type not in GGUF_TYPES:
        raise SLMError(f"unknown gguf type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    config = read_slm_config(model_dir)
    check_llama_compatible(config, target="gguf")
    gguf = import_export_dependency("gguf", target="gguf")
    if out_dir.exists() and not out_dir.is_dir():
        raise SLMError(f"the output path {out_dir} exists and is not a folder")
    name = _export_name(model_dir).removesuffix("-llama")
    path = out_dir / f"{name}-{gguf_type}.gguf"
    if path.exists() and not overwrite:
        raise SLMError(f"{path} exists; choose another --out or pass --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)

    weights = llama_state_dict(load_slm_weights(model_dir), config)
    tokens, token_types, merges = read_tokenizer(model_dir)
    with atomic_path(path) as temporary:
        writer = gguf.GGUFWriter(str(temporary), "llama")
        _add_metadata(writer, gguf, config, name, gguf_type, tokens, token_types, merges)
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads") or heads
        for hf_name, tensor in weights.items():
            array = tensor.numpy()
            if hf_name.endswith("q_proj.weight"):
                array = interleave_rotary_halves(array, heads)
            elif hf_name.endswith("k_proj.weight"):
                array = interleave_rotary_halves(array, kv_heads)
            _add_tensor(writer, gguf, gguf_tensor_name(hf_name), array, gguf_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _add_metadata(writer, gguf, config: dict[str, Any], name: str, gguf_type: str, tokens, token_types, merges):
    heads = config["num_attention_heads"]
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config.get("norm_eps", 1e-5))
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    if config.get("pad_token_id") is not None:
        writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def _add_tensor(writer, gguf, name: str, array, gguf_type: str) -> None:
    import numpy as np

    if array.ndim == 1 or gguf_type == "f32":  # norms always f32
        writer.add_tensor(name, array.astype(np.float32))
    elif gguf_type == "q8_0" and array.shape[-1] % Q8_0_BLOCK == 0:
        quantized = gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, array.astype(np.float16))
