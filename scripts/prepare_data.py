"""Prepare a data folder for training: stories -> tokenizer -> train.bin / val.bin / meta.json.

    python scripts/prepare_data.py --out data/sample                                   # the shipped sample, offline
    python scripts/prepare_data.py --source roneneldan/TinyStories --out data/tinystories
    python scripts/prepare_data.py --source roneneldan/TinyStories --out data/tinystories-v2 \\
        --data-files train=TinyStoriesV2-GPT4-train.txt --data-files validation=TinyStoriesV2-GPT4-valid.txt
    python scripts/prepare_data.py --source stories.txt --out data/mine --tokenizer gpt2
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from slm_hf.data import DEFAULT_HUB_DATASET, DataOptions, prepare_data  # noqa: E402
from slm_hf.errors import ArgumentParser, exit_on_error  # noqa: E402

DEFAULTS = DataOptions()


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="sample",
                        help="'sample' (the TinyStories sample shipped with slm_hf; default), a Hub dataset id "
                             f"(e.g. {DEFAULT_HUB_DATASET}), or a local .txt/.jsonl/.json/.parquet file or folder")
    parser.add_argument("--out", required=True, type=Path, help="the data folder to write")
    parser.add_argument("--vocab-size", type=int, default=DEFAULTS.vocab_size,
                        help="vocabulary size of the tokenizer to train (default: %(default)s)")
    parser.add_argument("--tokenizer", default=None,
                        help="reuse this tokenizer (a folder or a Hub id such as gpt2) instead of training one")
    parser.add_argument("--text-column", default=DEFAULTS.text_column,
                        help="the column holding the stories in jsonl/json/parquet/Hub data (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction,
                        help="share of stories held out for validation when the source has no validation split "
                             "(default: %(default)s)")
    parser.add_argument("--max-stories", type=int, default=None,
                        help="read at most this many stories from each split of the source (for quick runs)")
    parser.add_argument("--data-files", action="append", default=None, metavar="[SPLIT=]PATTERN",
                        help="for a Hub dataset: which files to read, e.g. train=TinyStoriesV2-GPT4-train.txt "
                             "(repeatable; .txt files in the TinyStories format are split on <|endoftext|> lines)")
    parser.add_argument("--tokenizer-train-stories", type=int, default=DEFAULTS.tokenizer_train_stories,
                        help="train the tokenizer on at most this many stories (default: %(default)s)")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="tokenize in this many worker processes (default: the tokenizer's threads, all cores)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the validation hold-out")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild even if up to date, and replace data made with a different tokenizer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def parse_data_files(values):
    """['train=a.txt', 'validation=b.txt'] -> {'train': ['a.txt'], 'validation': ['b.txt']}; no split means train."""
    if not values:
        return None
    data_files = {}
    for value in values:
        split, _, pattern = value.rpartition("=")
        data_files.setdefault(split or "train", []).append(pattern)
    return data_files


@exit_on_error
def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("slm_hf").setLevel(logging.INFO)
    prepare_data(
        args.source,
        out_dir=args.out,
        vocab_size=args.vocab_size,
        tokenizer=args.tokenizer,
        text_column=args.text_column,
        val_fraction=args.val_fraction,
        max_stories=args.max_stories,
        seed=args.seed,
        data_files=parse_data_files(args.data_files),
        tokenizer_train_stories=args.tokenizer_train_stories,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
