"""prepare_data at the full dataset's size: peak memory and throughput as the corpus grows, and training from it.

    python bench/bench_prepare_scale.py --sizes-mb 20 100            # minutes on 2 cores
    python bench/bench_prepare_scale.py --sizes-mb 20 100 1900 --paths text --work /tmp/scale   # TinyStories' size
    python bench/bench_prepare_scale.py --sizes-mb --train-from /tmp/scale/data-1900mb-text     # train from it
    python bench/bench_prepare_scale.py --sizes-mb --train-from /tmp/scale/data-100mb-text --train-repeat 19

Each corpus is the shared TinyStories train.txt repeated up to the size asked (valid.txt as its validation file),
built in a temporary folder (--work, default a new one under /tmp, deleted at the end; never committed). For each
size and path:
- "text": prepare_data on the folder of .txt files (streamed by slm_hf.data.StoryFiles);
- "datasets": prepare_data on the same stories as one .jsonl file per split (streamed by the `datasets` library);
the tokenizer is trained by prepare_data on at most 100,000 stories, as `make demo` does (--tokenizer: a given one,
measuring reading and tokenizing only). prepare_data runs in a child process; the figures: the peak memory of the
process tree (sampled; its anonymous part beside it, the rest being mapped files), MB/s (text bytes / wall seconds:
it depends on how busy the machine is), CPU-seconds per MB (it does not), and train.bin checked (its size, the token
count and the story count meta.json gives, one <|endoftext|> per story, stories spot-decoded and found in the source).
With --train or --train-from, short runs of the tiny preset train from the shipped sample (the reference) and from
the large folders (--train-repeat: a folder's train.bin repeated, the full dataset's token count without tokenizing
1.9 GB), with windows starting anywhere and at stories, and each resumes: start-up, tokens/s, the batches
drawn (evaluation's: eval_iters, whatever the split's size) and the memory (the memmap's pages are file-backed).
Results: one JSON via bench/machine.write_results.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import write_results  # noqa: E402

from slm_hf.data import read_stories  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEXT_DIR = ROOT.parents[0] / "shared" / "data" / "tinystories"
TINY = ROOT / "configs" / "tiny.yaml"
SAMPLE_S = 0.5  # how often the process tree's memory is sampled
EVAL_ITERS = 4  # evaluation batches of each split, in the training runs
SPOT_CHECKS = 5  # stories decoded from each train.bin and looked up among the source's


def peak_rss_mb() -> float:
    """The peak resident memory of this process (VmHWM) and of its finished children (getrusage), in MB.

    Not getrusage for this process: Linux carries a parent's peak over into a child it starts (exec keeps it), so a
    child of a large parent would report the parent's peak."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    own_kib = int(status["VmHWM"].split()[0])
    return max(own_kib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024 / 1e6


def build_corpus(text_dir: Path, folder: Path, size_mb: float, jsonl: bool) -> dict:
    """train.txt repeated up to `size_mb` MB (and valid.txt) in `folder`; with `jsonl`, the same as .jsonl files."""
    folder.mkdir(parents=True, exist_ok=True)
    source = (text_dir / "train.txt").read_bytes()
    copies = max(1, round(size_mb * 1e6 / len(source)))
    with open(folder / "train.txt", "wb") as file:
        for _ in range(copies):
            file.write(source.rstrip(b"\n") + b"\n")
    shutil.copyfile(text_dir / "valid.txt", folder / "valid.txt")
    stories = len(read_stories(text_dir / "train.txt")) * copies
    if jsonl:
        tables = folder.parent / f"{folder.name}-jsonl"
        tables.mkdir(exist_ok=True)
        for name, split in (("train.txt", "train"), ("valid.txt", "validation")):
            from slm_hf.data.stories import iter_stories

            with open(tables / f"{split}.jsonl", "w", encoding="utf-8") as file:
                for story in iter_stories(folder / name):
                    file.write(json.dumps({"text": story}) + "\n")
    return {"copies": copies, "bytes": (folder / "train.txt").stat().st_size, "stories": stories}


def child_prepare(source: str, out: str, tokenizer: str = "") -> None:
    """(In a child process.) prepare_data from `source` into `out`; print seconds and peak RSS as JSON."""
    started = time.perf_counter()
    from slm_hf.data import prepare_data

    prepare_data(source, out_dir=out, show_progress=False, tokenizer=tokenizer or None)
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}))


