"""Benchmark the data pipeline on the shared TinyStories text: tokenization throughput, tokenizer training time,
the extrapolation to the full 1.9 GB training split, and bytes per token at two vocabulary sizes.

    python bench/bench_data.py                       # results: bench/results/data_<cpu>_<date>.json
    python bench/bench_data.py --repeats 1 --max-stories 2000    # a quick check that the script runs

Tokenization is measured three ways over the same stories (medians of --repeats runs):
- slm_hf: the pipeline's encoder (the Rust `encode_batch_fast` over batches of stories, its threads on every core),
- slm_hf with --num-proc 2 worker processes,
- the peer: the usual `datasets.map(tokenizer(...), batched=True, num_proc=2)` recipe,
and end to end: `prepare_data` from the text folder to train.bin/val.bin/meta.json with a given tokenizer.
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import write_results  # noqa: E402

from slm_hf.data import DataOptions, encoded_batches, prepare_data, read_stories  # noqa: E402
from slm_hf.tokenization import save_tokenizer, train_tokenizer  # noqa: E402

DEFAULT_TEXT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
FULL_SPLIT_BYTES = 1.9e9  # the full TinyStories training split (2.12M stories)
BUDGET_SECONDS = 300  # the limit for text -> train.bin on 2 cores
END_TO_END = "end to end, prepare_data"


def cpu_seconds():
    """CPU time of this process (all its threads) and of its finished child processes."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(functions, repeats):
    """Run each function `repeats` times, interleaved (so that load from other work hits all of them alike);
    return {name: (median wall seconds, median CPU seconds)}."""
    wall, cpu = {name: [] for name in functions}, {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start_wall, start_cpu = time.perf_counter(), cpu_seconds()
            function()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(cpu_seconds() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in functions}


def story_bytes(stories):
    return sum(len(story.encode("utf-8")) for story in stories)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-dir", type=Path, default=DEFAULT_TEXT_DIR,
                        help="folder with train.txt and valid.txt in the TinyStories format")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-stories", type=int, default=None, help="use only this many training stories")
    args = parser.parse_args()

    import datasets
    from datasets import Dataset

    datasets.disable_progress_bars()
    train = read_stories(args.text_dir / "train.txt", args.max_stories)
    valid = read_stories(args.text_dir / "valid.txt")
    train_bytes = story_bytes(train)
    results = {"load_average_at_start": os.getloadavg()[0],
               "train_stories": len(train), "train_mb": train_bytes / 1e6, "repeats": args.repeats}

    # Tokenizer training on 10k stories (vocab 4096), and bytes per token on valid.txt at 4096 and 8192.
    ten_k = train[:10_000]
    results["tokenizer_train_stories"] = len(ten_k)
    results["tokenizer_train_s"], results["tokenizer_train_cpu_s"] = measure(
        {"train": lambda: train_tokenizer(ten_k, vocab_size=4096, show_progress=False)}, args.repeats)["train"]
    tokenizers = {vocab: train_tokenizer(train, vocab_size=vocab, show_progress=False) for vocab in (4096, 8192)}
    valid_bytes = story_bytes(valid)
    for vocab, tokenizer in tokenizers.items():
        text_tokens = sum(len(ids) for ids in tokenizer(valid, add_special_tokens=False)["input_ids"])
        results[f"valid_bytes_per_token_{vocab}"] = valid_bytes / (text_tokens + len(valid))  # one EOS per story
        results[f"valid_bytes_per_text_token_{vocab}"] = valid_bytes / text_tokens

    tokenizer = tokenizers[4096]
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    dataset = Dataset.from_dict({"text": train})
    eos = tokenizer.eos_token_id

    def slm_hf_encode(num_proc):
        def run():
            for _ in encoded_batches(dataset, tokenizer_json, eos, "uint16", num_proc):
                pass
        return run

    with tempfile.TemporaryDirectory() as tmp:
        datasets.disable_caching()  # map writes to temporary files instead of reusing a cached result

        def peer_map():
            def tokenize(batch):
                ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
                return {"ids": [row + [eos] for row in ids]}
            dataset.map(tokenize, batched=True, batch_size=1000, num_proc=2, remove_columns=["text"])

        # End to end: text folder -> train.bin/val.bin/meta.json (read, split, tokenize, write), tokenizer given.
        save_tokenizer(tokenizer, Path(tmp) / "tokenizer")
        source = Path(tmp) / "text"
        source.mkdir()
        (source / "train.txt").write_text("".join(f"{s}\n<|endoftext|>\n" for s in train), encoding="utf-8")
        (source / "valid.txt").write_text("".join(f"{s}\n<|endoftext|>\n" for s in valid), encoding="utf-8")

        def end_to_end():
            prepare_data(str(source), out_dir=Path(tmp) / "out", tokenizer=str(Path(tmp) / "tokenizer"),
                         overwrite=True, show_progress=False)

        timings = measure({"slm_hf (Rust threads)": slm_hf_encode(None), "slm_hf --num-proc 2": slm_hf_encode(2),
                           "datasets.map num_proc=2 (peer)": peer_map, END_TO_END: end_to_end}, args.repeats)
    results["timings"] = {name: {"wall_s": wall, "cpu_s": cpu} for name, (wall, cpu) in timings.items()}
    all_bytes = train_bytes + valid_bytes
    for name, timing in results["timings"].items():
        size = all_bytes if name == END_TO_END else train_bytes
        timing["mb_s"] = size / 1e6 / timing["wall_s"]
        # With the machine to itself, 2 cores give at best 2 CPU-seconds per second: an estimate for a quiet machine.
        timing["quiet_2core_mb_s_estimate"] = size / 1e6 / (timing["cpu_s"] / 2)
    end_to_end_timing = results["timings"][END_TO_END]
    results["full_split_extrapolated_s"] = FULL_SPLIT_BYTES / 1e6 / end_to_end_timing["mb_s"]
    results["full_split_quiet_estimate_s"] = FULL_SPLIT_BYTES / 1e6 / end_to_end_timing["quiet_2core_mb_s_estimate"]
    # prepare_data trains its tokenizer on at most 100k stories (spread over the split); linear extrapolation from 10k.
    scale = DataOptions().tokenizer_train_stories / len(ten_k)
    results["tokenizer_train_100k_extrapolated_s"] = results["tokenizer_train_s"] * scale
    # Training runs mostly on one core (wall ~ CPU time above), so its CPU time is the quiet-machine estimate.
    results["tokenizer_train_100k_quiet_estimate_s"] = results["tokenizer_train_cpu_s"] * scale
    results["load_average_at_end"] = os.getloadavg()[0]

    peer = results["timings"]["datasets.map num_proc=2 (peer)"]["mb_s"]
    print(f"stories: {len(train):,} train ({train_bytes / 1e6:.2f} MB), {len(valid):,} valid; {os.cpu_count()} CPUs, "
          f"load average {results['load_average_at_start']:.1f} -> {results['load_average_at_end']:.1f}; "
          f"medians of {args.repeats}, interleaved")
    print("| what | wall s | CPU s | MB/s | vs peer | MB/s estimate, quiet 2 cores |\n|---|---|---|---|---|---|")
    for name, timing in results["timings"].items():
        label = f"{name} (train + valid, {all_bytes / 1e6:.2f} MB)" if name == END_TO_END else f"{name}, train split"
        ratio = f"{timing['mb_s'] / peer:.2f}x" if name != END_TO_END else ""
        print(f"| {label} | {timing['wall_s']:.2f} | {timing['cpu_s']:.2f} | {timing['mb_s']:.2f} | {ratio} | "
              f"{timing['quiet_2core_mb_s_estimate']:.2f} |")
    print(f"full 1.9 GB split, end to end: {results['full_split_extrapolated_s']:.0f} s at the measured rate, "
          f"{results['full_split_quiet_estimate_s']:.0f} s estimated on a quiet machine (limit {BUDGET_SECONDS} s)")
    print(f"tokenizer training, {len(ten_k):,} stories, vocab 4096: {results['tokenizer_train_s']:.2f} s wall, "
          f"{results['tokenizer_train_cpu_s']:.2f} s CPU; 100k stories (prepare_data's default bound), linear "
          f"extrapolation: {results['tokenizer_train_100k_extrapolated_s']:.0f} s at the measured rate, "
          f"{results['tokenizer_train_100k_quiet_estimate_s']:.0f} s estimated on a quiet machine")
    total, quiet_total = (results["full_split_extrapolated_s"] + results["tokenizer_train_100k_extrapolated_s"],
                          results["full_split_quiet_estimate_s"] + results["tokenizer_train_100k_quiet_estimate_s"])
    print(f"full split with tokenizer training: {total:.0f} s at the measured rate, {quiet_total:.0f} s estimated on a "
          f"quiet machine (limit {BUDGET_SECONDS} s)")
    for vocab in (4096, 8192):
        print(f"valid.txt bytes/token at vocab {vocab}: {results[f'valid_bytes_per_token_{vocab}']:.3f} "
              f"(EOS counted; {results[f'valid_bytes_per_text_token_{vocab}']:.3f} without)")
    print(f"written to {write_results('data', results)}")


if __name__ == "__main__":
    main()
