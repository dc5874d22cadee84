"""Sharing: upload a trained model folder to the Hugging Face Hub.

    result = push_to_hub("runs/cpu-demo/final", "me/slm-tinystories", dry_run=True)   # offline: checks + file list
    result = push_to_hub("runs/cpu-demo/final", "me/slm-tinystories")                 # create_repo + upload_folder

What goes up is exactly one model folder (a training run's `final/` or `best/`): weights, config, the model's code,
the tokenizer, the card and the training record. Never a run's checkpoints, optimizer state or data, which
`UPLOAD_IGNORE` keeps out even if someone copies them in, and never the run folder itself.

Before anything leaves the machine the folder is checked offline: the files a Hub user needs are there, the model
card's metadata is complete (`model_card.check_model_card`), and the folder loads and generates the way a Hub user
will load it: in a fresh Python process, with `trust_remote_code=True` and without slm_hf, so that the model's own
code files are what runs. `dry_run=True` stops there and reports what would be uploaded; it writes nothing into
the folder (the card it checks is rendered in a scratch folder).

`format="llama"` pushes the Llama export of the folder instead (`slm_hf.exporting.to_llama`, written to a scratch
folder with its own card): a `LlamaForCausalLM` that loads with no remote code at all, checked the same way
without `trust_remote_code`.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub.constants
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS
from transformers.dynamic_module_utils import get_relative_imports

from .choices import PUSH_FORMATS
from .errors import SLMError, folder_problem
from .exporting.to_llama import export_llama
from .model_card import check_model_card, render_model_card, write_model_card

# Files a Hub user needs to load and run the model with transformers alone (the weights are checked apart:
# model.safetensors, or a sharded index; so are the files modeling_slm.py imports, which depend on its version).
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "configuration_slm.py",
    "modeling_slm.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)
# Never uploaded: training state, data and scratch files. The weights are safetensors, so a .bin / .pt / .pkl
# in a model folder is optimizer or data state that was copied in by mistake.
UPLOAD_IGNORE = [
    "checkpoints/*",
    "checkpoint*/*",
    "step_*/*",
    "optimizer*",
    "scheduler*",
    "scaler*",
    "random_states*",
    "training_state.json",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.npy",
    "logs/*",
    ".*",
    "*/.*",
    "*.tmp",
]
LOAD_TIMEOUT_S = 300
LLAMA_REQUIRED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                        "README.md", "model.safetensors")


@dataclass
class PushResult:
    """What `push_to_hub` did, or would do on a dry run."""

    repo_id: str
    files: list[str]
    bytes: int
    dry_run: bool
    revision: str | None = None
    url: str | None = None
    checks: list[str] = field(default_factory=list)


def files_to_upload(model_dir: str | os.PathLike) -> list[str]:
    """The paths (relative, sorted) that `upload_folder` sends from `model_dir` with `UPLOAD_IGNORE`.

    The same filter as `HfApi.upload_folder` applies (its default `.git` patterns included), so this list is the
    upload, file for file.
    """
    folder = Path(model_dir).resolve()
    paths = sorted(path.relative_to(folder).as_posix() for path in folder.glob("**/*") if path.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=UPLOAD_IGNORE + DEFAULT_IGNORE_PATTERNS))


def check_model_folder(model_dir: str | os.PathLike, *, require_card: bool = True) -> None:
    """Raise `SLMError` unless `model_dir` is a complete model folder (and not a whole training run); without
    `require_card` its README.md may be missing (the caller renders one)."""
    folder = Path(model_dir)
    if folder_problem(folder):
        raise SLMError(f"model folder {folder} {folder_problem(folder)}; pass a model folder such as runs/NAME/final")
    run_outputs = (folder / "final").is_dir() or (folder / "best").is_dir() or (folder / "checkpoints").is_dir()
    if run_outputs and not (folder / "config.json").is_file():
        raise SLMError(
            f"{folder} is a training run, not a model folder: push its final/ (or best/) folder, never the "
            f"checkpoints"
        )
    files = set(files_to_upload(folder))
    missing = [name for name in REQUIRED_FILES if name not in files and (require_card or name != "README.md")]
    if "model.safetensors" not in files and "model.safetensors.index.json" not in files:
        missing.insert(0, "model.safetensors")
    if "modeling_slm.py" in files:  # its sibling files (the loss, the int8 copy), as transformers will look for them
        siblings = get_relative_imports(folder / "modeling_slm.py")
        missing += [f"{name}.py (imported by modeling_slm.py)" for name in siblings if f"{name}.py" not in files]
    if missing:
        hint = " (write the card with slm_hf.model_card.write_model_card)" if missing == ["README.md"] else ""
        raise SLMError(f"{folder} is not a complete model folder: missing {', '.join(missing)}{hint}")


# Runs in a fresh interpreter, as a Hub user would: transformers only, the model's code from the folder.
_STANDALONE_LOAD = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, remote_code = sys.argv[1], sys.argv[2] == "remote-code"
    assert "slm_hf" not in sys.modules
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote_code)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote_code)
    expected_module = "transformers_modules" if remote_code else "transformers.models."
    assert type(model).__module__.startswith(expected_module), type(model).__module__
    # An SLM tokenizer encodes the text only; a Llama export's puts <|endoftext|> first by itself.
    ids = tokenizer((tokenizer.eos_token if remote_code else "") + "Once upon a time", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    print(type(model).__name__, out.shape[1] - ids["input_ids"].shape[1])
    """
)


