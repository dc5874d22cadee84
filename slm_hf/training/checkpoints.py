"""Checkpoints: `checkpoints/step_NNNNNNN/`, each complete or absent, checked against its manifest before a resume.

A checkpoint holds what `accelerator.save_state` writes (model, optimizer, loss scaler, every process's
random state), training_state.json (`TrainingState`, the batch shape included), train_config.yaml, config.json,
and manifest.json last: the size and sha256 of every other file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..atomic_files import STAGING_PREFIX, replace_folder, write_json
from .config import TrainingConfig
from .folders import out_of_space_is_an_error, remove_dir
from .state import TrainingState

CHECKPOINT_NAME = re.compile(r"^step_(\d{7})$")
STATE_FILE = "training_state.json"
# The last file of a checkpoint: the size and sha256 of every other file in it, subfolders included.
MANIFEST_FILE = "manifest.json"


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step_{step:07d}"


def save_checkpoint(
    accelerator: Accelerator, model: torch.nn.Module, out_dir: Path, state: TrainingState, config: TrainingConfig
) -> Path:
    """Save the full training state into `checkpoints/step_NNNNNNN`, atomically, and keep the last `keep_last`.

    Every process writes into a temporary folder (`save_state` writes the weights, optimizer, loss
    scaler and each process's random state); the main process adds `training_state.json` and the config, then
    `manifest.json` last (the size and sha256 of every file, to detect a damaged copy), and renames the folder into
    place. A checkpoint folder therefore exists only once complete: a kill during the save leaves a `.tmp-` folder
    that resuming ignores and removes. Only the last `config.keep_last` checkpoints are kept. A save that fails for
    lack of space raises `SLMError`, leaving the earlier checkpoints as they were.
    """
    final = checkpoint_path(out_dir, state.step)
    temporary = final.with_name(f"{STAGING_PREFIX}{final.name}")
    with out_of_space_is_an_error(f"cannot save checkpoint {final}", temporary, accelerator.is_main_process):
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
            replace_folder(temporary, final)
            for old in list_checkpoints(out_dir)[: -config.keep_last]:
                remove_dir(old)
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
    """The state and the config a checkpoint was saved with (read once, when the run decides to resume from it)."""
    config = TrainingConfig.load(checkpoint / "train_config.yaml")
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    return TrainingState.from_json(state, config.batch_size, config.block_size), config
