#!/usr/bin/env python
"""Export a trained model folder for other runtimes: a plain Llama folder, a GGUF file for llama.cpp, or ONNX.

    python scripts/export.py --model runs/cpu-demo/final --to llama --out exports/llama
    python scripts/export.py --model runs/cpu-demo/final --to gguf --out exports/gguf --gguf-type q8_0
    python scripts/export.py --model runs/cpu-demo/final --to onnx --out exports/onnx

llama: a LlamaForCausalLM folder that transformers 5.x and 4.x load without remote code (and vLLM, TGI...).
gguf: one .gguf file (f32, f16 or q8_0) that llama.cpp runs, written with the gguf package.
onnx: the Llama folder plus onnx/model.onnx with a KV cache, for onnxruntime and transformers.js.
A model that a Llama cannot express (learned positions, LayerNorm, GELU, biases) is refused.
"""

import sys

from command_line import ArgumentParser, exit_on_error, library_module

choices = library_module("slm_hf/choices.py")


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the model folder, e.g. runs/cpu-demo/final")
    parser.add_argument("--to", required=True, choices=choices.EXPORT_TARGETS, help="the export format")
    parser.add_argument("--out", required=True, help="the output folder (made if missing; must be empty)")
    parser.add_argument("--gguf-type", default="f16", choices=choices.GGUF_TYPES,
                        help="weight type of the GGUF file (default f16; norms stay f32)")
    parser.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    return parser.parse_args(argv)


@exit_on_error
def main(argv=None):
    args = parse_args(argv)
    from slm_hf.exporting import export_model  # after parsing: see scripts/command_line.py

    options = {"overwrite": args.overwrite}
    if args.to == "gguf":
        options["gguf_type"] = args.gguf_type
    path = export_model(args.model, args.to, args.out, **options)
    print(f"wrote {path}", file=sys.stderr)
    print(path)

if __name__ == "__main__":
    main()