def check_loads_standalone(model_dir: str | os.PathLike, *, remote_code: bool = True) -> str:
    """Load `model_dir` in a fresh process with transformers alone (with `trust_remote_code=True` for our own
    format, without it for a Llama export) and generate a few tokens; returns the model class name. Raises
    `SLMError` with the process's last error line if it fails."""
    folder = Path(model_dir).resolve()
    how = "trust_remote_code=True" if remote_code else "no remote code"
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=scratch, TRANSFORMERS_VERBOSITY="error")
        try:
            completed = subprocess.run(
                [sys.executable, "-c", _STANDALONE_LOAD, str(folder), "remote-code" if remote_code else "plain"],
                cwd=scratch, env=env, capture_output=True, text=True, timeout=LOAD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise SLMError(f"loading {folder} with transformers alone took over {LOAD_TIMEOUT_S} s") from None
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        raise SLMError(
            f"{folder} does not load with transformers alone ({how}): "
            f"{lines[-1] if lines else 'exit status ' + str(completed.returncode)}"
        )
    return completed.stdout.split()[0]


def push_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    format: str = "slm",
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    update_card: bool = True,
    commit_message: str | None = None,
) -> PushResult:
    """Check `model_dir`, then create the Hub repo `repo_id` (if needed) and upload the folder to it.

    Args:
        model_dir: the model folder (a training run's `final/` or `best/`).
        repo_id: `user/name` or `org/name`.
        format: `"slm"` uploads the folder (our code ships with it: users load it with `trust_remote_code=True`);
            `"llama"` uploads its Llama export (`LlamaForCausalLM`, no remote code), made in a scratch folder.
        private: create the repository as private (an existing repository keeps its visibility).
        revision: the branch to upload to (created from the main branch if missing); default main.
        token: a Hugging Face token with write access; default the logged-in one (`hf auth login`, `HF_TOKEN`).
        dry_run: check everything offline and return the file list, without contacting the Hub and without
            writing into `model_dir`.
        update_card: re-render README.md first, so that its examples load from `repo_id` (the card is written from
            the folder's files with seeded samples, so only the repo id changes; on a real push of the `slm` format
            the folder's README.md is replaced). False uploads the card as it is. The Llama export always gets its
            own card.
        commit_message: default "Upload <model name>".

    Raises:
        SLMError: the folder is incomplete, its card is invalid, it does not load, there is no token, or the Hub
            cannot be reached (offline, network error, refused).
    """
    folder = Path(model_dir)
    _check_push_arguments(format, repo_id)
    render_card = update_card or format == "llama"
    check_model_folder(folder, require_card=not render_card)
    with tempfile.TemporaryDirectory(prefix="slm-push-") as scratch:
        upload_dir, card = _prepare_upload(folder, Path(scratch), repo_id, format, render_card, dry_run)
        problems = check_model_card(card)
        if problems:
            raise SLMError(f"the model card {_shown_card_path(folder, card, scratch)} is incomplete: "
                           + "; ".join(problems))
        if not dry_run:  # fail fast, before the slow checks, when the upload cannot happen
            token = _upload_token(token)
        remote_code = format == "slm"
        model_class = check_loads_standalone(upload_dir, remote_code=remote_code)
        result = _checked_upload(upload_dir, card, repo_id, dry_run, revision, remote_code, model_class)
        if dry_run:
            return result
        result.repo_id, result.url = _upload(upload_dir, repo_id, token, private, revision, commit_message)
    return result


