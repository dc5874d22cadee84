"""The int8 inference copy of an SLM model: every linear layer's weights in int8, one scale per output row.

How the Space and `generate.py --int8` decode fast on a CPU (BENCHMARKS.md, "Generation speed"). Inference only: a
converted model cannot be trained or saved. This file is copied next to the weights by ``save_pretrained`` with
``modeling_slm.py`` (remote code): it imports only torch.
"""

import torch
import torch.nn.functional as F
from torch import nn


class SLMInt8Linear(nn.Module):
    """Inference-only stand-in for an `nn.Linear`: int8 weights with one scale per output row.

    At batch size 1 a decoding step reads every weight once for a few multiply-adds each, so its time is memory
    traffic: int8 weights are 4x fewer bytes than fp32 (and fit a CPU's last-level cache). On a CPU the product runs
    in one kernel, `torch._weight_int8pack_mm`, on bf16 activations (the input is cast to bf16 and the output back to
    the input's dtype; the kernel needs `in_features` to be a multiple of 16, it computes wrong numbers otherwise).
    Elsewhere the weight is dequantized on the fly.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.use_kernel = self.in_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and self.use_kernel:
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            output = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales).to(x.dtype)
            output = output.view(*x.shape[:-1], self.out_features)
        else:
            output = F.linear(x, self.weight_int8.to(x.dtype) * self.scales[:, None].to(x.dtype))
        return output if self.bias is None else output + self.bias


@torch.no_grad()
def convert_linear_layers(model: nn.Module) -> nn.Module:
    """Replace, in place, every `nn.Linear` inside `model` by its `SLMInt8Linear`; returns `model` in eval mode."""
    model.eval()
    linears = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    for parent, name, child in linears:
        setattr(parent, name, SLMInt8Linear(child))
    return model


def is_converted(model: nn.Module) -> bool:
    """Whether `convert_linear_layers` converted (part of) `model`."""
    return any(isinstance(module, SLMInt8Linear) for module in model.modules())


__all__ = ["SLMInt8Linear", "convert_linear_layers", "is_converted"]
