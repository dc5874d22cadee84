"""A Gradio demo of a trained SLM story model: type the start of a story, watch the rest stream in.

    python app.py --model runs/cpu-demo/final [--port 7860]
    MODEL_ID=user/slm-tinystories MODEL_REVISION=<commit> python app.py      # what a Hugging Face Space runs

As a Space: put this file and requirements.txt in a Gradio Space and set the variables MODEL_ID (the model's Hub
repository) and MODEL_REVISION (a commit of it). The file needs only torch, transformers and gradio: without slm_hf
installed, the model's own code (configuration_slm.py, modeling_slm.py, uploaded with the weights) is loaded with
trust_remote_code=True, from the pinned revision so the code that runs is the code that was reviewed. With slm_hf
installed (locally), `import slm_hf` provides the classes and no remote code runs.

Many readers at once share the model: every story being written joins one running batch, token by token
(transformers' continuous batching, `model.init_continuous_batching()`), so a new reader's story starts at the next
step instead of after the stories before it. Past MAX_STORIES stories at once, requests wait in the page's queue
(their position shown); past QUEUE_SIZE waiting, a new one is refused ("Queue is full"). A sampled story depends on
the random numbers the whole batch draws, so its prompt and settings alone do not reproduce it. With top-k 1 a story
is greedy, the same text as the model's own `generate()` from the same prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a demo


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line, `error: ...`, and status 2 (as slm_hf's scripts; this file runs without slm_hf)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description="Gradio demo of a trained SLM story model")
    parser.add_argument("--model", default=os.environ.get("MODEL_ID"),
                        help="a model folder (e.g. runs/cpu-demo/final) or a Hub id (default: $MODEL_ID)")
    parser.add_argument("--revision", default=os.environ.get("MODEL_REVISION"),
                        help="Hub revision to load, ideally a commit hash (default: $MODEL_REVISION)")
    parser.add_argument("--int8", action="store_true", default=os.environ.get("SLM_INT8", "") == "1",
                        help="int8 weights: faster stories (BENCHMARKS.md, \"Generation speed\"; default: "
                             "$SLM_INT8 == 1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (0.0.0.0 to serve other machines)")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model: pass --model DIR_OR_HUB_ID or set MODEL_ID")
    if not Path(args.model).expanduser().exists() and looks_like_a_path(args.model):
        print(f"error: model folder {args.model} does not exist", file=sys.stderr)
        sys.exit(2)
    return args


def looks_like_a_path(name: str) -> bool:
    """A name that can only be a local folder, not a Hub id (`user/model`): reported at once, without Hub retries."""
    first = name.split("/", 1)[0]
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or ("/" in name and Path(first).is_dir())


if __name__ == "__main__":
    parse_args()  # before the imports below (seconds): --help and bad arguments answer at once


import gradio as gr  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    ContinuousBatchingConfig,
    GenerationConfig,
)
from transformers.utils import logging as transformers_logging  # noqa: E402

try:  # registers the SLM classes with transformers' Auto classes: then no remote code is needed
    import slm_hf  # noqa: F401

    HAVE_SLM_HF = True
except ImportError:
    HAVE_SLM_HF = False

EXAMPLES = [
    "Once upon a time, there was a little cat named Tom.",
    "Lily and her mom went to the park. It was a sunny day.",
    "The big red ball rolled down the hill.",
    "Ben had a new toy car.",
]
MAX_PROMPT_CHARS = 2000
MAX_STORIES = 32  # stories written at once, in one batch; more wait in the page's queue
QUEUE_SIZE = 64  # requests waiting in the page's queue; more are refused
STORY_TIMEOUT_S = 120  # a story whose next token takes longer than this ends with a message
# Continuous batching keeps its KV cache in pages of this many tokens (ContinuousBatchingConfig's default); the cache
# holds MAX_STORIES whole contexts. Left to itself it would take 90% of the free memory, whatever the model.
CACHE_PAGE_TOKENS = 256
BATCH_TOKENS = 2048  # tokens one forward pass may take: prompts being read plus one token per story being written
# Sampling controls: (minimum, maximum); they start at the model's own settings (its generation_config.json).
LENGTH = (16, 512)
TEMPERATURE = (0.1, 1.5)
TOP_K = (0, 200)


def check_settings(max_new_tokens, temperature, top_k) -> str | None:
    """None when the settings are in the sliders' ranges (a request through the API can send anything), else a
    message. A length past the model's context is not refused: the story stops at the end of the context."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not number(max_new_tokens) or max_new_tokens < 1:
        return f"Length must be a number of new tokens, at least 1, not {max_new_tokens!r}."
    for name, value, (low, high) in (("Temperature", temperature, TEMPERATURE), ("Top-k", top_k, TOP_K)):
        if not number(value) or not low <= value <= high:
            return f"{name} must be a number from {low:g} to {high:g}, not {value!r}."
    return None


