"""Evaluation: how well a model predicts held-out text (loss, perplexity, bits per byte) and how its stories read.

Bits per byte is the headline: the total information the model needs to encode a text, divided by the text's size
in UTF-8 bytes. Unlike loss per token it does not depend on the tokenizer, so it compares models across vocabularies:

    bits per byte = (sum over every predicted token of -ln p(token | context)) / ln 2 / (UTF-8 bytes of those tokens)

`<|endoftext|>` tokens are predicted and their nats count (ending a story is part of telling it), but they encode
no bytes of text. Two ways in, which agree on the same text:

* `evaluate_tokens(model, tokens)` scores a token stream, e.g. a data folder's `val.bin` (stories packed back to
  back, each followed by `<|endoftext|>`), in non-overlapping windows of the model's context, the way training
  evaluates: window k reads ``tokens[k*T : k*T + T]`` and predicts ``tokens[k*T + 1 : k*T + T + 1]``; a last,
  shorter window covers the tail, so every token but the first is predicted exactly once. `starts=` picks other
  windows (e.g. the ones a training run evaluated on).
* `evaluate_texts(model, tokenizer, stories)` scores raw stories with the model's own tokenizer, each on its own:
  `<|endoftext|>` + story + `<|endoftext|>`, every story token and the closing `<|endoftext|>` predicted, the first
  token from the start token alone, as in training data, where every story follows an `<|endoftext|>`. A story
  longer than the context is scored in overlapping windows (stride half the context by default), each token once,
  with at least `context - stride` tokens of history.

`story_quality` samples stories from fixed prompts with a fixed seed and measures what a reader notices:
repetition, variety (distinct n-grams), how many stories the model ends itself, and their length.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import load_tokens, read_meta, read_stories
from .errors import SLMError
from .generation import context_length
from .story_quality import story_quality
from .tokenization import tokenizer_sha256

IGNORE_INDEX = -100


def bits_per_byte(nats: float, byte_count: float) -> float:
    """Bits per byte of text: `nats` (summed, or per token) over the UTF-8 bytes of that text (summed, or per
    token). The one definition, for evaluation's reports and training's validation records."""
    return nats / math.log(2) / byte_count


@dataclass
class LossReport:
    """Summed negative log-likelihood of the predicted tokens, with what it was measured on."""

    nats: float
    tokens: int
    bytes: int | None = None
    windows: int = 0

    @property
    def loss(self) -> float:
        """Mean cross-entropy per predicted token, in nats: training's loss."""
        return self.nats / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def bits_per_byte(self) -> float | None:
        if not self.bytes:
            return None
        return bits_per_byte(self.nats, self.bytes)

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "bytes_per_token": self.bytes / self.tokens if self.bytes and self.tokens else None,
            "windows": self.windows,
        }


