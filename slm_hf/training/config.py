"""The training configuration: one validated dataclass, read from a YAML file plus `key=value` overrides.

A config file names a model preset (with any `SLMConfig` field overridden) and the training settings::

    model:
      preset: small          # an SLMConfig preset: seed, tiny, small, medium
      dropout: 0.0           # any SLMConfig field
    batch_size: 16
    learning_rate: 2.0e-3

On the command line, `key=value` overrides any of it (`learning_rate=1e-3`, `model.hidden_size=256`); values are
read as YAML and converted to the field's type. An unknown key is refused with the closest known one suggested.

The model's vocabulary size and special token ids come from the data folder's tokenizer
(`TrainingConfig.model_config(meta)`), unless the config pins them, in which case they must agree with it.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ..atomic_files import write_text
from ..choices import PRECISIONS, TRACKERS
from ..configuration_slm import PRESETS, SLMConfig
from ..errors import SLMError
from .config_values import coerce, read_yaml

LR_SCHEDULES = ("cosine", "wsd")
# Options measured and dropped (BENCHMARKS.md, History: the quality runs of 2026-12-03 and 2026-12-04, `ours+muon3-*`
# against AdamW, `ours+stories-10min` against windows that start anywhere). A config saved by an earlier version
# still loads when it names them as today's code trains (the values here: the defaults they had), and is refused in
# one line otherwise.
RETIRED_KEYS = {"optimizer": "adamw", "window_starts": "anywhere", "muon_momentum": 0.95, "muon_lr_scale": 1.0}
# SLMConfig fields the data folder decides, unless the config pins them (then they must agree with it).
DATA_MODEL_KEYS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
# Settings that do not change what the model learns: a resumed run may change them freely.
RESUMABLE_KEYS = (
    "data",
    "out",
    "max_steps",
    "max_minutes",
    "eval_interval",
    "eval_iters",
    "sample_tokens",
    "save_interval",
    "keep_last",
    "log_interval",
    "report_to",
    "mixed_precision",
    "compile",
    "gradient_accumulation_steps",  # checked as the global number of micro-batches instead (processes x this)
)


def _model_keys() -> list[str]:
    """The fields an SLMConfig accepts (its constructor's named parameters)."""
    parameters = inspect.signature(SLMConfig.__init__).parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, parameter in parameters.items() if name != "self" and parameter.kind in named]


