"""Configuration of the SLM decoder-only transformer.

This file is copied next to the weights by ``save_pretrained`` (remote code), so it may import only
``transformers`` (and ``packaging``, which transformers needs) and the standard library: never ``slm_hf`` itself.
"""

import transformers
from packaging.version import Version
from transformers import PretrainedConfig

# transformers 5.24 renamed the key/value cache that generate() passes to the model from `past_key_values` to
# `cache`: with an older version the model would decode without its cache and generate wrong text, silently. This
# file is the first one loaded, also as remote code on other machines, so it refuses older versions.
if Version(transformers.__version__).release < (5, 24):
    raise ImportError(
        f"SLM models need transformers >= 5.24 (this is {transformers.__version__}): "
        f"pip install --upgrade 'transformers>=5.24,<6'"
    )

# The default vocabulary: of the byte-level BPE that slm_hf trains (slm_hf.tokenization, slm_hf.data) and of the
# models sized for it (the `small` preset, the config's default).
DEFAULT_VOCAB_SIZE = 4096

POSITION_EMBEDDING_TYPES = ("rope", "learned")
NORM_TYPES = ("rmsnorm", "layernorm")
MLP_TYPES = ("swiglu", "gelu")

# Options earlier versions had, measured and dropped (they did not pay: BENCHMARKS.md, History), with the value that
# meant "off". A config.json that names one at that value loads as the same model; one that switches it on is refused.
DROPPED_OPTIONS = {"qk_norm": False, "logit_softcap": None, "zero_init_residual": False}
DROPPED_MLP_TYPES = ("relu2",)

# The positive integers that fix a model's shape: its sizes, and so its parameter count and its arithmetic.
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
)

# Named architectures. `SLMConfig.from_preset(name, **overrides)` builds one; unknown names list these.
PRESETS = {
    # The reference tutorial's GPT-2-style model: 6 layers, 6 heads, width 384, context 128, GPT-2 vocabulary,
    # learned positions, LayerNorm, GELU 4x MLP with biases, dropout 0.1, tied embeddings: 29,995,392 parameters.
    "seed": dict(
        vocab_size=50257,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=6,
        intermediate_size=1536,
        max_position_embeddings=128,
        position_embedding_type="learned",
        norm_type="layernorm",
        mlp_type="gelu",
        bias=True,
        dropout=0.1,
        bos_token_id=50256,
        eos_token_id=50256,
        pad_token_id=50256,
    ),
    # A few tens of thousands of parameters: unit tests run it in milliseconds.
    "tiny": dict(
        vocab_size=512,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    ),
    # Ours, sized for a 2-core CPU: rotary positions, RMSNorm, SwiGLU, no biases, tied embeddings (about 7M).
    "small": dict(
        vocab_size=DEFAULT_VOCAB_SIZE,
        hidden_size=288,
        num_hidden_layers=6,
        num_attention_heads=6,
        intermediate_size=768,
        max_position_embeddings=256,
    ),
    # The same family one size up, for a single GPU (about 30M).
    "medium": dict(
        vocab_size=8192,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        intermediate_size=1408,
        max_position_embeddings=512,
    ),
}


