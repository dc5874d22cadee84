"""The browser page (web/index.html): transformers.js runs the ONNX export in headless Chromium and streams a story,
with every request answered by the local test server (no model on any other server).

Needs chromium and playwright (as tests/test_app.py) and transformers.js (scripts/install_web.sh, which `make test`
runs); skipped without them, unless SLM_REQUIRE_ALL=1 (CI), which turns the skip into a failure (tests/must_run.py).
"""

import functools
import http.server
import shutil
import threading

import pytest

from must_run import unavailable
from share_fixtures import REPO, trained_run

WEB = REPO / "web"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
PROMPT = "Once upon a time"
# Records every distinct text of the story box in window.__seen, as the page changes it.
RECORD_STORY = """() => {
    window.__seen = [];
    const story = document.getElementById('story');
    new MutationObserver(() => window.__seen.push(story.textContent))
        .observe(story, {childList: true, characterData: true, subtree: true});
}"""


def _requirements_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the playwright package is not installed"
    if chromium is None:
        problem = "chromium is not installed (scripts/install_browser.sh)"
    if not (WEB / "lib" / "transformers.min.js").is_file():
        problem = "transformers.js is not installed (bash scripts/install_web.sh)"
    if problem:
        unavailable(problem)
    return sync_playwright, chromium


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The page, transformers.js and the ONNX export of the trained tiny model, served on 127.0.0.1."""
    sync_playwright, chromium = _requirements_or_skip()
    from slm_hf.exporting import export_model

    root = tmp_path_factory.mktemp("site")
    shutil.copy(WEB / "index.html", root / "index.html")
    for name in ("lib", "ort"):
        (root / name).symlink_to((WEB / name).resolve())
    export_model(trained_run(tmp_path_factory) / "final", "onnx", root / "model")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", sync_playwright, chromium
    finally:
        server.shutdown()


def test_a_story_streams_into_the_page_from_the_browsers_own_model(site):
    url, sync_playwright, chromium = site
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url + "index.html")
        from playwright.sync_api import expect

        expect(page.locator("#status")).to_have_text("Ready.", timeout=120_000)
        page.evaluate(RECORD_STORY)
        page.locator("#prompt").fill(PROMPT)
        page.locator("#tell").click()
        expect(page.locator("#status")).to_have_text("The end.", timeout=120_000)
        seen = page.evaluate("window.__seen")
        browser.close()
    assert seen[0] == PROMPT and len(seen[-1]) > len(PROMPT) + 20
    assert len(seen) >= 3, f"the story arrived in one piece, not streamed: {seen!r}"
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:]))
    assert any(request.endswith("/model/onnx/model.onnx") for request in requests)
    assert all(request.startswith(url) for request in requests), [r for r in requests if not r.startswith(url)]
