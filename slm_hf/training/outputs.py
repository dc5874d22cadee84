"""The run's folder: planning it (fresh start, resume, or refusal), preparing it, and the Hub-ready model folders
written into it (best/, final/) with their training_results.json and model card.

The output folder OUT holds::

    metrics.jsonl                one JSON object per line: train/loss every step, val/... every eval_interval steps
    train_config.yaml            the resolved config (also inside every checkpoint and model folder)
    checkpoints/step_NNNNNNN/    accelerator.save_state + training_state.json + train_config.yaml (last keep_last)
    best/  final/                Hub-ready model folders: lowest validation loss, and end of training
    loss_curve.png               train and validation loss against tokens seen
    logs/                        tracker logs (--report-to tensorboard)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState

from ..atomic_files import STAGING_PREFIX, replace_folder, write_json
from ..errors import SLMError, folder_problem
from ..model_card import default_model_name, write_model_card
from ..progress import quiet_progress_bars
from ..tokenization import save_tokenizer
from .config import TrainingConfig
from .checkpoints import checkpoint_problem, latest_checkpoint, read_checkpoint
from .folders import out_of_space_is_an_error, remove_dir, remove_leftovers
from .state import BatchShape, TrainingState

# Outputs of a run: what `--overwrite` removes and what makes a folder "hold a run".
RUN_OUTPUTS = ("checkpoints", "final", "best", "metrics.jsonl", "train_config.yaml", "loss_curve.png", "logs")


@dataclass
class Resume:
    """The checkpoint a run continues from, and its training_state.json (read once)."""

    checkpoint: Path
    state: TrainingState


def plan_output(
    out_dir: Path,
    resume: str | None,
    overwrite: bool,
    config: TrainingConfig,
    data_summary: dict[str, Any],
    distributed: PartialState,
) -> Resume | None:
    """Check the output folder, writing nothing; return the checkpoint to resume from (or None to start afresh).

    The batch shape of the checkpoint is checked once the Accelerator has decided this run's (`check_batch_shape`)."""
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
        problem = folder_problem(checkpoint) or checkpoint_problem(checkpoint)
        if problem:
            raise SLMError(f"cannot resume from {checkpoint}: {problem}")
    elif existing and not overwrite:
        raise SLMError(
            f"{out_dir} already holds a training run ({', '.join(existing)}); pass --resume auto to continue it, "
            f"--overwrite to replace it, or choose another --out"
        )
    if checkpoint is None:
        return None
    saved_state, saved_config = read_checkpoint(checkpoint)
    differences = config.trajectory_differences(saved_config)
    for key in ("tokenizer_sha256", "train_tokens"):
        if saved_state.data.get(key) != data_summary[key]:
            differences.append(f"data {key}: {saved_state.data.get(key)} -> {data_summary[key]}")
    if differences:
        raise_different_run(checkpoint, differences)
    return Resume(checkpoint, saved_state)


def raise_different_run(checkpoint: Path, differences: list[str], quiet: bool = False) -> None:
    raise SLMError(
        f"{checkpoint} belongs to a different run ({'; '.join(differences)}); use the same config and "
        f"data to resume, or --overwrite / another --out to start a new run",
        quiet=quiet,
    )


def check_batch_shape(resume: Resume, shape: BatchShape, quiet: bool) -> None:
    """A run resumes exactly only with the same micro-batches per step (processes x gradient_accumulation_steps):
    the batches of a step are keyed by their index among them. Any split of them over processes goes on exactly
    (2 x 1 as 1 x 2, after a node is lost); another product is refused in one line naming the accumulation that
    would match on this run's process count. (Checked once the Accelerator has decided this run's shape.)"""
    saved = resume.state.batch
    if saved is None or saved.micro_batches_per_step == shape.micro_batches_per_step:
        return
    wanted = saved.micro_batches_per_step
    if wanted % shape.processes == 0:
        remedy = f"resume with gradient_accumulation_steps={wanted // shape.processes} to continue the same batches"
    else:
        remedy = (f"no gradient_accumulation_steps matches on {shape.processes} processes: use a process count that "
                  f"divides {wanted}")
    raise SLMError(
        f"{resume.checkpoint} was saved by {saved.processes} process(es) x gradient_accumulation_steps "
        f"{saved.accumulation} ({wanted} micro-batches per step) but this run has {shape.processes} x "
        f"{shape.accumulation} ({shape.micro_batches_per_step}); {remedy}",
        quiet=quiet,
    )


def prepare_output_dir(out_dir: Path, overwrite: bool, distributed: PartialState) -> None:
    """Create the output folder (refusing one that cannot be written) and, with `overwrite`, clear a run's outputs."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise SLMError(f"cannot write to the output folder {out_dir}: {error.strerror or error}") from error
    if distributed.is_main_process:
        for leftover in remove_leftovers(out_dir):
            print(f"removed {leftover}, left unfinished by an earlier run that was stopped")
    if overwrite and distributed.is_main_process:
        for name in RUN_OUTPUTS:
            path = out_dir / name
            if path.is_dir():
                remove_dir(path)
            elif path.exists():
                path.unlink()
    distributed.wait_for_everyone()


def export_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer,
    directory: Path,
    results: dict[str, Any],
    config: TrainingConfig,
    loss_curve: Path | None = None,
    model_card: bool = False,
    card_samples: list[dict] | None = None,
) -> Path:
    """Write a Hub-ready model folder, atomically (built under a temporary name, then renamed into place).

    The folder holds the safetensors weights, config.json, generation_config.json, the model's code (remote
    code), the tokenizer, training_results.json, train_config.yaml, a copy of the loss curve, and the model card:
    all of them, the card included, are written before the rename, so the folder is complete or absent.
    `card_samples`: the card's stories, already sampled from these same weights (else the card samples its own).
    Every process must call this (FSDP gathers the full weights); only the main process writes.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        temporary = directory.with_name(f"{STAGING_PREFIX}{directory.name}")
        with out_of_space_is_an_error(f"cannot write the model folder {directory}", temporary):
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
                write_card(temporary, named_as=directory, samples=card_samples)
            replace_folder(temporary, directory)
    accelerator.wait_for_everyone()
    return directory


def write_card(directory: Path, named_as: Path | None = None, samples: list[dict] | None = None) -> None:
    """The model card (README.md), from the folder's own files (slm_hf.model_card). `named_as`: the folder's
    final path, when `directory` is the temporary one it is built in (the card is titled after the run).
    `samples`: its stories, when already sampled from the same weights."""
    with quiet_progress_bars():
        write_model_card(directory, model_name=default_model_name(named_as or directory), samples=samples)


def device_name(accelerator: Accelerator) -> str:
    device = accelerator.device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def peak_memory(device: torch.device) -> dict[str, float]:
    """The accelerator memory high-water mark of this process, for training_results.json (none on a CPU)."""
    if device.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
    return {}
