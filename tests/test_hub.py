"""Pushing to the Hub: the offline checks and file list (dry run), the refusals, and the upload calls.

The network is the one thing mocked: `HfApi.create_repo`, `create_branch` and `upload_folder` in-process. The
offline and no-token paths run for real, as subprocesses."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import HfApi

from share_fixtures import REPO, offline_env, trained_run
from slm_hf.errors import SLMError
from slm_hf.hub import files_to_upload, push_to_hub

EXPECTED_FILES = [
    "README.md",
    "config.json",
    "configuration_slm.py",
    "generation_config.json",
    "int8_slm.py",
    "loss_slm.py",
    "model.safetensors",
    "modeling_slm.py",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_results.json",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture
def folder(run, tmp_path):
    """A copy of the run's final/ with training leftovers dropped in, which must never be uploaded."""
    copy = tmp_path / "final"
    shutil.copytree(run / "final", copy)
    (copy / "checkpoints" / "step_0000010").mkdir(parents=True)
    (copy / "checkpoints" / "step_0000010" / "model.safetensors").write_bytes(b"x")
    (copy / "optimizer.bin").write_bytes(b"x")
    (copy / "random_states_0.pkl").write_bytes(b"x")
    (copy / ".tmp-README.md").write_text("x")
    return copy


def _push_script(*args, **env):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "push_to_hub.py"), *map(str, args)],
                          capture_output=True, text=True, env=offline_env(**env), timeout=300)


def _expected(run):
    extra = ["loss_curve.png", "train_config.yaml"]
    return sorted(EXPECTED_FILES + [name for name in extra if (run / "final" / name).is_file()])


def test_upload_list_is_the_model_folder_without_training_state(run, folder):
    assert files_to_upload(folder) == _expected(run)


def _snapshot(folder):
    """Every file under `folder`: its modification time (ns) and bytes."""
    return {path.relative_to(folder).as_posix(): (path.stat().st_mtime_ns, path.read_bytes())
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_dry_run_checks_offline_lists_the_files_and_changes_nothing(run, folder, tmp_path):
    before = _snapshot(folder)
    done = _push_script("--model", folder, "--repo-id", "someone/slm-test", "--dry-run", HF_HOME=str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("dry run: would upload") and "someone/slm-test" in lines[0]
    assert [line.strip() for line in lines[1:]] == _expected(run)
    assert "loads and generates with transformers alone (trust_remote_code=True)" in done.stderr
    after = _snapshot(folder)
    assert after.keys() == before.keys()
    assert [name for name in before if before[name] != after[name]] == []  # not a byte, not an mtime


def test_dry_run_of_the_llama_format_checks_it_without_remote_code(run, folder, tmp_path):
    before = _snapshot(folder)
    done = _push_script("--model", folder, "--repo-id", "someone/slm-llama", "--format", "llama", "--dry-run",
                        HF_HOME=str(tmp_path))
    assert done.returncode == 0, done.stderr
    listed = [line.strip() for line in done.stdout.splitlines()[1:]]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(listed)
    assert not any(name.endswith(".py") for name in listed)
    assert "loads and generates with transformers alone (no remote code): LlamaForCausalLM" in done.stderr
    assert _snapshot(folder) == before


def test_push_of_the_llama_format_uploads_a_llama_folder_and_its_card(folder, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    uploaded = {}

    def upload_folder(self, **kwargs):  # the scratch folder is gone after the push: read it during the call
        path = Path(kwargs["folder_path"])
        uploaded.update(config=json.loads((path / "config.json").read_text()),
                        card=(path / "README.md").read_text(), files=sorted(p.name for p in path.iterdir()))
        return mock.Mock(commit_url="https://huggingface.co/someone/slm-llama/commit/abc")

    with mock.patch.object(HfApi, "create_repo") as create_repo, \
            mock.patch.object(HfApi, "upload_folder", upload_folder):  # fmt: skip
        create_repo.return_value = mock.Mock(repo_id="someone/slm-llama")
        result = push_to_hub(folder, "someone/slm-llama", format="llama", token="hf_x")
    assert uploaded["config"]["architectures"] == ["LlamaForCausalLM"]
    assert not any(name.endswith(".py") for name in uploaded["files"])
    card = uploaded["card"]
    assert 'model_id = "someone/slm-llama"' in card and "trust_remote_code=True" not in card
    assert "Llama export" in card and "custom_code" not in card.split("---")[1]
    assert result.url.endswith("/commit/abc")


def test_no_token_or_no_network_is_one_line_and_a_failure(folder, tmp_path):
    home = str(tmp_path / "hf-home")  # no stored token there
    no_token = _push_script("--model", folder, "--repo-id", "someone/slm-test", "--keep-card", HF_HOME=home,
                            HF_TOKEN="")
    assert no_token.returncode != 0
    assert no_token.stderr.strip().splitlines()[-1].startswith("error: no Hugging Face token")
    offline = _push_script("--model", folder, "--repo-id", "someone/slm-test", "--keep-card", HF_HOME=home,
                           HF_TOKEN="hf_not_a_real_token")
    assert offline.returncode != 0
    assert offline.stderr.strip().splitlines()[-1].startswith("error: cannot push: the Hub is switched off")
    assert "Traceback" not in offline.stderr


def test_push_creates_the_repo_and_uploads_exactly_the_folder(run, folder, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run offline
    with mock.patch.object(HfApi, "create_repo") as create_repo, \
            mock.patch.object(HfApi, "create_branch") as create_branch, \
            mock.patch.object(HfApi, "upload_folder") as upload_folder:  # fmt: skip
        create_repo.return_value = mock.Mock(repo_id="someone/slm-test")
        upload_folder.return_value = mock.Mock(commit_url="https://huggingface.co/someone/slm-test/commit/abc")
        result = push_to_hub(folder, "someone/slm-test", private=True, revision="v1", token="hf_x",
                             update_card=False)
    create_repo.assert_called_once_with("someone/slm-test", private=True, exist_ok=True, repo_type="model")
    create_branch.assert_called_once_with("someone/slm-test", branch="v1", exist_ok=True)
    kwargs = upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "someone/slm-test" and kwargs["revision"] == "v1"
    assert kwargs["folder_path"] == str(folder)
    # What upload_folder would send, under the ignore patterns it was given:
    from huggingface_hub.utils import filter_repo_objects

    every_file = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(filter_repo_objects(every_file, ignore_patterns=kwargs["ignore_patterns"])) == _expected(run)
    assert result.files == _expected(run) and result.url.endswith("/commit/abc") and not result.dry_run


def test_a_training_run_or_an_incomplete_folder_is_refused(run, folder):
    with pytest.raises(SLMError, match="is a training run"):
        push_to_hub(run, "someone/slm-test", dry_run=True, update_card=False)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(SLMError, match="missing tokenizer.json"):
        push_to_hub(folder, "someone/slm-test", dry_run=True, update_card=False)
    (folder / "loss_slm.py").unlink()  # a sibling of modeling_slm.py: transformers would not find the model's loss
    with pytest.raises(SLMError, match=r"missing tokenizer.json, loss_slm.py \(imported by modeling_slm.py\)"):
        push_to_hub(folder, "someone/slm-test", dry_run=True, update_card=False)
    with pytest.raises(SLMError, match="user/model-name"):
        push_to_hub(folder, "no-slash", dry_run=True)
