"""The OpenAI-compatible server (scripts/serve.py: `transformers serve` on the model's Llama export), localhost only,
through the real `openai` client: the same greedy story as the model's own `generate()` from the same prompt string,
streamed and not; bad requests answered with one clear message each, and the server answering after them.

Needs the `serve` extra (fastapi, uvicorn, pydantic, openai); skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from other_runtimes import transformers4_python
from share_fixtures import BLOCK_SLM_HF, REPO, offline_env, trained_run

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

PROMPT = "Once upon a time, there was a little cat named Tom."
CONTEXT = 128  # the tiny model's (configs/tiny.yaml)
MAX_STORIES, MAX_QUEUE = 4, 4  # the server's: a full server is quick to make


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    return trained_run(tmp_path_factory) / "final"


@pytest.fixture(scope="module")
def export(final, tmp_path_factory):
    """The Llama folder the server runs, made here first: the script must reuse it, not export again."""
    from slm_hf.serving import served_folder

    return served_folder(final, tmp_path_factory.mktemp("serve-cache"))


def _bench_serve():
    """bench/bench_serve.py: its server start-up and stop, and its load round."""
    spec = importlib.util.spec_from_file_location("bench_serve", REPO / "bench" / "bench_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(final, export, tmp_path_factory):
    """(base_url, model name, process) of scripts/serve.py on 127.0.0.1, on a free port, taking MAX_STORIES stories
    at once and MAX_QUEUE waiting."""
    bench_serve = _bench_serve()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    export_time = (export / "model.safetensors").stat().st_mtime_ns
    process, models_url = bench_serve.start(
        lambda port: [sys.executable, str(REPO / "scripts" / "serve.py"), "--model", str(final), "--port", str(port),
                      "--cache", str(export.parent), "--max-stories", str(MAX_STORIES), "--max-queue", str(MAX_QUEUE)],
        lambda port: f"http://127.0.0.1:{port}/v1/models", log)
    try:
        assert f"as model {str(export)!r}" in log.read_text()  # the export made above, reused...
        assert (export / "model.safetensors").stat().st_mtime_ns == export_time  # ...not written again
        yield models_url.rsplit("/", 1)[0], str(export), process
    finally:
        bench_serve.stop(process)


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0], api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def slm(final):
    from slm_hf.generation import load_pretrained

    return load_pretrained(final, device="cpu")


@pytest.fixture(scope="module")
def greedy_story(slm):
    """The model's own greedy continuation of PROMPT (slm_hf.generation, the SLM classes), as text."""
    from slm_hf.generation import GenerationSettings, generate_ids

    model, tokenizer = slm
    (ids,) = generate_ids(model, tokenizer, PROMPT, GenerationSettings(max_new_tokens=24, temperature=0))
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_the_openai_client_gets_the_story_of_generate(server, client, greedy_story, slm):
    from slm_hf.generation import encode_prompt

    model, prompt_ids = server[1], encode_prompt(slm[1], PROMPT)
    assert len(greedy_story) > 10
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
    assert answer.choices[0].text == greedy_story
    assert answer.usage.prompt_tokens == len(prompt_ids)  # the prompt string read as generate() reads it
    pieces = [chunk.choices[0].text for chunk in client.completions.create(
        model=model, prompt=PROMPT, max_tokens=24, temperature=0, stream=True) if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 3, f"not streamed token by token: {pieces!r}"
    assert "".join(pieces) == greedy_story


def _post(base_url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(f"{base_url}/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": "Lily had a ball. " * 60, "max_tokens": 8}, 400, "tokens, but the model takes at most"),
    ({"prompt": PROMPT, "max_tokens": 10**6}, 400, "past the model's context: the prompt has 14 tokens"),
    ({"prompt": PROMPT, "max_tokens": 0}, 400, "max_tokens must be at least 1"),
    ({"prompt": "", "max_tokens": 8}, 200, ""),  # a story from nothing: after its start token
    ({"prompt": PROMPT}, 200, ""),  # no max_tokens: up to the end of the context at most, not past it
    (b'{"prompt": "Once \xff\xfe upon", "max_tokens": 8}', 400, "not UTF-8 text (byte 0xff at offset"),
    ({"prompt": 42, "max_tokens": 8}, 400, "prompt must be a string"),
])
def test_a_bad_request_gets_one_clear_answer_and_the_server_goes_on(server, client, body, status, message):
    base_url, model, _ = server
    raw = body if isinstance(body, bytes) else json.dumps({"model": model, **body}).encode()
    if isinstance(body, bytes):
        raw = raw.replace(b"{", b'{"model": ' + json.dumps(model).encode() + b", ", 1)
    code, text = _post(base_url, raw)
    assert code == status, text
    assert message.lower() in text.lower()
    assert "Traceback" not in text
    if code == 200:
        assert json.loads(text)["usage"]["total_tokens"] <= CONTEXT
    after = client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0)
    assert after.choices[0].text