class SLMConfig(PretrainedConfig):
    r"""
    Configuration of a [`SLMForCausalLM`]: a small decoder-only transformer for story telling.

    Args:
        vocab_size (`int`): number of tokens in the vocabulary.
        hidden_size (`int`): width of the residual stream.
        num_hidden_layers (`int`): number of transformer blocks.
        num_attention_heads (`int`): query heads per attention layer.
        num_key_value_heads (`int`, *optional*): key/value heads (grouped-query attention); defaults to
            `num_attention_heads` (plain multi-head attention).
        intermediate_size (`int`, *optional*): hidden width of the feed-forward network; defaults to 4x
            `hidden_size` for GELU, and to 8/3x (rounded up to a multiple of 32) for SwiGLU.
        max_position_embeddings (`int`): longest sequence the model is trained for (the size of the learned
            position table; rotary positions have no table but the same training context).
        position_embedding_type (`str`): `"rope"` (rotary) or `"learned"` (an absolute position table).
        rope_theta (`float`): base of the rotary frequencies.
        norm_type (`str`): `"rmsnorm"` or `"layernorm"`.
        norm_eps (`float`): epsilon of the normalisation layers.
        mlp_type (`str`): `"swiglu"` (gated SiLU) or `"gelu"` (two-layer GELU MLP).
        bias (`bool`): biases in the linear layers (and in LayerNorm).
        dropout (`float`): dropout on the embeddings and on the residual branches (the attention and feed-forward
            outputs).
        attention_dropout (`float`, *optional*): dropout on the attention probabilities; defaults to `dropout`.
            On a CPU its masks over every (query, key) pair cost far more than the residual ones (measured on the
            288 x 6 shape of earlier sessions: bench/results/BENCHMARKS_handwritten_until_c74a0be.md).
        initializer_range (`float`): standard deviation of the normal initialisation; the projections that
            write into the residual stream are scaled down by `sqrt(2 * num_hidden_layers)` (GPT-2).
        tie_word_embeddings (`bool`): share the input embedding matrix with the language-model head.
        use_cache (`bool`): return a key/value cache in inference.

    The options in `DROPPED_OPTIONS` (QK-norm, logit soft-cap, zero-initialised projections) and the squared-ReLU
    feed-forward network were measured and dropped; a config.json saved with one of them switched on is refused.
    """

    model_type = "slm"
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        hidden_size: int = 288,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 6,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 256,
        position_embedding_type: str = "rope",
        rope_theta: float = 10000.0,
        norm_type: str = "rmsnorm",
        norm_eps: float = 1e-5,
        mlp_type: str = "swiglu",
        bias: bool = False,
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        bos_token_id: int | None = 0,
        eos_token_id: int | None = 0,
        pad_token_id: int | None = 0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        if intermediate_size is None:
            intermediate_size = 32 * -(-8 * hidden_size // 3 // 32) if mlp_type == "swiglu" else 4 * hidden_size
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.norm_type = norm_type
        self.norm_eps = norm_eps
        self.mlp_type = mlp_type
        self.bias = bias
        self.dropout = dropout
        self.attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        _refuse_dropped_options(kwargs)  # and leave out those at their "off" value
        self._validate()  # before PretrainedConfig's own checks, which read head_dim
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def _validate(self):
        """Refuse configurations the model cannot be built from, naming the field and the rule."""
        for name in SHAPE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"SLMConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"SLMConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"SLMConfig.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.mlp_type in DROPPED_MLP_TYPES:
            raise ValueError(_dropped_message("mlp_type", self.mlp_type))
        for name, allowed in (
            ("position_embedding_type", POSITION_EMBEDDING_TYPES),
            ("norm_type", NORM_TYPES),
            ("mlp_type", MLP_TYPES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"SLMConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"SLMConfig: rotary positions need an even head dimension, got {self.head_dim}")
        if not self.rope_theta > 0:
            raise ValueError(f"SLMConfig.rope_theta must be positive, got {self.rope_theta!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"SLMConfig.norm_eps must be positive, got {self.norm_eps!r}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"SLMConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"SLMConfig.tie_word_embeddings must be true or false, got {self.tie_word_embeddings!r}")
        if not self.initializer_range > 0:
            raise ValueError(f"SLMConfig.initializer_range must be positive, got {self.initializer_range!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ValueError(
                    f"SLMConfig.{name} must be None or a token id in [0, {self.vocab_size}), got {value!r}"
                )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SLMConfig":
        """Build a named architecture (`seed`, `tiny`, `small`, `medium`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown SLM preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _refuse_dropped_options(kwargs: dict) -> None:
    """Remove the dropped options from `kwargs` where they are off (as every earlier default saved them); refuse one
    that is on, in one line."""
    for name, off in DROPPED_OPTIONS.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if value != off:
                raise ValueError(_dropped_message(name, value))


def _dropped_message(name: str, value) -> str:
    return (
        f"SLMConfig.{name}={value!r} is an option slm_hf dropped (measured, it did not pay: BENCHMARKS.md, History); "
        f"a folder saved with it loads with trust_remote_code=True, which runs the code saved with the folder"
    )


__all__ = ["SLMConfig"]
