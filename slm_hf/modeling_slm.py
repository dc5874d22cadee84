"""SLM: a small decoder-only transformer, written from scratch as a native transformers causal LM.

Reading order: normalisation, positions (rotary or learned), attention, feed-forward, the block that joins them
with residual connections, then the `PreTrainedModel` classes (`SLMModel`, the backbone, and `SLMForCausalLM`,
backbone + language-model head).

This file holds the architecture; its loss (`loss_slm.causal_lm_loss`, a chunked cross-entropy) and its int8
inference copy (`int8_slm`) live in sibling files. ``save_pretrained`` copies this file and its siblings next to the
weights (remote code: a Hub user loads the model with ``trust_remote_code=True`` and no ``slm_hf``), so they import
only torch, transformers and each other: never ``slm_hf`` itself. How to train, the CPU precision policy included,
is slm_hf's business (slm_hf/training/).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_slm import SLMConfig
from .int8_slm import convert_linear_layers, is_converted
from .loss_slm import causal_lm_loss


# --------------------------------------------------------------------------------------------- normalisation
class SLMRMSNorm(nn.Module):
    """Root-mean-square normalisation: no mean subtraction, no bias."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.eps)


def build_norm(config: SLMConfig) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return SLMRMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.bias)


# ----------------------------------------------------------------------------------------------- positions
class SLMRotaryEmbedding(nn.Module):
    """Rotary position embedding: the cos and sin of each position's rotation angles, for `apply_rotary`.

    The angles are computed in fp32 at every forward, from nothing stored: a frequency buffer would be rounded by
    `model.to(torch.bfloat16)`, and rounding the frequencies to bf16 shifts the angles of late positions by tenths
    of a radian.
    """

    def __init__(self, config: SLMConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.theta = config.rope_theta

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape (batch, seq, 1, head_dim), to broadcast over the heads; sin carries the signs of
        `rotate_half` (see `apply_rotary`)."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=position_ids.device) / self.head_dim
        angles = position_ids[..., None].float() / self.theta**exponents  # (batch, seq, head_dim / 2)
        cos, sin = angles.cos(), angles.sin()
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
        return cos.unsqueeze(2).to(dtype), sin.unsqueeze(2).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (batch, seq, heads, head_dim) by the per-position angles: dims i and i + head_dim/2 turn as a pair.

    This is the usual `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`. `sin` holds (-sin, +sin),
    the signs of `rotate_half`, so all that is left of it is swapping the halves: a `roll`.
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


# ----------------------------------------------------------------------------------------------- attention
def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim) for grouped-query attention."""
    if n_rep == 1:
        return hidden_states
    batch, kv_heads, seq, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None].expand(batch, kv_heads, n_rep, seq, head_dim)
    return hidden_states.reshape(batch, kv_heads * n_rep, seq, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention. `attention_mask` is the additive float mask `create_causal_mask` builds for eager.

    The scale goes on the queries (a fifth of the scores' size here). The softmax runs in the scores' own dtype
    except fp16: its kernels accumulate in fp32 and round once, so for bf16 that equals softmax in fp32 then a cast
    (bit for bit, checked) without two conversions of the largest tensor of the layer."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        scores = scores + attention_mask
    if scores.dtype == torch.float16:
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    else:
        probs = F.softmax(scores, dim=-1).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


class SLMAttention(nn.Module):
    """Multi-head causal self-attention with one fused query/key/value projection and optional rotary positions."""

    def __init__(self, config: SLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True  # read by transformers' sdpa/flash attention functions
        self.attention_dropout = config.attention_dropout
        self.use_rotary = config.position_embedding_type == "rope"

        qkv_size = (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_size, bias=config.bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)
        self.o_proj.is_residual_projection = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, seq, -1, self.head_dim)
        queries_and_keys = self.num_heads + self.num_key_value_heads
        query_key = qkv[:, :, :queries_and_keys]
        if self.use_rotary:  # queries and keys turn together: one rotation for both
            cos, sin = position_embeddings
            query_key = apply_rotary(query_key, cos, sin)
        query_key = query_key.transpose(1, 2)
        query, key = query_key.split([self.num_heads, self.num_key_value_heads], dim=1)
        value = qkv[:, :, queries_and_keys:].transpose(1, 2)
        if (
            hidden_states.device.type == "cpu"
            and hidden_states.dtype in (torch.bfloat16, torch.float16)
            and self.config._attn_implementation != "eager"
        ):
            # PyTorch's CPU SDPA kernel is slower in 16 bits than in fp32 (in training and decoding alike): attend in
            # fp32, and cache the keys and values in fp32 too, so that only the new ones are converted. Eager
            # attention is left in 16 bits: its plain matrix products over whole sequences are fast in bf16.
            query, key, value = query.float(), key.float(), value.float()

        if isinstance(cache, Cache):
            key, value = cache.update(key, value, self.layer_idx)
        elif cache is not None:  # continuous batching's paged cache: it reads (and fills in) the batch's layout
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, _ = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(output.reshape(batch, seq, -1).to(hidden_states.dtype))


# -------------------------------------------------------------------------------------------- feed-forward
class SLMMLP(nn.Module):
    """Feed-forward network: SwiGLU (`down(silu(gate(x)) * up(x))`, gate and up fused) or GELU (`down(gelu(up(x)))`).
    """

    def __init__(self, config: SLMConfig):
        super().__init__()
        self.gated = config.mlp_type == "swiglu"
        up_size = 2 * config.intermediate_size if self.gated else config.intermediate_size
        self.up_proj = nn.Linear(config.hidden_size, up_size, bias=config.bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.bias)
        self.down_proj.is_residual_projection = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.up_proj(hidden_states).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.gelu(self.up_proj(hidden_states), approximate="tanh"))


# ------------------------------------------------------------------------------------------------- block
class SLMDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), with dropout on each branch."""

    def __init__(self, config: SLMConfig, layer_idx: int):
        super().__init__()
        self.input_norm = build_norm(config)
        self.self_attn = SLMAttention(config, layer_idx)
        self.post_attention_norm = build_norm(config)
        self.mlp = SLMMLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        **kwargs,
    ) -> torch.Tensor:
        attn_out = self.self_attn(
            self.input_norm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + self.dropout(attn_out)
        return hidden_states + self.dropout(self.mlp(self.post_attention_norm(hidden_states)))


# ------------------------------------------------------------------------------------------------ models
# The Auto classes a saved folder's own code answers (`trust_remote_code=True`).
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_slm.SLMConfig",
    "AutoModel": "modeling_slm.SLMModel",
    "AutoModelForCausalLM": "modeling_slm.SLMForCausalLM",
}


