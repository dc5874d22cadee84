"""Where the time of a GPU training step goes: the loop's own step (`slm_hf.training.optimizer_step`) on random
tokens, profiled with `torch.profiler` after a warm-up; prints the kernels that take the most GPU time and how much
of the step's wall time the GPU is busy.

    python bench/gpu_profile.py [--config configs/gpu-small.yaml] [--steps 5] [key=value ...]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.autograd import DeviceType

from slm_hf import SLMForCausalLM
from slm_hf.training import BatchShape, TokenWindows, build_optimizer, compile_layers_and_loss, optimizer_step
from slm_hf.training_config import TrainingConfig

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "gpu-small.yaml"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25, help="kernels listed")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    config = TrainingConfig.load(args.config, args.overrides)
    config, model_config = config.resolved(vocab_size=args.vocab_size, eos_token_id=0)
    shape = BatchShape(config.batch_size, config.gradient_accumulation_steps, processes=1, block_size=config.block_size)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(0)
    model = SLMForCausalLM(model_config)
    optimizer = build_optimizer(model, config)
    if config.compile:
        compile_layers_and_loss(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    tokens = np.random.default_rng(0).integers(0, model_config.vocab_size, 10_000_000).astype(np.uint16)
    windows = TokenWindows(tokens, shape.block_size, shape.micro_batch_size, seed=0, stream=0)
    synchronize = torch.cuda.synchronize if accelerator.device.type == "cuda" else lambda: None

    def step(n):
        batches = [windows.batch(n, micro) for micro in range(shape.accumulation)]
        batches = [(x.to(accelerator.device), y.to(accelerator.device)) for x, y in batches]
        return optimizer_step(accelerator, model, optimizer, batches, config.grad_clip)[0]

    for n in range(args.warmup):
        step(n)
    synchronize()
    started = time.perf_counter()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        for n in range(args.steps):
            step(args.warmup + n)
        synchronize()
    wall = (time.perf_counter() - started) / args.steps
    events = profile.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # operators would count their kernels again
    gpu_total = sum(e.self_device_time_total for e in kernels) / 1e6 / args.steps
    print(f"step: {wall * 1e3:.1f} ms wall (profiled), GPU busy {gpu_total * 1e3:.1f} ms; "
          f"{shape.tokens_per_step / wall:,.0f} tokens/s")
    print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
