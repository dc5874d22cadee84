"""The OpenAI-compatible server (scripts/serve.py: `transformers serve` on the model's Llama export), localhost only,
through the real `openai` client: the same greedy story as the model's own `generate()` from the same prompt string,
streamed and not; bad requests answered with one clear message each, and the server answering after them.

Needs the `serve` extra (fastapi, uvicorn, pydantic, openai); skipped without it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from share_fixtures import REPO, offline_env, trained_run

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

PROMPT = "Once upon a time, there was a little cat named Tom."
CONTEXT = 128  # the tiny model's (configs/tiny.yaml)
START_TIMEOUT_S = 300  # the model loads and the continuous-batching engine starts: a minute on a busy 2-core machine


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    return trained_run(tmp_path_factory) / "final"


@pytest.fixture(scope="module")
def export(final, tmp_path_factory):
    """The Llama folder the server runs, made here first: the script must reuse it, not export again."""
    from slm_hf.serving import served_folder

    return served_folder(final, tmp_path_factory.mktemp("serve-cache"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _models(base_url: str):
    with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def server(final, export, tmp_path_factory):
    """(base_url, model name) of scripts/serve.py on 127.0.0.1, started on a free port (another on a clash)."""
    log_dir = tmp_path_factory.mktemp("serve-log")
    export_time = (export / "model.safetensors").stat().st_mtime_ns
    for attempt in range(3):
        port = _free_port()
        log = log_dir / f"serve-{attempt}.log"
        with open(log, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, str(REPO / "scripts" / "serve.py"), "--model", str(final), "--port", str(port),
                 "--cache", str(export.parent)],
                stdout=log_file, stderr=subprocess.STDOUT, env=offline_env(), cwd=REPO,
            )
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            try:
                _models(base_url)
                break
            except OSError:
                time.sleep(0.5)
        if process.poll() is None and time.monotonic() < deadline:
            break
        process.kill()
        process.wait()
        if "address already in use" not in log.read_text().lower():
            pytest.fail(f"scripts/serve.py did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")
    else:
        pytest.fail("scripts/serve.py found no free port in 3 tries")
    try:
        assert f"as model {str(export)!r}" in log.read_text()  # the export made above, reused...
        assert (export / "model.safetensors").stat().st_mtime_ns == export_time  # ...not written again
        yield base_url, str(export)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0], api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def greedy_story(final):
    """The model's own greedy continuation of PROMPT (slm_hf.generation, the SLM classes), as text."""
    from slm_hf.generation import GenerationSettings, generate_ids, load_pretrained

    model, tokenizer = load_pretrained(final, device="cpu")
    (ids,) = generate_ids(model, tokenizer, PROMPT, GenerationSettings(max_new_tokens=24, temperature=0))
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_the_openai_client_gets_the_story_of_generate(server, client, greedy_story):
    model = server[1]
    assert len(greedy_story) > 10
    answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
    assert answer.choices[0].text == greedy_story
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
    (b'{"prompt": "Once \xff\xfe upon", "max_tokens": 8}', 400, "error parsing the body"),
    ({"prompt": 42, "max_tokens": 8}, 400, "prompt must be a string"),
])
def test_a_bad_request_gets_one_clear_answer_and_the_server_goes_on(server, client, body, status, message):
    base_url, model = server
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
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_serve", REPO / "bench" / "bench_serve.py")
    bench_serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_serve)
    base_url, model = server
    result = bench_serve.round_of(lambda: bench_serve.ServerClient(base_url, model, 8), clients=4, requests=2,
                                  time_limit_s=120)
    assert (result["completed"], result["failed"], result["refused"]) == (8, [], [])
    assert result["tokens"] > 0 and result["ttft_p95_s"] <= result["end_p95_s"]
