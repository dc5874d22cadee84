"""Many users at once: concurrent streamed stories from the OpenAI-compatible server and from the Gradio app.

For each number of concurrent clients (--clients, default 1 4 8 16), every client sends --requests stories one after
the other (a fixed prompt, --max-tokens new tokens, greedy: the same story every time), streamed. The targets:
`server`, scripts/serve.py (`transformers serve`, continuous batching) through the `openai` client; `app`, app.py
through the page's HTTP API as a browser or `curl` reads it (Gradio's /call/ route: each update pushed as a
server-sent event); `app_gradio_client`, app.py through `gradio_client`, whose reader polls (a 1 ms sleep loop per
story, its event stream every 50 ms) and so takes CPU from an app on the same machine. Each request completes or is
refused; a refusal keeps its message, and a 5xx or a traceback counts as a failure. Reported per target and
concurrency: time to first token and to the end (p50, p95), aggregate new tokens/s, the ratio of that to one
client's, and the CPU seconds the clients themselves took (this process). With --memory, the server's resident
memory (its process and children) after 100 and after 1,000 short requests. Everything runs on 127.0.0.1 and is
bounded in requests and in time (--time-limit-s per round); the results go to bench/results/ through
bench/machine.write_results.

    python bench/bench_serve.py --model runs/cpu-demo/final
    python bench/bench_serve.py --model runs/cpu-demo/final --clients 1 8 16 --requests 2 --targets server --memory
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

PROMPT = "Once upon a time, there was a little cat named Tom."
APP_SAMPLING = (0.8, 1)  # the page's temperature and top-k: top-k 1 is greedy, as temperature 0 at the server
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command_for_port, ready_url_for_port, log: Path) -> tuple[subprocess.Popen, str]:
    """Start a server, `command_for_port(port)` on a free port (another one if that port is taken meanwhile), and
    return it with its URL once `ready_url_for_port(port)` answers (bounded by START_TIMEOUT_S)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
    for _ in range(3):
        port = free_port()
        with open(log, "w") as output:
            process = subprocess.Popen(command_for_port(port), stdout=output, stderr=subprocess.STDOUT, env=env,
                                       cwd=ROOT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(ready_url_for_port(port), timeout=5):
                    return process, ready_url_for_port(port)
            except OSError:
                time.sleep(0.5)
        stop(process)
        if "address already in use" not in log.read_text().lower():
            break
    raise RuntimeError(f"the server did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def resident_mib(process: subprocess.Popen) -> float:
    """Resident memory of `process` and its children, in MiB."""
    import psutil

    parent = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]) / 2**20


class ServerClient:
    """One streamed greedy completion through the `openai` client: (time to first token, time to end, tokens)."""

    def __init__(self, base_url: str, model: str, max_tokens: int):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=300)
        self.model, self.max_tokens = model, max_tokens

    def __call__(self) -> tuple[float, float, int]:
        began, first, tokens = time.perf_counter(), None, 0
        stream = self.client.completions.create(model=self.model, prompt=PROMPT, max_tokens=self.max_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        end = time.perf_counter()
        return (first or end) - began, end - began, tokens


class Refused(Exception):
    """A request answered with a clear message instead of a story (the page's message, a full queue)."""


def story_record(tokenizer, began: float, first: float | None, end: float, story) -> tuple[float, float, int]:
    """(time to first token, time to end, new tokens) of a story the app streamed, or Refused."""
    if not isinstance(story, str) or not story.startswith(PROMPT):  # the page's message instead of a story
        raise Refused(f"refused: {story}")
    tokens = len(tokenizer.encode(story[len(PROMPT):], add_special_tokens=False))
    return (first or end) - began, end - began, tokens


class AppGradioClient:
    """One streamed greedy story through `gradio_client` from app.py's `tell` endpoint: (TTFT, time to end, tokens)."""

    def __init__(self, url: str, tokenizer, max_tokens: int):
        from gradio_client import Client

        self.client = Client(url, verbose=False)
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self) -> tuple[float, float, int]:
        began, first = time.perf_counter(), None
        job = self.client.submit(PROMPT, self.max_tokens, *APP_SAMPLING, api_name="/tell")
        story = PROMPT
        for story in job:
            if first is None and len(story) > len(PROMPT):
                first = time.perf_counter()
        end = time.perf_counter()
        problem = job.exception()
        if problem is not None:
            from gradio_client.utils import QueueError

            raise Refused(f"refused: {problem}") if isinstance(problem, QueueError) else problem
        story = job.outputs()[-1] if job.outputs() else story
        return story_record(self.tokenizer, began, first, end, story)


