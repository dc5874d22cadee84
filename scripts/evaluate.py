#!/usr/bin/env python
"""Evaluate a trained model: loss, perplexity and bits per byte on held-out text, plus sampled-story quality.

    python scripts/evaluate.py --model runs/cpu-demo/final --data data/sample
    python scripts/evaluate.py --model runs/cpu-demo/final --data stories_valid.txt --json eval.json

--data is a data folder (its val.bin, scored in non-overlapping windows of the model's context) or a raw
TinyStories .txt / .jsonl file (tokenized with the model's own tokenizer, each story scored on its own).
The JSON report goes to stdout (or --json PATH); a short summary goes to stderr.
"""

import json
import sys
from pathlib import Path

from command_line import ArgumentParser, exit_on_error


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder (e.g. a run's final/) or a Hub model id")
    parser.add_argument("--data", required=True, help="a data folder (with meta.json), or a .txt / .jsonl file")
    parser.add_argument("--max-stories", type=int, default=None, help="evaluate on the first N stories only")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the JSON report here, not to stdout")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    parser.add_argument("--no-quality", action="store_true", help="skip the sampled-story quality measures")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a Hub model's own code to run (not needed for SLM models)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    if args.max_stories is not None and args.max_stories < 1:
        parser.error("--max-stories must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


@exit_on_error
def main(argv=None):
    args = parse_args(argv)
    from slm_hf.atomic_files import check_can_create, write_json  # after parsing: see scripts/command_line.py
    from slm_hf.errors import SLMError
    from slm_hf.evaluation import evaluate, summary
    from slm_hf.generation import load_pretrained

    if args.json:
        check_can_create(args.json, "--json file")
    if not Path(args.data).exists():
        raise SLMError(f"--data {args.data} does not exist; pass a data folder (with meta.json) or a .txt / .jsonl "
                       f"file")
    model, tokenizer = load_pretrained(args.model, device=args.device, revision=args.revision,
                                       trust_remote_code=args.trust_remote_code)
    result = {"model": args.model}
    result.update(evaluate(model, tokenizer, args.data, max_stories=args.max_stories, batch_size=args.batch_size,
                           quality=not args.no_quality, progress=sys.stderr.isatty()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    else:
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(summary(result), file=sys.stderr)


if __name__ == "__main__":
    main()
