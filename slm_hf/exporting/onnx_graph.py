"""The graph the ONNX export traces: a Llama forward pass over explicit key/value tensors, in operations ONNX
expresses directly. Imported by `to_onnx` on first use only, so that importing the exporters does not import torch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LlamaGraph(nn.Module):
    """A Llama forward pass over explicit key/value tensors, in operations ONNX expresses directly."""

    def __init__(self, weights: dict[str, torch.Tensor], config: dict[str, Any]):
        super().__init__()
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config["hidden_size"] // self.heads
        self.eps = config.get("norm_eps", 1e-5)
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        self.register_buffer("inverse_frequencies", 1.0 / config.get("rope_theta", 10000.0) ** exponents)
        self.weights = nn.ParameterDict({name.replace(".", "__"): nn.Parameter(tensor, requires_grad=False)
                                         for name, tensor in weights.items()})
        self.tied = "lm_head.weight" not in weights

    def weight(self, name: str) -> torch.Tensor:
        return self.weights[name.replace(".", "__")]

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.eps) * self.weight(name)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def forward(self, input_ids, attention_mask, position_ids, *past):
        batch, length = input_ids.shape
        hidden = nn.functional.embedding(input_ids, self.weight("model.embed_tokens.weight"))
        angles = position_ids[..., None].float() * self.inverse_frequencies  # (batch, length, head_dim / 2)
        angles = torch.cat((angles, angles), dim=-1)[:, None]
        cos, sin = angles.cos(), angles.sin()
        past_length = past[0].shape[2]
        total = past_length + length
        key_positions = torch.arange(total, device=input_ids.device)
        query_positions = torch.arange(length, device=input_ids.device) + past_length
        allowed = (key_positions[None, :] <= query_positions[:, None])[None, None]
        allowed = allowed & attention_mask[:, None, None, :].bool()
        presents = []
        for i in range(self.layers):
            prefix = f"model.layers.{i}."
            x = self.norm(hidden, prefix + "input_layernorm.weight")
            q = nn.functional.linear(x, self.weight(prefix + "self_attn.q_proj.weight"))
            k = nn.functional.linear(x, self.weight(prefix + "self_attn.k_proj.weight"))
            v = nn.functional.linear(x, self.weight(prefix + "self_attn.v_proj.weight"))
            q = q.view(batch, length, self.heads, self.head_dim).transpose(1, 2)
            k = k.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
            k = torch.cat((past[2 * i], k), dim=2)
            v = torch.cat((past[2 * i + 1], v), dim=2)
            presents += [k, v]
            groups = self.heads // self.kv_heads
            if groups > 1:
                k = k[:, :, None].expand(batch, self.kv_heads, groups, total, self.head_dim)
                k = k.reshape(batch, self.heads, total, self.head_dim)
                v = v[:, :, None].expand(batch, self.kv_heads, groups, total, self.head_dim)
                v = v.reshape(batch, self.heads, total, self.head_dim)
            scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            attention = torch.matmul(scores.softmax(dim=-1), v)
            attention = attention.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)
            hidden = hidden + nn.functional.linear(attention, self.weight(prefix + "self_attn.o_proj.weight"))
            x = self.norm(hidden, prefix + "post_attention_layernorm.weight")
            gate = nn.functional.linear(x, self.weight(prefix + "mlp.gate_proj.weight"))
            up = nn.functional.linear(x, self.weight(prefix + "mlp.up_proj.weight"))
            hidden = hidden + nn.functional.linear(nn.functional.silu(gate) * up,
                                                   self.weight(prefix + "mlp.down_proj.weight"))
        hidden = self.norm(hidden, "model.norm.weight")
        head = self.weight("model.embed_tokens.weight" if self.tied else "lm_head.weight")
        return (nn.functional.linear(hidden, head), *presents)
