"""The model card: the README.md that introduces a model folder on the Hugging Face Hub.

    write_model_card("runs/cpu-demo/final")                     # -> runs/cpu-demo/final/README.md
    problems = check_model_card("runs/cpu-demo/final/README.md")  # [] when the metadata is complete

`write_model_card` renders the template `model_card.md` (Jinja2, through huggingface_hub's
`ModelCard.from_template`) with what the folder itself holds: the architecture from `config.json`, the numbers from
`training_results.json` (written by training), the picture `loss_curve.png`, and a few stories it samples from the
model with fixed prompts and a fixed seed. No number is typed by hand; a section whose source file is missing is
left out. The YAML metadata carries a `model-index` with the measured validation loss, perplexity and bits per byte.

The template has one copy, `model_card.md` at the top of the repository; the package reaches it as
`slm_hf/templates/model_card.md` (a link in a source checkout, a copy in an installed wheel).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .atomic_files import atomic_path
from .configuration_slm import SLMConfig
from .errors import SLMError
from .generation import GenerationSettings, generate_ids, load_pretrained
from .story_quality import QUALITY_PROMPTS, QUALITY_SETTINGS

LICENSE = "apache-2.0"
LICENSE_NAME = "Apache 2.0"
DATASET_ID = "roneneldan/TinyStories"
TAGS = ["text-generation", "slm_hf"]
# Metadata a card must carry to be found and shown right on the Hub: `check_model_card` looks for these. (`datasets`
# too when the model was trained on a Hub dataset; it names Hub ids only, and local data has none.)
REQUIRED_METADATA = ("license", "language", "pipeline_tag", "library_name", "tags", "model-index")
# model-index metric ids (metric_type) and the training_results.json keys they come from.
METRICS = (
    ("loss", "Validation loss (nats per token)", "val/loss"),
    ("perplexity", "Perplexity", "val/perplexity"),
    ("bits_per_byte", "Bits per byte", "val/bits_per_byte"),
)
NUM_SAMPLES = 3
PLACEHOLDER_REPO_ID = "your-username/{name}"


def template_path() -> Path:
    """The card template: shipped in the package, or at the top of a source checkout."""
    packaged = resources.files("slm_hf") / "templates" / "model_card.md"
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "model_card.md"
    if checkout.is_file():
        return checkout
    raise SLMError("the model card template model_card.md is missing from the slm_hf installation; reinstall it")


def write_model_card(
    model_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    num_samples: int = NUM_SAMPLES,
) -> Path:
    """Render the model card of `model_dir` into `model_dir/README.md` (atomically) and return its path.

    Args:
        model_dir: a Hub-ready model folder (a training run's `final/` or `best/`).
        repo_id: the Hub repository the card's examples load from; default `your-username/<model name>`.
        model_name: the title and model-index name; default the repo id's name, else the run's folder name.
        num_samples: sample stories to generate for the card (0 for none), from `story_quality.QUALITY_PROMPTS`.
    """
    model_dir = Path(model_dir)
    card = render_model_card(model_dir, repo_id=repo_id, model_name=model_name, num_samples=num_samples)
    path = model_dir / "README.md"
    with atomic_path(path) as temporary:
        card.save(temporary)
    return path


def render_model_card(
    model_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    num_samples: int = NUM_SAMPLES,
) -> ModelCard:
    """The `ModelCard` `write_model_card` saves, without writing it."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json", required=True)
    if config.get("model_type") not in (SLMConfig.model_type, "llama"):  # an SLM model, or its Llama export
        raise SLMError(f"{model_dir} holds a {config.get('model_type')!r} model, not an slm_hf one "
                       f"(model_type {SLMConfig.model_type!r}): this model card describes slm_hf models")
    results = _read_json(model_dir / "training_results.json", required=False)
    model_name = model_name or default_model_name(model_dir, repo_id)
    repo_id = repo_id or PLACEHOLDER_REPO_ID.format(name=model_name)

    llama = config.get("model_type") == "llama"
    dataset = training_dataset(results)
    sample_settings = folder_sample_settings(model_dir, config)
    samples, parameters = _samples_and_parameters(model_dir, num_samples, sample_settings)
    if results and results.get("parameters"):
        parameters = int(results["parameters"])
    tags = list(TAGS) + (["tinystories"] if dataset.tinystories else []) + (["llama"] if llama else ["custom_code"])
    card_data = ModelCardData(
        language="en",
        license=LICENSE,
        library_name="transformers",
        pipeline_tag="text-generation",
        datasets=[dataset.hub_id] if dataset.hub_id else None,
        tags=tags,
        model_name=model_name,
        eval_results=_eval_results(results, dataset) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=model_name,
        repo_id=repo_id,
        llama=llama,
        dataset=dataset,
        parameters=_human_count(parameters),
        results=_results_section(results, dataset),
        architecture=_architecture_section(_as_slm_config(config), parameters),
        training=_training_section(results, dataset),
        loss_curve="loss_curve.png" if (model_dir / "loss_curve.png").is_file() else None,
        samples=samples,
        sample_settings={**sample_settings.to_dict(), "description": _describe_settings(sample_settings)},
        license_name=LICENSE_NAME,
    )


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
    if not path.exists() and _HUB_ID.fullmatch(source):
        return TrainingDataset(source, f"[{source}](https://huggingface.co/datasets/{source})", source, False)
    local = (path.name or source) + LOCAL_SUFFIX
    return TrainingDataset(local, f"its own stories, `{path.name or source}` (local files)", None, False)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def folder_sample_settings(model_dir: Path, config: dict) -> GenerationSettings:
    """The sampling settings of the folder's `generation_config.json` (what `generate()` uses by default), with the
    seed of `QUALITY_SETTINGS`; its settings where the folder has none. `max_new_tokens` fits the context."""
    saved = _read_json(model_dir / "generation_config.json", required=False) or {}
    settings = QUALITY_SETTINGS
    if saved:
        sampling = saved.get("do_sample", False)
        settings = replace(
            settings,
            max_new_tokens=saved.get("max_new_tokens") or settings.max_new_tokens,
            temperature=saved.get("temperature", 1.0) if sampling else 0.0,
            top_k=saved.get("top_k", 50) if sampling else settings.top_k,
            top_p=saved.get("top_p", 1.0) if sampling else settings.top_p,
            repetition_penalty=saved.get("repetition_penalty", 1.0),
        )
    context = config.get("max_position_embeddings") or 10**9
    return replace(settings, max_new_tokens=min(settings.max_new_tokens, context - 1))


