"""Train a model: `accelerate launch scripts/train.py --config configs/cpu-demo.yaml --data data/sample`.

Also runs as `python scripts/train.py ...` (one process). Trailing `key=value` arguments override the config file
(`learning_rate=1e-3`, `model.hidden_size=256`). See slm_hf/training/ and docs/training.md.
"""

import argparse
import sys
from pathlib import Path

from command_line import ArgumentParser, exit_on_error, library_module

choices = library_module("slm_hf/choices.py")


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML config file (configs/tiny.yaml, seed, cpu-demo, gpu-small)")
    parser.add_argument("--data", type=Path, help="data folder from scripts/prepare_data.py (default: the config's)")
    parser.add_argument("--out", type=Path, help="output folder (default: the config's, else runs/<config name>)")
    parser.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue a run: 'auto' from the newest complete checkpoint in --out (or start afresh), "
        "or from the checkpoint folder PATH",
    )
    parser.add_argument("--mixed-precision", choices=choices.PRECISIONS, help="overrides the config's mixed_precision")
    parser.add_argument("--report-to", choices=choices.TRACKERS, help="overrides the config's report_to")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's outputs in --out")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_intermixed_args(argv)  # key=value overrides may come before, between or after the flags


@exit_on_error
def main(argv=None) -> int:
    args = parse_args(argv)
    from slm_hf.training import train  # after parsing: --help and bad arguments answer before torch is imported
    from slm_hf.training.config import TrainingConfig

    overrides = list(args.overrides)
    if args.mixed_precision:
        overrides.append(f"mixed_precision={args.mixed_precision}")
    if args.report_to:
        overrides.append(f"report_to={args.report_to}")
    config = TrainingConfig.load(args.config, overrides)
    out = args.out or config.out or (Path("runs") / args.config.stem if args.config else None)
    outcome = train(config, args.data, out, resume=args.resume, overwrite=args.overwrite)
    if outcome.interrupted_by:
        return 128 + {"SIGINT": 2, "SIGTERM": 15}.get(outcome.interrupted_by, 15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