def child_train(data: str, out: str, steps: int, window_starts: str = "anywhere", resume: str = "") -> None:
    """(In a child process.) Train the tiny preset `steps` steps on `data` through `train()`, as scripts/train.py does
    (with `resume`, continue the run in `out`); print the timings and the memory as JSON.

    The start-up is the time from `train()` to the first batch drawn from the token array (the data is then ready):
    anything proportional to the corpus (reading or hashing train.bin) would show there. Every batch drawn is counted:
    evaluation's are fixed (eval_iters of each split), whatever the split's size."""
    called = time.perf_counter()
    import torch

    from slm_hf.training import TokenWindows, train
    from slm_hf.training.config import TrainingConfig

    torch.set_num_threads(1)
    drawn = []
    draw = TokenWindows.batch

    def counted_batch(self, *key):
        drawn.append(time.perf_counter())
        return draw(self, *key)

    TokenWindows.batch = counted_batch
    config = TrainingConfig.load(TINY, [f"max_steps={steps}", f"eval_interval={steps}", "sample_tokens=0",
                                        f"eval_iters={EVAL_ITERS}", f"save_interval={steps // 2}"])
    imported = time.perf_counter()
    outcome = train(config, data, out, resume=resume or None)
    finished = time.perf_counter()
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    speeds = [record["tokens_per_s"] for record in records if "tokens_per_s" in record][1:]  # the first: warm-up
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    print(json.dumps({"imports_s": imported - called, "start_up_s": drawn[0] - imported, "train_s": finished - drawn[0],
                      "step": outcome.step, "batches_drawn": len(drawn),
                      "tokens_per_s": sum(speeds) / len(speeds), "peak_rss_mb": peak_rss_mb(),
                      "rss_anon_mb_at_end": int(status["RssAnon"].split()[0]) / 1e3,
                      "rss_file_mb_at_end": int(status["RssFile"].split()[0]) / 1e3}))


def repeated_folder(folder: Path, out: Path, copies: int) -> Path:
    """A data folder whose train.bin is `folder`'s repeated `copies` times (meta.json's counts to match): a corpus of
    the full dataset's token count in seconds, for training from it (training sees tokens only)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    shutil.copyfile(folder / "val.bin", out / "val.bin")
    with open(folder / "train.bin", "rb") as source, open(out / "train.bin", "wb") as target:
        for _ in range(copies):
            source.seek(0)
            shutil.copyfileobj(source, target, 1 << 24)
    meta = json.loads((folder / "meta.json").read_text())
    train = meta["splits"]["train"]
    train.update(tokens=train["tokens"] * copies, stories=train["stories"] * copies, bytes=train["bytes"] * copies)
    meta["source_description"] = f"{folder.name} x {copies} (train.bin repeated by bench_prepare_scale.py)"
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def train_from(folders: dict[str, Path], work: Path, steps: int, trained: dict, save) -> None:
    """Train from each folder (windows start anywhere: the only kind since story-start windows were dropped); then
    resume it from its mid-run checkpoint. Fills `trained` ({label: {window_starts: measured}}), calling `save` after
    each run."""
    from slm_hf.training import list_checkpoints

    for label, folder in folders.items():
        meta = json.loads((folder / "meta.json").read_text())
        trained[label] = {"train_tokens_in_folder": meta["splits"]["train"]["tokens"],
                          "train_bin_mb": round((folder / "train.bin").stat().st_size / 1e6, 1)}
        for starts in ("anywhere",):  # (story-start windows were dropped: issue 28)
            out = work / f"run-{label}-{starts}"
            shutil.rmtree(out, ignore_errors=True)
            trained[label][starts] = in_child("--child-train", str(folder), str(out), str(steps), starts)
            print(json.dumps({"label": label, "window_starts": starts, **trained[label][starts]}), flush=True)
            save()
        out = work / f"run-{label}-anywhere"  # resume from the mid-run checkpoint: drop what came after it
        for later in [*list_checkpoints(out)[1:], out / "final", out / "best"]:
            shutil.rmtree(later, ignore_errors=True)
        trained[label]["resumed"] = in_child("--child-train", str(folder), str(out), str(steps), "anywhere", "auto")
        print(json.dumps({"label": label, "resumed": trained[label]["resumed"]}), flush=True)
        save()


def in_child(*args: str) -> dict:
    """Run this script's `args` mode in a child process; its JSON line, with the process tree's peak memory (sampled
    every SAMPLE_S: the child and every process it starts, summed) and the CPU-seconds the tree used."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT)
    tree_peak = anon_peak = 0
    parent = psutil.Process(process.pid)
    while process.poll() is None:
        rss = anon = 0
        try:
            for member in [parent, *parent.children(recursive=True)]:
                memory = member.memory_info()
                rss, anon = rss + memory.rss, anon + memory.rss - memory.shared
        except psutil.NoSuchProcess:
            pass  # a member ended between the listing and the reading: the next sample counts the rest
        tree_peak, anon_peak = max(tree_peak, rss), max(anon_peak, anon)
        time.sleep(SAMPLE_S)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    measured = json.loads(stdout.strip().splitlines()[-1])
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # The peak a child reports itself (getrusage: exact, but one process at a time) or the tree's sampled sum.
    return {**measured, "peak_rss_mb": max(measured["peak_rss_mb"], tree_peak / 1e6), "cpu_s": cpu_s,
            "peak_anon_mb": anon_peak / 1e6}


