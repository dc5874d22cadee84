"""The Gradio demo (app.py): the story function itself, then the real page in a headless Chromium (Playwright
driving Debian's chromium): type a prompt, press the button, watch the story stream in; an over-long prompt gets
a polite message; two users at once are both served at the same time (one batch).

The browser tests need `chromium` (apt-get install chromium) and the `playwright` package (no browser download:
it drives the system chromium). Without them they are skipped, unless SLM_REQUIRE_BROWSER=1 (CI), which turns
the skip into a failure.
"""

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from share_fixtures import REPO, offline_env, python_without_slm_hf, trained_run

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "Once upon a time"
# Reports every distinct value the story box shows, once per animation frame, to the test (window.__story, a Python
# function exposed to the page: the values of all pages arrive in one list, in the order they were shown).
RECORD_STORY_BOX = """() => {
    let last = null;
    const tick = () => {
        const box = document.querySelector('#story textarea');
        if (box && box.value !== last) {
            last = box.value;
            window.__story(box.value);
        }
        requestAnimationFrame(tick);
    };
    tick();
}"""
# The story is done when Gradio's status tracker over the story box is hidden again (it shows while the request is
# queued or streaming) and the box holds text.
STORY_DONE = """() => {
    const box = document.querySelector('#story textarea');
    const tracker = document.querySelector('#story .wrap');
    return box && box.value.length > 0 && (!tracker || tracker.classList.contains('hide'));
}"""


