"""Every folder the project writes is built in a staging folder, then put in place by one function
(`slm_hf.atomic_files.replace_folder`): a process killed between its steps leaves the old folder whole."""

import os

import pytest

from slm_hf import atomic_files
from slm_hf.atomic_files import replace_folder, restore_folder, staged_folder


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (`finally` blocks aside, which a real kill skips too: the tests
    only look at what the renames left)."""


def folder_with(path, text):
    path.mkdir(parents=True)
    (path / "weights.bin").write_text(text)
    (path / "config.json").write_text(text)
    return path


def content(path):
    return {file.name: file.read_text() for file in sorted(path.iterdir())}


def killed_before_landing(monkeypatch, folder):
    """Make the process die just before a rename puts a new folder at `folder` (the old one is out of the way)."""
    real_rename = os.rename

    def rename(source, target):
        if os.fspath(target) == os.fspath(folder):
            raise Killed
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic exchange", "two renames"])
def test_replacing_a_folder_leaves_the_old_one_whole_when_killed_between_the_steps(tmp_path, monkeypatch, exchange):
    old = folder_with(tmp_path / "final", "old")
    new = folder_with(tmp_path / ".tmp-final", "new")
    if not exchange:  # a file system without renameat2(RENAME_EXCHANGE): the old folder goes aside first
        monkeypatch.setattr(atomic_files, "_exchange", lambda source, target: False)
        killed_before_landing(monkeypatch, old)  # after `final` -> `.old-final`, before `.tmp-final` -> `final`
    else:  # the exchange is one step; killed before the old folder (now at `.tmp-final`) is deleted
        monkeypatch.setattr(atomic_files.shutil, "rmtree", lambda path, **_: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        replace_folder(new, old)
    monkeypatch.undo()
    if exchange:
        assert content(tmp_path / "final") == {"config.json": "new", "weights.bin": "new"}
        assert content(tmp_path / ".tmp-final") == {"config.json": "old", "weights.bin": "old"}
    else:
        assert content(tmp_path / ".old-final") == {"config.json": "old", "weights.bin": "old"}
        restore_folder(tmp_path / "final")  # what the next write of the folder, or the next run's start, does
        assert content(tmp_path / "final") == {"config.json": "old", "weights.bin": "old"}
        assert sorted(path.name for path in tmp_path.iterdir()) == [".tmp-final", "final"]


def test_a_staged_folder_replaces_the_old_one_only_when_complete(tmp_path):
    target = folder_with(tmp_path / "export", "old")
    with pytest.raises(RuntimeError), staged_folder(target) as staging:
        (staging / "weights.bin").write_text("half")
        raise RuntimeError("the export failed half way")
    assert content(target) == {"config.json": "old", "weights.bin": "old"}
    with staged_folder(target) as staging:
        (staging / "weights.bin").write_text("new")
    assert content(target) == {"weights.bin": "new"} and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_llama_export_killed_while_replacing_an_older_one_keeps_the_older_one(tiny_data_dir, tmp_path, monkeypatch):
    """`to_llama` once deleted the old export, then renamed the new one into place: a kill between lost both."""
    from slm_hf import SLMConfig, SLMForCausalLM
    from slm_hf.data import read_meta
    from slm_hf.exporting.to_llama import export_llama
    from slm_hf.tokenization import load_tokenizer, save_tokenizer

    model_dir = tmp_path / "model"  # an untrained model with the data folder's tokenizer
    tokenizer = load_tokenizer(tiny_data_dir / read_meta(tiny_data_dir)["tokenizer"]["path"])
    SLMForCausalLM(SLMConfig.from_preset("tiny", vocab_size=len(tokenizer))).save_pretrained(model_dir)
    save_tokenizer(tokenizer, model_dir)
    out = folder_with(tmp_path / "llama", "old")
    monkeypatch.setattr(atomic_files, "_exchange", lambda source, target: False)
    killed_before_landing(monkeypatch, out)
    with pytest.raises(Killed):
        export_llama(model_dir, out, overwrite=True, write_card=False)
    monkeypatch.undo()
    restore_folder(out)
    assert content(out) == {"config.json": "old", "weights.bin": "old"}