@dataclass
class TrainingConfig:
    """Everything a training run needs besides the data: the model and the recipe.

    Steps count optimizer updates; each one sees `batch_size * block_size * gradient_accumulation_steps *
    num_processes` tokens. `gradient_accumulation_steps` is per process, as in Accelerate.
    """

    # The model: an SLMConfig preset name under "preset", plus any SLMConfig field.
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "small"})
    # Default folders, used when the command line gives no --data / --out.
    data: str | None = None
    out: str | None = None

    # Batches: `batch_size` windows of `block_size` tokens per micro-step and process.
    batch_size: int = 16
    block_size: int | None = None  # None: the model's max_position_embeddings
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    # Wall-clock budget: `max_steps` is lowered to what fits, refitted to the measured speed at each evaluation.
    max_minutes: float | None = None

    # The optimizer is AdamW. Linear warmup, then "cosine" decay to `min_lr` over the rest of the run, or "wsd"
    # (warmup-stable-decay): `learning_rate` until the last `decay_fraction` of the steps, then linear to `min_lr`.
    learning_rate: float = 2e-3
    min_lr: float = 2e-4
    lr_schedule: str = "cosine"
    decay_fraction: float = 0.2
    warmup_steps: float = 100  # may be fractional: the seed recipe warms up over 1,000 micro-steps = 31.25 steps
    warmup_start_factor: float = 0.0  # the learning rate starts at this fraction of `learning_rate`
    weight_decay: float = 0.1
    decay_all_parameters: bool = False  # False: no decay on norms, biases and embeddings
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max gradient norm; None or 0 turns clipping off

    # Precision: auto (fp16 on CUDA, bf16 on a CPU where it measures faster, else fp32), no, fp16 or bf16.
    mixed_precision: str = "auto"
    # torch.compile each decoder layer and the loss: fewer, fused kernels (on a GPU the small operations of a narrow
    # model cost more than its matrix products). Compiling takes seconds to a minute and needs a C/C++ compiler.
    compile: bool = False

    # Monitoring.
    eval_interval: int = 100  # steps between evaluations (and a final one at the end)
    eval_iters: int = 10  # batches per split in an evaluation
    sample_tokens: int = 80  # length of the sample story printed at each evaluation (0: none)
    log_interval: int = 10  # steps between progress-bar updates and metrics.jsonl flushes
    report_to: str = "none"  # Accelerate tracker: none, tensorboard or wandb

    # Checkpoints.
    save_interval: int = 100  # steps between checkpoints (and one at the end)
    keep_last: int = 2  # checkpoints kept on disk

    seed: int = 1337

    def __post_init__(self):
        self._coerce_types()
        self._validate()

    # ------------------------------------------------------------------------------------------- validation
    def _coerce_types(self):
        """Convert YAML/command-line values to the declared types (`1e-3` is a string to YAML 1.1)."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, coerce(f.name, value, hints[f.name]))
        self.model = _check_model_section(self.model)

    def _validate(self):
        def positive(name, allow_none=False):
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not value > 0:
                raise SLMError(f"{name} must be positive, got {value!r}")

        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "learning_rate", "eps"):
            positive(name)
        for name in ("eval_interval", "eval_iters", "log_interval", "save_interval", "keep_last"):
            positive(name)
        positive("block_size", allow_none=True)
        positive("max_minutes", allow_none=True)
        if self.min_lr < 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.sample_tokens < 0:
            raise SLMError("min_lr, weight_decay, warmup_steps and sample_tokens must not be negative")
        if not 0 <= self.warmup_start_factor <= 1:
            raise SLMError(f"warmup_start_factor must be in [0, 1], got {self.warmup_start_factor!r}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise SLMError(f"betas must be two numbers in [0, 1), got {list(self.betas)!r}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise SLMError(f"grad_clip must be positive (or 0/null for no clipping), got {self.grad_clip!r}")
        if self.mixed_precision not in PRECISIONS:
            raise SLMError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        for name, choices in (("report_to", TRACKERS), ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in choices:
                raise SLMError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if not 0 < self.decay_fraction <= 1:
            raise SLMError(f"decay_fraction must be in (0, 1], got {self.decay_fraction!r}")

    # ------------------------------------------------------------------------------------------------ model
    def model_config(self, vocab_size: int, eos_token_id: int) -> SLMConfig:
        """The SLMConfig: the preset, the overrides, and the vocabulary and special ids of the data's tokenizer.

        A value the config pins (e.g. `model.vocab_size`) must agree with the data; the preset's own
        values for these fields are only defaults and give way to the data.
        """
        overrides = {key: value for key, value in self.model.items() if key != "preset"}
        from_data = dict(zip(DATA_MODEL_KEYS, (vocab_size, eos_token_id, eos_token_id, eos_token_id)))
        for key, value in from_data.items():
            if key in overrides and overrides[key] != value:
                raise SLMError(
                    f"the config pins model.{key}={overrides[key]} but the data folder's tokenizer has "
                    f"{key}={value}; remove model.{key} from the config, or prepare the data with a matching tokenizer"
                )
        try:
            config = SLMConfig.from_preset(self.model["preset"], **{**overrides, **from_data})
        except ValueError as error:  # SLMConfig's own validation (e.g. hidden size not divisible by heads)
            raise SLMError(f"invalid model config: {error}") from error
        self.block_size_for(config)
        return config

    def block_size_for(self, model_config: SLMConfig) -> int:
        """The training windows' length: `block_size`, or the model's max_position_embeddings when it is unset (the
        one place it is resolved); a block_size longer than the model's positions is refused."""
        block_size = self.block_size or model_config.max_position_embeddings
        if block_size > model_config.max_position_embeddings:
            raise SLMError(
                f"block_size {block_size} is larger than the model's max_position_embeddings "
                f"{model_config.max_position_embeddings}; lower block_size or set model.max_position_embeddings"
            )
        return block_size

    def resolved(self, vocab_size: int, eos_token_id: int) -> tuple[TrainingConfig, SLMConfig]:
        """This config as the run uses and saves it (block_size resolved, the model section pinning what the data
        decided: vocabulary and special ids), and its SLMConfig."""
        model_config = self.model_config(vocab_size, eos_token_id)
        from_data = {key: getattr(model_config, key) for key in DATA_MODEL_KEYS}
        resolved = replace(self, block_size=self.block_size_for(model_config), model={**self.model, **from_data})
        return resolved, model_config

    # ---------------------------------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (through a temporary file, so a reader never sees half of it)."""
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        if not isinstance(data, dict):
            raise SLMError(f"a training config must be a mapping of keys to values, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        data = _without_retired_keys(data)
        for key in data:
            if key not in known:
                raise SLMError(f"unknown config key {key!r}{_suggest(key, known + _dotted_model_keys())}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainingConfig:
        """Read a YAML config file (or start from the defaults) and apply `key=value` overrides."""
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                problem = "is a folder, not a YAML file" if path.is_dir() else "not found"
                raise SLMError(f"config file {path} {problem}")
            try:
                data = read_yaml(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as error:
                mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None) or error
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
                raise SLMError(f"config file {path} is not valid YAML: {problem}{where}") from error
            if not isinstance(data, dict):
                raise SLMError(f"config file {path} must hold a mapping of keys to values")
        data = apply_overrides(data, overrides)
        return cls.from_dict(data)

    def trajectory_differences(self, other: TrainingConfig) -> list[str]:
        """The settings that change what is learned, where `self` and `other` differ (for resuming)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{key}: {theirs[key]!r} -> {mine[key]!r}"
            for key in mine
            if key not in RESUMABLE_KEYS and mine[key] != theirs[key]
        ]


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `key=value` strings (`model.key=value` for the model section) to a config mapping."""
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SLMError(f"override {item!r} must look like key=value (e.g. learning_rate=1e-3)")
        try:
            value = read_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if key.startswith("model."):
            model = data.setdefault("model", {})
            if not isinstance(model, dict):
                raise SLMError("the config's model section must be a mapping (preset: NAME, and overrides)")
            model[key.removeprefix("model.")] = value
        else:
            data[key] = value
    return data


# ----------------------------------------------------------------------------------------------- helpers
def _without_retired_keys(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without the keys of dropped options (`RETIRED_KEYS`) that ask for what training does anyway."""
    for key, kept in RETIRED_KEYS.items():
        if key in data and data[key] != kept:
            raise SLMError(f"{key}: {data[key]!r} is no longer supported (it did not pay: BENCHMARKS.md, History); "
                           f"remove {key} from the config to train with {kept!r}")
    return {key: value for key, value in data.items() if key not in RETIRED_KEYS}


def _dotted_model_keys() -> list[str]:
    return ["model.preset"] + [f"model.{key}" for key in _model_keys()]


# Names other tools (nanoGPT, the reference tutorial) use for our keys.
_ALIASES = {
    "lr": "learning_rate",
    "max_iters": "max_steps",
    "warmup_iters": "warmup_steps",
    "grad_accum": "gradient_accumulation_steps",
}


def _suggest(key: str, candidates: list[str]) -> str:
    if key in _ALIASES:
        return f"; did you mean {_ALIASES[key]!r}?"
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close and "." not in key:  # a model field given at the top level?
        close = [c for c in difflib.get_close_matches(f"model.{key}", candidates, n=1, cutoff=0.8)]
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known keys: {', '.join(c for c in candidates if not c.startswith('model.'))}, model.<SLMConfig field>"


def _check_model_section(model: Any) -> dict[str, Any]:
    if isinstance(model, str):  # `model: small` is short for `model: {preset: small}`
        model = {"preset": model}
    if not isinstance(model, dict):
        raise SLMError("the config's model section must be a mapping (preset: NAME, and SLMConfig overrides)")
    model = {"preset": "small", **model}
    if model["preset"] not in PRESETS:
        raise SLMError(f"unknown model preset {model['preset']!r}{_suggest(str(model['preset']), sorted(PRESETS))}")
    known = _model_keys()
    hints = typing.get_type_hints(SLMConfig.__init__)
    for key, value in model.items():
        if key == "preset":
            continue
        if key not in known:
            top_level = [f.name for f in fields(TrainingConfig)]
            raise SLMError(
                f"unknown model config key 'model.{key}'"
                f"{_suggest('model.' + key, _dotted_model_keys() + top_level)}"
            )
        model[key] = coerce(f"model.{key}", value, hints.get(key, Any))
    return model


__all__ = ["TrainingConfig", "apply_overrides"]