def _checked_upload(upload_dir: Path, card: Path, repo_id: str, dry_run: bool, revision: str | None,
                    remote_code: bool, model_class: str) -> PushResult:
    """What will be uploaded (the card included, where a dry run rendered it beside the folder) and the checks
    it passed."""
    files = files_to_upload(upload_dir)
    sizes = {name: (upload_dir / name).stat().st_size for name in files}
    if card.parent != upload_dir:
        files = sorted(set(files) | {"README.md"})
        sizes["README.md"] = card.stat().st_size
    checks = [
        "required files present",
        "model card metadata complete (license, datasets, pipeline_tag, "
        + ("custom_code, " if remote_code else "") + "model-index)",
        f"loads and generates with transformers alone "
        f"({'trust_remote_code=True' if remote_code else 'no remote code'}): {model_class}",
    ]
    return PushResult(repo_id=repo_id, files=files, bytes=sum(sizes.values()), dry_run=dry_run, revision=revision,
                      checks=checks)


def _check_push_arguments(format: str, repo_id: str) -> None:
    if format not in PUSH_FORMATS:
        raise SLMError(f"unknown format {format!r}; choose one of {', '.join(PUSH_FORMATS)}")
    if not repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SLMError(f"repo id {repo_id!r} should look like 'user/model-name'")


def _upload_token(token: str | None) -> str:
    """The token to upload with (`token`, else the logged-in one); `SLMError` when there is none or the Hub is off."""
    token = token or get_token()
    if not token:
        raise SLMError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (a token with write "
                       "access)")
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise SLMError("cannot push: the Hub is switched off here (HF_HUB_OFFLINE=1); unset it to upload")
    return token


def _prepare_upload(folder: Path, scratch: Path, repo_id: str, format: str, render_card: bool,
                    dry_run: bool) -> tuple[Path, Path]:
    """The folder to upload and the path of its model card: for `llama`, a fresh export in `scratch` with its own
    card; for `slm`, `folder` itself, with the card re-rendered into it (a real push) or beside it in `scratch`
    (a dry run, which writes nothing into `folder`)."""
    if format == "llama":
        upload_dir = export_llama(folder, scratch / "llama", write_card=False)
        return upload_dir, write_model_card(upload_dir, repo_id=repo_id)
    if not render_card:
        return folder, folder / "README.md"
    if not dry_run:
        return folder, write_model_card(folder, repo_id=repo_id)
    card = scratch / "card" / "README.md"
    card.parent.mkdir()
    render_model_card(folder, repo_id=repo_id).save(card)
    return folder, card


def _shown_card_path(folder: Path, card: Path, scratch: str) -> Path:
    """The card's path as the user knows it (not the scratch folder's)."""
    return folder / "README.md" if str(card).startswith(scratch) else card


def _upload(upload_dir: Path, repo_id: str, token: str, private: bool, revision: str | None,
            commit_message: str | None) -> tuple[str, str]:
    """create_repo + upload_folder; returns the repo id and the commit's URL."""
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = url.repo_id
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(upload_dir),
            revision=revision,
            ignore_patterns=list(UPLOAD_IGNORE),
            commit_message=commit_message or f"Upload {repo_id.split('/')[-1]}",
        )
    except OfflineModeIsEnabled:
        raise SLMError("cannot push: the Hub is switched off here (HF_HUB_OFFLINE=1); unset it to upload") from None
    except HfHubHTTPError as error:
        raise SLMError(f"the Hub refused the upload to {repo_id}: {_first_line(error)}") from None
    except _network_errors() as error:
        raise SLMError(f"cannot reach the Hugging Face Hub ({type(error).__name__}: {_first_line(error)}); "
                       f"check the network") from None
    return repo_id, getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
