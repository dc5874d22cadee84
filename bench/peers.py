"""The peer every benchmark compares against: transformers' LlamaForCausalLM with the same shape as an SLM config."""

from transformers import LlamaConfig


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