def _load_module(path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_app_module():
    return _load_module(REPO / "app.py", "slm_demo_app")


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    return trained_run(tmp_path_factory) / "final"


@pytest.fixture(scope="module")
def teller(final):
    """The story function with its story writer; every token its update (interval 0), so the checks see each step."""
    with _load_app_module().StoryTeller(str(final), update_interval_s=0) as teller:
        yield teller


def told(teller, *requests) -> list[list[str]]:
    """Each request's (prompt, max_new_tokens, temperature, top_k) story steps, the requests sent at once."""
    async def steps(request):
        return [step async for step in teller.tell(*request)]

    async def all_at_once():
        return await asyncio.gather(*map(steps, requests))

    return asyncio.run(all_at_once())


# ----------------------------------------------------------------------------------------- the story function
def test_the_story_grows_token_by_token(teller):
    (steps,) = told(teller, (PROMPT, 40, 0.8, 50))
    assert len(steps) > 3
    assert all(later.startswith(earlier) for earlier, later in zip(steps, steps[1:]))
    assert steps[0].startswith(PROMPT) and len(steps[-1]) > len(PROMPT)


def test_stories_told_at_once_are_each_the_greedy_story_of_generate(teller, final):
    """Three stories written in one batch (continuous batching), each greedy (top-k 1): each is the model's own
    `generate()` story from the same prompt string."""
    from slm_hf.generation import GenerationSettings, generate_ids, load_pretrained

    model, tokenizer = load_pretrained(final, device="cpu")
    prompts = [PROMPT, "Lily and her mom went to the park.", ""]
    stories = told(teller, *[(prompt, 24, 0.8, 1) for prompt in prompts])
    for prompt, steps in zip(prompts, stories):
        (ids,) = generate_ids(model, tokenizer, prompt, GenerationSettings(max_new_tokens=24, temperature=0))
        assert steps[-1] == prompt + tokenizer.decode(ids, skip_special_tokens=True)
        assert len(steps) > 3  # streamed


def test_the_sliders_start_at_the_model_generation_config(teller, final):
    from transformers import GenerationConfig

    saved = GenerationConfig.from_pretrained(final)  # training wrote the story sampling there
    assert teller.slider_values() == (saved.max_new_tokens, saved.temperature, saved.top_k)


def test_a_story_shows_at_most_one_update_per_interval_and_ends_the_same(teller):
    """The page's updates of a story are at least update_interval_s apart (the last one, the whole story, comes at
    once); fewer updates, the same story (greedy, top-k 1)."""
    async def timed_steps(request):
        return [(time.monotonic(), step) async for step in teller.tell(*request)]

    request = (PROMPT, 120, 0.8, 1)
    (every_token,) = told(teller, request)
    teller.update_interval_s = 0.1
    try:
        throttled = asyncio.run(timed_steps(request))
    finally:
        teller.update_interval_s = 0
    assert throttled[-1][1] == every_token[-1] and len(throttled) < len(every_token)
    times = [when for when, _ in throttled[:-1]]
    assert all(later - earlier >= 0.09 for earlier, later in zip(times, times[1:])), times


def test_the_int8_story_teller_tells_stories(final, teller):
    with _load_app_module().StoryTeller(str(final), int8=True) as int8:
        (steps,) = told(int8, (PROMPT, 10, 0.8, 50))
        layers = int8.model_facts["linear_layers"]
    assert steps[0].startswith(PROMPT) and len(steps[-1]) > len(PROMPT)
    fp32_layers = teller.model_facts["linear_layers"]  # the default: fp32
    assert list(fp32_layers) == ["Linear"] and layers == {"SLMInt8Linear": fp32_layers["Linear"]}  # each converted


def test_the_story_writer_ends_with_the_page_however_the_page_ends(final):
    """The model writes in a process of its own; killed (SIGKILL: no clean-up of any kind), the page's process takes
    its story writer with it: the writer ends when its stdin closes."""
    import psutil

    page = subprocess.run([sys.executable, "-c", KILLED_PAGE, str(REPO / "app.py"), str(final)], capture_output=True,
                          text=True, env=offline_env(), timeout=300)
    assert page.returncode == -9, page.stderr[-2000:]
    writer = psutil.Process(int(page.stdout.split()[-1]))
    try:
        writer.wait(timeout=60)
    except psutil.TimeoutExpired:
        writer.kill()
        pytest.fail("the story writer outlived its page by 60 s")


KILLED_PAGE = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("page", sys.argv[1])
page = importlib.util.module_from_spec(spec)
spec.loader.exec_module(page)
teller = page.StoryTeller(sys.argv[2])
print(teller.writer.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_story_writer_that_dies_ends_its_stories_with_a_message(final):
    """The writer's process killed mid-story: that story ends with a message, a new one gets one at once."""
    import signal

    async def story_then_kill(teller):
        steps = []
        async for step in teller.tell(PROMPT, 400, 0.8, 50):
            steps.append(step)
            if len(steps) == 2:
                os.kill(teller.writer.pid, signal.SIGKILL)
        return steps

    with _load_app_module().StoryTeller(str(final), update_interval_s=0) as doomed:
        steps = asyncio.run(story_then_kill(doomed))
        doomed.writer.wait(timeout=30)
        (after,) = told(doomed, (PROMPT, 40, 0.8, 50))
    assert "Sorry, the story could not be written: the story writer has stopped" in steps[-1]
    assert after == ["Sorry, the story teller has stopped: please try again later."]


def test_the_page_reads_a_prompt_as_generate_and_the_server_do(teller, final, tmp_path):
    """One start-of-text rule for every runtime, from the prompt string: `<|endoftext|>` and then the prompt."""
    from transformers import AutoTokenizer

    from slm_hf.exporting import export_model
    from slm_hf.generation import encode_prompt

    llama_tokenizer = AutoTokenizer.from_pretrained(export_model(final, "llama", tmp_path / "llama"))
    for prompt in (PROMPT, "", "  Spaces,\ttabs and émoji 🙂"):
        ids = teller.check_prompt(prompt)[0]
        assert ids == encode_prompt(teller.tokenizer, prompt) == llama_tokenizer(prompt)["input_ids"]
        assert ids[0] == teller.tokenizer.eos_token_id


def test_an_over_long_prompt_gets_a_polite_message(teller):
    (message,), (too_many_characters,) = told(teller, ("Lily had a ball. " * 60, 40, 0.8, 50),
                                              ("x" * 5000, 40, 0.8, 50))
    assert "please shorten it" in message and str(teller.context - 1) in message
    assert "please shorten it" in too_many_characters


@pytest.mark.parametrize("prompt, settings, message", [
    ("Once upon a \ud800 time", (40, 0.8, 50), "not valid text"),  # a lone surrogate: JSON carries it, UTF-8 cannot
    (PROMPT, (0, 0.8, 50), "Length must be"),
    (PROMPT, (40, 0.0, 50), "Temperature must be"),
    (PROMPT, (40, 0.8, -1), "Top-k must be"),
    (PROMPT, ("many", 0.8, 50), "Length must be"),
])
def test_a_bad_request_to_the_story_function_gets_one_message(teller, prompt, settings, message):
    ((answer,),) = told(teller, (prompt, *settings))
    assert message in answer


def test_an_empty_prompt_and_a_length_past_the_context_still_tell_a_story(teller):
    steps, long = told(teller, ("", 40, 0.8, 50), (PROMPT, 10**6, 0.8, 50))
    assert steps and steps[-1]  # a story from nothing, after the start token
    story = long[-1]
    new_tokens = len(teller.tokenizer.encode(story[len(PROMPT):], add_special_tokens=False))
    assert 0 < new_tokens <= teller.context  # stopped at the end of the context (or the story's end)


def test_a_full_queue_refuses_a_request_with_a_clear_message_and_serves_the_others(teller):
    """One story at a time (max_stories=1) and one waiting (queue_size=1): a third request is refused ("Queue is
    full"), the two others are told. The first story waits on a gate the test opens, so the queue is full for as
    long as needed."""
    import threading

    from gradio_client import Client
    from gradio_client.utils import QueueError, Status

    gate = threading.Event()

    class GatedTeller:
        max_stories = 1

        def slider_values(self):
            return teller.slider_values()

        async def tell(self, *args):
            await asyncio.to_thread(gate.wait, 120)
            async for step in teller.tell(*args):
                yield step

    demo = _load_app_module().build_demo(GatedTeller(), queue_size=1)
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        jobs = []
        for wanted in (Status.PROCESSING, Status.IN_QUEUE):
            jobs.append(client.submit(PROMPT, 16, 0.8, 50, api_name="/tell"))
            for _ in range(600):  # bounded: up to a minute for the job to reach its state
                if jobs[-1].status().code == wanted:
                    break
                time.sleep(0.1)
            assert jobs[-1].status().code == wanted
        refused = client.submit(PROMPT, 16, 0.8, 50, api_name="/tell")
        with pytest.raises(QueueError, match="Queue is full"):
            refused.result(timeout=60)
        gate.set()
        for job in jobs:
            assert job.result(timeout=120).startswith(PROMPT)
    finally:
        gate.set()
        demo.close()


# ------------------------------------------------------------------------------------------------- the browser
def _browser_or_skip():
    """Playwright's sync API and the path of the system chromium; skip (or fail in CI) when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the playwright package is not installed (pip install playwright; no browser download needed)"
    if chromium is None:
        problem = "chromium is not installed (apt-get install chromium, or run scripts/install_browser.sh)"
    if problem:
        if os.environ.get("SLM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SLM_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    return sync_playwright, chromium


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    sync_playwright, chromium = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app_url(final, browser, tmp_path_factory):
    """`python app.py --model final/ --port N`, running until the module's tests are done."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    with log.open("w") as output:
        server = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", str(final), "--port", str(port)],
                                  stdout=output, stderr=subprocess.STDOUT, env=offline_env(), cwd=REPO)
    yield from _serving(server, f"http://127.0.0.1:{port}/", log)


def _serving(server, url, log):
    """Yield `url` once the app behind it answers (bounded), and stop the app afterwards."""
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                pytest.fail(f"app.py exited with status {server.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer on {url} within 180 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


class StoryEvents:
    """The story-box values of every page opened with `open`, in the order the pages showed them."""

    def __init__(self, browser, url):
        self.browser, self.url, self.events = browser, url, []

    def open(self, name: str):
        page = self.browser.new_page()
        page.expose_function("__story", lambda value: self.events.append((name, value)))
        page.goto(self.url, wait_until="domcontentloaded")
        page.locator("#prompt textarea").wait_for(timeout=60_000)
        page.evaluate(RECORD_STORY_BOX)
        return page

    def seen(self, name: str) -> list[str]:
        return [value for page, value in self.events if page == name and value]


def _wait_until_done(page, timeout_s: float = 90) -> None:
    """Wait for the page to show its story finished (an event of the page, not a quiet time)."""
    page.wait_for_function(STORY_DONE, timeout=timeout_s * 1000)


SPACE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def space_url(final, browser, tmp_path_factory):
    """app.py as a Space runs it: alone in its folder, MODEL_ID / MODEL_REVISION naming a Hub repository (here a local
    Hub cache layout, offline), SLM_INT8=1, in a virtual environment where slm_hf is not installed, so the model's own
    remote code loads."""
    home = tmp_path_factory.mktemp("space-home")
    repo = home / "hub" / "models--someone--slm-space"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SPACE_COMMIT)
    shutil.copytree(final, repo / "snapshots" / SPACE_COMMIT)
    port = _free_port()
    log = home / "app.log"
    env = offline_env(HF_HOME=str(home), HF_MODULES_CACHE=str(home / "modules"), MODEL_ID="someone/slm-space",
                      MODEL_REVISION=SPACE_COMMIT, SLM_INT8="1", GRADIO_SERVER_PORT=str(port))
    env.pop("PYTHONPATH")
    space = home / "space"  # a Space repository holds app.py, not the slm_hf package
    space.mkdir()
    shutil.copy2(REPO / "app.py", space / "app.py")
    python = python_without_slm_hf(home / "venv")
    with log.open("w") as output:
        server = subprocess.Popen([str(python), str(space / "app.py")], stdout=output, stderr=subprocess.STDOUT,
                                  env=env, cwd=space)
    for url in _serving(server, f"http://127.0.0.1:{port}/", log):
        yield url, log


def test_the_space_path_serves_a_hub_model_as_remote_code_with_int8(browser, space_url):
    url, log = space_url
    assert "loaded someone/slm-space@" + SPACE_COMMIT + " with the model's remote code, int8 weights" in (
        log.read_text()), log.read_text()
    events = StoryEvents(browser, url)
    page = events.open("visitor")
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#tell").click()
    _wait_until_done(page)
    seen = events.seen("visitor")
    assert seen[-1].startswith(PROMPT) and len(seen[-1]) > len(PROMPT) + 20 and len(seen) >= 3
    page.close()


def test_a_story_streams_into_the_page(browser, app_url):
    events = StoryEvents(browser, app_url)
    page = events.open("reader")
    assert "Tiny story teller" in page.title()
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#tell").click()
    _wait_until_done(page)
    seen = events.seen("reader")
    assert seen[-1].startswith(PROMPT) and len(seen[-1]) > len(PROMPT) + 20
    assert len(seen) >= 3, f"the story arrived in one piece, not streamed: {seen!r}"
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:]))  # it only ever grew
    page.close()