# What continuous batching (`generate_batch`, `init_continuous_batching`) passes with its paged cache (not a `Cache`):
# where each request's tokens lie in the batch and in the cache, read by that cache's `update` and by attention.
PAGED_ATTENTION_KWARGS = frozenset({"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "read_index",
                                    "write_index", "block_table", "is_causal", "logits_indices",
                                    "logits_processor_args"})


def check_forward_kwargs(kwargs: dict, paged: bool = False) -> None:
    """Refuse a keyword `forward` does not use and that would change the result, rather than silently ignore it.

    Accepted and ignored: what transformers' callers pass without changing anything here (`return_dict`, output
    flags left off, the all-zero `token_type_ids` of transformers 4.x tokenizers). `past_key_values` never gets
    here: the `deprecate_kwarg` decorator renames it to `cache`, as for transformers' own models.
    """
    for key, value in kwargs.items():
        if key == "return_dict" or (paged and key in PAGED_ATTENTION_KWARGS):
            continue
        if key in ("output_attentions", "output_hidden_states") and not value:
            continue
        if key == "token_type_ids" and (value is None or not torch.is_tensor(value) or not value.any()):
            continue
        raise TypeError(f"SLM models do not support the keyword argument {key!r} (it would be ignored)")


class SLMPreTrainedModel(PreTrainedModel):
    config_class = SLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SLMDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def save_pretrained(self, *args, **kwargs):
        if is_converted(self):
            raise ValueError(
                "This model was converted with quantize_int8() for inference and cannot be saved: save (or push) the "
                "model before converting it, and convert it again after loading."
            )
        if self._auto_class is not None:
            # transformers writes only the saved class's own Auto class into auto_map: name both, so that AutoModel
            # and AutoModelForCausalLM load the folder as remote code alike (as they do natively).
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **REMOTE_CODE_AUTO_MAP}
        return super().save_pretrained(*args, **kwargs)

    def _init_weights(self, module: nn.Module):
        """GPT-2 initialisation: N(0, initializer_range), residual projections scaled by 1/sqrt(2 * layers)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            residual = getattr(module, "is_residual_projection", False)
            init.normal_(module.weight, mean=0.0, std=std / (2 * self.config.num_hidden_layers) ** 0.5 if residual
                         else std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (SLMRMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)


class SLMModel(SLMPreTrainedModel):
    """The transformer backbone: embeddings, positions, blocks and the final norm (no language-model head)."""

    def __init__(self, config: SLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        else:
            self.rotary_emb = SLMRotaryEmbedding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(SLMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = build_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.embed_tokens = value

    def _embed(self, input_ids: torch.Tensor, decoding_step: bool) -> torch.Tensor:
        """Token embeddings; an id outside the vocabulary is a ValueError, not an IndexError or a device assert."""
        if input_ids.device.type == "cpu" or torch.compiler.is_compiling():
            try:  # free on a CPU: torch checks the range anyway, only its error message is reworded
                return self.embed_tokens(input_ids)
            except IndexError:
                raise self._vocabulary_error(input_ids) from None
        # On an accelerator a bad id is an unrecoverable device assert, and reading the ids' range costs a host-device
        # sync: check prompts, not the decoding steps of a generation (whose ids the model chose itself) nor training.
        if not decoding_step and not self.training and input_ids.numel():
            low, high = input_ids.aminmax()
            if low < 0 or high >= self.config.vocab_size:
                raise self._vocabulary_error(input_ids)
        return self.embed_tokens(input_ids)

    def _vocabulary_error(self, input_ids: torch.Tensor) -> ValueError:
        low, high = (int(value) for value in input_ids.aminmax())
        return ValueError(
            f"Token ids must be in [0, {self.config.vocab_size}) (the model's vocab_size); got ids from {low} to "
            f"{high}. Was the text encoded with a different tokenizer?"
        )

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # as LlamaModel
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        paged = cache is not None and not isinstance(cache, Cache)  # continuous batching's PagedAttentionCache
        check_forward_kwargs(kwargs, paged=paged)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        seq_length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        # The number of keys attention sees, a Python int also for a static cache (then: its size), so that checks on
        # it need no host-device sync and compile.
        key_length = cache.get_mask_sizes(seq_length, 0)[0] if cache is not None and not paged else seq_length
        learned_positions = self.config.position_embedding_type == "learned"
        if learned_positions and key_length > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence of {key_length} tokens is longer than max_position_embeddings "
                f"({self.config.max_position_embeddings}) of this model's learned position table; truncate the input "
                f"or generate fewer tokens."
            )

        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids, decoding_step=cache is not None and seq_length == 1)
        if position_ids is None:
            past_length = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(seq_length, device=inputs_embeds.device)[None] + past_length

        hidden_states = inputs_embeds
        position_embeddings = None
        if learned_positions:
            hidden_states = hidden_states + self.embed_positions(position_ids)
        else:
            position_embeddings = self.rotary_emb(position_ids, hidden_states.dtype)
        hidden_states = self.dropout(hidden_states)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


class SLMForCausalLM(SLMPreTrainedModel, GenerationMixin):
    """SLM backbone + a language-model head (tied to the token embeddings unless `tie_word_embeddings=False`); works
    with `generate()` and pipelines."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SLMConfig):
        super().__init__(config)
        self.model = SLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.loss_function = causal_lm_loss  # transformers' hook: any function with ForCausalLMLoss's arguments
        self.post_init()

    def quantize_int8(self) -> "SLMForCausalLM":
        """Convert this model, in place, for fast CPU inference: int8 weights in every linear layer (the attention and
        feed-forward projections and the language-model head); embeddings, norms and activations keep their dtype.

        A fast way to run `generate()` on a CPU (BENCHMARKS.md, "Generation speed"; its accuracy against fp32 was
        measured on the 288 x 6 shape of earlier sessions: bench/results/BENCHMARKS_handwritten_until_c74a0be.md).
        Inference only: the converted model cannot be trained or saved (`int8_slm`).
        """
        return convert_linear_layers(self)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # as LlamaForCausalLM
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor`, *optional*): token ids to predict, aligned with `input_ids` (the loss shifts
            them by one; -100 is ignored).
        shift_labels (`torch.LongTensor`, *optional*): targets already shifted, same shape as `input_ids`, e.g. the
            `tokens[i + 1 : i + T + 1]` windows of the training loop; use instead of `labels`.
        logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last `logits_to_keep` positions
            (0 keeps all); `generate()` passes 1.
        """
        loss_kwargs = {"num_items_in_batch": kwargs.pop("num_items_in_batch")} if "num_items_in_batch" in kwargs else {}
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))

        loss = None
        if labels is not None or shift_labels is not None:
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.vocab_size,
                shift_labels=shift_labels,
                **loss_kwargs,
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)


__all__ = ["SLMPreTrainedModel", "SLMModel", "SLMForCausalLM"]
