"""Generation speed: `generate()` tokens/s of SLM against transformers' LlamaForCausalLM of the same shape.

Both models are built from random weights (speed does not depend on them) with the `cpu-demo` preset's shape
(configs/cpu-demo.yaml, vocabulary 4096; `--preset small` for the `small` preset's), rotary + RMSNorm + SwiGLU,
tied embeddings. Each
measurement is greedy decoding of exactly `--new-tokens` tokens (no early stop) through the public `generate()` API,
with an attention mask and a pad token id; batch 1 has one 16-token prompt, larger batches have left-padded prompts
of 8 to 16 tokens. Every configuration is warmed up first, then the runs of all configurations are interleaved (so
that load from other processes on a shared machine hits them alike) and the median is reported, with the ratio to
Llama fp32 measured in the same run.

Configurations (`--variants`):
    slm, llama               fp32 weights, transformers' default dynamic cache
    slm-bf16, llama-bf16     the same models converted with `.to(torch.bfloat16)`
    slm-int8                 SLM converted with `model.quantize_int8()` (bf16, int8 weights in the linear layers)
    slm-compiled[-bf16|-int8] static cache + `torch.compile` of the decoding step, through generate()'s own
                             `compile_config` (on a CPU this needs CompileConfig's `_compile_all_devices` flag)

    python bench/bench_generate.py                                   # 256 new tokens, batch 1 and 16
    python bench/bench_generate.py --new-tokens 32 --repeats 2       # a quick check
    python bench/bench_generate.py --profile                         # where the per-token time goes
    python bench/bench_generate.py --accuracy runs/cpu-demo/final    # bf16 against fp32 on validation text

Results (the benchmark, not --profile or --accuracy): bench/results/generate_<cpu>_<date>.json
(bench/machine.py:write_results), rendered by bench/report.py.
"""

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from machine import cpu_demo_shape, model_shape, write_results
from peers import llama_config
from transformers import CompileConfig, LlamaForCausalLM

from slm_hf import SLMConfig, SLMForCausalLM

VARIANTS = ["slm", "llama", "slm-bf16", "llama-bf16", "slm-int8", "slm-compiled", "slm-compiled-bf16",
            "slm-compiled-int8"]
DEFAULT_VARIANTS = ["slm", "llama", "slm-bf16", "llama-bf16", "slm-int8"]


def llama_like(config: SLMConfig) -> LlamaForCausalLM:
    """transformers' Llama with the same shape as an SLM config (rotary, RMSNorm, SwiGLU, no biases, tied)."""
    return LlamaForCausalLM(llama_config(config))


def model_config(preset: str | None) -> SLMConfig:
    """The benchmarked shape: a preset's, or (None) the cpu-demo preset's."""
    return SLMConfig.from_preset(preset) if preset else cpu_demo_shape()[1]


def build_models(variants: list[str], preset: str | None = None) -> dict[str, torch.nn.Module]:
    config = model_config(preset)
    torch.manual_seed(0)
    base = {"slm": SLMForCausalLM(config).eval(), "llama": llama_like(config).eval()}
    models = {}
    for variant in variants:
        model = base[variant.split("-")[0]]
        if variant.endswith("bf16"):
            model = copy.deepcopy(model).to(torch.bfloat16)
        elif variant.endswith("int8"):
            model = copy.deepcopy(model).quantize_int8()
        models[variant] = model
    return models


