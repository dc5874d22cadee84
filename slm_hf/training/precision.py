"""The precision a run trains in: its choice (with a micro-benchmark of bf16 on CPUs), and bf16 on a CPU as bf16
compute weights with fp32 master weights.

This is training policy, so it lives here and not in modeling_slm.py (which ships to the Hub as remote code, and
holds only what running the model needs): the model file merely runs whichever attention implementation it is given;
`MasterWeights` asks its bf16 copy for eager attention.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from ..choices import PRECISIONS
from ..configuration_slm import SLMConfig
from ..errors import SLMError
from .launchers import Launch, launcher_precision


@dataclass(frozen=True)
class Precision:
    """The precision in effect, decided once (`resolve_precision` on the main process, then for every process).

    `setting` is the run's: `no`, `fp16` or `bf16` (recorded in training_state.json; a resumed `auto` run keeps it).
    `master_weights`: bf16 on a CPU runs as `MasterWeights`, so Accelerate itself is told `no` (`for_accelerate`).
    """

    setting: str
    master_weights: bool = False

    @classmethod
    def on(cls, setting: str, device: torch.device) -> Precision:
        return cls(setting, master_weights=setting == "bf16" and device.type == "cpu")

    @property
    def for_accelerate(self) -> str:
        return "no" if self.master_weights else self.setting

    @property
    def name(self) -> str:
        """As training_results.json and the model card say it."""
        if self.master_weights:
            return "bf16 with fp32 master weights"
        return {"no": "fp32", "fp16": "fp16 mixed", "bf16": "bf16 mixed"}.get(self.setting, self.setting)


def resolve_precision(
    requested: str, device: torch.device, model_config: SLMConfig, tokens: int, launch: Launch | None = None
) -> str:
    """Turn `--mixed-precision` into Accelerate's setting: `no`, `fp16` or `bf16`.

    `auto` takes the launcher's choice where there is one (`accelerate launch --mixed_precision X` as typed, or
    `accelerate config`'s fp16 / bf16); otherwise it picks fp16 (with loss scaling) on CUDA, bf16 on a CPU whose
    bf16 matrix products measure faster than fp32 (native bf16 units: AMX, AVX512-BF16), else fp32. An explicit
    `--mixed-precision` (or the config's) wins over the launcher's. fp16 on a CPU is refused, naming the setting
    that asked for it: Accelerate would silently train in fp32.
    """
    asked_by = "--mixed-precision fp16 (or mixed_precision: fp16 in the config)"
    if requested == "auto" and launch is not None and (launcher := launcher_precision(launch)):
        requested, asked_by = launcher
    if requested == "fp16" and device.type != "cuda":
        raise SLMError(
            f"{asked_by}: fp16 mixed precision needs a CUDA GPU; on {device.type} Accelerate would silently train "
            f"in fp32. Use bf16 or no instead"
        )
    if requested not in PRECISIONS:
        raise SLMError(f"{asked_by}: unknown precision {requested!r}; use one of no, fp16, bf16")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and cpu_bf16_is_faster(tokens, model_config.hidden_size, model_config.intermediate_size):
        return "bf16"
    return "no"


def cpu_bf16_is_faster(m: int, k: int, n: int, margin: float = 1.5, repeats: int = 5) -> bool:
    """Time an (m x k) @ (k x n) product, the model's feed-forward shape, in fp32 and bf16 (a fraction of a second).

    bf16 autocast adds a cast around every matrix product, so it pays only where bf16 products are clearly faster
    (`margin` x): on CPUs without native bf16 units they are emulated and slower than fp32.
    """
    m = min(m, 4096)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b  # warm up
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        timings[dtype] = best
    return timings[torch.bfloat16] * margin < timings[torch.float32]


class MasterWeights:
    """bf16 training on a CPU: the model computes in bf16 while the optimizer updates fp32 "master" weights.

    Accelerate's bf16 (autocast) keeps fp32 weights and converts around every matrix product, and leaves the norms,
    residual additions and attention scores in fp32 between them: on a 2-core CPU those conversions and fp32
    elementwise passes cost more than the products themselves. Here the whole forward and backward pass runs on a
    bf16 copy of the model (attention as plain bf16 matrix products), and after each backward pass the bf16
    gradients move to the fp32 module, which the optimizer updates and which is copied back into the bf16 one.
    Updates smaller than bf16's resolution accumulate in the fp32 weights instead of being rounded away. (The
    gradients of one update's micro-batches still add up in bf16, in the buffers DDP all-reduces: with many
    micro-batches per update that sum is rounded more than under autocast.) BENCHMARKS.md, "Training step", measures it
    against autocast (on a CPU with bf16 arithmetic).

    `module` (fp32) is what the optimizer holds, what checkpoints save (`accelerator.register_for_checkpointing`)
    and what the model folders export; `compute` (bf16) is what the loop runs.
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.compute = copy.deepcopy(module)
        for parameter in self.compute.parameters():  # parameters only: buffers such as rotary frequencies stay fp32
            parameter.data = parameter.data.to(torch.bfloat16)
        self.compute.set_attn_implementation("eager")  # CPU SDPA is slower in bf16 than plain products
        self.pairs = [(m, c) for m, c in zip(module.parameters(), self.compute.parameters()) if m.requires_grad]

    @torch.no_grad()
    def gradients_to_master(self) -> None:
        for master, compute in self.pairs:
            master.grad = None if compute.grad is None else compute.grad.float()
            compute.grad = None

    @torch.no_grad()
    def master_to_compute(self) -> None:
        torch._foreach_copy_([compute for _, compute in self.pairs], [master for master, _ in self.pairs])


class LossScaleWatch:
    """Counts the fp16 updates the loss scaler skipped, from its scale: it halves exactly when gradients overflowed.

    (`accelerator.optimizer_step_was_skipped` cannot tell: with a fused optimizer, which skips an overflowed update
    inside its own kernel, Accelerate reports every update as done.) Reading the scale waits for the GPU: one host
    sync per update, only under fp16.
    """

    def __init__(self, accelerator: Accelerator):
        self.scaler = accelerator.scaler
        self.scale = self.scaler.get_scale() if self.scaler is not None else None

    def update_was_skipped(self) -> bool:
        if self.scaler is None:
            return False
        previous, self.scale = self.scale, self.scaler.get_scale()
        return self.scale < previous
