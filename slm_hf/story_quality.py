"""How generated stories read: sampled from fixed prompts with fixed settings, measured for endings, length,
repetition within a story and variety across stories (distinct n-grams). Used by evaluation reports and the model
card."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .generation import GenerationSettings, generate_ids

# Story openings in TinyStories' style, for the samples in evaluation reports and in the model card.
QUALITY_PROMPTS = (
    "Once upon a time",
    "One day, a little girl named Lily",
    "Tom and his dog went to the park.",
    "The sun was shining and the birds were singing.",
    "There was a big red ball",
    "Mom said, \"",
)
# Seeded; sampled as the model's generation_config.json says (what its users get by default).
QUALITY_SETTINGS = GenerationSettings(seed=0)

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-cased words of `text`, punctuation dropped: the units of the n-gram measures."""
    return _WORD.findall(text.lower())


def ngrams(items: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float | None:
    """Unique word n-grams / all word n-grams, pooled over `texts`: 1 means no n-gram ever repeats."""
    counts = Counter(gram for text in texts for gram in ngrams(words(text), n))
    total = sum(counts.values())
    return len(counts) / total if total else None


def repetition_rate(text: str, n: int = 4) -> float | None:
    """Share of the word n-grams of one text that repeat an earlier n-gram of the same text (0 = no loops)."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else None


def _mean(values: Iterable[float | None]) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def story_quality(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str] = QUALITY_PROMPTS,
    settings: GenerationSettings = QUALITY_SETTINGS,
) -> dict:
    """Sample stories from `prompts` (seeded) and measure them; returns the measures, settings and samples.

    Measures, on the generated continuations (the prompts excluded):
    `ended_with_eos` (share of stories the model finished itself, rather than the token limit),
    `mean_new_tokens`, `mean_words`, `repetition_4` (mean share of repeated word 4-grams within a story),
    `distinct_1/2/3` (unique / total word n-grams over all stories).
    """
    settings = settings.for_model(model)
    samples = []
    for prompt in prompts:
        for ids in generate_ids(model, tokenizer, prompt, settings):
            continuation = tokenizer.decode(ids, skip_special_tokens=True)
            samples.append({
                "prompt": prompt,
                "text": prompt + continuation,
                "new_tokens": len(ids),
                "ended_with_eos": bool(ids) and ids[-1] == tokenizer.eos_token_id,
                "continuation": continuation,
            })
    continuations = [sample.pop("continuation") for sample in samples]
    return {
        "settings": settings.to_dict(),
        "stories": len(samples),
        "ended_with_eos": _mean(float(sample["ended_with_eos"]) for sample in samples),
        "mean_new_tokens": _mean(sample["new_tokens"] for sample in samples),
        "mean_words": _mean(len(words(text)) for text in continuations),
        "repetition_4": _mean(repetition_rate(text, 4) for text in continuations),
        "distinct_1": distinct_n(continuations, 1),
        "distinct_2": distinct_n(continuations, 2),
        "distinct_3": distinct_n(continuations, 3),
        "samples": samples,
    }
