"""Training throughput: tokens/s of the full training step of SLM against transformers' LlamaForCausalLM of the
same shape, both driven by the training loop's own step (`slm_hf.training.optimizer_step`: forward, backward,
gradient clipping, fused AdamW with the loop's parameter groups), in the same run.

The shape is the `cpu-demo` config's (configs/cpu-demo.yaml: since 2026-12-04 width 256, 3 layers, 4 heads,
intermediate 704; the figures in BENCHMARKS.md measured before that: width 288, 6 layers, 6 heads, intermediate 768;
vocabulary 4096, context 256, batch 16), in each precision of PRECISIONS below: fp32, Accelerate's bf16 autocast
(with the default SDPA attention, and with eager attention) and the loop's own bf16 on a CPU (a bf16 model with
fp32 master weights), every one applied to both models alike. Each (model, precision) pair runs in its
own subprocess, so that its peak memory (max RSS) is its own; the pairs are interleaved over the repeats (load from
other processes on a shared machine hits them alike). Reported: the median over repeats of each run's median step
time as tokens/s, the ratio to Llama at the same precision and to Llama's best precision, peak memory, and model
FLOP utilisation against the bf16 matrix-product peak measured here.

    python bench/bench_train.py                          # 10 timed steps after 3 warm-up steps, 3 repeats
    (the compiled mode's warm-up steps include compiling: a C++ compiler must be installed)
    python bench/bench_train.py --steps 2 --warmup 1 --repeats 1     # a quick check

Results: bench/results/train_step_<cpu>_<date>.json (bench/machine.py:write_results), rendered by bench/report.py.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from machine import cpu_demo_shape, cpu_model, model_shape, write_results

MODELS = ("slm", "llama")
# (name, Accelerate's mixed_precision, attention, master weights, compiled): fp32; Accelerate's bf16 autocast with
# the default (SDPA) and the eager attention; the loop's own bf16 on a CPU: a bf16 model with fp32 master weights
# (slm_hf.training.MasterWeights, eager attention); and that, or fp32, with each decoder layer and the loss compiled
# (`compile=true`). A CPU without bf16 arithmetic (no AVX512-BF16, no AMX) runs the bf16 ones very slowly.
PRECISIONS = {
    "fp32": ("no", "sdpa", False, False),
    "fp32-compiled": ("no", "sdpa", False, True),
    "bf16-autocast": ("bf16", "sdpa", False, False),
    "bf16-autocast-eager": ("bf16", "eager", False, False),
    "bf16-master": ("no", "eager", True, False),
    "bf16-master-compiled": ("no", "eager", True, True),
}


def build_model(name: str, model_config) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "slm":
        from slm_hf import SLMForCausalLM

        return SLMForCausalLM(model_config)
    from peers import build_llama

    return build_llama(model_config)


def training_flops_per_token(model: torch.nn.Module, model_config, block_size: int) -> float:
    """6 x (weights of every matrix product, the tied head included) + 12 x layers x width x context (attention)."""
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 12 * model_config.num_hidden_layers * model_config.hidden_size * block_size
    return 6 * matmul_weights + attention


def worker(model_name: str, precision: str, steps: int, warmup: int) -> dict:
    """Time `steps` training steps (after `warmup`) of one model at one precision; runs in its own process."""
    from accelerate import Accelerator

    from slm_hf.training import (
        BatchShape,
        MasterWeights,
        TokenWindows,
        TrainingBatches,
        build_optimizer,
        compile_layers_and_loss,
        optimizer_step,
    )

    config, model_config = cpu_demo_shape()
    batch = BatchShape(config.batch_size, config.gradient_accumulation_steps, processes=1, block_size=config.block_size)
    mixed_precision, attention, master_weights, compiled = PRECISIONS[precision]
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    accelerator = Accelerator(mixed_precision=mixed_precision)
    model = build_model(model_name, model_config)
    model.set_attn_implementation(attention)
    flops_per_token = training_flops_per_token(model, model_config, config.block_size)
    optimizer = build_optimizer(model, config)
    master = None
    if master_weights:
        master = MasterWeights(model)
        model = master.compute
    if compiled:
        compile_layers_and_loss(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    tokens = np.random.default_rng(0).integers(0, model_config.vocab_size, 1_000_000).astype(np.uint16)
    windows = TokenWindows(tokens, batch.block_size, batch.micro_batch_size, seed=0, stream=0)
    batches_of = TrainingBatches(windows, batch, rank=0, device=accelerator.device)  # the Trainer's micro-batches
    times = []
    for step in range(warmup + steps):
        batches = list(batches_of.of_step(step))
        start = time.perf_counter()
        loss, _ = optimizer_step(accelerator, model, optimizer, batches, config.grad_clip, master)
        loss.item()  # wait for the step to finish
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times[warmup:])
    return {
        "model": model_name,
        "precision": precision,
        "tok_s": batch.tokens_per_step / step_time,
        "step_s": step_time,
        "flops_per_token": flops_per_token,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "baseline_rss_mb": baseline_rss / 1024,
        "loss": loss.item(),
    }


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of a square matrix product on this machine (the ceiling for MFU)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="runs per (model, precision), interleaved")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.warmup)))
        return

    config, model_config = cpu_demo_shape()
    print(
        f"# training step, cpu-demo shape: width {model_config.hidden_size}, {model_config.num_hidden_layers} "
        f"layers, vocab {model_config.vocab_size}, batch {config.batch_size} x {config.block_size}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}"
    )
    # MFU of each precision against the peak of its arithmetic (measured only for the precisions asked for)
    arithmetic = {precision: "fp32" if precision.startswith("fp32") else "bf16" for precision in args.precisions}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: matmul_peak(dtypes[name]) for name in sorted(set(arithmetic.values()))}
    print("# matrix-product peak (2048^3): " + ", ".join(f"{name} {flops / 1e12:.2f} TFLOP/s"
                                                       for name, flops in peaks.items()), flush=True)
    runs: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for precision in args.precisions:
            for model in MODELS:
                command = [sys.executable, __file__, "--worker", model, precision]
                command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                result = json.loads(output.strip().splitlines()[-1])
                runs.setdefault((model, precision), []).append(result)
                print(f"  repeat {repeat + 1}: {model:5} {precision:4} {result['tok_s']:8,.0f} tok/s", flush=True)

    def median(model, precision, key):
        return statistics.median(run[key] for run in runs[(model, precision)])

    best_llama = max(median("llama", p, "tok_s") for p in args.precisions)
    rows = []
    for precision in args.precisions:
        for model in MODELS:
            tok_s = median(model, precision, "tok_s")
            rows.append({"model": model, "precision": precision, "tokens_per_s": tok_s,
                         "vs_llama_same_precision": tok_s / median("llama", precision, "tok_s"),
                         "vs_llama_best": tok_s / best_llama, "peak_rss_mb": median(model, precision, "peak_rss_mb"),
                         "mfu": tok_s * runs[(model, precision)][0]["flops_per_token"] / peaks[arithmetic[precision]]})
    results = {"batch_size": config.batch_size, "block_size": config.block_size, "steps": args.steps,
               "warmup": args.warmup, "repeats": args.repeats,
               "peak_tflops": {name: flops / 1e12 for name, flops in peaks.items()}, "rows": rows,
               "runs": [{"repeat": repeat + 1, "model": model, "precision": precision, "tokens_per_s": run["tok_s"]}
                        for (model, precision), measured in runs.items() for repeat, run in enumerate(measured)]}
    path = write_results("train_step", results, shape=model_shape(model_config))
    print(f"\n{len(rows)} (model, precision) medians written to {path}")


if __name__ == "__main__":
    main()