class StoryTeller:
    """A model and its tokenizer, the continuous-batching manager that writes every story, and the streaming story
    function the page calls. `close()` stops the manager's thread (or use the teller as a context manager)."""

    def __init__(self, model, tokenizer, max_stories: int = MAX_STORIES):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.context = model.config.max_position_embeddings
        self.max_stories = max_stories
        self.stories = self._start_batching()

    def _start_batching(self):
        """Start the manager, and check with one short story that this model can be batched: a model folder saved
        before SLM models took continuous batching's paged cache fails here, with one line, not in a reader's page."""
        saved = self.model.generation_config  # top_p and the rest: the model's own; each story its temperature, top-k
        sampling = GenerationConfig(do_sample=True, temperature=saved.temperature or 1.0, top_k=saved.top_k or 0,
                                    top_p=saved.top_p if saved.top_p is not None else 1.0,
                                    eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        batching = ContinuousBatchingConfig(
            num_blocks=self.max_stories * -(-self.context // CACHE_PAGE_TOKENS), page_size=CACHE_PAGE_TOKENS,
            max_batch_tokens=BATCH_TOKENS, per_request_processors=True,  # each story its temperature and top-k
        )
        manager = self.model.init_continuous_batching(generation_config=sampling, continuous_batching_config=batching)
        manager.start()
        request_id = manager.add_request([self.tokenizer.eos_token_id], max_new_tokens=1)
        output = manager.get_result(request_id, timeout=STORY_TIMEOUT_S)
        if output is None or output.error is not None:
            manager.stop(block=True, timeout=30)
            problem = output.error if output is not None else "no answer"
            raise ValueError(f"the model cannot write stories in a batch ({problem}); a model saved by an older "
                             "slm_hf: save it again with this one")
        return manager

    def close(self) -> None:
        """Stop writing stories (the manager's thread); stories being written end."""
        if self.stories.is_running():
            self.stories.stop(block=True, timeout=30)

    def __enter__(self) -> StoryTeller:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @classmethod
    def load(cls, name_or_path: str, revision: str | None = None, int8: bool = False) -> StoryTeller:
        """`int8`: int8 weights (the model's `quantize_int8`), faster stories (BENCHMARKS.md,
        "Generation speed")."""
        trust_remote_code = not HAVE_SLM_HF  # the model's own code, from the (pinned) revision
        if Path(name_or_path).is_file():
            raise ValueError("it is a file; pass a model folder (a training run's final/) or a Hub id")
        model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision,
                                                     trust_remote_code=trust_remote_code)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                                      trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise ValueError(f"its tokenizer does not load ({str(error).strip().splitlines()[0]})") from error
        if int8:
            if not hasattr(model, "quantize_int8"):
                raise ValueError(f"int8 needs an SLM model, not a {type(model).__name__}")
            model.eval().quantize_int8()
        return cls(model, tokenizer)

    def slider_values(self) -> tuple[int, float, int]:
        """Where the length, temperature and top-k sliders start: the model's generation_config (clipped to the
        sliders' ranges; the middle of a range the model does not set)."""
        saved = self.model.generation_config
        sampling = bool(saved.do_sample)
        values = (saved.max_new_tokens, saved.temperature if sampling else None, saved.top_k if sampling else None)
        return tuple(sum(bounds) / 2 if value is None else min(max(value, bounds[0]), bounds[1])
                     for value, bounds in zip(values, (LENGTH, TEMPERATURE, TOP_K)))

    def check_prompt(self, prompt: str) -> tuple[list[int] | None, str | None]:
        """The prompt's token ids (after the start token), or a polite message saying why it cannot be used."""
        if not isinstance(prompt, str):
            return None, "The start of the story must be text."
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"), which JSON can carry but no text holds
            return None, "That prompt holds characters that are not valid text (broken UTF-8): please retype it."
        if len(prompt) > MAX_PROMPT_CHARS:
            return None, (f"That prompt is {len(prompt):,} characters long. This little model only reads "
                          f"{self.context} tokens (a few short paragraphs): please shorten it.")
        ids = [self.tokenizer.eos_token_id] + self.tokenizer.encode(prompt, add_special_tokens=False, verbose=False)
        if len(ids) >= self.context:
            return None, (f"That prompt is {len(ids) - 1} tokens long, but this model reads at most "
                          f"{self.context - 1} tokens and needs room to write: please shorten it.")
        return ids, None

    async def tell(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int):
        """Yield the story so far (prompt + generated text) as tokens arrive; the story joins the running batch."""
        ids, problem = self.check_prompt(prompt)
        problem = problem or check_settings(max_new_tokens, temperature, top_k)
        if problem:
            yield problem
            return
        outputs = asyncio.Queue()
        request_id = uuid.uuid4().hex
        self.stories.register_result_handler(request_id, outputs.put_nowait)  # called in this event loop
        accepted = self.stories.add_request(
            ids, request_id=request_id, streaming=True,
            max_new_tokens=max(1, min(int(max_new_tokens), self.context - len(ids))),
            temperature=float(temperature), top_k=int(top_k) or self.model.config.vocab_size,  # 0: no limit
        )
        if accepted is None:
            yield "Sorry, the story teller has stopped: please try again later."
            return
        finished = False
        try:
            while not finished:
                try:
                    output = await asyncio.wait_for(outputs.get(), STORY_TIMEOUT_S)
                except asyncio.TimeoutError:
                    yield f"Sorry, the story stopped: no new word for {STORY_TIMEOUT_S} s. Please try again."
                    return
                while not outputs.empty():  # each output holds the whole story so far: a page that falls behind
                    output = outputs.get_nowait()  # gets the newest, not every step's
                finished = output.is_finished()
                if output.error is not None:
                    yield f"Sorry, the story could not be written: {output.error}"
                    return
                text = self.tokenizer.decode(output.generated_tokens, skip_special_tokens=True)
                if finished or (text and not text.endswith("\ufffd")):  # not half a character
                    yield prompt + text
        finally:
            if not finished:  # the reader left (the page cancels the generator), or the story timed out
                self.stories.cancel_request(request_id)


def build_demo(teller: StoryTeller, title: str = "Tiny story teller", queue_size: int = QUEUE_SIZE) -> gr.Blocks:
    """The page: a prompt box, length / temperature / top-k sliders, a button, the streaming story, examples.
    `teller.max_stories` stories are written at once; past that, requests wait in the queue, and past `queue_size`
    waiting requests a new one is refused with Gradio's "Queue is full" message."""
    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\n"
            "A small language model trained from scratch on "
            "[TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories). Give it the start of a "
            "children's story and it writes the rest. It knows nothing but simple stories."
        )
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Start of the story", placeholder="Once upon a time", lines=3,
                                    elem_id="prompt")
                button = gr.Button("Tell me a story", variant="primary", elem_id="tell")
                with gr.Accordion("Settings", open=True):
                    start = teller.slider_values()
                    length = gr.Slider(*LENGTH, value=start[0], step=8, label="Length (new tokens)")
                    temperature = gr.Slider(*TEMPERATURE, value=start[1], step=0.05,
                                            label="Temperature (higher = wilder)")
                    top_k = gr.Slider(*TOP_K, value=start[2], step=1, label="Top-k (0 = no limit)")
            with gr.Column(scale=3):
                story = gr.Textbox(label="Story", lines=14, interactive=False, elem_id="story")
        gr.Examples(EXAMPLES, inputs=prompt, label="Try one of these")
        inputs = [prompt, length, temperature, top_k]
        # One concurrency group for both triggers: at most max_stories stories at once, from the button or Enter.
        writing = dict(concurrency_limit=teller.max_stories, concurrency_id="story")
        button.click(teller.tell, inputs=inputs, outputs=story, **writing)
        prompt.submit(teller.tell, inputs=inputs, outputs=story, **writing)
    return demo.queue(max_size=queue_size)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    transformers_logging.disable_progress_bar()  # no "Loading weights" bar in the server's log
    try:
        teller = StoryTeller.load(args.model, revision=args.revision, int8=args.int8)
    except Exception as error:  # missing, damaged (truncated weights, empty tokenizer) or not an SLM model for int8
        print(f"error: cannot load the model {args.model!r}: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    code = "slm_hf" if HAVE_SLM_HF else "the model's remote code"
    weights = "int8" if args.int8 else "fp32"
    print(f"loaded {args.model}@{args.revision or 'latest'} with {code}, {weights} weights", file=sys.stderr,
          flush=True)
    theme = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    with teller:  # launch() returns on Ctrl-C; then the batching thread stops too
        build_demo(teller).launch(server_name=args.host, server_port=args.port, theme=theme, show_error=True)


if __name__ == "__main__":
    main()
