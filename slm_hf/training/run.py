"""`train()`: check the inputs and decide what the run is (data, processes, precision, where to resume) writing
nothing, take the output folder's lock, then hand the run to the `Trainer` (trainer.py)."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import PreTrainedModel

from ..configuration_slm import SLMConfig
from ..data import read_meta
from ..errors import SLMError
from .launchers import Launch, cpu_threads, process_count_problem, wants_cpu_processes
from ..progress import TrainingProgress
from .run_lock import RunLock
from ..tokenization import load_tokenizer, tokenizer_sha256
from .config import TrainingConfig
from .outputs import Resume, plan_output, prepare_output_dir
from .precision import Precision, resolve_precision
from .state import TrainingOutcome
from .trainer import RunSetup, Trainer


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
    setup = plan_run(config, data_dir, out_dir, resume, overwrite)
    lock = RunLock(setup.out_dir)
    decide_on_main(setup.distributed, lock.acquire)  # one run per output folder
    try:
        prepare_output_dir(setup.out_dir, overwrite, setup.distributed)
        return Trainer(setup, model_factory).fit()
    finally:
        setup.progress.close()  # before any error line: never printed after a half-drawn bar
        if setup.distributed.is_main_process:
            lock.release()


def plan_run(
    config: TrainingConfig,
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike | None,
    resume: str | None,
    overwrite: bool,
) -> RunSetup:
    """Everything `train` decides before it writes anything: the resolved config and data, the processes, threads and
    device, where to resume from, and the precision."""
    started = time.perf_counter()
    data_dir = required_path(data_dir or config.data, "data folder", "--data DIR")
    out_dir = required_path(out_dir or config.out, "output folder", "--out DIR")

    # The data folder decides the vocabulary; the config must agree with it.
    meta = read_meta(data_dir)
    tokenizer = load_tokenizer(data_dir / meta["tokenizer"]["path"])
    if len(tokenizer) != meta["vocab_size"]:
        raise SLMError(
            f"{data_dir}: meta.json says vocab_size {meta['vocab_size']} but the tokenizer has {len(tokenizer)} "
            f"tokens; prepare the data folder again"
        )
    config, model_config = config.resolved(meta["vocab_size"], meta["eos_token_id"])
    data_summary = summarize_data(meta, tokenizer)

    # Processes, threads, device and precision: Accelerate's shared state first (the device decides the precision).
    # The launcher's choices are checked first: see slm_hf/training/launchers.py.
    launch = Launch.detect()
    threads, threads_note = cpu_threads(launch)
    if threads is not None:
        torch.set_num_threads(threads)
    use_cpu = wants_cpu_processes(launch, accelerator_available())
    distributed = PartialState(cpu=use_cpu)
    if problem := process_count_problem(launch, distributed.num_processes):
        raise SLMError(problem, quiet=os.environ.get("RANK", "0") != "0")  # every process stops; one says why
    resume_from = plan_output(out_dir, resume, overwrite, config, data_summary, distributed)
    # Every process must use the same precision: the main process decides (it may time bf16 against fp32).
    setting = decide_on_main(
        distributed, lambda: precision_setting(config, resume_from, distributed.device, model_config, launch)
    )
    config = replace(config, mixed_precision=setting)
    check_tracker(config.report_to)
    return RunSetup(
        config, data_dir, out_dir, meta, tokenizer, model_config, data_summary, launch, threads_note, use_cpu,
        distributed, resume_from, Precision.on(setting, distributed.device), started,
        TrainingProgress(enabled=distributed.is_main_process),
    )


def precision_setting(config: TrainingConfig, resume_from: Resume | None, device: torch.device,
                      model_config: SLMConfig, launch: Launch) -> str:
    """`no`, `fp16` or `bf16`: the config's (or launcher's) choice; `auto` goes on as a resumed run started."""
    requested = config.mixed_precision
    if requested == "auto" and resume_from is not None:  # go on as the run started (exact resume)
        requested = resume_from.state.precision
    return resolve_precision(requested, device, model_config, config.batch_size * config.block_size, launch)


def decide_on_main(distributed: PartialState, decide: Callable[[], Any]) -> Any:
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


def accelerator_available() -> bool:
    """Whether a GPU (or another torch accelerator) is there to train on."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return accelerator.is_available()
    return torch.cuda.is_available()


def check_tracker(report_to: str) -> None:
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise SLMError(f"--report-to {report_to} needs the {report_to} package: pip install {report_to}")


def required_path(value: str | os.PathLike | None, what: str, flag: str) -> Path:
    if not value:
        raise SLMError(f"no {what} given: pass {flag} or set it in the config")
    return Path(value)


def summarize_data(meta: dict[str, Any], tokenizer) -> dict[str, Any]:
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
