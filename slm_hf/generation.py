"""Inference: load a trained model (a local folder or a Hub id) and generate stories from prompts.

    model, tokenizer = load_pretrained("runs/cpu-demo/final")          # or "user/slm-tinystories"
    settings = GenerationSettings(seed=0)       # sampling as the folder's generation_config.json says
    stream_to_terminal(model, tokenizer, ["Once upon a time"], settings)    # prints as tokens arrive
    (ids,) = generate_ids(model, tokenizer, "Once upon a time", settings)   # the new token ids

Loading. `import slm_hf` registers the SLM classes with transformers' Auto classes, so our own folders load with
the installed code and no `trust_remote_code`. Remote code (`configuration_slm.py`, `modeling_slm.py` and its
siblings, which a folder carries for Hub users) runs only when the caller opts in, for models whose type the installed
transformers and slm_hf do not know.

Sampling. What a caller does not set comes from the model's `generation_config` (the folder's
generation_config.json, written by training): the one place a model's sampling defaults are decided.

Prompts. Every story in the training data follows an `<|endoftext|>` token, so a prompt is encoded as
`<|endoftext|>` + its tokens: the model continues it as the beginning of a story. Generation stops at the next
`<|endoftext|>` (the end of the story) or after `max_new_tokens`, and never runs past the model's context.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TextStreamer,
)

from .errors import SLMError
from .progress import quiet_progress_bars
from .tokenization import load_tokenizer


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample a story. Validated on construction; `asdict(settings)` is what reports record.

    A sampling knob left at None is the model's own (its `generation_config`, saved as generation_config.json):
    `for_model(model)` fills them in, and `generate_ids` does so before it samples.

    Args:
        max_new_tokens: the most tokens to add after the prompt (fewer if the story ends, or the context is full).
        temperature: softmax temperature; 0 means greedy decoding (always the most likely token).
        top_k: sample among the `top_k` most likely tokens only; 0 disables the filter.
        top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches `top_p`; 1 disables it.
        repetition_penalty: divide the scores of tokens already in the text by this (1 disables it).
        seed: seed of the random number generators, for reproducible samples; None leaves them as they are.
        num_return_sequences: stories per prompt.
    """

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = 0
    num_return_sequences: int = 1

    def __post_init__(self):
        for name, ok, rule in self._rules():
            if not ok and not (getattr(self, name) is None and name in _MAY_BE_NONE):
                raise SLMError(f"{name} must be {rule}, got {getattr(self, name)!r}")

    def _rules(self) -> list[tuple[str, bool, str]]:
        return [
            ("max_new_tokens", _is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "a positive integer"),
            ("temperature", _is_number(self.temperature) and self.temperature >= 0, ">= 0 (0 = greedy)"),
            ("top_k", _is_int(self.top_k) and self.top_k >= 0, "an integer >= 0 (0 = no top-k filter)"),
            ("top_p", _is_number(self.top_p) and 0 < self.top_p <= 1, "in (0, 1] (1 = no nucleus filter)"),
            ("repetition_penalty", _is_number(self.repetition_penalty) and self.repetition_penalty > 0,
             "> 0 (1 = none)"),
            ("seed", _is_int(self.seed), "an integer or None"),
            ("num_return_sequences", _is_int(self.num_return_sequences) and self.num_return_sequences >= 1,
             "a positive integer"),
        ]

    def resolved(self, saved: GenerationConfig, context: int) -> GenerationSettings:
        """These settings with each knob left at None taken from `saved` (a model's generation_config): greedy
        where it does not sample, no filter where it sets none, and up to `context` new tokens where it names no
        length."""
        sampling = bool(saved.do_sample)
        return replace(
            self,
            max_new_tokens=_first(self.max_new_tokens, saved.max_new_tokens, context),
            temperature=_first(self.temperature, saved.temperature if sampling else 0.0, 1.0),
            top_k=_first(self.top_k, saved.top_k if sampling else None, 0),
            top_p=_first(self.top_p, saved.top_p if sampling else None, 1.0),
            repetition_penalty=_first(self.repetition_penalty, saved.repetition_penalty, 1.0),
        )

    def for_model(self, model: PreTrainedModel) -> GenerationSettings:
        """`resolved` from the model's own generation_config and context."""
        return self.resolved(model.generation_config, context_length(model))

    def generate_kwargs(self, tokenizer: PreTrainedTokenizerBase) -> dict:
        """The keyword arguments of `model.generate()` for these settings (every sampling knob set explicitly)."""
        sampling = self.temperature > 0
        kwargs = dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=sampling,
            repetition_penalty=self.repetition_penalty,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if sampling:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        else:  # greedy: unset the sampling knobs a model's generation_config may carry (they would warn)
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs

    def to_dict(self) -> dict:
        return asdict(self)


