"""The start-of-text question, measured: does a prompt read better after `<|endoftext|>` than alone?

Every story in the training data follows an `<|endoftext|>` token. For each validation story of the shipped sample
(never trained on), the story is split after its first sentence into a prompt and a continuation, as a user would
type the start of a story, and the continuation is scored twice by the trained model: after `<|endoftext|>` + prompt,
and after the prompt alone. The figure is bits per byte of the continuations (lower is better), and the share of
stories whose continuation reads better with the start token. The prompt's own first token can only be scored after
something, so whole-story bits per byte are given for the start token only.

    python bench/bench_start_of_text.py --model runs/cpu-demo/final [--stories 300]
"""

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py

import torch  # noqa: E402
from machine import model_shape, write_results  # noqa: E402

from slm_hf.data import SAMPLE_DIR, SAMPLE_FILES, read_stories  # noqa: E402
from slm_hf.generation import load_pretrained  # noqa: E402


def split_story(story: str) -> tuple[str, str] | None:
    """(first sentence, the rest starting with its space), or None for a story of one sentence."""
    end = story.find(". ")
    if end < 0:
        return None
    return story[: end + 1], story[end + 1 :]


@torch.inference_mode()
def continuation_bits(model, prefix: list[int], continuation: list[int]) -> float:
    """The bits the model spends on `continuation` after `prefix` (negative log2-likelihood, summed)."""
    ids = torch.tensor([prefix + continuation])
    logits = model(ids).logits[0, len(prefix) - 1 : -1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    nats = -log_probs.gather(1, torch.tensor(continuation)[:, None]).sum().item()
    return nats / math.log(2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained model folder")
    parser.add_argument("--stories", type=int, default=300, help="validation stories to score (at most 300)")
    parser.add_argument("--note", default="", help="a note for the results file (e.g. how busy the machine was)")
    args = parser.parse_args(argv)

    model, tokenizer = load_pretrained(args.model, device="cpu")
    context = model.config.max_position_embeddings
    start = tokenizer.eos_token_id
    totals = {"with_start": 0.0, "without_start": 0.0}
    story_bits, story_bytes, continuation_bytes, better, scored = 0.0, 0, 0, 0, 0
    for story in read_stories(SAMPLE_DIR / SAMPLE_FILES["val"])[: args.stories]:
        parts = split_story(story)
        if parts is None:
            continue
        prompt = tokenizer.encode(parts[0], add_special_tokens=False)
        continuation = tokenizer.encode(parts[1], add_special_tokens=False)[: context - len(prompt) - 1]
        if not continuation:
            continue
        text = tokenizer.decode(continuation)
        with_start = continuation_bits(model, [start] + prompt, continuation)
        without_start = continuation_bits(model, prompt, continuation)
        totals["with_start"] += with_start
        totals["without_start"] += without_start
        better += with_start < without_start
        story_bits += continuation_bits(model, [start], prompt) + with_start
        story_bytes += len((parts[0] + text).encode("utf-8"))
        continuation_bytes += len(text.encode("utf-8"))
        scored += 1
    results = {
        "stories": scored,
        "continuation_bytes": continuation_bytes,
        "bits_per_byte_with_start": totals["with_start"] / continuation_bytes,
        "bits_per_byte_without_start": totals["without_start"] / continuation_bytes,
        "share_better_with_start": better / scored,
        "story_bits_per_byte_with_start": story_bits / story_bytes,
        "model": str(args.model),
        "split": "first sentence as the prompt, the rest (cut to the context) as the continuation",
        "note": args.note,
    }
    for key, value in results.items():
        print(f"{key}: {value}")
    path = write_results("start_of_text", results, shape=model_shape(model.config))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
