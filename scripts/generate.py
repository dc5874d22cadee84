#!/usr/bin/env python
"""Generate stories from a trained model, streamed to the terminal as tokens arrive.

    python scripts/generate.py --model runs/cpu-demo/final --prompt "Once upon a time" --seed 0
    echo "Lily found a shell." | python scripts/generate.py --model runs/cpu-demo/final

Without --prompt, every non-empty line of stdin is a prompt. --model is a folder or a Hub model id.
"""

import sys

from command_line import ArgumentParser, exit_on_error


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model folder (e.g. a run's final/) or a Hub model id")
    parser.add_argument("--prompt", default=None, help="the beginning of the story (default: read lines of stdin)")
    # Sampling: what is not given is the model's own, from its folder's generation_config.json.
    parser.add_argument("--max-new-tokens", type=int, help="the most tokens to add (default: the model's)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: the model's)")
    parser.add_argument("--top-k", type=int, help="0 = no top-k filter (default: the model's)")
    parser.add_argument("--top-p", type=float, help="1 = no nucleus filter (default: the model's)")
    parser.add_argument("--repetition-penalty", type=float, help="1 = none (default: the model's)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible stories (default: random)")
    parser.add_argument("--num-return-sequences", type=int, help="stories per prompt (default 1)")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a Hub model's own code to run (not needed for SLM models)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--int8", action="store_true",
                        help="int8 weights (SLM models; its speed-up: BENCHMARKS.md, 'Generation speed')")
    args = parser.parse_args(argv)
    if args.prompt is None and sys.stdin is not None and sys.stdin.isatty():  # nobody is going to type prompts into a waiting script
        parser.error("no prompt: pass --prompt TEXT, or pipe prompts in, one per line "
                     "(echo 'Once upon a time' | python scripts/generate.py --model DIR)")
    return args


@exit_on_error
def main(argv=None):
    args = parse_args(argv)
    from slm_hf.errors import SLMError  # after parsing: --help and bad arguments answer before torch is imported
    from slm_hf.generation import GenerationSettings, load_pretrained, read_prompts, stream_to_terminal

    sampling = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "num_return_sequences")
    given = {name: getattr(args, name) for name in sampling if getattr(args, name) is not None}
    settings = GenerationSettings(**given, seed=args.seed)
    prompts = [args.prompt] if args.prompt is not None else read_prompts(sys.stdin)
    model, tokenizer = load_pretrained(args.model, device=args.device, revision=args.revision,
                                       trust_remote_code=args.trust_remote_code, int8=args.int8)
    if stream_to_terminal(model, tokenizer, prompts, settings) == 0:
        raise SLMError("no prompt: pass --prompt TEXT or write prompts to stdin, one per line")


if __name__ == "__main__":
    main()