# --------------------------------------------------------------------------------------------- token bytes
def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """The number of UTF-8 bytes of text each token id stands for (0 for special tokens such as `<|endoftext|>`).

    Exact for byte-level BPE tokenizers (ours, GPT-2's), whose tokens are byte strings. For other tokenizers the
    length of each token decoded on its own is an approximation.
    """
    size = len(tokenizer)
    lengths = np.zeros(size, dtype=np.int64)
    special = set(tokenizer.all_special_ids) | {
        index for index, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    byte_level = type(tokenizer.backend_tokenizer.decoder).__name__ == "ByteLevel" if tokenizer.is_fast else False
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    for index, piece in enumerate(pieces):
        if index in special or piece is None:
            continue
        if byte_level:  # one character of the byte-level alphabet per byte
            lengths[index] = len(piece)
        else:
            lengths[index] = len(tokenizer.decode([index]).encode("utf-8"))
    return lengths


# ------------------------------------------------------------------------------------------------ scoring
@torch.inference_mode()
def _score_windows(
    model: PreTrainedModel,
    windows: Sequence[tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    progress: bool,
    description: str,
) -> float:
    """Sum of -ln p(target) over `windows` of (input ids, target ids); targets equal to -100 are not scored.

    Windows are batched by length (longest first) and right-padded: causal attention means a real token never
    sees the padding after it, so no attention mask is needed.
    """
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    device = model.device
    total = 0.0
    batches = range(0, len(order), batch_size)
    for begin in tqdm(batches, desc=description, unit="batch", disable=not progress, leave=False):
        chosen = [windows[i] for i in order[begin : begin + batch_size]]
        width = max(len(inputs) for inputs, _ in chosen)
        inputs = np.zeros((len(chosen), width), dtype=np.int64)
        targets = np.full((len(chosen), width), IGNORE_INDEX, dtype=np.int64)
        for row, (window_inputs, window_targets) in enumerate(chosen):
            inputs[row, : len(window_inputs)] = window_inputs
            targets[row, : len(window_targets)] = window_targets
        logits = model(input_ids=torch.from_numpy(inputs).to(device), use_cache=False).logits
        nats = F.cross_entropy(
            logits.float().flatten(0, 1),
            torch.from_numpy(targets).to(device).flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(nats)
    return total


def default_starts(num_tokens: int, context: int) -> list[int]:
    """The windows `evaluate_tokens` reads by default: every `context` tokens from 0, the last one shorter."""
    return list(range(0, max(num_tokens - 1, 0), context))


def evaluate_tokens(
    model: PreTrainedModel,
    tokens: np.ndarray | Sequence[int],
    *,
    context: int | None = None,
    starts: Iterable[int] | None = None,
    token_bytes: np.ndarray | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> LossReport:
    """Score a token stream in windows: window at `start` reads `tokens[start : start + context]` and predicts
    `tokens[start + 1 : start + context + 1]` (cut at the end of the stream).

    Args:
        model: a causal LM; it is not switched to eval mode here (callers do that, as training does).
        tokens: the stream, e.g. `load_tokens(data_dir, "val")`.
        context: window length; defaults to the model's context (`max_position_embeddings`).
        starts: window starts; defaults to `default_starts` (non-overlapping, every token but the first predicted
            once). Windows may overlap, in which case tokens are counted once per window that predicts them.
        token_bytes: bytes per token id (`token_byte_lengths(tokenizer)`); without it `bytes` is None.
        batch_size: windows per forward pass.
        progress: show a progress bar.
    """
    tokens = np.asarray(tokens)
    context = context or context_length(model)
    starts = default_starts(len(tokens), context) if starts is None else [int(start) for start in starts]
    windows = []
    predicted = 0
    byte_count = 0
    for start in starts:
        if not 0 <= start < len(tokens) - 1:
            raise SLMError(f"window start {start} is outside the {len(tokens)}-token stream")
        end = min(start + context, len(tokens) - 1)
        targets = tokens[start + 1 : end + 1].astype(np.int64)
        windows.append((tokens[start:end].astype(np.int64), targets))
        predicted += len(targets)
        if token_bytes is not None:
            byte_count += int(token_bytes[targets].sum())
    nats = _score_windows(model, windows, batch_size, progress, "scoring windows")
    return LossReport(nats=nats, tokens=predicted, bytes=byte_count if token_bytes is not None else None,
                      windows=len(windows))


def story_windows(ids: Sequence[int], context: int, stride: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Windows that predict every token of `ids` but the first exactly once, each with as much history as fits.

    Windows start every `stride` tokens; each scores only the targets the previous windows did not (the others
    are set to -100), so every scored token has at least `context - stride` tokens of history (all of it, early on).
    """
    ids = np.asarray(ids, dtype=np.int64)
    last = len(ids) - 1  # the number of tokens to predict
    windows = []
    scored = 0
    begin = 0
    while scored < last:
        end = min(begin + context, last)
        targets = ids[begin + 1 : end + 1].copy()
        targets[: scored - begin] = IGNORE_INDEX
        windows.append((ids[begin:end], targets))
        scored = end
        begin += stride
    return windows


def evaluate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Iterable[str],
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> LossReport:
    """Score each story on its own: `<|endoftext|>` + story + `<|endoftext|>`, every token after the first.

    `bytes` counts the UTF-8 bytes of the stories exactly as given (the text the predicted tokens encode).
    Stories longer than `context` are scored in overlapping windows `stride` apart (default: half the context).
    """
    context = context or context_length(model)
    stride = stride or max(context // 2, 1)
    if not 0 < stride <= context:
        raise SLMError(f"stride must be in [1, {context}] (the context), got {stride}")
    eos = tokenizer.eos_token_id
    windows = []
    predicted = 0
    byte_count = 0
    texts = list(texts)
    # One batch call (Rust threads); verbose=False: stories longer than the context are expected here.
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    for text, story_ids in zip(texts, encoded):
        ids = [eos] + story_ids + [eos]
        windows.extend(story_windows(ids, context, stride))
        predicted += len(ids) - 1
        byte_count += len(text.encode("utf-8"))
    if not predicted:
        raise SLMError("there is no text to evaluate")
    nats = _score_windows(model, windows, batch_size, progress, "scoring stories")
    return LossReport(nats=nats, tokens=predicted, bytes=byte_count, windows=len(windows))


# ------------------------------------------------------------------------------------------------- inputs
def read_story_file(path: str | os.PathLike, max_stories: int | None = None) -> list[str]:
    """Stories from a TinyStories text file (`.txt` or `.txt.gz`, each story followed by a line holding exactly
    `<|endoftext|>`) or a JSON-lines file (one `{"text": ...}` object per line), stripped of surrounding whitespace,
    empty ones dropped: the stories `prepare_data` would read from the same file."""
    path = Path(path)
    if not path.is_file():
        raise SLMError(f"{path} is not a file; pass a data folder (with meta.json) or a .txt / .jsonl file")
    if not path.name.endswith(".jsonl"):
        return read_stories(path, max_stories)
    stories = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if max_stories is not None and len(stories) >= max_stories:
                break
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise SLMError(f"{path}:{number}: expected a JSON object with a 'text' field ({error})") from None
            if isinstance(text, str) and text.strip():
                stories.append(text.strip())
    return stories


def first_stories(tokens: np.ndarray, eos_token_id: int, max_stories: int) -> np.ndarray:
    """The beginning of a packed token stream up to and including the `max_stories`-th `<|endoftext|>`."""
    ends = np.flatnonzero(tokens == eos_token_id)
    # A stream may open with an <|endoftext|> (start token) rather than a story; skip it.
    ends = ends[ends > 0]
    if len(ends) < max_stories:
        return tokens
    return tokens[: ends[max_stories - 1] + 1]


def evaluate_data_folder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data_dir: str | os.PathLike,
    *,
    split: str = "val",
    max_stories: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> LossReport:
    """`evaluate_tokens` on a data folder's split, after checking it was tokenized with the model's tokenizer."""
    meta = read_meta(data_dir)
    expected = meta.get("tokenizer", {}).get("sha256")
    if expected and expected != tokenizer_sha256(tokenizer):
        raise SLMError(
            f"{data_dir} was tokenized with a different tokenizer than the model's; evaluate on the raw text "
            f"instead (--data a .txt or .jsonl file), which uses the model's own tokenizer"
        )
    tokens = load_tokens(data_dir, split)
    if max_stories is not None:
        tokens = first_stories(tokens, tokenizer.eos_token_id, max_stories)
    return evaluate_tokens(
        model, tokens, token_bytes=token_byte_lengths(tokenizer), batch_size=batch_size, progress=progress
    )


# ------------------------------------------------------------------------------------------------ the report
def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: str | os.PathLike,
    *,
    max_stories: int | None = None,
    batch_size: int = 16,
    quality: bool = True,
    progress: bool = False,
) -> dict:
    """The full report of `scripts/evaluate.py`: likelihood measures on `data` (a data folder's validation split,
    or a .txt / .jsonl file of stories) and, with `quality`, the story-quality measures and samples."""
    data = Path(data)
    if data.is_dir():
        report = evaluate_data_folder(model, tokenizer, data, max_stories=max_stories, batch_size=batch_size,
                                      progress=progress)
        source = {"data": str(data), "kind": "data_folder", "split": "val",
                  "windowing": "non-overlapping windows of the context from token 0"}
    else:
        stories = read_story_file(data, max_stories)
        report = evaluate_texts(model, tokenizer, stories, batch_size=batch_size, progress=progress)
        source = {"data": str(data), "kind": "text", "stories": len(stories),
                  "windowing": "each story on its own after <|endoftext|>; longer ones in windows half a context apart"}
    result = {**source, "context": context_length(model), **report.to_dict()}
    if quality:
        result["quality"] = story_quality(model, tokenizer)
    return result


def summary(result: dict) -> str:
    """A few human-readable lines about an `evaluate` result."""
    lines = [
        f"{result['data']} ({result['kind']}): {result['tokens']:,} tokens predicted"
        + (f", {result['bytes']:,} bytes" if result.get("bytes") else ""),
        f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}"
        + (f"  bits per byte {result['bits_per_byte']:.4f}" if result.get("bits_per_byte") is not None else ""),
    ]
    quality = result.get("quality")
    if quality:
        lines.append(
            f"stories: {quality['stories']}, ended by the model {quality['ended_with_eos']:.0%}, "
            f"mean {quality['mean_new_tokens']:.0f} tokens, repeated 4-grams {quality['repetition_4'] or 0:.1%}, "
            f"distinct-2 {quality['distinct_2'] or 0:.2f}"
        )
        first = quality["samples"][0]
        lines.append(f"sample: {first['text'][:300]!r}")
    return "\n".join(lines)
