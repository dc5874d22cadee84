"""Training: a hand-written Accelerate loop, from a config file to Hub-ready model folders.

    accelerate launch scripts/train.py --config configs/cpu-demo.yaml --data data/sample --out runs/cpu-demo
    python scripts/train.py --config configs/tiny.yaml --data data/sample learning_rate=1e-3   # 1 process

Reading order: the learning-rate schedule, the batches, precision, the optimizer, checkpoints, metrics, the exported
model folders, and last `train()`, the loop itself, top to bottom. No `transformers.Trainer`: every step is here.

The output folder OUT holds::

    metrics.jsonl                one JSON object per line: train/loss every step, val/... every eval_interval steps
    train_config.yaml            the resolved config (also inside every checkpoint and model folder)
    checkpoints/step_NNNNNNN/    accelerator.save_state + training_state.json + train_config.yaml (last keep_last)
    best/  final/                Hub-ready model folders: lowest validation loss, and end of training
    loss_curve.png               train and validation loss against tokens seen
    logs/                        tracker logs (--report-to tensorboard)

Exact resume: the batches of step s are drawn from a generator seeded with (seed, s, micro-batch index), the learning
rate is a function of the step, and the checkpoint holds the model, the optimizer, the scheduler, the loss scaler and
every process's random state (dropout). A run killed at any moment (SIGKILL included) and resumed from its newest
checkpoint repeats exactly the losses of an uninterrupted run: bit for bit in fp32 on a CPU.

Several processes (DDP, FSDP, DeepSpeed, several machines) run the same code: see docs/training.md.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, DistributedType, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from transformers import GenerationConfig, PreTrainedModel

from .atomic_files import atomic_path, copy_file, write_json, write_text
from .configuration_slm import SLMConfig
from .data import load_tokens, read_meta
from .errors import SLMError
from .generation import quiet_progress_bars
from .launchers import (
    Launch,
    cpu_threads,
    engine_warning,
    launcher_precision,
    process_count_problem,
    wants_cpu_processes,
)
from .modeling_slm import SLMForCausalLM
from .progress import TrainingProgress
from .run_lock import RunLock
from .tokenization import load_tokenizer, save_tokenizer, tokenizer_sha256
from .training_config import DATA_MODEL_KEYS, PRECISIONS, TrainingConfig

# Sampling defaults saved in generation_config.json: varied but coherent stories that end at <|endoftext|>.
STORY_SAMPLING = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, max_new_tokens=200)
# Outputs of a run: what `--overwrite` removes and what makes a folder "hold a run".
RUN_OUTPUTS = ("checkpoints", "final", "best", "metrics.jsonl", "train_config.yaml", "loss_curve.png", "logs")
CHECKPOINT_NAME = re.compile(r"^step_(\d{7})$")
STATE_FILE = "training_state.json"
# The last file of a checkpoint: the size and sha256 of every other file in it, subfolders included.
MANIFEST_FILE = "manifest.json"
# Names of unfinished writes (atomic_files, save_checkpoint, export_model) and of folders being deleted
# (_remove_dir): what a killed process leaves behind, removed when a run starts or resumes.
LEFTOVER_PREFIXES = (".tmp-", ".trash-")
# errno values of a write that failed for lack of space: a full disk, a quota, a file-size limit.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FULL_DISK_BYTES = 1 << 20  # a write that failed with less free space than this failed for lack of it
# save_state warns at every checkpoint that the tied lm_head.weight is not stored: expected, it is reloaded tied.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------- learning rate
@dataclass
class Schedule:
    """Linear warmup, then cosine decay (or warmup-stable-decay): the learning rate of each optimizer update.

    `lr(n)` is the rate of update n = 1, 2, ... max_steps. Warmup goes linearly from `start_factor * peak` (at
    n = 0) to `peak` (at n = warmup_steps). Then `shape` "cosine": a half cosine from `peak` to `minimum` (at
    n = max_steps). This expresses the reference tutorial's `LinearLR(start_factor=1/3)` then
    `CosineAnnealingLR(eta_min=min_lr)`: with its min_lr above the peak the "decay" rises, which the seed preset keeps
    on purpose. Or `shape` "wsd": `peak` until the last `decay_fraction` of the steps, then linear to `minimum`; a
    time budget that refits `max_steps` moves only the start of that decay.
    """

    peak: float
    minimum: float
    warmup_steps: float
    max_steps: int
    start_factor: float = 0.0
    shape: str = "cosine"
    decay_fraction: float = 0.2

    def lr(self, n: float) -> float:
        if n < self.warmup_steps:
            return self.peak * (self.start_factor + (1 - self.start_factor) * n / self.warmup_steps)
        if self.shape == "wsd":
            decay_steps = self.decay_fraction * self.max_steps
            progress = min(max((n - (self.max_steps - decay_steps)) / max(decay_steps, 1), 0.0), 1.0)
            return self.peak + (self.minimum - self.peak) * progress
        progress = min((n - self.warmup_steps) / max(self.max_steps - self.warmup_steps, 1), 1.0)
        return self.minimum + (self.peak - self.minimum) * 0.5 * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------------ batches
class TokenWindows:
    """Random training windows of a token array: inputs `tokens[i : i + T]`, targets `tokens[i + 1 : i + T + 1]`.

    `i` is drawn from every position, or, with `story_start_token` (the `<|endoftext|>` id), from the positions of
    that token only: each window then opens with a story's beginning, read after its start token.

    Each batch is drawn from its own generator, seeded with `(seed, stream, *key)`: the same key always gives the
    same batch, on any process, before or after a resume. The loop keys training batches by (step, micro-batch
    index across all processes), so the processes see different windows, and 2 processes x 2 micro-batches see
    exactly what 1 process x 4 micro-batches sees.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        stream: int,
        story_start_token: int | None = None,
    ):
        if len(tokens) < block_size + 2:
            raise SLMError(
                f"the data has {len(tokens)} tokens, fewer than one window of block_size {block_size} + 1; "
                f"prepare more stories or lower block_size"
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seed, self.stream = seed, stream
        self.offsets = np.arange(block_size + 1)
        last_start = len(tokens) - len(self.offsets)
        self.starts = None
        if story_start_token is not None:
            self.starts = np.flatnonzero(tokens[: last_start + 1] == story_start_token)
            if len(self.starts) == 0:
                raise SLMError(f"the data holds no <|endoftext|> (id {story_start_token}) to start windows at")

    def batch(self, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.stream, *key])
        if self.starts is None:
            starts = rng.integers(0, len(self.tokens) - len(self.offsets) + 1, size=self.batch_size)
        else:
            starts = self.starts[rng.integers(0, len(self.starts), size=self.batch_size)]
        windows = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