class AppClient:
    """One streamed greedy story through app.py's HTTP API, as `curl` reads it (Gradio's /call/ route: a POST, then
    the story's server-sent events): (TTFT, time to end, tokens)."""

    def __init__(self, url: str, tokenizer, max_tokens: int):
        import httpx

        self.client = httpx.Client(base_url=url, timeout=300)
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    def __call__(self) -> tuple[float, float, int]:
        began, first, story, event = time.perf_counter(), None, PROMPT, None
        answer = self.client.post("gradio_api/call/tell", json={"data": [PROMPT, self.max_tokens, *APP_SAMPLING]})
        answer.raise_for_status()
        with self.client.stream("GET", f"gradio_api/call/tell/{answer.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event == "error":  # a full queue, or an error the page reported
                        raise Refused(f"refused: {data}")
                    story = data[0] if event in ("generating", "complete") and data else story
                    if first is None and len(story) > len(PROMPT):
                        first = time.perf_counter()
                    if event == "complete":
                        break
        return story_record(self.tokenizer, began, first, time.perf_counter(), story)


def round_of(make_client, clients: int, requests: int, time_limit_s: float) -> dict:
    """`clients` threads, each with its own client, sending `requests` requests one after the other."""
    records, failures, refusals = [], [], []
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit_s

    made = [make_client() for _ in range(clients)]  # connected before the clock starts

    def user(client):
        for _ in range(requests):
            if time.monotonic() > deadline:
                with lock:
                    refusals.append("not sent: the round's time limit passed")
                return
            try:
                record = client()
                with lock:
                    records.append(record)
            except Exception as error:  # noqa: BLE001 - every outcome is counted, none stops the round
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                status = getattr(error, "status_code", None)
                refused = isinstance(error, Refused) or (status is not None and status < 500)
                with lock:
                    (refusals if refused else failures).append(f"{status}: {message}")

    began, cpu_began = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=user, args=(client,), daemon=True) for client in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic() + 60))
    wall, client_cpu = time.perf_counter() - began, time.process_time() - cpu_began
    ttft = sorted(record[0] for record in records)
    ends = sorted(record[1] for record in records)
    tokens = sum(record[2] for record in records)
    return {
        "clients": clients, "requests": clients * requests, "completed": len(records),
        "refused": refusals, "failed": failures, "wall_s": wall, "client_cpu_s": client_cpu, "tokens": tokens,
        "tokens_per_s": tokens / wall if wall else None,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p95_s": percentile(ttft, 95),
        "end_p50_s": percentile(ends, 50), "end_p95_s": percentile(ends, 95),
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def with_speedups(rounds: list[dict]) -> list[dict]:
    single = next((r["tokens_per_s"] for r in rounds if r["clients"] == 1 and r["tokens_per_s"]), None)
    for r in rounds:
        r["speedup_vs_one_client"] = r["tokens_per_s"] / single if single and r["tokens_per_s"] else None
    return rounds


def bench_server(args, log_dir: Path) -> dict:
    from slm_hf.serving import served_folder

    folder = served_folder(args.model, log_dir / "serve-cache")
    server, models_url = start(lambda port: [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model",
                                             str(args.model), "--port", str(port), "--cache", str(folder.parent)],
                               lambda port: f"http://127.0.0.1:{port}/v1/models", log_dir / "serve.log")
    base_url = models_url.rsplit("/", 1)[0]
    try:
        ServerClient(base_url, str(folder), 4)()  # warm-up
        rounds = [round_of(lambda: ServerClient(base_url, str(folder), args.max_tokens), clients, args.requests,
                           args.time_limit_s) for clients in args.clients]
        result = {"rounds": with_speedups(rounds)}
        if args.memory:
            memory = {}
            done = 0
            for target in (100, 1000):
                round_of(lambda: ServerClient(base_url, str(folder), 4), 16, (target - done) // 16,
                         args.time_limit_s * 4)
                done = target
                memory[f"rss_mib_after_{target}"] = resident_mib(server)
            memory["growth"] = memory["rss_mib_after_1000"] / memory["rss_mib_after_100"] - 1
            result["memory"] = memory
        return result
    finally:
        stop(server)


def bench_app(args, log_dir: Path, target: str) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    app, url = start(lambda port: [sys.executable, str(ROOT / "app.py"), "--model", str(args.model), "--port",
                                   str(port)], lambda port: f"http://127.0.0.1:{port}/", log_dir / "app.log")
    try:
        client = AppClient if target == "app" else AppGradioClient
        client(url, tokenizer, 16)()  # warm-up (16: the length slider's minimum)
        rounds = [round_of(lambda: client(url, tokenizer, args.max_tokens), clients, args.requests,
                           args.time_limit_s) for clients in args.clients]
        return {"rounds": with_speedups(rounds)}
    finally:
        stop(app)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a trained model folder")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16], help="concurrent clients per round")
    parser.add_argument("--requests", type=int, default=2, help="requests each client sends, one after another")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per story")
    parser.add_argument("--targets", nargs="+", choices=["server", "app", "app_gradio_client"],
                        default=["server", "app", "app_gradio_client"])
    parser.add_argument("--time-limit-s", type=float, default=300, help="a round sends nothing new after this")
    parser.add_argument("--memory", action="store_true", help="server memory after 100 and 1,000 requests")
    parser.add_argument("--note", default="", help="a note for the results file (e.g. how busy the machine was)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "bench" / "work" / "serve",
                        help="logs and the server's Llama export")
    parser.add_argument("--out", type=Path, default=None,
                        help="the results file (default bench/results/serve_<cpu>_<date>.json)")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    from machine import model_shape, write_results
    from transformers import AutoConfig

    import slm_hf  # noqa: F401  (the SLM classes for AutoConfig / AutoTokenizer: no remote code)

    results = {"prompt": PROMPT, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
               "note": args.note}
    if "server" in args.targets:
        results["server"] = bench_server(args, args.work_dir)
    for target in ("app", "app_gradio_client"):
        if target in args.targets:
            results[target] = bench_app(args, args.work_dir, target)
    print(json.dumps(results, indent=2))
    config = AutoConfig.from_pretrained(args.model)
    print(f"wrote {write_results('serve', results, shape=model_shape(config), out=args.out)}")


if __name__ == "__main__":
    main()
