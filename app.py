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
step instead of after the stories before it. The model writes in a process of its own, the story writer (this file
run with --write-stories, started by the page): in the page's process, the model's steps and the page's updates would
take turns on Python's one interpreter lock, and with many readers the page's work held the model back (BENCHMARKS.md,
"Many users at once"). Past MAX_STORIES stories at once, requests wait in the page's queue (their position shown); past
QUEUE_SIZE waiting, a new one is refused ("Queue is full"). A sampled story depends on the random numbers the whole
batch draws, so its prompt and settings alone do not reproduce it. With top-k 1 a story is greedy, the same text as
the model's own `generate()` from the same prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a demo

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
# A story's page shows at most one update per UPDATE_INTERVAL_S (20 a second: smooth to the eye). Each update costs
# the page's process about as much as a token costs the story writer; per token, the page held many readers back.
UPDATE_INTERVAL_S = 0.05
# Continuous batching keeps its KV cache in pages of this many tokens (ContinuousBatchingConfig's default); the cache
# holds MAX_STORIES whole contexts. Left to itself it would take 90% of the free memory, whatever the model.
CACHE_PAGE_TOKENS = 256
BATCH_TOKENS = 2048  # tokens one forward pass may take: prompts being read plus one token per story being written
# Sampling controls: (minimum, maximum); they start at the model's own settings (its generation_config.json).
LENGTH = (16, 512)
TEMPERATURE = (0.1, 1.5)
TOP_K = (0, 200)
# Without slm_hf installed (a Space), the model's own code comes with its weights: trust_remote_code=True.
HAVE_SLM_HF = importlib.util.find_spec("slm_hf") is not None
WRITE_STORIES = "--write-stories"  # the argument that makes this file the story writer


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


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


if __name__ == "__main__" and sys.argv[1:2] != [WRITE_STORIES]:
    parse_args()  # before the imports below (seconds): --help and bad arguments answer at once


from transformers import PreTrainedTokenizerFast  # noqa: E402


# ------------------------------------------------------------------------------- the story writer: the model's process
def write_stories(options: dict) -> None:
    """The story writer, `python app.py --write-stories OPTIONS_JSON` (started by StoryTeller): loads the model and
    writes the stories asked for on its stdin, one JSON line each (`{"add": id, "ids": [...], "max_new_tokens": n,
    "temperature": t, "top_k": k}` or `{"cancel": id}`), in one running batch. Its stdout carries one JSON line per
    message: first `{"ready": facts about the model}` (or `{"error": why not}`), then, at each new token of a story,
    `{"id": id, "tokens": [the story's tokens so far], "done": bool, "error": message or null}`. It ends when its stdin
    closes, as it does when the page's process ends, however that ends."""
    from transformers.utils import logging as transformers_logging

    messages = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)  # line-buffered: one message per line
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print() goes to the log, not into the messages

    sending = threading.Lock()  # two threads send: this one (the stories) and take_requests (a refusal)

    def send(message: dict) -> None:
        with sending:
            messages.write(json.dumps(message) + "\n")

    transformers_logging.disable_progress_bar()  # no "Loading weights" bar in the page's log
    try:
        model = load_model(options["model"], options["revision"], options["int8"])
        stories = start_batching(model, options["max_stories"], options["eos_token_id"], options["pad_token_id"])
    except Exception as error:  # missing, damaged or not an SLM model for int8: one line for the page to report
        send({"error": first_line(error)})
        sys.exit(2)
    send({"ready": model_facts(model)})
    threading.Thread(target=take_requests, args=(stories, model.config.vocab_size, send), daemon=True).start()
    try:
        while stories.is_running():
            output = stories.get_result(timeout=1)
            if output is not None:
                send({"id": output.request_id, "tokens": output.generated_tokens, "done": output.is_finished(),
                      "error": None if output.error is None else str(output.error)})
    except KeyboardInterrupt:  # Ctrl-C in the page's terminal reaches both processes; the page ends the stories
        pass
    finally:
        if stories.is_running():
            stories.stop(block=True, timeout=30)


def take_requests(stories, vocab_size: int, send) -> None:
    """Hand the requests read from stdin to the batching manager, until stdin closes; then stop writing."""
    for line in sys.stdin:
        request = json.loads(line)
        if "cancel" in request:
            stories.cancel_request(request["cancel"])
            continue
        accepted = stories.add_request(
            request["ids"], request_id=request["add"], streaming=True, max_new_tokens=request["max_new_tokens"],
            temperature=request["temperature"], top_k=request["top_k"] or vocab_size,  # 0: no limit
        )
        if accepted is None:
            send({"id": request["add"], "tokens": [], "done": True, "error": "the story writer has stopped"})
    stories.stop(block=True, timeout=30)


