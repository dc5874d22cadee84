#!/usr/bin/env python
"""Serve a trained model folder over an OpenAI-compatible HTTP API, with `transformers serve`.

    python scripts/serve.py --model runs/cpu-demo/final [--port 8000]
    # then, from any OpenAI client:
    #   OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").completions.create(model=<the printed name>, ...)

The model is exported to a Llama folder once (into --cache, reused while the model folder is unchanged), and
`transformers serve` runs it with continuous batching: concurrent requests share the model's forward passes.
The API's model name is the export's folder path, printed at start. Past --max-stories stories being written and
--max-queue requests waiting, a new request is refused at once (status 429, one line). Needs the `serve` extra
(pip install 'slm-hf[serve]': fastapi, uvicorn, pydantic, openai).
"""

import sys

from command_line import ArgumentParser, exit_on_error


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the trained model folder, e.g. runs/cpu-demo/final")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve other machines)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--cache", default=None,
                        help="folder for the Llama export (default $SLM_HF_CACHE/serve or ~/.cache/slm_hf/serve)")
    parser.add_argument("--no-continuous-batching", action="store_true",
                        help="serve one request at a time (the default batches concurrent requests)")
    parser.add_argument("--max-stories", type=int, default=32,
                        help="stories written at once; sizes the server's KV cache (default 32 whole contexts)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for room past --max-stories; more are refused at once with status 429 "
                             "(default 64)")
    args = parser.parse_args(argv)
    if args.max_stories < 1:
        parser.error(f"argument --max-stories: must be at least 1, got {args.max_stories}")
    if args.max_queue < 0:
        parser.error(f"argument --max-queue: must be at least 0, got {args.max_queue}")
    if not 0 < args.port < 65536:
        parser.error(f"argument --port: {args.port} is not a port number (1-65535)")
    return args


@exit_on_error
def main(argv=None):
    args = parse_args(argv)
    from slm_hf.serving import check_serve_dependencies, serve, served_folder  # after parsing

    check_serve_dependencies()
    folder = served_folder(args.model, args.cache)
    print(f"serving {args.model} at http://{args.host}:{args.port}/v1 as model {str(folder)!r}", file=sys.stderr,
          flush=True)
    serve(folder, host=args.host, port=args.port, continuous_batching=not args.no_continuous_batching,
          max_stories=args.max_stories, max_queue=args.max_queue)


if __name__ == "__main__":
    main()