def check_folder(out: Path, expected_stories: int, source_stories: set[str]) -> dict:
    """train.bin against meta.json (size, token count, one <|endoftext|> per story, stories as many as expected), and
    SPOT_CHECKS stories spread over it decoded with the folder's tokenizer: each must be one of the source's."""
    import numpy as np
    from tokenizers import Tokenizer

    meta = json.loads((out / "meta.json").read_text())
    train = meta["splits"]["train"]
    eos = meta["eos_token_id"]
    tokens = np.memmap(out / "train.bin", dtype=meta["dtype"], mode="r")
    ends = sum(int((tokens[i:i + (1 << 24)] == eos).sum()) for i in range(0, len(tokens), 1 << 24))
    tokenizer = Tokenizer.from_file(str(out / meta["tokenizer"]["path"] / "tokenizer.json"))
    decoded = []
    for start in np.linspace(0, len(tokens) - 1, SPOT_CHECKS, dtype=np.int64):
        window = np.asarray(tokens[max(0, start - 1):start + (1 << 16)])
        bounds = np.flatnonzero(window == eos)  # the story after the first end-of-text at or after `start`
        first = 0 if start == 0 else bounds[0] + 1
        if start == len(tokens) - 1:  # the last story: from the end-of-text before it
            window = np.asarray(tokens[max(0, start - (1 << 16)):])
            bounds = np.flatnonzero(window[:-1] == eos)
            first, last = bounds[-1] + 1, len(window) - 1
        else:
            last = bounds[bounds >= first][0]
        decoded.append(tokenizer.decode(window[first:last].tolist()))
    checks = {"size_matches_tokens": len(tokens) == train["tokens"], "one_eos_per_story": ends == train["stories"],
              "stories_all_there": train["stories"] + meta["splits"]["val"]["stories"] >= expected_stories,
              "ends_with_eos": int(tokens[-1]) == eos,
              "spot_decoded_stories_found": all(story.strip() in source_stories for story in decoded)}
    if not all(checks.values()):
        raise SystemExit(f"{out}: train.bin fails {checks}; decoded: {[story[:80] for story in decoded]}")
    return {"train_tokens": train["tokens"], "train_stories": train["stories"], "spot_decoded": len(decoded),
            "vocab_size": meta["vocab_size"], **checks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="*", default=[20, 100])
    parser.add_argument("--paths", nargs="+", choices=["text", "datasets"], default=["text", "datasets"])
    parser.add_argument("--text-dir", type=Path, default=DEFAULT_TEXT_DIR)
    parser.add_argument("--work", type=Path, default=None, help="temporary folder (default: a new one under /tmp)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="a tokenizer folder to use instead of training one (measures reading and tokenizing)")
    parser.add_argument("--train", action="store_true", help="also train from the sample and the largest folder")
    parser.add_argument("--train-from", type=Path, nargs="+", default=[],
                        help="prepared data folders to train from (with the sample), e.g. an earlier run's --work")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--train-repeat", type=int, default=1,
                        help="also train from each --train-from folder with its train.bin repeated this many times")
    parser.add_argument("--note", default="", help="e.g. 'machine busy: 4 engineers share 2 cores'")
    parser.add_argument("--out", type=Path, default=None, help="the results file (default: bench/results/...)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_prepare_scale-", dir="/tmp"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "datasets_cache")  # the children's Arrow files stay in `work`
    results = {"note": args.note, "tokenizer": str(args.tokenizer or "trained by prepare_data"), "sizes": [],
               "complete": False}
    folders = {}
    source_stories = set(read_stories(args.text_dir / "train.txt")) if args.sizes_mb else set()
    written = args.out

    def save() -> None:
        """Write what is measured so far (a long run stopped early keeps its finished rows; `complete` says)."""
        nonlocal written
        for path in args.paths:
            peaks = [r["peak_rss_mb"] for r in results["sizes"] if r["path"] == path]
            if peaks:
                results[f"{path}_peak_rss_growth"] = round(max(peaks) / min(peaks), 3)
        written = write_results("prepare_scale", results, out=written)

    try:
        for size in args.sizes_mb:
            corpus_dir = work / f"corpus-{size:g}mb"
            corpus = build_corpus(args.text_dir, corpus_dir, size, jsonl="datasets" in args.paths)
            for path in args.paths:
                source = corpus_dir if path == "text" else work / f"corpus-{size:g}mb-jsonl"
                out = work / f"data-{size:g}mb-{path}"
                measured = in_child("--child-prepare", str(source), str(out), str(args.tokenizer or ""))
                mb = corpus["bytes"] / 1e6
                record = {"size_mb": size, "path": path, "tokenizer": "given" if args.tokenizer else "trained",
                          "text_bytes": corpus["bytes"], "seconds": round(measured["seconds"], 2),
                          "peak_rss_mb": round(measured["peak_rss_mb"], 1),
                          "peak_anon_mb": round(measured["peak_anon_mb"], 1),
                          "mb_per_s": round(mb / measured["seconds"], 2), "cpu_s": round(measured["cpu_s"], 1),
                          "cpu_s_per_mb": round(measured["cpu_s"] / mb, 3),
                          **check_folder(out, corpus["stories"], source_stories)}
                print(json.dumps(record), flush=True)
                results["sizes"].append(record)
                folders[(size, path)] = out
                save()
            if "datasets" in args.paths:
                shutil.rmtree(work / f"corpus-{size:g}mb-jsonl")
        if args.train or args.train_from:
            # The shipped sample, prepared as `make demo` does: the reference the large folders must equal.
            from slm_hf.data import prepare_data

            sample = prepare_data("sample", out_dir=work / "data-sample", show_progress=False)
            train_folders = {"sample": sample.directory}
            if args.train:
                path = args.paths[0]
                largest = max(args.sizes_mb)
                train_folders[f"{largest:g}mb"] = folders[(largest, path)]
            train_folders.update((folder.name, folder) for folder in args.train_from)
            for folder in args.train_from if args.train_repeat > 1 else []:
                name = f"{folder.name}-x{args.train_repeat}"
                train_folders[name] = repeated_folder(folder, work / name, args.train_repeat)
            results["training"] = {}
            train_from(train_folders, work, args.train_steps, results["training"], save)
        results["complete"] = True
        save()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(written)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child-prepare"]:
        child_prepare(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--child-train"]:
        child_train(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:7])
    else:
        main()