def load_model(name_or_path: str, revision: str | None, int8: bool):
    """The model in eval mode; `int8`: int8 weights (the model's `quantize_int8`), faster stories (BENCHMARKS.md,
    "Generation speed")."""
    from transformers import AutoModelForCausalLM

    if HAVE_SLM_HF:
        import slm_hf  # noqa: F401  (registers the SLM classes with the Auto classes: no remote code runs)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, trust_remote_code=not HAVE_SLM_HF)
    if int8:
        if not hasattr(model, "quantize_int8"):
            raise ValueError(f"int8 needs an SLM model, not a {type(model).__name__}")
        model.eval().quantize_int8()
    return model.eval()


def start_batching(model, max_stories: int, eos_token_id: int, pad_token_id: int):
    """Start the continuous-batching manager, and check with one short story that this model can be batched: a model
    folder saved before SLM models took continuous batching's paged cache fails here, with one line, not in a
    reader's page."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    saved = model.generation_config  # top_p and the rest: the model's own; each story its temperature, top-k
    sampling = GenerationConfig(do_sample=True, temperature=saved.temperature or 1.0, top_k=saved.top_k or 0,
                                top_p=saved.top_p if saved.top_p is not None else 1.0,
                                eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    context = model.config.max_position_embeddings
    batching = ContinuousBatchingConfig(
        num_blocks=max_stories * -(-context // CACHE_PAGE_TOKENS), page_size=CACHE_PAGE_TOKENS,
        max_batch_tokens=BATCH_TOKENS, per_request_processors=True,  # each story its temperature and top-k
    )
    manager = model.init_continuous_batching(generation_config=sampling, continuous_batching_config=batching)
    manager.start()
    request_id = manager.add_request([eos_token_id], max_new_tokens=1)
    output = manager.get_result(request_id, timeout=STORY_TIMEOUT_S)
    if output is None or output.error is not None:
        manager.stop(block=True, timeout=30)
        problem = output.error if output is not None else "no answer"
        raise ValueError(f"the model cannot write stories in a batch ({problem}); a model saved by an older "
                         "slm_hf: save it again with this one")
    return manager


def model_facts(model) -> dict:
    """What the page needs to know of the model: its context, the sliders' start (its generation_config) and its
    weights' layers (how many linear layers of each kind)."""
    saved = model.generation_config
    sampling = bool(saved.do_sample)
    layers = {}
    for module in model.modules():
        kind = type(module).__name__
        if kind.endswith("Linear"):
            layers[kind] = layers.get(kind, 0) + 1
    return {
        "context": model.config.max_position_embeddings,
        "sliders": [saved.max_new_tokens, saved.temperature if sampling else None, saved.top_k if sampling else None],
        "linear_layers": layers,
    }


if __name__ == "__main__" and sys.argv[1:2] == [WRITE_STORIES]:
    try:
        write_stories(json.loads(sys.argv[2]))
    except KeyboardInterrupt:  # Ctrl-C while the model loads: the page reports it, no traceback here
        sys.exit(130)
    sys.exit(0)


