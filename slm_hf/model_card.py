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
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import GenerationConfig

from .atomic_files import atomic_path
from .card_sections import (
    DATASET_ID,
    HUB_ID,
    TrainingDataset,
    architecture_section,
    human_count,
    results_section,
    training_dataset,
    training_section,
)
from .configuration_slm import SLMConfig
from .errors import SLMError
from .generation import GenerationSettings, generate_ids, load_pretrained
from .story_quality import QUALITY_PROMPTS, QUALITY_SETTINGS

LICENSE = "apache-2.0"
LICENSE_NAME = "Apache 2.0"
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
    samples: list[dict] | None = None,
) -> Path:
    """Render the model card of `model_dir` into `model_dir/README.md` (atomically) and return its path.

    Args:
        model_dir: a Hub-ready model folder (a training run's `final/` or `best/`).
        repo_id: the Hub repository the card's examples load from; default `your-username/<model name>`.
        model_name: the title and model-index name; default the repo id's name, else the run's folder name.
        num_samples: sample stories to generate for the card (0 for none), from `story_quality.QUALITY_PROMPTS`.
        samples: the stories `sample_stories` gave for these same weights (a run's best/ and final/ at one step),
            instead of generating them again.
    """
    model_dir = Path(model_dir)
    card = render_model_card(model_dir, repo_id=repo_id, model_name=model_name, num_samples=num_samples,
                             samples=samples)
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
    samples: list[dict] | None = None,
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
    parameters = (results or {}).get("parameters")
    if samples is None and num_samples == 0:
        samples = []
    if samples is None or not parameters:  # the model, loaded once, for what the folder's files do not hold
        model, tokenizer = load_pretrained(model_dir, device="cpu")
        if samples is None:
            samples = _sample_stories(model, tokenizer, num_samples, sample_settings)
        parameters = parameters or sum(p.numel() for p in model.parameters())
    parameters = int(parameters)
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
        parameters=human_count(parameters),
        results=results_section(results, dataset),
        architecture=architecture_section(_as_slm_config(config), parameters),
        training=training_section(results, dataset),
        loss_curve="loss_curve.png" if (model_dir / "loss_curve.png").is_file() else None,
        samples=samples,
        sample_settings={**sample_settings.to_dict(), "description": _describe_settings(sample_settings)},
        license_name=LICENSE_NAME,
    )


def folder_sample_settings(model_dir: Path, config: dict) -> GenerationSettings:
    """`QUALITY_SETTINGS` resolved from the folder's `generation_config.json` (what `generate()` uses by default;
    greedy where the folder has none), with `max_new_tokens` fitting the context after the start token."""
    saved = _read_json(model_dir / "generation_config.json", required=False) or {}
    context = config.get("max_position_embeddings") or 10**9
    settings = QUALITY_SETTINGS.resolved(GenerationConfig.from_dict(saved), context - 1)
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


def sample_stories(model_dir: str | os.PathLike, num_samples: int = NUM_SAMPLES) -> list[dict]:
    """The card's sample stories from the folder's model: prompt, continuation (quoted) and whether it ended, for
    the first `num_samples` of `QUALITY_PROMPTS`, sampled with `folder_sample_settings` (seeded: the same weights
    give the same stories)."""
    model_dir = Path(model_dir)
    if num_samples == 0:
        return []
    settings = folder_sample_settings(model_dir, _read_json(model_dir / "config.json", required=True))
    return _sample_stories(*load_pretrained(model_dir, device="cpu"), num_samples, settings)


def _sample_stories(model, tokenizer, num_samples: int, settings: GenerationSettings) -> list[dict]:
    samples = []
    for prompt in QUALITY_PROMPTS[:num_samples]:
        (ids,) = generate_ids(model, tokenizer, prompt, settings)
        ended = bool(ids) and ids[-1] == tokenizer.eos_token_id
        continuation = tokenizer.decode(ids, skip_special_tokens=True)
        samples.append({"prompt": prompt, "continuation": _quote(continuation), "ended": ended})
    return samples


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
        elif not datasets and HUB_ID.fullmatch(dataset_type or ""):
            problems.append(f"the model-index reports on the Hub dataset '{dataset_type}': list it in datasets")
    reported = {result.metric_type: result.metric_value for result in card.data.eval_results or []}
    for metric_type, _, _ in METRICS:
        value = reported.get(metric_type)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"model-index has no numeric '{metric_type}'")
    return problems
