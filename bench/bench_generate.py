"""Generation speed: `generate()` tokens/s of SLM against transformers' LlamaForCausalLM of the same shape.

Both models are built from random weights (speed does not depend on them) with the `small` preset's shape: width
288, 6 layers, 6 heads, intermediate 768, vocabulary 4096, rotary + RMSNorm + SwiGLU, tied embeddings. Each
measurement is greedy decoding of exactly `--new-tokens` tokens (no early stop) through the public `generate()` API,
with an attention mask and a pad token id; batch 1 has one prompt, larger batches have left-padded prompts of
different lengths. Every configuration is warmed up first, then the runs of all configurations are interleaved
(so that load from other processes on a shared machine hits them alike) and the median is reported, with the ratio
to Llama measured in the same run.

    python bench/bench_generate.py                                   # 256 new tokens, batch 1 and 16
    python bench/bench_generate.py --new-tokens 32 --repeats 2       # a quick check
    python bench/bench_generate.py --profile                         # where the per-token time goes
"""

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from slm_hf import SLMConfig, SLMForCausalLM

PRESET = "small"


def build_models(preset: str = PRESET) -> dict[str, torch.nn.Module]:
    config = SLMConfig.from_preset(preset)
    torch.manual_seed(0)
    slm = SLMForCausalLM(config).eval()
    llama_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        tie_word_embeddings=True,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    torch.manual_seed(0)
    llama = LlamaForCausalLM(llama_config).eval()
    return {"slm": slm, "llama": llama}


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


def generate_fn(model: torch.nn.Module, prompts: dict, new_tokens: int, **generate_kwargs) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        out = model.generate(
            **prompts,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            **generate_kwargs,
        )
        assert out.shape[1] == prompts["input_ids"].shape[1] + new_tokens
        return out

    return run


def measure(runs: dict[str, Callable], repeats: int, tokens: int) -> dict[str, float]:
    """Median tokens/s of each run; one warm-up call each, then `repeats` interleaved timed calls."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: tokens / statistics.median(seconds) for name, seconds in times.items()}


def benchmark(args) -> None:
    models = build_models()
    vocab_size = models["slm"].config.vocab_size
    print(f"# generate() tokens/s: {args.new_tokens} new tokens, greedy, median of {args.repeats} runs")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"# parameters: slm {sum(p.numel() for p in models['slm'].parameters()):,}, "
          f"llama {sum(p.numel() for p in models['llama'].parameters()):,}")
    print("| batch | model | tokens/s | vs llama |")
    print("|---|---|---|---|")
    for batch_size in args.batch_sizes:
        prompts = make_prompts(batch_size, vocab_size)
        runs = {name: generate_fn(model, prompts, args.new_tokens) for name, model in models.items()}
        rates = measure(runs, args.repeats, batch_size * args.new_tokens)
        for name, rate in rates.items():
            print(f"| {batch_size} | {name} | {rate:,.0f} | {rate / rates['llama']:.2f}x |", flush=True)


def profile(args) -> None:
    """Split per-token time into the model's forward and generate()'s own work, then list the forward's ops."""
    model = build_models()["slm"]
    prompts = make_prompts(1, model.config.vocab_size)
    run = generate_fn(model, prompts, args.new_tokens)
    run()
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
    decode = statistics.median(forward_seconds[1:])
    print(f"# batch 1, {args.new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"per token: {1e3 * total / args.new_tokens:.2f} ms total, {1e3 * decode:.2f} ms model forward (median "
          f"decode step), {1e3 * (total - sum(forward_seconds)) / steps:.2f} ms generate() outside the model")

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows)
    print(f"# torch.profiler, one generate() of {args.new_tokens} tokens, ops by self CPU time")
    print(table)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="profile SLM at batch 1 instead of benchmarking")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        profile(args) if args.profile else benchmark(args)


if __name__ == "__main__":
    main()