# ---------------------------------------------------------------------------------------------- precision
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
    micro-batches per update that sum is rounded more than under autocast.) See BENCHMARKS.md for what it measures
    against autocast.

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


def compile_layers_and_loss(model: torch.nn.Module) -> int:
    """`torch.compile` each transformer block of `model` in place (the classes its `_no_split_modules` names: the
    decoder layers) and its loss function (transformers' `model.loss_function`); returns how many blocks.

    Compiling the pieces, not the whole model, leaves the model's own Python (masks, `generate()`) eager, keeps
    the causal attention on its flash kernels (under compile, transformers builds a full mask instead) and the state
    dict's names unchanged; the blocks are alike, so they share one compiled graph.
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise SLMError(f"compile: {type(model).__name__} names no transformer blocks (_no_split_modules) to compile")
    for block in blocks:
        block.compile()
    if isinstance(model, PreTrainedModel):
        model.loss_function = torch.compile(model.loss_function, dynamic=False)
    return len(blocks)


def missing_compiler(device: torch.device) -> str | None:
    """What `torch.compile` lacks on this machine to build its kernels, or None: a C++ compiler for CPU kernels, a C
    compiler for Triton's GPU kernel launchers."""
    if device.type == "cpu":
        names, what = (os.environ.get("CXX"), "g++", "c++", "clang++"), "a C++ compiler (g++)"
    else:
        names, what = (os.environ.get("CC"), "cc", "gcc", "clang"), "a C compiler (gcc)"
    return None if any(name and shutil.which(name) for name in names) else what


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


