#!/usr/bin/env python
"""Upload a trained model folder to the Hugging Face Hub (a run's final/ or best/, never its checkpoints).

    python scripts/push_to_hub.py --model runs/cpu-demo/final --repo-id me/slm-tinystories --dry-run
    python scripts/push_to_hub.py --model runs/cpu-demo/final --repo-id me/slm-tinystories --private
    python scripts/push_to_hub.py --model runs/cpu-demo/final --repo-id me/slm-tinystories-llama --format llama

Before uploading it checks the folder offline: the files, the model card's metadata, and that it loads and generates
with transformers alone (trust_remote_code=True). --dry-run stops there and lists what would be uploaded, changing
nothing on disk. The model card (README.md) is re-rendered first so that its examples name --repo-id; --keep-card
uploads it as it is. --format llama uploads the folder's Llama export instead (LlamaForCausalLM: loads with no
remote code at all, in transformers 5.x and 4.x). Log in first with `hf auth login`, or set HF_TOKEN.
"""

import sys

from command_line import ArgumentParser, exit_on_error, library_module

choices = library_module("slm_hf/choices.py")


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model folder, e.g. runs/cpu-demo/final")
    parser.add_argument("--repo-id", required=True, help="the Hub repository, user/name or org/name")
    parser.add_argument("--format", default="slm", choices=choices.PUSH_FORMATS,
                        help="slm: the folder as it is (remote code); llama: its Llama export (no remote code)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to upload to (created if missing; default main)")
    parser.add_argument("--dry-run", action="store_true", help="check offline and list the files; upload nothing")
    parser.add_argument("--keep-card", action="store_true", help="upload README.md as it is, without re-rendering")
    parser.add_argument("--commit-message", default=None)
    return parser.parse_args(argv)


@exit_on_error
def main(argv=None):
    args = parse_args(argv)
    from slm_hf.hub import push_to_hub  # after parsing: see scripts/command_line.py

    result = push_to_hub(args.model, args.repo_id, format=args.format, private=args.private, revision=args.revision,
                         dry_run=args.dry_run, update_card=not args.keep_card, commit_message=args.commit_message)
    for check in result.checks:
        print(f"ok: {check}", file=sys.stderr)
    target = f"{result.repo_id}" + (f" (branch {result.revision})" if result.revision else "")
    if result.dry_run:
        print(f"dry run: would upload {len(result.files)} files ({result.bytes:,} bytes) to {target}:")
    else:
        print(f"uploaded {len(result.files)} files ({result.bytes:,} bytes) to {target}: {result.url}")
    for name in result.files:
        print(f"  {name}")


if __name__ == "__main__":
    main()
