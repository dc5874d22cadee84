"""An OpenAI-compatible HTTP server for a trained model folder: `transformers serve` on its Llama export.

    folder = served_folder("runs/cpu-demo/final")   # the Llama export, made once, reused while up to date
    serve(folder, host="127.0.0.1", port=8000)      # `transformers serve <folder> --continuous-batching`, until stopped

We do not write our own server. `transformers serve` (transformers' `serve` extra: fastapi, uvicorn, pydantic,
openai) answers `/v1/completions` and `/v1/chat/completions` and batches concurrent requests with continuous
batching. It builds the model with `getattr(transformers, config.architectures[0])`, so it cannot run the
remote-code `SLMForCausalLM`; our architecture is a Llama (slm_hf.exporting.to_llama), so it serves the Llama export,
whose tokenizer puts `<|endoftext|>` before every prompt, as `slm_hf.generation` does: the same prompt string gives
the same greedy story through the server as through `generate()`. Three additions: requests are kept inside the
model's context (`context_bound_completions`); past `max_stories + max_queue` requests in progress, a new one is
refused at once (429, one line) rather than queued without bound; a body that is not UTF-8 is refused naming the
byte (400), rather than as "error parsing the body" (`RequestGate`).

The export goes into a cache folder named by a fingerprint of what it is made from (the model folder's config,
weights and tokenizer files, and the exporter's code): a second start reuses it, a retrained model or a changed
exporter makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import SLMError

# The files of a model folder that its Llama export is made from.
_EXPORT_INPUTS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")


def default_cache_dir() -> Path:
    """Where the Llama exports for serving live: $SLM_HF_CACHE/serve, else ~/.cache/slm_hf/serve."""
    root = os.environ.get("SLM_HF_CACHE") or Path.home() / ".cache" / "slm_hf"
    return Path(root).expanduser() / "serve"


def check_serve_dependencies() -> None:
    """Raise `SLMError` naming the extra to install when `transformers serve` lacks one of its packages."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise SLMError("serving needs fastapi, uvicorn, pydantic and openai: pip install 'slm-hf[serve]'")