def test_an_example_prompt_and_an_over_long_prompt_in_the_page(browser, app_url):
    from playwright.sync_api import expect

    events = StoryEvents(browser, app_url)
    page = events.open("reader")
    page.get_by_text("The big red ball rolled down the hill.").first.click()
    expect(page.locator("#prompt textarea")).to_have_value("The big red ball rolled down the hill.", timeout=15_000)
    page.locator("#prompt textarea").fill("Lily had a ball. " * 60)
    page.locator("#tell").click()
    _wait_until_done(page)
    (message,) = events.seen("reader")
    assert "please shorten it" in message
    page.close()


def test_two_users_at_once_are_served_side_by_side(browser, app_url):
    """Both stories are written in one batch: the second user's story starts streaming while the first one is still
    streaming its first half (one story at a time, it would start only after the first had streamed). The two users
    click within milliseconds: the tiny test model writes its whole story (its context is 64 tokens) in a fraction
    of a second, faster than two clicks that each wait for their button to settle."""
    prompts = {"first": "Tom had a dog.", "second": "Mia saw a bird."}
    events = StoryEvents(browser, app_url)
    pages = {name: events.open(name) for name in prompts}
    for name, page in pages.items():
        page.locator("#prompt textarea").fill(prompts[name])
    for page in pages.values():  # both at once: no wait for the button to settle between the two clicks
        page.locator("#tell").dispatch_event("click")
    for name, page in pages.items():
        _wait_until_done(page)
        story = events.seen(name)[-1]
        assert story.startswith(prompts[name]) and len(story) > len(prompts[name]) + 20
    order = [(name, value) for name, value in events.events if value]  # as the two pages showed them
    first_length = len(events.seen("first")[-1])
    first_half_done = next(index for index, (name, value) in enumerate(order)
                           if name == "first" and len(value) >= 0.5 * first_length)
    second_started = next(index for index, (name, _) in enumerate(order) if name == "second")
    assert second_started < first_half_done, f"the second waited for the first: {[name for name, _ in order]}"
    for page in pages.values():
        page.close()


def test_a_small_load_round_through_the_page_completes_with_no_failure(app_url, final):
    """bench/bench_serve.py's app rounds, small and bounded: 4 concurrent clients, 2 streamed greedy stories each,
    through the page's HTTP API and through gradio_client; every story completes, each the same greedy story."""
    from transformers import PreTrainedTokenizerFast

    bench_serve = _load_module(REPO / "bench" / "bench_serve.py", "bench_serve")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(final)
    for client in (bench_serve.AppClient, bench_serve.AppGradioClient):
        result = bench_serve.round_of(lambda: client(app_url, tokenizer, 24), clients=4, requests=2, time_limit_s=120)
        assert (result["completed"], result["failed"], result["refused"]) == (8, [], []), client.__name__
        assert result["tokens"] > 0 and result["tokens"] % 8 == 0  # 8 times one story
        assert result["ttft_p95_s"] <= result["end_p95_s"] and result["client_cpu_s"] > 0
