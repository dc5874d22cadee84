"""Speed across runtimes: greedy decoding at batch 1 of one model folder, same weights, same run.

    python bench/bench_runtimes.py --model runs/cpu-demo/final                 # 100 new tokens, 5 repeats
    python bench/bench_runtimes.py --model runs/cpu-demo/final --new-tokens 200 --out bench/results/x.md

Runtimes: `generate()` of our model in fp32 (the fastest fp32 path: dynamic cache, SDPA) and with int8 weights
(`--int8`, our fastest CPU path), llama.cpp through llama-cpp-python on the GGUF export at f32, f16 and q8_0, and
onnxruntime on the ONNX export (its KV cache, one token a call). Each generates exactly `--new-tokens` tokens after
the same 16-token prompt (no early stop), single-threaded or with `--threads`; the runs are interleaved and the
median is reported, with the CPU model named (a shared machine slows all alike).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_model

from slm_hf.exporting import export_model
from slm_hf.exporting.to_onnx import ONNX_FILE, onnx_greedy
from slm_hf.generation import load_pretrained

PROMPT = "Once upon a time, there was a little girl named Lily. She loved to"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/cpu-demo/final")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the table (Markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import llama_cpp
    import onnxruntime

    model, tokenizer = load_pretrained(args.model, device="cpu")
    prompt = [tokenizer.eos_token_id] + tokenizer.encode(PROMPT, add_special_tokens=False)[:15]
    scratch = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    onnx_dir = export_model(args.model, "onnx", scratch / "onnx")
    config = json.loads((onnx_dir / "config.json").read_text())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(str(onnx_dir / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    int8_model, _ = load_pretrained(args.model, device="cpu", int8=True)

    def torch_run(chosen):
        def run():
            ids = torch.tensor([prompt])
            with torch.inference_mode():
                chosen.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                min_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                                temperature=None, top_k=None, top_p=None)
        return run

    def llama_cpp_run(path):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + args.new_tokens + 8, n_threads=args.threads,
                              verbose=False)

        def run():
            llm.reset()
            for count, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0), start=1):
                if count == args.new_tokens:
                    break
        return run

    runners = {"generate() fp32": torch_run(model), "generate() int8": torch_run(int8_model)}
    for kind in ("f32", "f16", "q8_0"):
        runners[f"llama.cpp {kind}"] = llama_cpp_run(export_model(args.model, "gguf", scratch / "gguf",
                                                                  gguf_type=kind))
    runners["onnxruntime fp32"] = lambda: onnx_greedy(None, config, prompt, args.new_tokens, session=session)

    times = {name: [] for name in runners}
    for run in runners.values():
        run()  # warm-up
    for _ in range(args.repeats):
        for name, run in runners.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)

    parameters = sum(p.numel() for p in model.parameters())
    lines = [f"Greedy decoding, batch 1, {len(prompt)}-token prompt + {args.new_tokens} new tokens, {args.threads} "
             f"thread(s), median of {args.repeats}; model {args.model} ({parameters / 1e6:.1f}M parameters); "
             f"CPU: {cpu_model()}; torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, "
             f"onnxruntime {onnxruntime.__version__}", "",
             "| runtime | seconds | tokens/s |", "|---|---|---|"]
    for name, measured in times.items():
        median = statistics.median(measured)
        lines.append(f"| {name} | {median:.3f} | {args.new_tokens / median:,.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
