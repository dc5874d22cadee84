"""The SLM model as a plain `LlamaForCausalLM` folder: loads without remote code in transformers 4.4x and 5.x.

    export_llama("runs/cpu-demo/final", "exports/llama")

The mapping of the weights (per layer `i`; everything else keeps its name):

| SLM                                   | Llama                                                      |
|---------------------------------------|------------------------------------------------------------|
| `layers.i.input_norm`                 | `layers.i.input_layernorm`                                 |
| `layers.i.post_attention_norm`        | `layers.i.post_attention_layernorm`                        |
| `layers.i.self_attn.qkv_proj` (rows)  | `q_proj` (heads x head_dim), `k_proj`, `v_proj` (kv heads) |
| `layers.i.mlp.up_proj` (rows, halves) | `mlp.gate_proj` (first half), `mlp.up_proj` (second half)  |

Both models rotate the two halves of each head (`rotate_half`) with the same frequencies, normalise with RMSNorm
of the same epsilon and compute `down(silu(gate(x)) * up(x))`, so the logits agree to rounding.

The exported tokenizer differs from ours in one way: it starts every encoded text with `<|endoftext|>` (as Llama's
tokenizer starts with `<s>`), because every story the model was trained on follows that token. A user of any
runtime who types a prompt gets the input the model expects, with no prefix to remember; `skip_special_tokens`
drops it again when decoding.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..atomic_files import check_can_create, staged_folder
from ..configuration_slm import SLMConfig
from ..errors import SLMError, folder_problem
from ..model_card import default_model_name, write_model_card
from ..modeling_slm import SLMForCausalLM
from ..progress import quiet_progress_bars

# What a Llama cannot express: (field, the value a Llama needs, what the model uses instead).
_LLAMA_REQUIREMENTS = (
    ("position_embedding_type", "rope", "learned absolute positions (Llama has rotary positions only)"),
    ("norm_type", "rmsnorm", "LayerNorm (Llama normalises with RMSNorm)"),
    ("mlp_type", "swiglu", "a {value} feed-forward network (Llama's is SwiGLU)"),
    ("bias", False, "biases in the linear layers (Llama has none)"),
)
_FEED_FORWARD_NAMES = {"gelu": "GELU"}
# Files of the source folder that the export carries over as they are.
_CARRIED_FILES = ("training_results.json", "loss_curve.png", "train_config.yaml")
# The oldest transformers the folder is meant for (LlamaConfig's fields used here all exist there).
MIN_TRANSFORMERS_4 = "4.45"


def read_slm_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The `config.json` of an SLM model folder, as a dict (`SLMError` if the folder is not one)."""
    folder = Path(model_dir)
    path = folder / "config.json"
    if folder_problem(folder):
        raise SLMError(f"model folder {folder} {folder_problem(folder)}")
    if not path.is_file():
        raise SLMError(f"{folder} is not a model folder (no config.json in it); pass a training run's final/ folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SLMError(f"{path} is not valid JSON: {error}") from None
    if config.get("model_type") != "slm":
        raise SLMError(f"{folder} holds a {config.get('model_type')!r} model; only SLM models are exported")
    try:  # what the installed model cannot be built from (an option since dropped, a bad value) is refused here
        SLMConfig(**config)
    except ValueError as error:
        raise SLMError(f"{path}: {error}") from None
    return config


def import_export_dependency(package: str, target: str):
    """Import `package`, which the `target` export needs, or raise `SLMError` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise SLMError(f"the {target} export needs the {package} package: pip install 'slm-hf[export]' "
                       f"(or pip install {package})") from None


def check_llama_compatible(config: dict[str, Any], target: str = "llama") -> None:
    """Raise `SLMError` (one line) when the SLM `config` uses something that a Llama, hence `target`, cannot
    express."""
    defaults = SLMConfig()
    problems = []
    for key, expected, description in _LLAMA_REQUIREMENTS:
        value = config.get(key, getattr(defaults, key))
        if value != expected:
            problems.append(description.format(value=_FEED_FORWARD_NAMES.get(value, value)))
    if problems:
        raise SLMError(
            f"this model cannot be exported to {target}: it uses {' and '.join(problems)}; only models with rotary "
            f"positions, RMSNorm, a SwiGLU feed-forward network and no biases (the default architecture) are "
            f"Llama-compatible"
        )


def llama_config(config: dict[str, Any]) -> dict[str, Any]:
    """The `config.json` of the equivalent `LlamaForCausalLM`, readable by transformers 4.4x and 5.x.

    `rope_theta` is written both the 4.x way (a top-level field) and the 5.x way (`rope_parameters`); each version
    reads its own and keeps the other as a plain attribute.
    """
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config["vocab_size"],
        "hidden_size": hidden,
        "intermediate_size": config["intermediate_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": config.get("num_key_value_heads") or heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": config["max_position_embeddings"],
        "rms_norm_eps": config.get("norm_eps", 1e-5),
        "rope_theta": config.get("rope_theta", 10000.0),
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.get("rope_theta", 10000.0)},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": config.get("initializer_range", 0.02),
        "tie_word_embeddings": config.get("tie_word_embeddings", True),
        "use_cache": True,
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": config.get("eos_token_id"),
        "pad_token_id": config.get("pad_token_id"),
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def llama_state_dict(slm_state_dict: dict, config: dict[str, Any]) -> dict:
    """The weights of the equivalent `LlamaForCausalLM`, from an SLM state dict (the mapping in the module
    docstring). The tied `lm_head.weight` is left out when the embeddings are tied, as transformers saves it."""
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config["hidden_size"] // heads
    tied = config.get("tie_word_embeddings", True)
    renamed = {".input_norm.": ".input_layernorm.", ".post_attention_norm.": ".post_attention_layernorm."}
    llama = {}
    for name, tensor in slm_state_dict.items():
        if name == "lm_head.weight" and tied:
            continue
        if name.endswith("self_attn.qkv_proj.weight"):
            prefix = name[: -len("qkv_proj.weight")]
            query, key, value = tensor.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=0)
            llama[prefix + "q_proj.weight"] = query
            llama[prefix + "k_proj.weight"] = key
            llama[prefix + "v_proj.weight"] = value
        elif name.endswith("mlp.up_proj.weight"):
            prefix = name[: -len("up_proj.weight")]
            gate, up = tensor.chunk(2, dim=0)
            llama[prefix + "gate_proj.weight"] = gate
            llama[prefix + "up_proj.weight"] = up
        else:
            for old, new in renamed.items():
                name = name.replace(old, new)
            llama[name] = tensor
    return {name: tensor.detach().to("cpu").float().contiguous() for name, tensor in llama.items()}


def load_slm_weights(model_dir: str | os.PathLike) -> dict:
    """The state dict of the SLM model in `model_dir`, fp32 on the CPU (sharded folders included)."""
    try:
        with quiet_progress_bars():
            model = SLMForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError, SafetensorError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SLMError(f"cannot read the weights of {model_dir} (model.safetensors is damaged or truncated?): "
                       f"{first_line}") from error
    return model.state_dict()


def write_llama_tokenizer(model_dir: Path, out_dir: Path, config: dict[str, Any]) -> None:
    """`tokenizer.json` and a `tokenizer_config.json` that transformers 4.x and 5.x, transformers.js and
    llama.cpp's converter read: class `PreTrainedTokenizerFast`, inputs `input_ids` and `attention_mask` only
    (4.x would add `token_type_ids`, which `generate()` refuses), and `<|endoftext|>` put before every text."""
    source = model_dir / "tokenizer.json"
    if not source.is_file():
        raise SLMError(f"{model_dir} has no tokenizer.json; export a model folder that training wrote")
    tokenizer = json.loads(source.read_text(encoding="utf-8"))
    source_config_path = model_dir / "tokenizer_config.json"
    source_config = json.loads(source_config_path.read_text(encoding="utf-8")) if source_config_path.is_file() else {}
    start_id = config.get("bos_token_id")
    start = next((token["content"] for token in tokenizer.get("added_tokens", []) if token["id"] == start_id), None)
    if start is None:
        raise SLMError(f"{model_dir}/tokenizer.json has no special token with the model's bos_token_id {start_id}")
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": start, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": start, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": start, "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 0}},
        ],
        "special_tokens": {start: {"id": start, "ids": [start_id], "tokens": [start]}},
    }
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=2) + "\n",
                                            encoding="utf-8")
    eos = next(token["content"] for token in tokenizer["added_tokens"] if token["id"] == config.get("eos_token_id"))
    pad = next((token["content"] for token in tokenizer["added_tokens"] if token["id"] == config.get("pad_token_id")),
               eos)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": start,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "model_max_length": source_config.get("model_max_length", config["max_position_embeddings"]),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")


def export_llama(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    write_card: bool = True,
) -> Path:
    """Write the `LlamaForCausalLM` equivalent of the SLM model folder `model_dir` into `out_dir`.

    The folder holds `model.safetensors`, `config.json`, `generation_config.json`, the tokenizer and a model card
    (README.md) that says what it is; it loads with `AutoModelForCausalLM.from_pretrained(out_dir)` in
    transformers >= 4.45, without slm_hf or remote code. The folder is written beside `out_dir` and renamed into
    place when complete.

    Raises:
        SLMError: `model_dir` is not an SLM model folder, the model is not Llama-compatible, or `out_dir` exists
            and is not empty (without `overwrite`).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_slm_config(model_dir)
    check_llama_compatible(config)
    weights = llama_state_dict(load_slm_weights(model_dir), config)  # read before anything is written
    check_output_folder(out_dir, overwrite)
    with staged_folder(out_dir) as staging:
        write_llama_folder(model_dir, staging, config, weights, write_card)
    return out_dir


def write_llama_folder(model_dir: Path, folder: Path, config: dict[str, Any], weights: dict[str, torch.Tensor],
                       write_card: bool) -> None:
    """The files of the Llama export of `model_dir` (its SLM `config`, its weights renamed), into `folder`."""
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(llama_config(config), indent=2) + "\n", encoding="utf-8")
    generation_config = model_dir / "generation_config.json"
    if generation_config.is_file():
        shutil.copy2(generation_config, folder / "generation_config.json")
    write_llama_tokenizer(model_dir, folder, config)
    for name in _CARRIED_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, folder / name)
    if write_card:
        write_model_card(folder, model_name=_export_name(model_dir))


def _export_name(model_dir: Path) -> str:
    return default_model_name(model_dir) + "-llama"


def check_output_folder(out_dir: Path, overwrite: bool) -> None:
    """Refuse an `out_dir` that is not a folder, cannot be created, or holds files (without `overwrite`)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SLMError(f"the output path {out_dir} exists and is not a folder")
    if not out_dir.exists():
        check_can_create(out_dir, "output folder")  # its nearest existing ancestor is a writable folder
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SLMError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite")