# The model's own where None (the sampling knobs), or left as they are (the seed).
_MAY_BE_NONE = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")


def _first(*values):
    """The first value that is not None."""
    return next(value for value in values if value is not None)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def looks_like_a_path(name: str) -> bool:
    """Whether `name` can only mean a local folder, not a Hub id (`user/model`): so a missing one is reported at
    once, not after the Hub's retries. A Hub id has at most one "/" and does not start with a local folder's name."""
    first = name.split("/", 1)[0]
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or ("/" in name and Path(first).is_dir())


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    int8: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local folder or a Hub id, in eval mode on `device`.

    Args:
        name_or_path: a folder that `save_pretrained` wrote (e.g. a training run's `final/`) or a Hub model id.
        device: where to put the model; defaults to the first GPU, else the CPU.
        revision: the Hub revision (branch, tag or commit) to load; pin one when trusting remote code.
        trust_remote_code: allow the model's own Python files to run. Not needed for SLM models (`slm_hf`
            provides their classes), only for other custom architectures.
        int8: convert an SLM model for fast inference (`SLMForCausalLM.quantize_int8`: int8 weights; faster
            decoding at batch 1 where BENCHMARKS.md, "Generation speed", measured it).

    Raises:
        SLMError: the folder or id does not hold a model and a tokenizer, or the Hub cannot be reached.
    """
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise SLMError(f"{name} is not a model folder (no config.json in it); pass a training run's final/ folder")
        name = str(local)
    elif looks_like_a_path(name):
        raise SLMError(f"model folder {name} does not exist")
    try:
        device = torch.device(device) if device is not None else default_device()
    except RuntimeError as error:
        raise SLMError(f"{_first_line(error)}: pass a torch device such as cpu, cuda or cuda:1") from error
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    try:
        with quiet_progress_bars():  # a small model loads in a blink: no "Loading weights" bar
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError, SafetensorError) as error:
        hint = "" if local.exists() else " (not a local folder; as a Hub id it needs network access or the cache)"
        if isinstance(error, SafetensorError):
            hint = " (model.safetensors is damaged or truncated)"
        raise SLMError(f"cannot load the model {name!r}{hint}: {_first_line(error)}") from error
    if revision is None and not trust_remote_code:
        tokenizer = load_tokenizer(name)
    else:
        tokenizer = _load_tokenizer_at(name, revision, trust_remote_code)
    model.to(device).eval()
    if int8:
        if not hasattr(model, "quantize_int8"):
            raise SLMError(f"--int8 needs an SLM model; {name} is a {type(model).__name__}")
        model.quantize_int8()
    return model, tokenizer


def _load_tokenizer_at(name: str, revision: str | None, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise SLMError(f"cannot load the tokenizer of {name!r}: {_first_line(error)}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def context_length(model: PreTrainedModel) -> int:
    """The longest sequence (prompt + generated tokens) the model was trained on."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise SLMError(f"cannot tell the context length of a {type(model).__name__} (no max_position_embeddings)")


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The token ids a story starting with `prompt` has in the training data: `<|endoftext|>` then the prompt."""
    return [tokenizer.eos_token_id] + tokenizer.encode(prompt, add_special_tokens=False, verbose=False)


def fit_to_context(model: PreTrainedModel, prompt_ids: list[int], settings: GenerationSettings) -> GenerationSettings:
    """`settings` resolved for `model` (`GenerationSettings.for_model`), with `max_new_tokens` cut so that prompt +
    story fit the model's context.

    Raises:
        SLMError: the prompt alone leaves no room for a single new token.
    """
    limit = context_length(model)
    room = limit - len(prompt_ids)
    if room < 1:
        raise SLMError(
            f"the prompt is {len(prompt_ids) - 1} tokens long, but this model reads at most {limit - 1} tokens of "
            f"prompt (context {limit}, one position for the start token); shorten the prompt"
        )
    settings = settings.for_model(model)
    return replace(settings, max_new_tokens=min(settings.max_new_tokens, room))


@torch.inference_mode()
def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    settings: GenerationSettings,
    streamer=None,
) -> list[list[int]]:
    """Sample `settings.num_return_sequences` continuations of `prompt`; returns the new token ids of each.

    With a `streamer` (e.g. `TextStreamer`), sequences are generated one after the other, each streamed as it is
    sampled (transformers streams batches of one only); without one, they are sampled as one batch.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    settings = fit_to_context(model, prompt_ids, settings)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    input_ids = torch.tensor([prompt_ids], device=model.device)
    kwargs = settings.generate_kwargs(tokenizer)
    if streamer is None:
        batches = [(input_ids.expand(settings.num_return_sequences, -1), None)]
    else:
        batches = [(input_ids, streamer)] * settings.num_return_sequences
    continuations = []
    for batch, batch_streamer in batches:
        output = model.generate(
            batch, attention_mask=torch.ones_like(batch), streamer=batch_streamer, **kwargs
        )
        for row in output[:, len(prompt_ids) :].tolist():
            continuations.append(_cut_at_eos(row, tokenizer.eos_token_id))
    return continuations


