"""prepare_data streams its stories: the memory it needs does not grow with the corpus, and Ctrl-C in the middle of
a long preparation leaves nothing half-written.

The full TinyStories (1.9 GB of text) must prepare on a laptop; bench/bench_prepare_scale.py measures 20 MB to
1.9 GB. Here, the small version: the same stories 2 and 8 times over, prepared (with a given tokenizer, so that
only reading and tokenizing are measured) in child processes that report their peak memory: the Python objects'
(tracemalloc: the stories, the read buffer) and the resident set. Holding the corpus in memory, as prepare_data did,
added 4.2 MB of Python objects per MB of text (the stories as strings); streaming adds nothing once a file is longer
than the read buffer.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slm_hf.data import SAMPLE_DIR, SAMPLE_FILES, read_stories

STORIES = 1000  # about 0.85 MB of text
SIZES = (2, 6)  # copies of the stories: both several tokenizer batches
# Files are read 256 KB at a time here (16 MB in use): both sizes are several read buffers long.
CHILD = """
import json, resource, sys, tracemalloc
from slm_hf.data import prepare_data, stories
stories.READ_CHUNK = 1 << 18
tracemalloc.start()
prepared = prepare_data(sys.argv[1], out_dir=sys.argv[2], tokenizer=sys.argv[3], show_progress=False)
print(json.dumps({"python_peak": tracemalloc.get_traced_memory()[1],
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "stories": prepared.meta["splits"]["train"]["stories"] + prepared.meta["splits"]["val"]["stories"]}))
"""


def prepare_in_child(source, out, tokenizer) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(source), str(out), str(tokenizer)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[int, Path]:
    """{copies: a folder holding the stories `copies` times over in one .txt file}."""
    stories = read_stories(SAMPLE_DIR / SAMPLE_FILES["train"], STORIES)
    text = "".join(f"{story}\n<|endoftext|>\n" for story in stories)
    root = tmp_path_factory.mktemp("corpora")
    for copies in SIZES:
        (root / f"x{copies}").mkdir()
        (root / f"x{copies}" / "stories.txt").write_text(text * copies, encoding="utf-8")
    return {copies: root / f"x{copies}" for copies in SIZES}


def test_peak_memory_does_not_grow_with_the_corpus(corpora, tiny_data_dir, tmp_path):
    tokenizer = tiny_data_dir / "tokenizer"
    small, large = (prepare_in_child(corpora[copies], tmp_path / f"out{copies}", tokenizer) for copies in SIZES)
    assert (small["stories"], large["stories"]) == tuple(copies * STORIES for copies in SIZES)
    small_bytes, large_bytes = ((corpora[copies] / "stories.txt").stat().st_size for copies in SIZES)
    more_mb = (large_bytes - small_bytes) / 1e6
    python_growth_mb = (large["python_peak"] - small["python_peak"]) / 1e6
    rss_growth_mb = (large["peak_kib"] - small["peak_kib"]) / 1024
    grew = f"for {more_mb:.1f} MB more text, peak memory grew by {python_growth_mb:.1f} MB of Python objects"
    assert python_growth_mb < 2, grew
    assert rss_growth_mb < 25, f"{grew} and {rss_growth_mb:.1f} MB resident"


def test_ctrl_c_in_the_middle_leaves_nothing_half_written_and_the_rerun_finishes(corpora, tiny_data_dir, tmp_path):
    out = tmp_path / "data"
    command = [sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "prepare_data.py"), "--source",
               str(corpora[SIZES[1]]), "--out", str(out), "--tokenizer", str(tiny_data_dir / "tokenizer")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # Started as from a terminal, SIGINT at its default: a suite run in the background of a non-interactive shell
    # (`make test &` in a script) has SIGINT ignored, which children inherit, and the Ctrl-C below would do nothing.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob(".partial-*")):  # the staging folder: from it on, the data folder is being made
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no staging folder within 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)  # Ctrl-C while the folder is being written
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())  # no staging, no half folder

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["stories"] + meta["splits"]["val"]["stories"] == SIZES[1] * STORIES
    assert (out / "train.bin").stat().st_size == meta["splits"]["train"]["tokens"] * 2


def test_a_table_file_is_streamed_by_datasets_not_copied_to_arrow(tiny_data_dir, tmp_path, datasets_cache):
    """A .jsonl source is parsed a batch at a time at each pass. Converted to an Arrow file first (what `datasets`
    does by default), it would be mapped into memory, and every page read stays resident: memory grows by about 1 MB
    per MB of stories (bench/bench_prepare_scale.py, the datasets rows). The tokens are those of the same stories
    given as text."""
    from slm_hf.data import prepare_data

    stories = read_stories(SAMPLE_DIR / SAMPLE_FILES["train"], 300)
    table, text = tmp_path / "stories.jsonl", tmp_path / "stories.txt"
    table.write_text("".join(json.dumps({"text": story}) + "\n" for story in stories), encoding="utf-8")
    text.write_text("".join(f"{story}\n<|endoftext|>\n" for story in stories), encoding="utf-8")
    tokenizer = str(tiny_data_dir / "tokenizer")
    from_table = prepare_data(str(table), out_dir=tmp_path / "table", tokenizer=tokenizer, show_progress=False)
    from_text = prepare_data(str(text), out_dir=tmp_path / "text", tokenizer=tokenizer, show_progress=False)
    assert from_table.meta["splits"] == from_text.meta["splits"]
    for split in ("train", "val"):
        assert (tmp_path / "table" / f"{split}.bin").read_bytes() == (tmp_path / "text" / f"{split}.bin").read_bytes()
    assert not list(datasets_cache.rglob("*.arrow")), "the table was converted to an Arrow file"