def _describe_settings(settings: GenerationSettings) -> str:
    if settings.temperature == 0:
        return f"greedy, at most {settings.max_new_tokens} new tokens"
    text = f"temperature {settings.temperature:g}, top-k {settings.top_k}, top-p {settings.top_p:g}"
    if settings.repetition_penalty != 1:
        text += f", repetition penalty {settings.repetition_penalty:g}"
    return text + f", at most {settings.max_new_tokens} new tokens"


def _as_slm_config(config: dict) -> dict:
    """An exported Llama config described with the SLM config's fields, for the architecture table."""
    if config.get("model_type") != "llama":
        return config
    return {**config, "position_embedding_type": "rope", "norm_type": "rmsnorm", "mlp_type": "swiglu",
            "bias": False, "dropout": 0.0, "attention_dropout": 0.0}


def default_model_name(model_dir: Path, repo_id: str | None = None) -> str:
    """The repo id's name, else the run's name: `runs/cpu-demo/final` gives `slm-cpu-demo`."""
    if repo_id:
        return repo_id.rstrip("/").split("/")[-1]
    folder = model_dir.resolve()
    run = folder.parent.name if folder.name in ("final", "best") else folder.name
    return run if run.startswith("slm") else f"slm-{run}"


# ------------------------------------------------------------------------------------------------ sections
def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise SLMError(f"{path.parent} is not a model folder (no {path.name} in it)")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SLMError(f"{path} is not valid JSON: {error}") from None


