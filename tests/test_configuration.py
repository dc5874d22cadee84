"""SLMConfig: presets, defaults, serialisation, and the refusal of every configuration the model cannot be built from."""

import importlib.util
import sys

import pytest

from slm_hf import SLMConfig, SLMForCausalLM
from slm_hf.configuration_slm import MLP_TYPES, NORM_TYPES, POSITION_EMBEDDING_TYPES, PRESETS


def test_presets_build_and_have_the_documented_shapes():
    assert set(PRESETS) >= {"seed", "tiny", "small", "medium"}
    seed = SLMConfig.from_preset("seed")
    assert (seed.num_hidden_layers, seed.num_attention_heads, seed.hidden_size) == (6, 6, 384)
    assert (seed.max_position_embeddings, seed.vocab_size, seed.dropout) == (128, 50257, 0.1)
    assert (seed.position_embedding_type, seed.norm_type, seed.mlp_type, seed.bias) == ("learned", "layernorm", "gelu", True)
    assert seed.intermediate_size == 4 * 384 and seed.tie_word_embeddings
    small = SLMConfig.from_preset("small")
    assert (small.position_embedding_type, small.norm_type, small.mlp_type, small.bias) == ("rope", "rmsnorm", "swiglu", False)
    tiny = SLMConfig.from_preset("tiny")
    assert sum(p.numel() for p in SLMForCausalLM(tiny).parameters()) < 100_000


def test_preset_overrides_and_unknown_preset():
    config = SLMConfig.from_preset("small", num_hidden_layers=2, dropout=0.2)
    assert (config.num_hidden_layers, config.dropout, config.hidden_size) == (2, 0.2, 288)
    with pytest.raises(ValueError, match=r"Unknown SLM preset 'huge'.*medium.*seed.*small.*tiny"):
        SLMConfig.from_preset("huge")


def test_attention_dropout_follows_dropout_unless_set(tmp_path):
    assert SLMConfig.from_preset("tiny", dropout=0.1).attention_dropout == 0.1
    config = SLMConfig.from_preset("tiny", dropout=0.1, attention_dropout=0.0)
    assert (config.dropout, config.attention_dropout) == (0.1, 0.0)
    config.save_pretrained(tmp_path)
    assert SLMConfig.from_pretrained(tmp_path).attention_dropout == 0.0  # saved resolved, not re-derived on load


def test_defaults():
    config = SLMConfig(hidden_size=64, num_attention_heads=4)
    assert config.num_key_value_heads == 4  # plain multi-head attention unless asked otherwise
    assert config.head_dim == 16
    assert config.intermediate_size % 32 == 0 and config.intermediate_size >= 8 * 64 // 3  # SwiGLU: ~8/3 x
    assert SLMConfig(hidden_size=64, num_attention_heads=4, mlp_type="gelu").intermediate_size == 256
    assert config.tie_word_embeddings is True
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 0, 0)
    assert config.model_type == "slm"


def test_dict_round_trip(tmp_path):
    config = SLMConfig.from_preset("tiny", position_embedding_type="learned", norm_type="layernorm", dropout=0.1,
                                    tie_word_embeddings=False)
    config.save_pretrained(tmp_path)
    loaded = SLMConfig.from_pretrained(tmp_path)
    for key in ("hidden_size", "num_key_value_heads", "intermediate_size", "position_embedding_type", "norm_type",
                "mlp_type", "dropout", "rope_theta", "tie_word_embeddings"):
        assert getattr(loaded, key) == getattr(config, key), key
    assert SLMConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "overrides, message",
    [
        # hidden size not divisible by the head count
        (dict(hidden_size=30, num_attention_heads=4), r"hidden_size \(30\) must be divisible by num_attention_heads \(4\)"),
        # query heads not divisible by key/value heads
        (dict(num_attention_heads=4, num_key_value_heads=3), r"num_attention_heads \(4\) must be divisible by num_key_value_heads \(3\)"),
        (dict(num_key_value_heads=8), r"num_attention_heads \(4\) must be divisible by num_key_value_heads \(8\)"),
        # non-positive (or non-integer) sizes
        (dict(vocab_size=0), r"vocab_size must be a positive integer, got 0"),
        (dict(hidden_size=-32), r"hidden_size must be a positive integer, got -32"),
        (dict(num_hidden_layers=0), r"num_hidden_layers must be a positive integer"),
        (dict(num_attention_heads=0), r"num_attention_heads must be a positive integer"),
        (dict(num_key_value_heads=0), r"num_key_value_heads must be a positive integer"),
        (dict(intermediate_size=0), r"intermediate_size must be a positive integer"),
        (dict(max_position_embeddings=0), r"max_position_embeddings must be a positive integer"),
        (dict(hidden_size=32.0), r"hidden_size must be a positive integer, got 32.0"),
        (dict(num_hidden_layers=True), r"num_hidden_layers must be a positive integer, got True"),
        # unknown choices, listing the allowed values
        (dict(position_embedding_type="alibi"), r"position_embedding_type must be one of \('rope', 'learned'\), got 'alibi'"),
        (dict(norm_type="batchnorm"), r"norm_type must be one of \('rmsnorm', 'layernorm'\), got 'batchnorm'"),
        (dict(mlp_type="relu"), r"mlp_type must be one of \('swiglu', 'gelu'\), got 'relu'"),
        # other ranges
        (dict(hidden_size=36, num_attention_heads=4, num_key_value_heads=4), r"rotary positions need an even head dimension"),
        (dict(rope_theta=0.0), r"rope_theta must be positive"),
        (dict(norm_eps=0.0), r"norm_eps must be positive"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(attention_dropout=1.5), r"attention_dropout must be in \[0, 1\), got 1.5"),
        (dict(initializer_range=0.0), r"initializer_range must be positive"),
        (dict(eos_token_id=512), r"eos_token_id must be None or a token id in \[0, 512\), got 512"),
        (dict(pad_token_id=-1), r"pad_token_id must be None or a token id"),
        (dict(tie_word_embeddings=None), r"tie_word_embeddings must be true or false, got None"),
        # options measured and dropped: on, they are refused; off (as earlier folders saved them), they load
        (dict(qk_norm=True), r"^SLMConfig.qk_norm=True is an option slm_hf dropped \(measured, it did not pay"),
        (dict(zero_init_residual=1), r"^SLMConfig.zero_init_residual=1 is an option slm_hf dropped"),
        (dict(logit_softcap=30.0), r"^SLMConfig.logit_softcap=30.0 is an option slm_hf dropped"),
        (dict(mlp_type="relu2"), r"^SLMConfig.mlp_type='relu2' is an option slm_hf dropped"),
    ],
)
def test_bad_config_is_refused_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        SLMConfig.from_preset("tiny", **overrides)


def test_allowed_choice_lists_are_the_ones_the_model_builds():
    for position in POSITION_EMBEDDING_TYPES:
        for norm in NORM_TYPES:
            for mlp in MLP_TYPES:
                config = SLMConfig.from_preset("tiny", position_embedding_type=position, norm_type=norm, mlp_type=mlp)
                SLMForCausalLM(config)


def test_older_transformers_is_refused_with_the_version_to_install(monkeypatch):
    """Before 5.24 generate() passes the cache as `past_key_values`: the model would decode without it, silently."""
    import slm_hf.configuration_slm

    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.17.0")  # the module as imported now
    spec = importlib.util.spec_from_file_location("configuration_slm_copy", slm_hf.configuration_slm.__file__)
    with pytest.raises(ImportError, match=r"transformers >= 5\.24 \(this is 5\.17\.0\)"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
