"""The model card's tables, from a model folder's config.json and training_results.json: the training data, the
results, the architecture and the training (rendered into templates/model_card.md by slm_hf.model_card)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET_ID = "roneneldan/TinyStories"


@dataclass(frozen=True)
class TrainingDataset:
    """What a model was trained on, as its card names it."""

    name: str  # for the text: "TinyStories (sample)", "someone/stories", "my_stories (local files)"
    link: str  # Markdown for the text
    hub_id: str | None  # the Hub dataset id for the metadata; None for local files
    tinystories: bool  # TinyStories itself (or the shipped sample of it): its license and limitations apply

    @property
    def index_type(self) -> str:
        """The model-index `dataset.type`: the Hub id, else the local data's name."""
        return self.hub_id or self.name.removesuffix(LOCAL_SUFFIX)


LOCAL_SUFFIX = " (local files)"


def training_dataset(results: dict | None) -> TrainingDataset:
    """The training data named in `training_results.json` (`data.source`, copied by training from the data folder's
    meta.json): the shipped sample or `roneneldan/TinyStories` are TinyStories; another Hub id is that dataset; a
    local file or folder (a path that exists, or that cannot be a Hub id) is named by its file or folder name."""
    source = ((results or {}).get("data") or {}).get("source")
    if source in (None, "sample") or str(source).lower() == DATASET_ID.lower():
        name = f"TinyStories ({source})" if source else "TinyStories"
        return TrainingDataset(name, f"[{name}](https://huggingface.co/datasets/{DATASET_ID})", DATASET_ID, True)
    source = str(source)
    path = Path(source).expanduser()
    if not path.exists() and HUB_ID.fullmatch(source):
        return TrainingDataset(source, f"[{source}](https://huggingface.co/datasets/{source})", source, False)
    local = (path.name or source) + LOCAL_SUFFIX
    return TrainingDataset(local, f"its own stories, `{path.name or source}` (local files)", None, False)


# A Hub id: `user/name`.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def results_section(results: dict | None, training_data: TrainingDataset) -> dict | None:
    if not results or "val/loss" not in results:
        return None
    data = results.get("data") or {}
    val_tokens = data.get("val_tokens")
    dataset = f"the validation split of {training_data.name}"
    if val_tokens:
        dataset += f", {val_tokens:,} tokens"
    return {
        "loss": _number(results.get("val/loss"), 4),
        "perplexity": _number(results.get("val/perplexity"), 2),
        "bits_per_byte": _number(results.get("val/bits_per_byte"), 4),
        "step": f"{results.get('step', '?'):,}" if isinstance(results.get("step"), int) else "?",
        "dataset": dataset,
    }


def architecture_section(config: dict, parameters: int) -> dict:
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads", heads)
    positions = config.get("position_embedding_type")
    rows = [
        ("Parameters", f"{parameters:,}" + (" (embeddings tied to the output layer)"
                                            if config.get("tie_word_embeddings") else "")),
        ("Layers", config.get("num_hidden_layers")),
        ("Hidden size", config.get("hidden_size")),
        ("Attention heads", heads if kv_heads == heads else f"{heads} query, {kv_heads} key/value (grouped-query)"),
        ("Feed-forward", f"{str(config.get('mlp_type', '')).upper() or '?'}, inner size "
                         f"{config.get('intermediate_size')}"),
        ("Positions", f"rotary (theta {config.get('rope_theta'):g})" if positions == "rope"
                      else "learned absolute" if positions == "learned" else positions),
        ("Normalisation", {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}.get(config.get("norm_type"),
                                                                                 config.get("norm_type"))
                          + " (pre-norm)"),
        ("Context", f"{config.get('max_position_embeddings')} tokens"),
        ("Vocabulary", f"{config.get('vocab_size'):,} tokens (byte-level BPE; `<\\|endoftext\\|>` ends stories)"),
        ("Dropout", _dropout(config)),
        ("Biases", "yes" if config.get("bias") else "no"),
        ("Model type", f"`{config.get('model_type')}` (`{', '.join(config.get('architectures') or [])}`)"),
    ]
    return {"rows": [(name, "?" if value is None else value) for name, value in rows],
            "context": config.get("max_position_embeddings")}