def _samples_and_parameters(model_dir: Path, num_samples: int,
                            settings: GenerationSettings) -> tuple[list[dict], int]:
    """Stories sampled from the folder's model (prompt, continuation, ended), and its parameter count."""
    model, tokenizer = load_pretrained(model_dir, device="cpu")
    parameters = sum(parameter.numel() for parameter in model.parameters())
    samples = []
    for prompt in QUALITY_PROMPTS[:num_samples]:
        (ids,) = generate_ids(model, tokenizer, prompt, settings)
        ended = bool(ids) and ids[-1] == tokenizer.eos_token_id
        continuation = tokenizer.decode(ids, skip_special_tokens=True)
        samples.append({"prompt": prompt, "continuation": _quote(continuation), "ended": ended})
    return samples, parameters


def _quote(text: str) -> str:
    """Text to follow `> ` in a Markdown quote: every line of it stays inside the quote, no stray HTML."""
    return "\n> ".join(line.rstrip() for line in text.rstrip().replace("<", "&lt;").split("\n"))


def _eval_results(results: dict | None, dataset: TrainingDataset) -> list[EvalResult]:
    if not results:
        return []
    return [
        EvalResult(
            task_type="text-generation",
            task_name="Text generation",
            dataset_type=dataset.index_type,
            dataset_name=dataset.name,
            dataset_split="validation",
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(float(results[key]), 4),
        )
        for metric_type, metric_name, key in METRICS
        if isinstance(results.get(key), (int, float)) and math.isfinite(results[key])
    ]


def _results_section(results: dict | None, training_data: TrainingDataset) -> dict | None:
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


def _architecture_section(config: dict, parameters: int) -> dict:
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


def _training_section(results: dict | None, dataset: TrainingDataset) -> dict | None:
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


def _human_count(count: int) -> str:
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


# -------------------------------------------------------------------------------------------------- checks
def check_model_card(path: str | os.PathLike) -> list[str]:
    """Problems with a saved card's metadata (offline; the Hub's own validation needs the network).

    Checks that the YAML parses, that `REQUIRED_METADATA` is there, that the tags include `custom_code` when the
    model's code ships with it (an SLM folder; a Llama export has none), that the model-index reports numeric loss,
    perplexity and bits per byte, and that it reports them on a dataset the card names: one of its `datasets` (Hub
    ids), or local data when it has none. Returns a list of human-readable problems, empty when the card is
    complete.
    """
    path = Path(path)
    if not path.is_file():
        return [f"no model card: {path} is missing (write it with slm_hf.model_card.write_model_card)"]
    try:
        card = ModelCard.load(path)
    except Exception as error:  # huggingface_hub raises ValueError or YAML errors for a broken header
        return [f"{path.name}: the metadata cannot be read: {error}"]
    metadata = card.data.to_dict()
    problems = [f"metadata has no '{key}'" for key in REQUIRED_METADATA if not metadata.get(key)]
    config = _read_json(path.parent / "config.json", required=False) or {}
    if config.get("model_type") != "llama" and "custom_code" not in (metadata.get("tags") or []):
        problems.append("tags lack 'custom_code' (the model loads with trust_remote_code=True)")
    datasets = metadata.get("datasets") or []
    for dataset_type in sorted({result.dataset_type for result in card.data.eval_results or []}):
        if datasets and dataset_type not in datasets:
            problems.append(f"the model-index reports on '{dataset_type}', which datasets {datasets} lacks")
        elif not datasets and _HUB_ID.fullmatch(dataset_type or ""):
            problems.append(f"the model-index reports on the Hub dataset '{dataset_type}': list it in datasets")
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results or []}
    for metric_type, _, _ in METRICS:
        value = reported.get(metric_type)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"model-index has no numeric '{metric_type}'")
    return problems
