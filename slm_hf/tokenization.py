"""The tokenizer: a byte-level BPE trained on the stories, saved and loaded as a Hugging Face tokenizer.

Byte-level BPE starts from the 256 byte values, so every string can be encoded and ``decode(encode(text)) == text``
holds for any text (accents, emoji, tabs, runs of spaces, newlines): nothing is normalised and nothing is unknown.
The one special token, ``<|endoftext|>``, gets id 0 and serves as end of story, beginning of sequence and padding,
the GPT-2 convention. Padding is on the left, so that batched generation continues every prompt from its last token.

    tokenizer = train_tokenizer(stories)                     # DEFAULT_VOCAB_SIZE tokens
    save_tokenizer(tokenizer, "data/sample/tokenizer")
    tokenizer = load_tokenizer("data/sample/tokenizer")      # or a Hub id, e.g. "gpt2"
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .configuration_slm import DEFAULT_VOCAB_SIZE
from .errors import SLMError

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN]
# Every byte needs its own token in a byte-level vocabulary, and the special tokens come on top.
MIN_VOCAB_SIZE = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
# The class name older transformers (4.x), vLLM and mlx-lm understand; transformers 5 writes "TokenizersBackend".
_PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    min_frequency: int = 2,
    length: int | None = None,
    show_progress: bool = True,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (an iterable of stories, or of batches of stories).

    Args:
        texts: the training text, one string per story (lists of strings are accepted too, as batches).
        vocab_size: the size of the vocabulary, special tokens included; at least `MIN_VOCAB_SIZE` (257).
        min_frequency: a pair must occur this often to be merged.
        length: the number of items in `texts`, for the progress bar only.
        show_progress: show the trainer's progress bar.
        model_max_length: the longest sequence the model that uses the tokenizer accepts (for the saved config);
            `None` leaves it unset.

    Returns:
        A `PreTrainedTokenizerFast` with `<|endoftext|>` (id 0) as its eos, bos and pad token, and left padding.
    """
    check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact; nothing is added to encoded text (slm_hf.data appends EOS).
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    if tokenizer.get_vocab_size() < MIN_VOCAB_SIZE:  # an empty corpus still yields the alphabet, but be sure
        raise SLMError("the tokenizer could not be trained: the training text is empty")
    return _wrap(tokenizer, model_max_length)


def _wrap(tokenizer: Tokenizer, model_max_length: int | None) -> PreTrainedTokenizerFast:
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        **extra,
    )


def check_vocab_size(vocab_size: int) -> None:
    """Raise `SLMError` unless `vocab_size` can hold the 256 byte values plus the special tokens."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise SLMError(
            f"vocab size {vocab_size!r} is too small: a byte-level tokenizer needs at least {MIN_VOCAB_SIZE} "
            f"tokens (256 byte values + {len(SPECIAL_TOKENS)} special); try --vocab-size {DEFAULT_VOCAB_SIZE}"
        )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> Path:
    """Save `tokenizer` as a Hugging Face tokenizer folder that `AutoTokenizer.from_pretrained` loads offline.

    The folder's `tokenizer_config.json` names the class `PreTrainedTokenizerFast` rather than transformers 5's
    `TokenizersBackend`, so that transformers 4.x and other tools load it too (transformers 5 reads both).
    """
    directory = Path(directory)
    tokenizer.save_pretrained(directory)
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = _PORTABLE_TOKENIZER_CLASS
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return directory


def load_tokenizer(path_or_hub_id: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a local folder or a Hub id (e.g. `"gpt2"`), ready for language modelling.

    The tokenizer must have an end-of-text (eos) token. If it has no pad token, its eos token pads, as in GPT-2;
    padding is set to the left for generation.
    """
    name = str(path_or_hub_id)
    local = Path(name).expanduser()
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json")
    if local.exists() and not (local.is_dir() and any((local / file).is_file() for file in tokenizer_files)):
        raise SLMError(f"{name} is not a tokenizer folder (no tokenizer.json or tokenizer_config.json in it)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else name)
    except (OSError, ValueError) as error:
        hint = "" if local.exists() else " (not a local folder; as a Hub id it needs network access or the cache)"
        raise SLMError(f"cannot load the tokenizer {name!r}{hint}: {_first_line(error)}") from error
    if not getattr(tokenizer, "is_fast", False):
        raise SLMError(f"the tokenizer {name!r} has no fast (Rust) implementation; slm_hf needs one")
    if tokenizer.eos_token_id is None:
        raise SLMError(f"the tokenizer {name!r} has no eos token; slm_hf needs one to separate stories")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def tokenizer_sha256(tokenizer: PreTrainedTokenizerFast) -> str:
    """A content hash of the tokenizer's vocabulary, merges and pipeline: equal hashes mean equal token ids.

    Runtime settings (truncation and padding, which transformers changes when it encodes) are left out.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    canonical = json.dumps(state, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
