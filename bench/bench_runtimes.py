"""Speed across runtimes: greedy decoding at batch 1 of one model folder, same weights, same run.

    python bench/bench_runtimes.py --model runs/cpu-demo/final                 # 100 new tokens, 5 repeats
    python bench/bench_runtimes.py --model runs/cpu-demo/final --new-tokens 20 --repeats 1      # a quick check

Runtimes: `generate()` of our model in fp32 (the fastest fp32 path: dynamic cache, SDPA) and with int8 weights
(`--int8`, our fastest CPU path), llama.cpp through llama-cpp-python on the GGUF export at f32, f16 and q8_0, and
onnxruntime on the ONNX export (its KV cache, one token a call). Each generates exactly `--new-tokens` tokens after
the same 16-token prompt (no early stop), single-threaded or with `--threads`; the runs are interleaved and the
median is reported (a shared machine slows all alike). Results: bench/results/runtimes_<cpu>_<date>.json
(bench/machine.py:write_results, naming the CPU and the model's shape), rendered by bench/report.py.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine import model_shape, write_results

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

    reference = statistics.median(times["generate() fp32"])
    rows = [{"runtime": name, "seconds": statistics.median(measured),
             "tokens_per_s": args.new_tokens / statistics.median(measured),
             "vs_generate_fp32": reference / statistics.median(measured)} for name, measured in times.items()]
    for row in rows:
        print(f"{row['runtime']:20} {row['seconds']:.3f} s  {row['tokens_per_s']:,.0f} tokens/s")
    results = {"model": str(args.model), "parameters": sum(p.numel() for p in model.parameters()),
               "prompt_tokens": len(prompt), "new_tokens": args.new_tokens, "repeats": args.repeats,
               "threads": args.threads, "versions": {"llama-cpp-python": llama_cpp.__version__,
                                                     "onnxruntime": onnxruntime.__version__}, "rows": rows}
    print(f"written to {write_results('runtimes', results, shape=model_shape(model.config))}")


if __name__ == "__main__":
    main()
