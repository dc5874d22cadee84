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

from command_line import ArgumentParser, exit_on_error

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


def build_parser() -> ArgumentParser:
    """The flags: --source, --out, how to run (--num-proc, --overwrite, --no-progress), and one flag per field of
    slm_hf.data.DataOptions, the options that shape the data folder (tests/test_data.py checks they match; they are
    spelled here because the parser answers --help before slm_hf, and torch, are imported)."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="sample",
                        help="'sample' (the TinyStories sample shipped with slm_hf; default), a Hub dataset id "
                             "(e.g. roneneldan/TinyStories), or a local .txt/.jsonl/.json/.parquet file or folder")
    parser.add_argument("--out", required=True, type=Path, help="the data folder to write")
    # Options not given take slm_hf.data.DataOptions' defaults.
    parser.add_argument("--vocab-size", type=int,
                        help="vocabulary size of the tokenizer to train (default: the `small` preset's)")
    parser.add_argument("--tokenizer", default=None,
                        help="reuse this tokenizer (a folder or a Hub id such as gpt2) instead of training one")
    parser.add_argument("--text-column", help="the column holding the stories in jsonl/json/parquet/Hub data "
                                              "(default: text)")
    parser.add_argument("--val-fraction", type=float,
                        help="share of stories held out for validation when the source has no validation split "
                             "(default 0.05)")
    parser.add_argument("--max-stories", type=int, default=None,
                        help="read at most this many stories from each split of the source (for quick runs)")
    parser.add_argument("--data-files", action="append", default=None, metavar="[SPLIT=]PATTERN",
                        help="for a Hub dataset: which files to read, e.g. train=TinyStoriesV2-GPT4-train.txt "
                             "(repeatable; .txt files in the TinyStories format are split on <|endoftext|> lines)")
    parser.add_argument("--tokenizer-train-stories", type=int,
                        help="train the tokenizer on at most this many stories (default 100,000)")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="tokenize in this many worker processes (default: the tokenizer's threads, all cores)")
    parser.add_argument("--seed", type=int, help="seed of the validation hold-out (default 0)")
    parser.add_argument("--min-frequency", type=int,
                        help="a pair must occur this often to be merged during tokenizer training (default 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild even if up to date, and replace data made with a different tokenizer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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
    from slm_hf.data import prepare_data  # after parsing: see scripts/command_line.py
    from slm_hf.data.options import OPTION_NAMES

    logging.basicConfig(format="%(message)s")
    logging.getLogger("slm_hf").setLevel(logging.INFO)
    args.data_files = parse_data_files(args.data_files)
    given = {name: getattr(args, name) for name in OPTION_NAMES if getattr(args, name) is not None}
    prepare_data(
        args.source,
        out_dir=args.out,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
        show_progress=not args.no_progress and sys.stderr.isatty(),  # no bar fragments in log files
        **given,
    )

if __name__ == "__main__":
    main()