def test_a_full_server_refuses_a_request_with_one_line_and_goes_on(server, client):
    """MAX_STORIES + MAX_QUEUE requests held in progress (their bodies not all sent yet): the next one is refused at
    once, 429 with one line; once they are gone, the server answers again."""
    base_url, model, _ = server
    address = urllib.parse.urlsplit(base_url)
    request = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": 2}).encode()
    held = []
    try:
        for _ in range(MAX_STORIES + MAX_QUEUE):
            connection = socket.create_connection((address.hostname, address.port), timeout=60)
            connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n{" % len(request))
            held.append(connection)
        code, text = _answer_within(base_url, request, lambda code: code != 200)  # until the server counted them
        assert code == 429 and "the server is full" in text and "Traceback" not in text, (code, text)
        assert len(text.splitlines()) == 1
    finally:
        for connection in held:
            connection.close()
    code, text = _answer_within(base_url, request, lambda code: code == 200)  # until it saw them go
    assert code == 200, text


def _answer_within(base_url: str, body: bytes, wanted, tries: int = 100) -> tuple[int, str]:
    """The first answer to `body` whose status is `wanted`, or the last of `tries` (bounded, a tenth of a second
    apart)."""
    for _ in range(tries):
        code, text = _post(base_url, body)
        if wanted(code):
            break
        time.sleep(0.1)
    return code, text


def test_the_served_tokenizer_loads_without_a_question_and_starts_with_the_start_token(export, final, monkeypatch):
    """`AutoTokenizer.from_pretrained` on the served folder: a plain PreTrainedTokenizerFast, no remote-code
    question (input() would fail here), and the prompt string encoded as generate() encodes it."""
    import builtins

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from slm_hf.generation import encode_prompt
    from slm_hf.tokenization import load_tokenizer

    monkeypatch.setattr(builtins, "input", lambda *args: pytest.fail(f"asked: {args}"))
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer(PROMPT)["input_ids"] == encode_prompt(load_tokenizer(final), PROMPT)


def test_a_small_load_round_completes_with_no_failure(server):
    """bench/bench_serve.py's round, small and bounded: 4 concurrent streamed clients, 2 stories each."""
    bench_serve = _bench_serve()
    base_url, model, _ = server
    result = bench_serve.round_of(lambda: bench_serve.ServerClient(base_url, model, 8), clients=4, requests=2,
                                  time_limit_s=120)
    assert (result["completed"], result["failed"], result["refused"]) == (8, [], [])
    assert result["tokens"] > 0 and result["ttft_p95_s"] <= result["end_p95_s"]


def test_the_server_holds_a_cache_of_its_own_size_not_of_the_machine(server):
    """Left to itself, continuous batching sizes its KV cache to 90% of the free memory (14 GiB on a 24 GiB machine,
    for a model of a few MB); serve() sizes it to 32 of the model's contexts. The bound is far above that (the
    server's Python, torch, fastapi and the model: a few hundred MiB) and far below the unbounded cache."""
    assert _bench_serve().resident_mib(server[2]) < 3 * 1024


LOAD_TOKENIZER = BLOCK_SLM_HF + """
import json, transformers
from transformers import AutoTokenizer
# transformers 5 reads the model's config.json before tokenizer_config.json: its auto_map (the model's code) makes it
# ask whether to run that code, unless told not to. transformers 4 reads tokenizer_config.json's tokenizer_class first.
no_code = {"trust_remote_code": False} if int(transformers.__version__.split(".")[0]) >= 5 else {}
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], **no_code)
print(type(tokenizer).__name__, json.dumps(tokenizer("Once upon a time")["input_ids"]))
"""


@pytest.mark.parametrize("runtime", ["transformers 5", "transformers 4"])
def test_the_model_folders_tokenizer_loads_without_slm_hf_and_without_a_question(final, slm, runtime):
    """The model folder's tokenizer where slm_hf is not importable, without running the folder's code, stdin closed
    (a question fails the test instead of hanging it): a plain fast tokenizer reading a prompt as the model's own."""
    python = sys.executable if runtime == "transformers 5" else transformers4_python()
    done = subprocess.run([str(python), "-c", LOAD_TOKENIZER, str(final)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=offline_env(), cwd=final.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Do you wish to run the custom code" not in done.stdout + done.stderr
    name, ids = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert name in ("PreTrainedTokenizerFast", "TokenizersBackend")  # one class in transformers 5, two names
    assert json.loads(ids) == slm[1]("Once upon a time")["input_ids"]