def _cut_at_eos(ids: list[int], eos_token_id: int) -> list[int]:
    """Keep the tokens up to and including the first end-of-text (the padding after it goes)."""
    return ids[: ids.index(eos_token_id) + 1] if eos_token_id in ids else ids


def stream_to_terminal(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Iterable[str],
    settings: GenerationSettings,
    out=None,
) -> int:
    """Generate from each prompt, printing the stories to `out` (stdout) as tokens arrive; returns the count.

    Several stories per prompt are separated by a blank line. A note on stderr says when a story was cut short
    by `max_new_tokens` or by the model's context rather than ended by the model.
    """
    out = out if out is not None else sys.stdout
    settings = settings.for_model(model)
    count = 0
    for prompt in prompts:
        prompt_ids = encode_prompt(tokenizer, prompt)
        fitted = fit_to_context(model, prompt_ids, settings)
        if fitted.max_new_tokens < settings.max_new_tokens:
            print(
                f"note: at most {fitted.max_new_tokens} new tokens fit the model's context of "
                f"{context_length(model)} after this prompt",
                file=sys.stderr,
            )
        streamer = _TerminalStreamer(tokenizer, out)
        for ids in generate_ids(model, tokenizer, prompt, fitted, streamer=streamer):
            count += 1
            streamer.next_sequence(ended=bool(ids) and ids[-1] == tokenizer.eos_token_id)
    return count


class _TerminalStreamer(TextStreamer):
    """`TextStreamer` that prints the prompt (without its start token) and separates the stories it streams."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, out):
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.out.write(text)
        if stream_end:
            self.out.write("\n")
        self.out.flush()

    def next_sequence(self, ended: bool):
        if not ended:
            print("[stopped at the token limit]", file=sys.stderr)
        self.out.write("\n")
        self.out.flush()


def read_prompts(stream) -> Iterator[str]:
    """Prompts from a text stream (stdin), one per non-empty line."""
    for line in stream:
        line = line.rstrip("\n")
        if line.strip():
            yield line


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
