"""prepare_data streams its stories: the memory it needs does not grow with the corpus.

The full TinyStories (1.9 GB of text) must prepare on a laptop; bench/bench_prepare_scale.py measures 20 MB to
1.9 GB. Here, the small version: the same stories 2 and 8 times over, prepared (with a given tokenizer, so that
only reading and tokenizing are measured) in child processes that report their peak memory: the Python objects'
(tracemalloc: the stories, the read buffer) and the resident set. Holding the corpus in memory, as prepare_data did,
added 4.2 MB of Python objects per MB of text (the stories as strings); streaming adds nothing once a file is longer
than the read buffer.
"""

import json
import os
import subprocess
import sys

from slm_hf.data import SAMPLE_DIR, SAMPLE_FILES, read_stories

STORIES = 2000  # about 1.7 MB of text
SIZES = (2, 6)  # copies of the stories: both several tokenizer batches
# Files are read 1 MB at a time here (16 MB in use): both sizes are several read buffers long.
CHILD = """
import json, resource, sys, tracemalloc
from slm_hf.data import prepare_data, stories
stories.READ_CHUNK = 1 << 20
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


def test_peak_memory_does_not_grow_with_the_corpus(tiny_data_dir, tmp_path):
    stories = read_stories(SAMPLE_DIR / SAMPLE_FILES["train"], STORIES)
    text = "".join(f"{story}\n<|endoftext|>\n" for story in stories)
    for copies in SIZES:
        (tmp_path / f"x{copies}").mkdir()
        (tmp_path / f"x{copies}" / "stories.txt").write_text(text * copies, encoding="utf-8")
    tokenizer = tiny_data_dir / "tokenizer"
    small, large = (prepare_in_child(tmp_path / f"x{copies}", tmp_path / f"out{copies}", tokenizer) for copies in SIZES)
    assert (small["stories"], large["stories"]) == tuple(copies * STORIES for copies in SIZES)
    more_mb = (SIZES[1] - SIZES[0]) * len(text.encode()) / 1e6
    python_growth_mb = (large["python_peak"] - small["python_peak"]) / 1e6
    rss_growth_mb = (large["peak_kib"] - small["peak_kib"]) / 1024
    grew = f"for {more_mb:.1f} MB more text, peak memory grew by {python_growth_mb:.1f} MB of Python objects"
    assert python_growth_mb < 2, grew
    assert rss_growth_mb < 25, f"{grew} and {rss_growth_mb:.1f} MB resident"