# --------------------------------------------------------------------------------------------- the page's process
import gradio as gr  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402


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
    """The page's side of the story writer: the tokenizer (prompts in, stories out), the writer's process, and the
    streaming story function the page calls. `close()` ends the writer (or use the teller as a context manager).

    `int8`: int8 weights (the model's `quantize_int8`), faster stories (BENCHMARKS.md, "Generation speed");
    `update_interval_s`: the shortest time between two updates of a story (0: one per token)."""

    def __init__(self, name_or_path: str, revision: str | None = None, int8: bool = False,
                 max_stories: int = MAX_STORIES, update_interval_s: float = UPDATE_INTERVAL_S):
        if Path(name_or_path).is_file():
            raise ValueError("it is a file; pass a model folder (a training run's final/) or a Hub id")
        try:  # a plain fast tokenizer, as every SLM model folder holds: no remote code, and no torch in this process
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(name_or_path, revision=revision)
        except (OSError, ValueError) as error:
            raise ValueError(f"its tokenizer does not load ({first_line(error)})") from error
        self.max_stories, self.update_interval_s = max_stories, update_interval_s
        options = dict(model=name_or_path, revision=revision, int8=int8, max_stories=max_stories,
                       eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        self.writer = subprocess.Popen([sys.executable, os.path.abspath(__file__), WRITE_STORIES, json.dumps(options)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        first = json.loads(self.writer.stdout.readline() or '{"error": "the story writer ended before it started"}')
        if "error" in first:
            self.close()
            raise ValueError(first["error"])
        self.model_facts = first["ready"]
        self.context = self.model_facts["context"]
        self._stories = {}  # story id -> (the event loop and the queue of its tell() call)
        self._lock = threading.Lock()  # over _stories and _stopped
        self._sending = threading.Lock()  # one request at a time on the writer's stdin
        self._stopped = False
        threading.Thread(target=self._hand_out_updates, daemon=True).start()

    def _hand_out_updates(self) -> None:
        """Hand each update the writer sends to the story it belongs to; when the writer ends, end every story."""
        for line in self.writer.stdout:
            update = json.loads(line)
            with self._lock:
                story = self._stories.get(update["id"])
            if story is not None:
                self._put(story, update)
        with self._lock:
            self._stopped = True
            stories = list(self._stories.values())
        for story in stories:
            self._put(story, {"tokens": [], "done": True, "error": "the story writer has stopped"})

    @staticmethod
    def _put(story, update: dict) -> None:
        loop, updates = story
        try:
            loop.call_soon_threadsafe(updates.put_nowait, update)
        except RuntimeError:  # that story's event loop has ended (its reader is gone)
            pass

    def _send(self, request: dict) -> bool:
        """Send a request to the writer; False when the writer has stopped."""
        with self._lock:
            if self._stopped:
                return False
        with self._sending:
            try:
                self.writer.stdin.write(json.dumps(request) + "\n")
                self.writer.stdin.flush()
                return True
            except (OSError, ValueError):  # the writer ended (a broken pipe) or its stdin is closed
                return False

    def close(self) -> None:
        """End the story writer: stories being written end."""
        if self.writer.poll() is None:
            try:
                self.writer.stdin.close()  # the writer stops when its stdin closes
                self.writer.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.writer.kill()
                self.writer.wait()

    def __enter__(self) -> StoryTeller:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def slider_values(self) -> tuple[int, float, int]:
        """Where the length, temperature and top-k sliders start: the model's generation_config (clipped to the
        sliders' ranges; the middle of a range the model does not set)."""
        return tuple(sum(bounds) / 2 if value is None else min(max(value, bounds[0]), bounds[1])
                     for value, bounds in zip(self.model_facts["sliders"], (LENGTH, TEMPERATURE, TOP_K)))

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
        story_id = uuid.uuid4().hex
        updates = asyncio.Queue()
        with self._lock:
            self._stories[story_id] = (asyncio.get_running_loop(), updates)
        finished, shown = False, 0.0  # shown: when the page last showed this story
        try:
            if not self._send({"add": story_id, "ids": ids, "temperature": float(temperature), "top_k": int(top_k),
                               "max_new_tokens": max(1, min(int(max_new_tokens), self.context - len(ids)))}):
                yield "Sorry, the story teller has stopped: please try again later."
                return
            while not finished:
                try:
                    update = await asyncio.wait_for(updates.get(), STORY_TIMEOUT_S)
                except asyncio.TimeoutError:
                    yield f"Sorry, the story stopped: no new word for {STORY_TIMEOUT_S} s. Please try again."
                    return
                while not updates.empty():  # each update holds the whole story so far: a page that falls behind
                    update = updates.get_nowait()  # gets the newest, not every step's
                finished = update["done"]
                if update["error"] is not None:
                    yield f"Sorry, the story could not be written: {update['error']}"
                    return
                if not finished and time.monotonic() - shown < self.update_interval_s:
                    continue  # shown a moment ago: the next update brings these tokens too
                text = self.tokenizer.decode(update["tokens"], skip_special_tokens=True)
                if finished or (text and not text.endswith("\ufffd")):  # not half a character
                    shown = time.monotonic()
                    yield prompt + text
        finally:
            with self._lock:
                self._stories.pop(story_id, None)
            if not finished:  # the reader left (the page cancels the generator), or the story timed out
                self._send({"cancel": story_id})


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
    transformers_logging.disable_progress_bar()  # no "Loading" bars in the server's log
    try:
        teller = StoryTeller(args.model, revision=args.revision, int8=args.int8)
    except Exception as error:  # missing, damaged (truncated weights, empty tokenizer) or not an SLM model for int8
        print(f"error: cannot load the model {args.model!r}: {first_line(error)}", file=sys.stderr)
        sys.exit(2)
    code = "slm_hf" if HAVE_SLM_HF else "the model's remote code"
    weights = "int8" if args.int8 else "fp32"
    print(f"loaded {args.model}@{args.revision or 'latest'} with {code}, {weights} weights", file=sys.stderr,
          flush=True)
    theme = gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    with teller:  # launch() returns on Ctrl-C; then the story writer ends too
        build_demo(teller).launch(server_name=args.host, server_port=args.port, theme=theme, show_error=True)


if __name__ == "__main__":
    main()