def fingerprint(model_dir: str | os.PathLike) -> str:
    """A content hash of what the Llama export of `model_dir` is made from (files and exporter code)."""
    from .exporting import to_llama

    folder = Path(model_dir)
    digest = hashlib.sha256()
    names = [name for name in _EXPORT_INPUTS if (folder / name).is_file()]
    names += sorted(path.name for path in folder.iterdir() if path.name.endswith(_WEIGHT_SUFFIXES))
    for name in [*names, to_llama.__file__]:
        path = folder / name
        digest.update(Path(name).name.encode() + b"\0")
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def served_folder(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The Llama export of the SLM model folder `model_dir` under `cache_dir`: made now if no up-to-date one is there.

    Raises:
        SLMError: `model_dir` is not an SLM model folder, or its model is not Llama-compatible.
    """
    from .exporting.to_llama import export_llama, read_slm_config

    model_dir = Path(model_dir).expanduser()
    if not model_dir.exists():
        raise SLMError(f"model folder {model_dir} does not exist")
    if not model_dir.is_dir():
        raise SLMError(f"{model_dir} is not a model folder; pass a training run's final/ folder")
    read_slm_config(model_dir)  # an SLM model folder, or one clear line
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = cache_dir / f"{model_dir.resolve().name}-llama-{fingerprint(model_dir)}"
    if not (folder / "config.json").is_file():  # export_llama renames a complete folder into place
        export_llama(model_dir, folder, overwrite=True, write_card=False)
    return folder


# Continuous batching keeps its KV cache in pages of this many tokens (transformers' ContinuousBatchingConfig default).
_CACHE_PAGE_TOKENS = 256
# Tokens one forward pass of the batching loop may take: prompts being read plus one token per story being written.
_BATCH_TOKENS = 2048


def serve(folder: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000,
          continuous_batching: bool = True, max_stories: int = 32, max_queue: int = 64) -> None:
    """Run `transformers serve` on the Llama folder `folder` in this process until it is stopped (Ctrl-C, SIGTERM).

    The API's model name is `str(folder)`. `/v1/completions` keeps every request inside the model's context
    (`context_bound_completions`). With continuous batching, the KV cache holds `max_stories` whole contexts: left to
    itself, the server sizes it to 90% of the free memory (on a CPU, the machine's RAM), whatever the model; requests
    past that many wait for room, up to `max_queue` of them; past that, a new request is refused (`RequestGate`).
    """
    from transformers import AutoConfig
    from transformers.cli import serve as serve_cli
    from transformers.cli.serving import completion, server

    check_serve_dependencies()
    if max_stories < 1:
        raise SLMError(f"max_stories must be at least 1, got {max_stories}")
    if max_queue < 0:
        raise SLMError(f"max_queue must be at least 0, got {max_queue}")
    context = AutoConfig.from_pretrained(folder).max_position_embeddings
    cache_pages = max_stories * -(-context // _CACHE_PAGE_TOKENS)
    # Serve.run builds its completion handler and its app from these two module attributes: ours for the run.
    handler, build_server = completion.CompletionHandler, server.build_server
    completion.CompletionHandler = context_bound_completions(folder, context)

    def build_gated_server(*args, **kwargs):
        app = build_server(*args, **kwargs)
        app.add_middleware(RequestGate, limit=max_stories + max_queue)  # outermost: before the server's own
        return app

    server.build_server = build_gated_server
    try:
        serve_cli.Serve(force_model=str(folder), continuous_batching=continuous_batching, host=host, port=port,
                        log_level="warning", cb_num_blocks=cache_pages, cb_max_batch_tokens=_BATCH_TOKENS)
    finally:
        completion.CompletionHandler, server.build_server = handler, build_server


class RequestGate:
    """ASGI middleware in front of `transformers serve` for two answers it lacks, each one line, `{"detail": ...}` as
    its own refusals:

    - a full server: past `limit` requests in progress (POST: being written or waiting for room in the batch), a new
      one is refused at once with 429 (the status OpenAI's API gives an overloaded engine), and the others go on;
      `transformers serve` itself queues without bound (its CLI sets no `ContinuousBatchingConfig.max_queue_size`,
      and that queue blocks the caller when full);
    - a body that is not UTF-8: 400 naming the first bad byte, rather than the server's "error parsing the body".
    """

    def __init__(self, app, limit: int):
        self.app, self.limit, self.in_progress = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.in_progress >= self.limit:
            return await _answer(send, 429, f"the server is full ({self.in_progress} requests in progress, its "
                                            "limit): try again in a moment")
        self.in_progress += 1  # one event loop: no lock needed
        try:
            body = await _read_body(receive)
            if body is None:  # the client went away before sending it all
                return None
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as error:
                return await _answer(send, 400, f"the request body is not UTF-8 text (byte 0x{body[error.start]:02x} "
                                                f"at offset {error.start}): send JSON encoded as UTF-8")
            return await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_progress -= 1


async def _read_body(receive) -> bytes | None:
    """The whole body of an ASGI HTTP request, or None when the client disconnects first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """An ASGI `receive` that gives the app `body` (already read) and then what the client sends next."""
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def context_bound_completions(folder: str | os.PathLike, context: int):
    """`transformers serve`'s `/v1/completions` handler, bounded by `context`, the positions of the model in `folder`.

    Unchanged, the server asks for at least 1,024 new tokens when a request names no `max_tokens`, and honours any
    `max_tokens`, so a story runs past the positions the model was trained on (128 in the tiny model) into noise.
    Here a request without `max_tokens` gets the room its prompt leaves (as `slm_hf.generation` gives it), and one
    whose `max_tokens` does not fit is refused with one line (status 400), as the server refuses a prompt too long.
    """
    from transformers import AutoTokenizer
    from transformers.cli.serving.completion import CompletionHandler

    tokenizer = AutoTokenizer.from_pretrained(folder)

    class ContextBoundCompletionHandler(CompletionHandler):
        def _build_generation_kwargs(self, body: dict, model_generation_config) -> dict:
            kwargs = super()._build_generation_kwargs(body, model_generation_config)
            prompt = body.get("prompt")
            if not isinstance(prompt, str):  # refused after this, with the server's own message
                return kwargs
            prompt_tokens = len(tokenizer(prompt)["input_ids"])  # with the start token, as the server encodes it
            room = context - prompt_tokens
            requested = body.get("max_tokens")
            if requested is None:
                kwargs["max_new_tokens"] = max(1, min(kwargs["max_new_tokens"], room))
            elif int(requested) < 1:
                raise ValueError(f"max_tokens must be at least 1, got {requested}")
            elif int(requested) > room > 0:
                raise ValueError(
                    f"max_tokens {requested} is past the model's context: the prompt has {prompt_tokens} tokens and "
                    f"the model reads at most {context}, so at most {room} new tokens fit"
                )
            return kwargs

    return ContextBoundCompletionHandler
