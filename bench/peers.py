"""The peer every benchmark compares against: transformers' LlamaForCausalLM with the same shape as an SLM config."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def llama_config(config) -> LlamaConfig:
    """A Llama config of the SLM config's shape (rotary, RMSNorm, SwiGLU, no biases, tied embeddings)."""
    return LlamaConfig(
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


class ShiftedLlamaForCausalLM(LlamaForCausalLM):
    """Llama that takes the training loop's targets: the loop calls `model(input_ids=x, shift_labels=y)` with `y`
    already shifted, and Llama computes a loss only when given `labels`. transformers' causal-LM loss uses
    `shift_labels` as they are when given, so the loss is the same function as SLM's. Saved folders load back as a
    plain `LlamaForCausalLM` (`AutoModelForCausalLM` goes by the config's model type, `llama`)."""

    def forward(self, *args, shift_labels: torch.Tensor | None = None, **kwargs):
        if shift_labels is not None:
            kwargs.update(labels=shift_labels, shift_labels=shift_labels)
        return super().forward(*args, **kwargs)


def build_llama(config) -> ShiftedLlamaForCausalLM:
    """The peer for an SLM config, ready for `slm_hf.training.train(..., model_factory=build_llama)`."""
    return ShiftedLlamaForCausalLM(llama_config(config))