def make_prompts(batch_size: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded prompts of 8 to 16 tokens (all 16 at batch 1), with their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [16] if batch_size == 1 else [8 + (i * 5) % 9 for i in range(batch_size)]
    width = max(lengths)
    input_ids = torch.zeros((batch_size, width), dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length :] = torch.randint(1, vocab_size, (length,), generator=generator)
        attention_mask[row, width - length :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def generate_kwargs(variant: str) -> dict:
    if "compiled" not in variant:
        return {}
    compile_config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
    compile_config._compile_all_devices = True  # generate() compiles only on accelerators unless told otherwise
    return {"cache_implementation": "static", "compile_config": compile_config}


def generate_fn(model: torch.nn.Module, prompts: dict, new_tokens: int, **kwargs) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        # eos_token_id=None: no early stop, every row decodes exactly new_tokens tokens.
        out = model.generate(
            **prompts, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0, **kwargs
        )
        assert out.shape[1] == prompts["input_ids"].shape[1] + new_tokens
        return out

    return run


def measure(runs: dict[str, Callable], repeats: int, tokens: int) -> dict[str, tuple[float, float]]:
    """(wall-clock, process CPU time) median tokens/s of each run: one warm-up call each, then `repeats` interleaved
    timed calls. CPU time leaves out the time the process waited for a core (a noisy neighbour's doing)."""
    for run in runs.values():
        run()
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - wall_start)
            cpu[name].append(time.process_time() - cpu_start)
    return {name: (tokens / statistics.median(wall[name]), tokens / statistics.median(cpu[name])) for name in runs}


def benchmark(args) -> None:
    models = build_models(args.variants, args.preset)
    config = model_config(args.preset)
    vocab_size = config.vocab_size
    reference = "llama" if "llama" in models else args.variants[0]
    parameters = sum(p.numel() for p in next(iter(models.values())).parameters())
    print(f"# generate() tokens/s: {args.new_tokens} new tokens, greedy, median of {args.repeats} interleaved runs")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {parameters:,} parameters")
    print(f"| batch | model | tokens/s | vs {reference} | tokens/s (CPU time) | vs {reference} (CPU time) |")
    print("|---|---|---|---|---|---|")
    rows = []
    for batch_size in args.batch_sizes:
        prompts = make_prompts(batch_size, vocab_size)
        runs = {name: generate_fn(model, prompts, args.new_tokens, **generate_kwargs(name))
                for name, model in models.items()}
        rates = measure(runs, args.repeats, batch_size * args.new_tokens)
        wall_ref, cpu_ref = rates[reference]
        for name, (wall, cpu) in rates.items():
            print(f"| {batch_size} | {name} | {wall:,.0f} | {wall / wall_ref:.2f}x | {cpu:,.0f} | {cpu / cpu_ref:.2f}x |",
                  flush=True)
            rows.append({"batch": batch_size, "model": name, "tokens_per_s": wall, f"vs_{reference}": wall / wall_ref,
                         "cpu_tokens_per_s": cpu})
    results = {"new_tokens": args.new_tokens, "repeats": args.repeats, "parameters": parameters, "rows": rows}
    print(f"written to {write_results('generate', results, shape=model_shape(config))}")


def profile(args) -> None:
    """Split per-token time into the model's forward and generate()'s own work, then list the ops."""
    variant = args.variants[0]
    model = build_models([variant], args.preset)[variant]
    prompts = make_prompts(args.batch_sizes[0], model.config.vocab_size)
    run = generate_fn(model, prompts, args.new_tokens, **generate_kwargs(variant))
    run()
    print(f"# {variant}, batch {args.batch_sizes[0]}, {args.new_tokens} new tokens, {torch.get_num_threads()} threads")
    if "compiled" not in variant:  # hooks on a compiled model would be traced into its graph
        split_time(model, run, args.new_tokens)
        linear_floor(model, args.batch_sizes[0])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    print(f"# torch.profiler, one generate() of {args.new_tokens} tokens, ops by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def linear_floor(model: torch.nn.Module, batch_size: int, repeats: int = 50) -> None:
    """Time of the decoding step's matrix products alone: each linear layer applied once to one token per row, in
    model order. The weights do not all fit in the CPU caches, so this is mostly the time to stream them from memory."""
    linears = [module for module in model.modules() if hasattr(module, "in_features")]
    dtype = next(model.parameters()).dtype
    inputs = {size: torch.randn(batch_size, 1, size, dtype=dtype) for size in {m.in_features for m in linears}}
    for module in linears:
        module(inputs[module.in_features])
    start = time.perf_counter()
    for _ in range(repeats):
        for module in linears:
            module(inputs[module.in_features])
    weight_bytes = sum(b.numel() * b.element_size() for m in linears for b in [*m.parameters(), *m.buffers()])
    print(f"matrix products alone: {1e3 * (time.perf_counter() - start) / repeats:.2f} ms per step "
          f"({len(linears)} linear layers, {weight_bytes / 2**20:.1f} MiB of weights)")


def split_time(model: torch.nn.Module, run: Callable, new_tokens: int) -> None:
    """Time of each model forward (hooks) against the whole generate() call."""
    forward_seconds = []

    def start(module, args, kwargs):
        forward_seconds.append(-time.perf_counter())

    def stop(module, args, kwargs, output):
        forward_seconds[-1] += time.perf_counter()

    handles = [model.register_forward_pre_hook(start, with_kwargs=True),
               model.register_forward_hook(stop, with_kwargs=True)]
    begin = time.perf_counter()
    run()
    total = time.perf_counter() - begin
    for handle in handles:
        handle.remove()
    steps = len(forward_seconds)
    print(f"per step: {1e3 * total / new_tokens:.2f} ms total, {1e3 * statistics.median(forward_seconds[1:]):.2f} "
          f"ms model forward (median decoding step), {1e3 * (total - sum(forward_seconds)) / steps:.2f} ms in "
          f"generate() outside the model")


def accuracy(args) -> None:
    """How far the bf16 and int8 copies of a trained model are from fp32, on the shipped validation stories: loss,
    next-token agreement and KL divergence (teacher forcing), and how long greedy continuations stay identical."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slm_hf.data import SAMPLE_DIR, SAMPLE_FILES, read_stories

    fp32 = AutoModelForCausalLM.from_pretrained(args.accuracy).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.accuracy)
    stories = read_stories(SAMPLE_DIR / SAMPLE_FILES["val"])[: args.accuracy_stories]
    windows = [tokenizer(story, return_tensors="pt").input_ids[:, : fp32.config.max_position_embeddings]
               for story in stories]
    prompts = [window[:, :8] for window in windows[:8]]
    reference_logits = [fp32(ids).logits.float().log_softmax(-1) for ids in windows]
    reference_texts = [generate_fn(fp32, {"input_ids": prompt}, 128)()[0, 8:] for prompt in prompts]
    tokens = sum(ids.numel() for ids in windows)
    print(f"# {args.accuracy}: {len(stories)} validation stories, {tokens:,} tokens")
    print("| weights | val loss | next-token agreement with fp32 | mean KL(fp32 \\|\\| x) | greedy tokens identical "
          "to fp32 (8 prompts, of 128) |")
    print("|---|---|---|---|---|")
    conversions = {"fp32": lambda model: model, "bf16": lambda model: model.to(torch.bfloat16),
                   "int8": lambda model: model.quantize_int8()}
    for name, convert in conversions.items():
        model = convert(copy.deepcopy(fp32))
        loss = agree = kl = 0.0
        for ids, p in zip(windows, reference_logits):
            q = model(ids).logits.float().log_softmax(-1)
            loss -= q[0, :-1].gather(-1, ids[0, 1:, None]).sum().item()
            agree += (p.argmax(-1) == q.argmax(-1)).sum().item()
            kl += (p.exp() * (p - q)).sum().item()
        same = []
        for prompt, reference in zip(prompts, reference_texts):
            differ = (generate_fn(model, {"input_ids": prompt}, 128)()[0, 8:] != reference).nonzero()
            same.append(len(reference) if len(differ) == 0 else int(differ[0]))
        predicted = tokens - len(windows)
        print(f"| {name} | {loss / predicted:.4f} | {agree / tokens:.2%} | {kl / tokens:.1e} | {same} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=DEFAULT_VARIANTS)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--preset", help="measure this preset's shape instead of configs/cpu-demo.yaml's")
    parser.add_argument("--profile", action="store_true",
                        help="profile the first variant at the first batch size instead of benchmarking")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--accuracy", metavar="MODEL_DIR", help="compare bf16 with fp32 for this trained model")
    parser.add_argument("--accuracy-stories", type=int, default=50)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        if args.accuracy:
            accuracy(args)
        elif args.profile:
            profile(args)
        else:
            benchmark(args)


if __name__ == "__main__":
    main()