# ---------------------------------------------------------------------------------------------- optimizer
def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices of linear layers (not on norms, biases, embeddings), unless the config
    says `decay_all_parameters` (as the reference tutorial does). Fused kernels where PyTorch has them.

    With `optimizer: muon`, the weight matrices of the decoder layers go to `torch.optim.Muon` instead (its updates
    scaled to AdamW's root-mean-square, "match_rms_adamw", so both share the learning rate and its schedule)."""
    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    hidden_matrices = set()
    if config.optimizer == "muon":
        hidden_matrices = {
            id(module.weight)
            for module in model.modules()
            if isinstance(module, torch.nn.Linear) and id(module.weight) not in embeddings
        }
    decay, no_decay, orthogonalised = [], [], []
    for parameter in model.parameters():  # each tied parameter once
        if not parameter.requires_grad:
            continue
        if id(parameter) in hidden_matrices:
            orthogonalised.append(parameter)
            continue
        decayed = config.decay_all_parameters or (parameter.ndim >= 2 and id(parameter) not in embeddings)
        (decay if decayed else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = dict(lr=config.learning_rate, betas=config.betas, eps=config.eps)
    try:
        adamw = torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # no fused kernel for these parameters' device or dtype
        adamw = torch.optim.AdamW(groups, **kwargs)
    if not orthogonalised:
        return adamw
    muon = torch.optim.Muon(
        orthogonalised,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        momentum=config.muon_momentum,
        adjust_lr_fn="match_rms_adamw",
    )
    return MuonWithAdamW(muon, adamw)


class MuonWithAdamW(torch.optim.Optimizer):
    """Two optimizers as one, for the loop, the learning-rate scheduler, the loss scaler and checkpoints.

    Its `param_groups` are the very group dicts of `muon` and `adamw` (a scheduler setting `lr` sets theirs); a step
    steps both; its state dict holds both state dicts.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, {})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    grad_clip: float | None,
    master: MasterWeights | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer update from `gradient_accumulation_steps` micro-batches; returns (mean loss, gradient norm).

    `accelerator.accumulate` skips the gradient all-reduce on all but the last micro-batch, and
    `accelerator.backward` already divides each loss by the number of micro-batches (do not divide again).
    The losses stay on the device: reading them would wait for the accelerator at every step. With `master`
    weights, `model` is their bf16 `compute` copy and `optimizer` holds the fp32 `module`.
    """
    losses = []
    for inputs, targets in micro_batches:
        with accelerator.accumulate(model):
            loss = model(input_ids=inputs, shift_labels=targets, use_cache=False).loss
            accelerator.backward(loss)
        losses.append(loss.detach())
    if not accelerator.sync_gradients:
        raise RuntimeError("gradient accumulation is out of step: the last micro-batch did not synchronise")
    if master is not None:
        master.gradients_to_master()
    parameters = (master.module if master is not None else model).parameters()
    grad_norm = accelerator.clip_grad_norm_(parameters, grad_clip) if grad_clip else None
    optimizer.step()  # with fp16, the loss scaler skips it when gradients overflowed
    optimizer.zero_grad(set_to_none=True)
    if master is not None:
        master.master_to_compute()
    return torch.stack(losses).mean(), grad_norm


# -------------------------------------------------------------------------------------------- checkpoints
@dataclass
class TrainingState:
    """What the loop itself must remember across a resume (Accelerate saves the model, optimizer, RNGs...)."""

    step: int = 0
    tokens: int = 0
    max_steps: int = 0  # the configured one, or what fits in max_minutes once measured
    budget_fitted: bool = False  # max_steps comes from max_minutes (a resumed run keeps fitting it)
    best_val_loss: float = math.inf
    best_step: int = 0
    skipped_steps: int = 0  # fp16 updates skipped by the loss scaler (overflow)
    wall_time_s: float = 0.0
    micro_batches_per_step: int = 0  # across all processes: what the batches and the schedule depend on
    num_processes: int = 1
    precision: str = "no"
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        state = asdict(self)
        state["best_val_loss"] = None if math.isinf(self.best_val_loss) else self.best_val_loss
        return state

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        data = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        if data.get("best_val_loss") is None:
            data["best_val_loss"] = math.inf
        return cls(**data)


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step_{step:07d}"


def save_checkpoint(
    accelerator: Accelerator, model: torch.nn.Module, out_dir: Path, state: TrainingState, config: TrainingConfig
) -> Path:
    """Save the full training state into `checkpoints/step_NNNNNNN`, atomically, and keep the last `keep_last`.

    Every process writes into a temporary folder (`save_state` writes the weights, optimizer, scheduler, loss
    scaler and each process's random state); the main process adds `training_state.json` and the config, then
    `manifest.json` last (the size and sha256 of every file, to detect a damaged copy), and renames the folder into
    place. A checkpoint folder therefore exists only once complete: a kill during the save leaves a `.tmp-` folder
    that resuming ignores and removes. Only the last `config.keep_last` checkpoints are kept. A save that fails for
    lack of space raises `SLMError`, leaving the earlier checkpoints as they were.
    """
    final = checkpoint_path(out_dir, state.step)
    temporary = final.with_name(f".tmp-{final.name}")
    with _out_of_space_is_an_error(f"cannot save checkpoint {final}", temporary, accelerator.is_main_process):
        if accelerator.is_main_process and temporary.exists():
            shutil.rmtree(temporary)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            config.save(temporary / "train_config.yaml")
            accelerator.unwrap_model(model).config.save_pretrained(temporary)
            write_json(temporary / STATE_FILE, state.to_json())
            write_json(temporary / MANIFEST_FILE, {"files": _file_digests(temporary)})
            _replace_dir(temporary, final)
            for old in list_checkpoints(out_dir)[: -config.keep_last]:
                _remove_dir(old)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint folders of a run, oldest first (temporary `.tmp-` folders of unfinished saves excluded)."""
    folder = Path(out_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and CHECKPOINT_NAME.match(path.name)]
    return sorted(found, key=lambda path: path.name)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (a file missing, truncated or changed), or None when it is intact.

    Every file the manifest lists must be there with its size and sha256: reading them all costs a fraction of
    the time it took to write them.
    """
    try:
        files = json.loads((checkpoint / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
        expected = {name: (entry["size"], entry["sha256"]) for name, entry in files.items()}
    except FileNotFoundError:
        try:  # a checkpoint saved before manifests: training_state.json lists the sizes of its top-level files
            sizes = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))["files"]
            expected = {name: (size, None) for name, size in sizes.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"no readable {MANIFEST_FILE} (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST_FILE} (the save did not finish)"
    for name, (size, digest) in expected.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes instead of {size}"
        if digest is not None and _sha256(path) != digest:
            return f"{name} does not match its sha256 in {MANIFEST_FILE}"
    return None


def latest_checkpoint(out_dir: str | os.PathLike, log=print) -> Path | None:
    """The newest intact checkpoint of a run, or None; a damaged one is skipped with a one-line warning."""
    for checkpoint in reversed(list_checkpoints(out_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        log(f"warning: skipping damaged checkpoint {checkpoint}: {problem}")
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "sha256"}} of every file under `folder`, subfolders (sharded states) included."""
    return {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def read_checkpoint(checkpoint: Path) -> tuple[TrainingState, TrainingConfig]:
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    return TrainingState.from_json(state), TrainingConfig.load(checkpoint / "train_config.yaml")


# ------------------------------------------------------------------------------------------------ metrics
class MetricsLog:
    """`metrics.jsonl`: one JSON object per line. Only the main process writes."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            path.unlink(missing_ok=True)
        else:  # forget what a killed run logged after its last checkpoint: the resumed run logs it again
            kept = [record for record in self.read() if record["step"] <= resume_step]
            write_text(path, "".join(json.dumps(record) + "\n" for record in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(records: list[dict[str, Any]], path: Path) -> Path:
    """Train and validation loss against tokens seen, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["tokens"], r["train/loss"]) for r in records if "train/loss" in r]
    val = [(r["tokens"], r["val/loss"]) for r in records if "val/loss" in r]
    train_eval = [(r["tokens"], r["train/eval_loss"]) for r in records if "train/eval_loss" in r]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    if train:
        axes.plot(*zip(*train), color="tab:blue", alpha=0.35, linewidth=0.8, label="train (each step)")
    if train_eval:
        axes.plot(*zip(*train_eval), color="tab:blue", marker=".", label="train (fixed batches)")
    if val:
        axes.plot(*zip(*val), color="tab:orange", marker=".", label="validation")
    axes.set_xlabel("tokens seen")
    axes.set_ylabel("cross-entropy loss (nats per token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
    return path


# --------------------------------------------------------------------------------------- model folders
def export_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer,
    directory: Path,
    results: dict[str, Any],
    config: TrainingConfig,
    loss_curve: Path | None = None,
    model_card: bool = False,
) -> Path:
    """Write a Hub-ready model folder, atomically (built under a temporary name, then renamed into place).

    The folder holds the safetensors weights, config.json, generation_config.json, the model's code (remote
    code), the tokenizer, training_results.json, train_config.yaml, a copy of the loss curve, and the model card:
    all of them, the card included, are written before the rename, so the folder is complete or absent.
    Every process must call this (FSDP gathers the full weights); only the main process writes.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        temporary = directory.with_name(f".tmp-{directory.name}")
        with _out_of_space_is_an_error(f"cannot write the model folder {directory}", temporary):
            if temporary.exists():
                shutil.rmtree(temporary)
            with quiet_progress_bars():  # inside the training bar
                accelerator.unwrap_model(model).save_pretrained(temporary, state_dict=state_dict)
            save_tokenizer(tokenizer, temporary)
            write_json(temporary / "training_results.json", results)
            config.save(temporary / "train_config.yaml")
            if loss_curve is not None and loss_curve.is_file():
                shutil.copy2(loss_curve, temporary / "loss_curve.png")
            if model_card:
                write_card(temporary, named_as=directory)
            _replace_dir(temporary, directory)
    accelerator.wait_for_everyone()
    return directory


def write_card(directory: Path, named_as: Path | None = None) -> None:
    """The model card (README.md), from the folder's own files (slm_hf.model_card). `named_as`: the folder's
    final path, when `directory` is the temporary one it is built in (the card is titled after the run)."""
    from .model_card import default_model_name, write_model_card

    with quiet_progress_bars():
        write_model_card(directory, model_name=default_model_name(named_as or directory))


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class TrainingOutcome:
    out_dir: Path
    final_dir: Path | None  # None when the run was interrupted
    step: int
    interrupted_by: str | None = None  # the signal's name


class StopSignals:
    """SIGINT / SIGTERM ask the loop to save a checkpoint and stop after the current step; a second request stops now.

    Ctrl-C in a terminal sends SIGINT to every process of the foreground group: the training processes and their
    launcher, which then forwards its own SIGTERM (`accelerate launch`, `torchrun`) to them. Signals that arrive
    within `grace_s` seconds of the first are that same request; a later one (a second Ctrl-C) stops at once.
    """

    def __init__(self, say: Callable[[str], None] = print, grace_s: float = 2.0):
        self.received: str | None = None
        self.say = say
        self.grace_s = grace_s
        self._first_at = 0.0
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            if time.monotonic() - self._first_at < self.grace_s:
                return  # the launcher forwarding the same Ctrl-C
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self._first_at = time.monotonic()
        self.say(f"{self.received}: saving a checkpoint after this step, then stopping (again to stop at once)")

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def train(
    config: TrainingConfig,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    model_factory: Callable[[SLMConfig], PreTrainedModel] | None = None,
) -> TrainingOutcome:
    """Train a model as `config` says, on the data folder `data_dir`, writing everything into `out_dir`.

    Args:
        config: the model and the recipe.
        data_dir: a folder made by `slm_hf.data.prepare_data` (defaults to `config.data`).
        out_dir: the run's folder (defaults to `config.out`).
        resume: `"auto"` continues from the newest complete checkpoint in `out_dir` if there is one (else starts
            afresh); a path continues from that checkpoint.
        overwrite: replace the outputs of an earlier run in `out_dir`.
        model_factory: builds the model from the resolved `SLMConfig` instead of `SLMForCausalLM` (benchmarks train
            transformers' `LlamaForCausalLM` with this loop); it must accept `shift_labels` and return `.loss`.
    """
    started = time.perf_counter()
    data_dir = _required_path(data_dir or config.data, "data folder", "--data DIR")
    out_dir = _required_path(out_dir or config.out, "output folder", "--out DIR")

    # The data folder decides the vocabulary; the config must agree with it.
    meta = read_meta(data_dir)
    tokenizer = load_tokenizer(data_dir / meta["tokenizer"]["path"])
    if len(tokenizer) != meta["vocab_size"]:
        raise SLMError(
            f"{data_dir}: meta.json says vocab_size {meta['vocab_size']} but the tokenizer has {len(tokenizer)} "
            f"tokens; prepare the data folder again"
        )
    model_config = config.model_config(meta["vocab_size"], meta["eos_token_id"])
    from_data = {key: getattr(model_config, key) for key in DATA_MODEL_KEYS}
    config = replace(
        config,
        block_size=config.block_size or model_config.max_position_embeddings,
        model={**config.model, **from_data},  # the resolved config pins what the data decided
    )
    data_summary = _data_summary(meta, tokenizer)

    # Processes, threads, device and precision: Accelerate's shared state first (the device decides the precision).
    # The launcher's choices are checked first: see slm_hf/launchers.py.
    launch = Launch.detect()
    threads, threads_note = cpu_threads(launch)
    if threads is not None:
        torch.set_num_threads(threads)
    use_cpu = wants_cpu_processes(launch, _accelerator_available())
    distributed = PartialState(cpu=use_cpu)
    if problem := process_count_problem(launch, distributed.num_processes):
        raise SLMError(problem, quiet=os.environ.get("RANK", "0") != "0")  # every process stops; one says why
    checkpoint = _plan_output(out_dir, resume, overwrite, config, data_summary, distributed)

    def decide_precision() -> str:
        requested = config.mixed_precision
        if requested == "auto" and checkpoint is not None:  # go on as the run started (exact resume)
            requested = read_checkpoint(checkpoint)[0].precision
        tokens = config.batch_size * config.block_size
        return resolve_precision(requested, distributed.device, model_config, tokens, launch)

    precision = _decide_on_main(distributed, decide_precision)  # every process must use the same precision
    config = replace(config, mixed_precision=precision)
    _check_tracker(config.report_to)
    lock = RunLock(out_dir)
    _decide_on_main(distributed, lock.acquire)  # one run per output folder
    setup = RunSetup(
        config, data_dir, out_dir, meta, tokenizer, model_config, data_summary, launch, threads_note, use_cpu,
        distributed, checkpoint, precision, started, TrainingProgress(enabled=distributed.is_main_process),
    )
    try:
        return _train(setup, overwrite, model_factory)
    finally:
        setup.progress.close()  # before any error line: never printed after a half-drawn bar
        if distributed.is_main_process:
            lock.release()


@dataclass
class RunSetup:
    """What `train` decided before the run starts: the resolved config and data, the processes, where to resume."""

    config: TrainingConfig
    data_dir: Path
    out_dir: Path
    meta: dict[str, Any]
    tokenizer: Any
    model_config: SLMConfig
    data_summary: dict[str, Any]
    launch: Launch
    threads_note: str | None
    use_cpu: bool
    distributed: PartialState
    checkpoint: Path | None
    precision: str
    started: float
    progress: TrainingProgress  # the run's messages, and its progress bar (or lines)


def _train(
    setup: RunSetup, overwrite: bool, model_factory: Callable[[SLMConfig], PreTrainedModel] | None
) -> TrainingOutcome:
    """The run itself, once `train` has checked its inputs and holds the output folder."""
    config, data_dir, out_dir, meta = setup.config, setup.data_dir, setup.out_dir, setup.meta
    tokenizer, model_config, data_summary = setup.tokenizer, setup.model_config, setup.data_summary
    distributed, checkpoint, precision, started = setup.distributed, setup.checkpoint, setup.precision, setup.started
    _prepare_output_dir(out_dir, overwrite, distributed)

    # bf16 on a CPU: bf16 weights with fp32 master weights (`MasterWeights`), not Accelerate's autocast.
    cpu_bf16 = precision == "bf16" and distributed.device.type == "cpu"
    accelerator = Accelerator(
        cpu=setup.use_cpu,
        mixed_precision="no" if cpu_bf16 else precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # We step the scheduler once per update ourselves. Accelerate's default steps it once per process per
        # update (it assumes each process adds its batch to one bigger global batch).
        step_scheduler_with_optimizer=False,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    accumulation = accelerator.gradient_accumulation_steps  # ACCELERATE_GRADIENT_ACCUMULATION_STEPS may override it
    micro_batches = accumulation * world
    tokens_per_step = micro_batches * config.batch_size * config.block_size
    main = accelerator.is_main_process

    progress = setup.progress
    log = progress.write

    if setup.threads_note:
        log(setup.threads_note)
    if main and (warning := engine_warning(accelerator.distributed_type.value)):
        log(warning)

    # The model, initialised identically on every process; then dropout differs per process.
    set_seed(config.seed)
    model = (model_factory or SLMForCausalLM)(model_config)
    special_ids = {key: getattr(model_config, key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    model.generation_config = GenerationConfig(**STORY_SAMPLING, **special_ids)
    tokenizer.model_max_length = model_config.max_position_embeddings
    set_seed(config.seed, device_specific=True)
    optimizer = build_optimizer(model, config)
    master = None
    if cpu_bf16:
        master = MasterWeights(model)
        model = master.compute
        accelerator.register_for_checkpointing(master.module)
    if config.compile and (missing := missing_compiler(distributed.device)):
        log(f"warning: compile=true needs {missing}, which this machine lacks: training without compiling")
    elif config.compile:
        compile_layers_and_loss(model)
        if precision == "bf16" and distributed.device.type == "cuda":
            log("warning: bf16 with compiled layers diverged in our GPU measurements (torch 2.11, BENCHMARKS.md) "
                "where fp16 trained well: prefer --mixed-precision fp16 with compile=true")
    schedule = Schedule(
        config.learning_rate,
        config.min_lr,
        config.warmup_steps,
        config.max_steps,
        config.warmup_start_factor,
        config.lr_schedule,
        config.decay_fraction,
    )
    # LambdaLR counts the updates done so far; update n + 1 is the next one.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: schedule.lr(done + 1) / schedule.peak)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    weights = model if master is None else master.module  # what the model folders export (fp32 with master weights)
    precision_name = "bf16 with fp32 master weights" if master is not None else _precision_name(precision)

    # Data: random training windows; fixed validation and training batches for evaluation.
    story_start = meta["eos_token_id"] if config.window_starts == "stories" else None
    train_windows = TokenWindows(
        load_tokens(data_dir, "train"), config.block_size, config.batch_size, config.seed, 0, story_start
    )
    eval_batches = -(-config.eval_iters // world) * world  # a multiple of the number of processes
    val_windows = TokenWindows(load_tokens(data_dir, "val"), config.block_size, config.batch_size, config.seed, 1)
    val_batches = [val_windows.batch(i) for i in range(rank, eval_batches, world)]
    train_eval_windows = TokenWindows(train_windows.tokens, config.block_size, config.batch_size, config.seed, 2)
    train_eval_batches = [train_eval_windows.batch(i) for i in range(rank, eval_batches, world)]
    val_bytes_per_token = meta["splits"]["val"]["bytes_per_token"]

    def to_device(tensor: torch.Tensor) -> torch.Tensor:
        """Copy a batch to the accelerator without waiting for it (from pinned memory): no host sync per step."""
        if accelerator.device.type == "cuda":
            return tensor.pin_memory().to(accelerator.device, non_blocking=True)
        return tensor.to(accelerator.device)

    # Fresh start, or resume.
    state = TrainingState(
        max_steps=config.max_steps,
        micro_batches_per_step=micro_batches,
        num_processes=world,
        precision=precision,
        data=data_summary,
    )
    if checkpoint is not None:
        saved_state, _ = read_checkpoint(checkpoint)
        accelerator.load_state(str(checkpoint))
        state = replace(saved_state, num_processes=world, precision=precision)
        if config.max_steps != saved_state.max_steps and not saved_state.budget_fitted:
            state.max_steps = config.max_steps  # asked to train longer (or shorter): the cosine stretches
        log(f"resumed from {checkpoint} (step {state.step}, {state.tokens:,} tokens)")
    schedule.max_steps = state.max_steps
    metrics = MetricsLog(out_dir / "metrics.jsonl", main, state.step if checkpoint is not None else None)
    # The evaluation a resumed run logged at its checkpoint's step, if any (the end of a run killed while writing
    # its model folders: that evaluation is not repeated).
    logged = metrics.read() if checkpoint is not None else []
    resumed_eval = next((r for r in logged if "val/loss" in r and r["step"] == state.step), None)
    if main:
        config.save(out_dir / "train_config.yaml")
    if config.report_to != "none":
        accelerator.init_trackers("slm_hf", config=_flat_hparams(config))

    parameters = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    log(
        f"training {parameters / 1e6:.2f}M parameters on {_device_name(accelerator)} x{world} "
        f"({setup.launch.launcher}, distributed type {accelerator.distributed_type.value}), precision "
        f"{precision_name}, {tokens_per_step:,} tokens per step ({world} process(es) "
        f"x {accumulation} micro-batches x {config.batch_size} x {config.block_size}), up to step {state.max_steps}"
    )

    prior_wall_time = state.wall_time_s

    def elapsed() -> float:
        """Seconds this run has taken, earlier sessions included."""
        return prior_wall_time + time.perf_counter() - started

    def evaluate(batches) -> float:
        """Mean loss over this process's share of fixed batches, averaged over all processes."""
        model.eval()
        total = torch.zeros((), device=accelerator.device)
        with torch.no_grad():
            for inputs, targets in batches:
                inputs, targets = inputs.to(accelerator.device), targets.to(accelerator.device)
                total += model(input_ids=inputs, shift_labels=targets, use_cache=False).loss.float()
        model.train()
        return accelerator.reduce(total, "sum").item() / eval_batches

    def sample_story() -> str | None:
        """A short story from the model, with its own seed: the training's random streams are left untouched."""
        sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if config.sample_tokens == 0 or sharded:
            return None
        unwrapped = accelerator.unwrap_model(model)
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        unwrapped.eval()
        # Compiled blocks would be recompiled for every length of the growing cache: generate eagerly (torch >= 2.6).
        set_stance = getattr(torch.compiler, "set_stance", None)
        eager = set_stance("force_eager") if config.compile and set_stance else contextlib.nullcontext()
        with torch.random.fork_rng(devices=devices, device_type=accelerator.device.type), torch.no_grad(), eager:
            torch.manual_seed(config.seed)
            prompt = torch.tensor([[model_config.bos_token_id]], device=accelerator.device)
            mask = torch.ones_like(prompt)
            story = unwrapped.generate(prompt, attention_mask=mask, max_new_tokens=config.sample_tokens)
        unwrapped.train()
        return tokenizer.decode(story[0, 1:], skip_special_tokens=True).strip()

    def results(record: dict[str, Any]) -> dict[str, Any]:
        """training_results.json of a model folder: the evaluation `record` and the run around it."""
        history = [
            {"step": r["step"], "tokens": r["tokens"], "train/loss": r["train/eval_loss"], "val/loss": r["val/loss"]}
            for r in metrics.read()
            if "val/loss" in r and r["step"] <= record["step"]
        ]
        return {
            "step": record["step"],
            "tokens": record["tokens"],
            "wall_time_s": round(elapsed(), 1),
            "val/loss": record["val/loss"],
            "val/perplexity": record["val/perplexity"],
            "val/bits_per_byte": record["val/bits_per_byte"],
            "train/loss": record["train/eval_loss"],
            "precision": precision_name,
            "device": _device_name(accelerator),
            "num_processes": world,
            "parameters": parameters,
            **_peak_memory(accelerator.device),
            "config": config.to_dict(),
            "data": data_summary,
            "history": history,
        }

    # ------------------------------------------------------------------------------------------ the loop
    pending: list[tuple[int, torch.Tensor, float, torch.Tensor | None]] = []  # per-step values not yet logged
    window = {"time": time.perf_counter(), "tokens": state.tokens}
    last_eval: dict[str, Any] | None = None
    progress.start(state.max_steps, initial=state.step)

    def flush() -> None:
        """Write the pending per-step metrics (one host sync for many steps) and refresh the progress bar.

        The last record of each flush also carries the training speed since the previous one (`tokens_per_s`).
        """
        if not pending:
            return
        now = time.perf_counter()
        losses = torch.stack([loss for _, loss, _, _ in pending]).tolist()
        norms = [None if norm is None else norm.item() for _, _, _, norm in pending]
        speed = (state.tokens - window["tokens"]) / max(now - window["time"], 1e-9)
        window.update(time=now, tokens=state.tokens)
        for i, ((step, _, lr, _), loss, norm) in enumerate(zip(pending, losses, norms)):
            record = {"step": step, "tokens": step * tokens_per_step, "train/loss": loss, "lr": lr}
            if norm is not None:
                record["grad_norm"] = norm
            if state.skipped_steps:
                record["skipped_steps"] = state.skipped_steps
            if i == len(pending) - 1:
                record["tokens_per_s"] = speed
            metrics.write(record)
            if config.report_to != "none":
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
        progress.update(pending[-1][0], losses[-1], pending[-1][2], speed)
        pending.clear()

    def run_eval() -> dict[str, Any]:
        nonlocal last_eval
        flush()
        val_loss, train_loss = evaluate(val_batches), evaluate(train_eval_batches)
        record = {
            "step": state.step,
            "tokens": state.tokens,
            "val/loss": val_loss,
            "val/perplexity": math.exp(min(val_loss, 50)),
            "val/bits_per_byte": val_loss / math.log(2) / val_bytes_per_token,
            "train/eval_loss": train_loss,
            "wall_time_s": round(elapsed(), 1),
        }
        story = sample_story() if main else None
        if config.report_to != "none":
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.step)
        log(
            f"step {state.step}: val loss {val_loss:.4f} (perplexity {record['val/perplexity']:.2f}, "
            f"{record['val/bits_per_byte']:.3f} bits/byte), train loss {train_loss:.4f}"
            + (f"\n  sample: {story!r}" if story is not None else "")
        )
        if story is not None:
            record["sample"] = story
        metrics.write(record)
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_step = val_loss, state.step
            export_model(accelerator, weights, tokenizer, out_dir / "best", results(record), config)
        last_eval = record
        window["time"] = time.perf_counter()  # keep evaluation time out of the tokens/s
        return record

    def checkpoint_now() -> None:
        flush()
        state.wall_time_s = elapsed()
        save_checkpoint(accelerator, model, out_dir, state, config)
        window["time"] = time.perf_counter()

    if checkpoint is not None and state.step >= state.max_steps and (out_dir / "final").is_dir():
        log(f"{out_dir} is already trained to step {state.step}: nothing to do (final model in {out_dir / 'final'})")
        progress.close()
        accelerator.end_training()
        return TrainingOutcome(out_dir, out_dir / "final", state.step)

    # With a time budget, max_steps is fitted to the measured speed: after 10 steps, at the end of warmup, then
    # at every evaluation (a shared machine's speed varies). The learning rate depends on max_steps only after
    # warmup, so the first fits change nothing before; later ones stretch or shrink the rest of the cosine.
    budget = config.max_minutes * 60 if config.max_minutes else None
    warmup_end = max(10, math.ceil(config.warmup_steps))
    step_times: list[float] = []  # seconds of each training step (evaluations and checkpoints left out)
    eval_time = None
    interrupted = None
    loss_scale = LossScaleWatch(accelerator)
    model.train()
    with StopSignals(say=log) as signals:
        while state.step < state.max_steps:
            step_started = time.perf_counter()
            # One update: this process's micro-batches are numbers rank, rank + world, ... of the step's
            # `micro_batches`, so the union over processes does not depend on how many there are.
            batches = (train_windows.batch(state.step, micro * world + rank) for micro in range(accumulation))
            batches = ((to_device(x), to_device(y)) for x, y in batches)
            lr = scheduler.get_last_lr()[0]
            loss, grad_norm = optimizer_step(accelerator, model, optimizer, batches, config.grad_clip, master)
            if loss_scale.update_was_skipped():
                state.skipped_steps += 1
                log(f"step {state.step + 1}: fp16 gradients overflowed, update skipped (loss scale lowered)")
            else:
                scheduler.step()
            state.step += 1
            state.tokens += tokens_per_step
            pending.append((state.step, accelerator.reduce(loss, "mean"), lr, grad_norm))
            if state.step % config.log_interval == 0:
                flush()
            step_times.append(time.perf_counter() - step_started)

            evaluate_now = state.step % config.eval_interval == 0 or state.step == state.max_steps
            fitting = budget is not None and state.step < state.max_steps
            fitting = fitting and (state.step in (10, warmup_end) or (state.step > warmup_end and evaluate_now))
            if evaluate_now or (fitting and eval_time is None):  # fitting needs the cost of an evaluation
                eval_started = time.perf_counter()
                run_eval()
                eval_time = time.perf_counter() - eval_started
            if fitting:
                # The speed of the recent steps (the first ones are slow: memory, kernels warming up).
                recent = max(min(len(step_times) // 2, config.eval_interval), 1)
                step_time = float(np.median(step_times[-recent:]))
                state.max_steps = schedule.max_steps = _fit_budget(
                    state.step, config, budget - elapsed(), step_time, eval_time
                )
                if state.max_steps != progress.total:
                    log(f"time budget {config.max_minutes:g} min: training to step {state.max_steps}")
                state.budget_fitted = True
                progress.set_total(state.max_steps)
                if state.step == 10 and state.max_steps < 2 * config.warmup_steps:
                    log(f"warning: warmup ({config.warmup_steps:g} steps) takes much of the time budget; "
                        f"lower warmup_steps or raise max_minutes")

            stop = signals.received is not None
            over_budget = budget is not None and elapsed() > budget
            if world > 1:  # every process must stop at the same step
                flags = torch.tensor([stop, over_budget], device=accelerator.device, dtype=torch.int32)
                stop, over_budget = (bool(flag) for flag in accelerator.reduce(flags, "max").tolist())
            if over_budget and state.step < state.max_steps:
                log(f"time budget of {config.max_minutes:g} min used up at step {state.step}: finishing here")
                state.max_steps = state.step
                run_eval()
            if state.step % config.save_interval == 0 or state.step == state.max_steps or stop:
                checkpoint_now()
            if stop:
                interrupted = signals.received or "SIGTERM"  # another process got the signal
                break
    flush()
    progress.close()

    curve = plot_loss_curve(metrics.read(), out_dir / "loss_curve.png") if main else None
    if interrupted:
        log(f"stopped by {interrupted} at step {state.step}; checkpoint saved. Continue with --resume auto")
        accelerator.end_training()
        return TrainingOutcome(out_dir, None, state.step, interrupted)

    # The model folders: best (lowest validation loss) gets the loss curve and its card, then final (this step) is
    # written whole. final/ is the run's last output: once it exists, a resumed run has nothing left to do.
    if last_eval is None and resumed_eval is not None and resumed_eval["step"] == state.step:
        last_eval = resumed_eval  # resumed from the last step's checkpoint: its evaluation is logged already
    final_record = last_eval if last_eval is not None and last_eval["step"] == state.step else run_eval()
    card = isinstance(accelerator.unwrap_model(weights), SLMForCausalLM)  # the card describes SLM models
    if main and (out_dir / "best").is_dir():
        with _out_of_space_is_an_error(f"cannot finish the model folder {out_dir / 'best'}"):
            copy_file(curve, out_dir / "best" / "loss_curve.png")
            if card:
                write_card(out_dir / "best")
    accelerator.wait_for_everyone()
    final_dir = export_model(
        accelerator, weights, tokenizer, out_dir / "final", results(final_record), config, curve, model_card=card
    )
    accelerator.end_training()
    log(
        f"done: step {state.step}, {state.tokens:,} tokens, val loss {final_record['val/loss']:.4f} "
        f"({final_record['val/bits_per_byte']:.3f} bits/byte); best val loss {state.best_val_loss:.4f} at step "
        f"{state.best_step}. Model: {final_dir}"
    )
    return TrainingOutcome(out_dir, final_dir, state.step)


# ------------------------------------------------------------------------------------------------ helpers
def _fit_budget(step: int, config: TrainingConfig, seconds_left: float, step_time: float, eval_time: float) -> int:
    """The last step that fits in `seconds_left`, given the measured time of a step and of an evaluation.

    Each remaining step costs its own time plus its share of the evaluations, and the last step is followed by a
    final evaluation. (Writing the model folders and their cards comes after the budget.)
    """
    per_step = step_time + eval_time / config.eval_interval
    return max(step, min(config.max_steps, step + int((seconds_left - eval_time) / per_step)))


def _plan_output(
    out_dir: Path,
    resume: str | None,
    overwrite: bool,
    config: TrainingConfig,
    data_summary: dict[str, Any],
    distributed: PartialState,
) -> Path | None:
    """Check the output folder, writing nothing; return the checkpoint to resume from (or None to start afresh)."""
    if resume and overwrite:
        raise SLMError("--resume and --overwrite contradict each other: choose one")
    existing = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    checkpoint = None
    if resume == "auto":
        checkpoint = latest_checkpoint(out_dir, log=print if distributed.is_main_process else lambda _: None)
        finished = [name for name in ("final", "best") if name in existing]
        if checkpoint is None and finished:
            raise SLMError(
                f"{out_dir} holds a trained model ({', '.join(finished)}/) but no checkpoint to resume from; "
                f"pass --overwrite to train again from scratch, or choose another --out"
            )
    elif resume:
        checkpoint = Path(resume)
        problem = checkpoint_problem(checkpoint) if checkpoint.is_dir() else "no such folder"
        if problem:
            raise SLMError(f"cannot resume from {checkpoint}: {problem}")
    elif existing and not overwrite:
        raise SLMError(
            f"{out_dir} already holds a training run ({', '.join(existing)}); pass --resume auto to continue it, "
            f"--overwrite to replace it, or choose another --out"
        )
    if checkpoint is not None:
        saved_state, saved_config = read_checkpoint(checkpoint)
        differences = config.trajectory_differences(saved_config)
        micro_batches = config.gradient_accumulation_steps * distributed.num_processes
        if saved_state.micro_batches_per_step != micro_batches:
            differences.append(
                f"micro-batches per step (processes x gradient_accumulation_steps): "
                f"{saved_state.micro_batches_per_step} -> {micro_batches}"
            )
        for key in ("tokenizer_sha256", "train_tokens"):
            if saved_state.data.get(key) != data_summary[key]:
                differences.append(f"data {key}: {saved_state.data.get(key)} -> {data_summary[key]}")
        if differences:
            raise SLMError(
                f"{checkpoint} belongs to a different run ({'; '.join(differences)}); use the same config and "
                f"data to resume, or --overwrite / another --out to start a new run"
            )
    return checkpoint


def _prepare_output_dir(out_dir: Path, overwrite: bool, distributed: PartialState) -> None:
    """Create the output folder (refusing one that cannot be written) and, with `overwrite`, clear a run's outputs."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SLMError(f"cannot write to the output folder {out_dir}: {error.strerror or error}") from error
    if distributed.is_main_process:
        for leftover in _remove_leftovers(out_dir):
            print(f"removed {leftover}, left unfinished by an earlier run that was stopped")
    if overwrite and distributed.is_main_process:
        for name in RUN_OUTPUTS:
            path = out_dir / name
            if path.is_dir():
                _remove_dir(path)
            elif path.exists():
                path.unlink()
    distributed.wait_for_everyone()


def _decide_on_main(distributed: PartialState, decide: Callable[[], Any]) -> Any:
    """Run `decide` on the main process and give its result to every process; an `SLMError` stops them all."""
    outcome: list[Any] = [None]
    if distributed.is_main_process:
        try:
            outcome = [decide()]
        except SLMError as error:
            outcome = [error]
    if distributed.num_processes > 1:
        broadcast_object_list(outcome)
    if isinstance(outcome[0], SLMError):
        if not distributed.is_main_process:
            raise SLMError(str(outcome[0]), quiet=True)  # the main process says it
        raise outcome[0]
    return outcome[0]


def _accelerator_available() -> bool:
    """Whether a GPU (or another torch accelerator) is there to train on."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return accelerator.is_available()
    return torch.cuda.is_available()


def _check_tracker(report_to: str) -> None:
    import importlib.util

    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise SLMError(f"--report-to {report_to} needs the {report_to} package: pip install {report_to}")


def _required_path(value: str | os.PathLike | None, what: str, flag: str) -> Path:
    if not value:
        raise SLMError(f"no {what} given: pass {flag} or set it in the config")
    return Path(value)


def _data_summary(meta: dict[str, Any], tokenizer) -> dict[str, Any]:
    splits = meta["splits"]
    return {
        "source": meta.get("source"),
        "tokenizer": meta["tokenizer"].get("name_or_path"),
        "tokenizer_sha256": meta["tokenizer"].get("sha256") or tokenizer_sha256(tokenizer),
        "vocab_size": meta["vocab_size"],
        "train_tokens": splits["train"]["tokens"],
        "train_stories": splits["train"].get("stories"),
        "val_tokens": splits["val"]["tokens"],
        "val_bytes_per_token": splits["val"]["bytes_per_token"],
    }


def _flat_hparams(config: TrainingConfig) -> dict[str, Any]:
    """The config as flat scalars, for trackers (TensorBoard's hparams take no lists or dicts)."""
    flat = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, list):
            flat[key] = str(value)
        elif value is not None:
            flat[key] = value
    return flat


def _device_name(accelerator: Accelerator) -> str:
    device = accelerator.device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def _peak_memory(device: torch.device) -> dict[str, float]:
    """The accelerator memory high-water mark of this process, for training_results.json (none on a CPU)."""
    if device.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {}


def _precision_name(precision: str) -> str:
    return {"no": "fp32", "fp16": "fp16 mixed", "bf16": "bf16 mixed"}.get(precision, precision)


def _replace_dir(source: Path, target: Path) -> None:
    """Move the finished folder `source` to `target`, replacing an older `target` (never leaving a half one)."""
    if target.exists():
        _remove_dir(target)
    os.rename(source, target)


def _remove_dir(path: Path) -> None:
    """Delete a folder: rename it first, so a kill during the deletion leaves no half folder under its name (only a
    `.trash-` folder, which the next start removes)."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def _remove_leftovers(out_dir: Path) -> list[Path]:
    """Delete what killed runs left in `out_dir`: `.tmp-` files and folders of unfinished writes, `.trash-` folders
    of unfinished deletions (in the run folder, checkpoints/, best/ and final/). Returns what was removed."""
    removed = []
    for folder in (out_dir, out_dir / "checkpoints", out_dir / "best", out_dir / "final"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(LEFTOVER_PREFIXES):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def _out_of_space_is_an_error(what: str, partial: Path | None = None, clean_up: bool = True):
    """Turn a write that fails for lack of space (full disk, quota, file-size limit) into an `SLMError` naming
    `what`, after deleting the half-written folder `partial`. Other errors pass through unchanged."""
    try:
        yield
    except Exception as error:
        reason = _out_of_space_reason(error, partial)
        if reason is None:
            raise
        if clean_up and partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise SLMError(f"{what}: {reason}; earlier checkpoints and model folders are intact") from error


def _out_of_space_reason(error: BaseException, written: Path | None) -> str | None:
    """Why a write failed, if for lack of space. The `OSError` is searched for in the error's chain; torch's zip
    writer and safetensors drop it ("unexpected pos", "IoError"), so the disk is then checked: its free space, and
    the file-size limit (RLIMIT_FSIZE) against the files written into `written`."""
    cause: BaseException | None = error
    seen = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in OUT_OF_SPACE:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    if written is None or not written.is_dir() or isinstance(error, (SLMError, KeyboardInterrupt)):
        return None
    if shutil.disk_usage(written).free < FULL_DISK_BYTES:
        return os.strerror(errno.ENOSPC).lower()
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, ValueError, OSError):  # not on this platform
        return None
    if limit != resource.RLIM_INFINITY and any(
        path.is_file() and path.stat().st_size >= limit for path in written.rglob("*")
    ):
        return f"{os.strerror(errno.EFBIG).lower()} (the file size limit, ulimit -f, is {limit:,} bytes)"
    return None


__all__ = [
    "Schedule",
    "TokenWindows",
    "TrainingOutcome",
    "TrainingState",
    "build_optimizer",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "optimizer_step",
    "plot_loss_curve",
    "resolve_precision",
    "train",
]
