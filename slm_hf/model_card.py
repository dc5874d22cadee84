"""The model card: `write_model_card(model_dir)` renders the card template into `model_dir/README.md`.

(First version: a minimal card from `training_results.json`; the full template follows.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .errors import SLMError

_MINIMAL_TEMPLATE = "---\n{{ card_data }}\n---\n\n# {{ model_name }}\n\nA small story-telling language model trained on TinyStories.\n"


def write_model_card(model_dir: str | os.PathLike) -> Path:
    """Render the model card of the trained folder `model_dir` into `model_dir/README.md` and return its path."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise SLMError(f"{model_dir} is not a model folder (no config.json in it)")
    results_file = model_dir / "training_results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else {}
    card_data = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-generation",
        datasets=["roneneldan/TinyStories"],
        tags=["tinystories", "custom_code", "slm_hf"],
    )
    card = ModelCard.from_template(card_data, template_str=_MINIMAL_TEMPLATE, model_name=model_dir.resolve().name)
    path = model_dir / "README.md"
    temporary = path.with_name(path.name + ".tmp")
    card.save(temporary)
    os.replace(temporary, path)
    del results
    return path