def _dropout(config: dict):
    residual, attention = config.get("dropout"), config.get("attention_dropout", config.get("dropout"))
    if residual == attention:
        return residual
    return f"{residual} (embeddings, residual branches), {attention} (attention probabilities)"


def _tokens_per_step(batch: dict | None, train: dict, processes: int) -> str | None:
    """From the batch shape training recorded (training_results.json's `batch`); results written before it was
    recorded give the config's shape."""
    if batch is None:
        keys = ("batch_size", "block_size", "gradient_accumulation_steps")
        if not all(isinstance(train.get(key), int) for key in keys):
            return None
        micro_batches = train["gradient_accumulation_steps"] * processes
        batch = {"micro_batch_size": train["batch_size"], "block_size": train["block_size"], "processes": processes,
                 "micro_batches_per_step": micro_batches,
                 "tokens_per_step": train["batch_size"] * train["block_size"] * micro_batches}
    return (f"{batch['tokens_per_step']:,} = {batch['micro_batch_size']} windows x {batch['block_size']} tokens x "
            f"{batch['micro_batches_per_step'] // batch['processes']} accumulation step(s) x "
            f"{batch['processes']} process(es)")


def training_section(results: dict | None, dataset: TrainingDataset) -> dict | None:
    if not results:
        return None
    train = results.get("config") or {}
    data = results.get("data") or {}
    processes = results.get("num_processes") or 1
    rows = [
        ("Steps (optimizer updates)", _integer(results.get("step"))),
        ("Tokens seen", _integer(results.get("tokens"))),
        ("Tokens per step", _tokens_per_step(results.get("batch"), train, processes)),
        ("Training loss (at the end)", _number(results.get("train/loss"), 4)),
        ("Learning rate", _learning_rate(train)),
        ("Optimizer", None if "betas" not in train else
            f"AdamW, betas {tuple(train['betas'])}, weight decay {train.get('weight_decay')}, "
            f"gradient clipping {train.get('grad_clip')}"),
        ("Precision", results.get("precision")),
        ("Hardware", None if results.get("device") is None else f"{results['device']} x {processes}"),
        ("Training time", _duration(results.get("wall_time_s"))),
        ("Training data", None if not data else
            f"{dataset.name}: {_integer(data.get('train_tokens'))} tokens"
            + (f", {_integer(data.get('train_stories'))} stories" if data.get("train_stories") else "")),
        ("Validation data", None if not data.get("val_tokens") else
            f"{_integer(data.get('val_tokens'))} tokens, {data.get('val_bytes_per_token', 0):.3f} bytes per token"),
        ("Tokenizer", None if not data.get("tokenizer") else
            f"`{data['tokenizer']}`, {_integer(data.get('vocab_size'))} tokens"),
    ]
    return {
        "rows": [(name, value) for name, value in rows if value is not None],
        "config_rows": [(key, _config_value(value)) for key, value in _flatten(train)],
    }


def _learning_rate(train: dict) -> str | None:
    if not isinstance(train.get("learning_rate"), (int, float)):
        return None
    text = f"{train['learning_rate']:g} peak"
    if isinstance(train.get("warmup_steps"), (int, float)):
        text += f", linear warmup over {train['warmup_steps']:g} steps"
    if isinstance(train.get("min_lr"), (int, float)):
        text += f", cosine to {train['min_lr']:g}"
    return text


def _flatten(mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _config_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, bool)) or value is None else str(value)
    return text.replace("|", "\\|")


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def _integer(value: Any) -> str | None:
    return f"{value:,}" if isinstance(value, int) else None


def human_count(count: int) -> str:
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    if count >= 1e3:
        return f"{count / 1e3:.0f}k"
    return str(count)


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)):
        return None
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
