"""Every bad input of every entry point, in one table: each flag of each script with its plausible bad values.

Each case runs the script's `main()` in this process (a subprocess each would take minutes: every one imports
torch) and must exit with status 2 and print one line, starting `error:`, on stderr: no traceback (an unexpected
exception fails the test), no usage block. The files the case could touch (the fixtures' folders, the data and the
trained run) must be byte for byte and timestamp for timestamp as they were.

The `{name}`s in a case's arguments are fixture paths, filled in by `paths`. The word a case requires must be in the
error line once every path the case passed in (and each part of it) is taken out: the message names the cause, not
just the path. The fixtures' own names (p1, p2, ...) say nothing, so that no name can stand in for a cause.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from share_fixtures import REPO, data_folder, trained_run

# (script, arguments, what the error line must mention): {name} is a fixture path from `paths` below.
CASES = [
    # ------------------------------------------------------------------------------------------ prepare_data
    ("prepare_data", [], "--out"),
    ("prepare_data", ["--out", "{new}", "--source", "{missing}"], "no such file"),
    ("prepare_data", ["--out", "{new}", "--source", "{empty_dir}"], "no stories found"),
    ("prepare_data", ["--out", "{new}", "--source", "{corrupt_gz}"], "CRC check failed"),
    ("prepare_data", ["--out", "{new}", "--source", "{binary_txt}"], "binary, not UTF-8"),
    ("prepare_data", ["--out", "{new}", "--source", "{jsonl}", "--text-column", "story"], "story"),
    ("prepare_data", ["--out", "{new}", "--vocab-size", "many"], "--vocab-size"),
    ("prepare_data", ["--out", "{new}", "--vocab-size", "0"], "vocab"),
    ("prepare_data", ["--out", "{new}", "--vocab-size", "-512"], "vocab"),
    ("prepare_data", ["--out", "{new}", "--tokenizer", "{missing}"], "not a local folder"),
    ("prepare_data", ["--out", "{new}", "--tokenizer", "{empty_tokenizer}"], "tokenizer"),
    ("prepare_data", ["--out", "{new}", "--val-fraction", "1.5"], "val"),
    ("prepare_data", ["--out", "{new}", "--val-fraction", "-0.1"], "val"),
    ("prepare_data", ["--out", "{new}", "--val-fraction", "a tenth"], "--val-fraction"),
    ("prepare_data", ["--out", "{new}", "--max-stories", "0"], "stories"),
    ("prepare_data", ["--out", "{new}", "--max-stories", "-3"], "stories"),
    ("prepare_data", ["--out", "{new}", "--tokenizer-train-stories", "0"], "tokenizer_train_stories"),
    ("prepare_data", ["--out", "{new}", "--num-proc", "0"], "num"),
    ("prepare_data", ["--out", "{new}", "--num-proc", "two"], "--num-proc"),
    ("prepare_data", ["--out", "{new}", "--seed", "random"], "--seed"),
    ("prepare_data", ["--out", "{a_file}"], "exists and is not a folder"),
    ("prepare_data", ["--out", "{under_a_file}"], "not a directory"),
    ("prepare_data", ["--out", "{new}", "--source", "{jsonl}", "--data-files", "train=x.txt"], "data_files"),
    ("prepare_data", ["--out", "{new}", "--no-such-flag"], "--no-such-flag"),
    # ------------------------------------------------------------------------------------------------ train
    ("train", ["--config", "{missing}", "--data", "{data}", "--out", "{new}"], "not found"),
    ("train", ["--config", "{empty_dir}", "--data", "{data}", "--out", "{new}"], "is a folder, not a YAML file"),
    ("train", ["--config", "{broken_yaml}", "--data", "{data}", "--out", "{new}"], "not valid YAML"),
    ("train", ["--config", "{tiny}", "--data", "{missing}", "--out", "{new}"], "does not exist"),
    ("train", ["--config", "{tiny}", "--data", "{a_file}", "--out", "{new}"], "a file, not a folder"),
    ("train", ["--config", "{tiny}", "--data", "{empty_dir}", "--out", "{new}"], "meta.json"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{under_a_file}"], "cannot write"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{run}"], "--resume auto"),
    ("train", ["--config", "{tiny}", "--data", "{other_data}", "--out", "{run}", "--resume", "auto"], "tokenizer"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "--resume", "{missing}"], "does not exist"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "--resume", "{a_file}"],
     "is a file, not a folder"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "--resume", "{final}"], "manifest.json"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{run}", "--resume", "auto", "--overwrite"],
     "contradict"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "--mixed-precision", "fp32"],
     "--mixed-precision"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "--mixed-precision", "fp16"], "CUDA"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "--report-to", "slack"], "--report-to"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "max_step=3"], "max_steps"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "batch_size=eight"], "batch_size"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "max_steps=0"], "max_steps"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "learning_rate=-1e-3"], "learning_rate"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "keep_last=0"], "keep_last"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "model.vocab_size=1000"], "vocab_size"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "block_size=4096"],
     "max_position_embeddings"),
    ("train", ["--config", "{tiny}", "--data", "{data}", "--out", "{new}", "no-equals-sign"], "key=value"),
    # ------------------------------------------------------------------------------------------------ evaluate
    ("evaluate", ["--data", "{data}"], "--model"),
    ("evaluate", ["--model", "{final}"], "--data"),
    ("evaluate", ["--model", "{missing}", "--data", "{data}"], "does not exist"),
    ("evaluate", ["--model", "{a_file}", "--data", "{data}"], "not a model folder"),
    ("evaluate", ["--model", "{empty_dir}", "--data", "{data}"], "no config.json"),
    ("evaluate", ["--model", "{truncated_model}", "--data", "{data}"], "model.safetensors"),
    ("evaluate", ["--model", "{empty_tokenizer}", "--data", "{data}"], "tokenizer"),
    ("evaluate", ["--model", "{final}", "--data", "{missing}"], "does not exist"),
    ("evaluate", ["--model", "{final}", "--data", "{corrupt_gz}"], "CRC check failed"),
    ("evaluate", ["--model", "{final}", "--data", "{empty_dir}"], "no meta.json"),
    ("evaluate", ["--model", "{final}", "--data", "{other_data}"], "tokenizer"),
    ("evaluate", ["--model", "{final}", "--data", "{data}", "--max-stories", "0"], "--max-stories"),
    ("evaluate", ["--model", "{final}", "--data", "{data}", "--max-stories", "all"], "--max-stories"),
    ("evaluate", ["--model", "{final}", "--data", "{data}", "--batch-size", "0"], "--batch-size"),
    ("evaluate", ["--model", "{final}", "--data", "{data}", "--device", "gpu9"], "gpu9"),
    ("evaluate", ["--model", "{final}", "--data", "{data}", "--json", "{under_a_file}"], "is a file, not a folder"),
    # ------------------------------------------------------------------------------------------------ generate
    ("generate", ["--prompt", "Once"], "--model"),
    ("generate", ["--model", "{missing}", "--prompt", "Once"], "does not exist"),
    ("generate", ["--model", "{a_file}", "--prompt", "Once"], "not a model folder"),
    ("generate", ["--model", "{truncated_model}", "--prompt", "Once"], "model.safetensors"),
    ("generate", ["--model", "{empty_tokenizer}", "--prompt", "Once"], "tokenizer"),
    ("generate", ["--model", "{other_arch}", "--prompt", "Once", "--int8"], "GPT2LMHeadModel"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--max-new-tokens", "0"], "max_new_tokens"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--max-new-tokens", "lots"], "--max-new-tokens"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--temperature", "-1"], "temperature"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--temperature", "warm"], "--temperature"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--top-k", "-5"], "top_k"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--top-p", "1.5"], "top_p"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--top-p", "0"], "top_p"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--repetition-penalty", "0"], "repetition_penalty"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--num-return-sequences", "0"], "num_return_sequences"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--seed", "lucky"], "--seed"),
    ("generate", ["--model", "{final}", "--prompt", "Once", "--device", "gpu9"], "gpu9"),
    # --------------------------------------------------------------------------------------------- push_to_hub
    ("push_to_hub", ["--model", "{final}"], "--repo-id"),
    ("push_to_hub", ["--model", "{missing}", "--repo-id", "me/slm", "--dry-run"], "does not exist"),
    ("push_to_hub", ["--model", "{a_file}", "--repo-id", "me/slm", "--dry-run"], "is a file, not a folder"),
    ("push_to_hub", ["--model", "{empty_dir}", "--repo-id", "me/slm", "--dry-run"], "missing model.safetensors"),
    ("push_to_hub", ["--model", "{truncated_model}", "--repo-id", "me/slm", "--dry-run"], "model.safetensors"),
    ("push_to_hub", ["--model", "{other_arch}", "--repo-id", "me/slm", "--dry-run"], "missing configuration_slm.py"),
    ("push_to_hub", ["--model", "{final}", "--repo-id", "not a repo id!", "--dry-run"], "repo"),
    ("push_to_hub", ["--model", "{final}", "--repo-id", "a/b/c", "--dry-run"], "repo"),
    # ------------------------------------------------------------------------------------------------- export
    ("export", ["--to", "llama", "--out", "{new}"], "--model"),
    ("export", ["--model", "{final}", "--to", "tflite", "--out", "{new}"], "--to"),
    ("export", ["--model", "{final}", "--to", "gguf", "--out", "{new}", "--gguf-type", "q4_k"], "--gguf-type"),
    ("export", ["--model", "{missing}", "--to", "llama", "--out", "{new}"], "does not exist"),
    ("export", ["--model", "{a_file}", "--to", "llama", "--out", "{new}"], "is a file, not a folder"),
    ("export", ["--model", "{truncated_model}", "--to", "llama", "--out", "{new}"], "model.safetensors"),
    ("export", ["--model", "{other_arch}", "--to", "gguf", "--out", "{new}"], "gpt2"),
    ("export", ["--model", "{final}", "--to", "llama", "--out", "{a_file}"], "exists and is not a folder"),
    ("export", ["--model", "{final}", "--to", "llama", "--out", "{under_a_file}"], "is a file, not a folder"),
    # ------------------------------------------------------------------------------------------------- app.py
    ("app", [], "--model"),
    ("app", ["--model", "{missing}"], "does not exist"),
    ("app", ["--model", "{a_file}"], "is a file"),
    ("app", ["--model", "{truncated_model}"], "model"),
    ("app", ["--model", "{empty_tokenizer}"], "tokenizer does not load"),
    ("app", ["--model", "{other_arch}", "--int8"], "int8"),
    ("app", ["--model", "{final}", "--port", "http"], "--port"),
    # -------------------------------------------------------------------------------------- serve (issue 27)
    ("serve", [], "--model"),
    ("serve", ["--model", "{missing}"], "does not exist"),
    ("serve", ["--model", "{a_file}"], "is not a model folder"),
    ("serve", ["--model", "{empty_dir}"], "config.json"),
    ("serve", ["--model", "{other_arch}"], "gpt2"),
    ("serve", ["--model", "{truncated_model}", "--cache", "{new}"], "model.safetensors"),
    ("serve", ["--model", "{final}", "--cache", "{a_file}"], "is a file, not a folder"),
    ("serve", ["--model", "{final}", "--port", "http"], "--port"),
    ("serve", ["--model", "{final}", "--port", "99999"], "--port"),
    ("serve", ["--model", "{final}", "--max-queue", "-1"], "--max-queue"),
]


def _case_id(case):
    script, args, _ = case
    return f"{script}:{' '.join(args)}"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """The fixture paths the cases name: bad files and folders, a data folder, a trained run."""
    root = tmp_path_factory.mktemp("bad-inputs")
    run = trained_run(tmp_path_factory)
    final = run / "final"
    paths = {
        "root": root,
        "new": root / "new-output",
        "missing": root / "p1",
        "a_file": root / "p2",
        "under_a_file": root / "p2" / "p3",
        "empty_dir": root / "p4",
        "corrupt_gz": root / "p5.txt.gz",
        "binary_txt": root / "p6.txt",
        "jsonl": root / "p7.jsonl",
        "broken_yaml": root / "p8.yaml",
        "empty_tokenizer": root / "p9",
        "truncated_model": root / "p10",
        "other_arch": root / "p11",
        "other_data": root / "p12",
        "tiny": REPO / "configs" / "tiny.yaml",
        "data": data_folder(tmp_path_factory),
        "run": run,
        "final": final,
    }
    paths["a_file"].write_text("not a folder\n")
    paths["empty_dir"].mkdir()
    paths["corrupt_gz"].write_bytes(gzip.compress(b"Once upon a time.\n<|endoftext|>\n" * 50)[:-40] + b"\0" * 40)
    paths["binary_txt"].write_bytes(b"Once upon a time\0\x01\x02 there was a cat.\n<|endoftext|>\n")
    paths["jsonl"].write_text("".join(json.dumps({"text": f"Story {i}."}) + "\n" for i in range(20)))
    paths["broken_yaml"].write_text("model:\n  preset: tiny\n batch_size: [8\n")
    shutil.copytree(final, paths["empty_tokenizer"])
    (paths["empty_tokenizer"] / "tokenizer.json").write_bytes(b"")
    shutil.copytree(final, paths["truncated_model"])
    with open(paths["truncated_model"] / "model.safetensors", "r+b") as weights:
        weights.truncate(1000)
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=512, n_positions=64)).save_pretrained(
        paths["other_arch"]
    )
    shutil.copy2(final / "tokenizer.json", paths["other_arch"] / "tokenizer.json")
    shutil.copy2(final / "tokenizer_config.json", paths["other_arch"] / "tokenizer_config.json")
    from slm_hf.data import prepare_data

    prepare_data("sample", out_dir=paths["other_data"], vocab_size=300, max_stories=200, show_progress=False)
    return paths


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """(kind, size, sha256, mtime) of every file and folder under `roots`."""
    entries = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            entries[str(path)] = (path.is_dir(), info.st_size if digest else None, digest, info.st_mtime_ns)
    return entries


def _without_paths(line: str, passed: list[str]) -> str:
    """`line` less every path the case passed in, the folders above them, and each file or folder name in them: a
    word the test requires counts only where the message itself says it, never because a path contains it."""
    whole = {str(folder) for path in passed for folder in [Path(path), *Path(path).parents] if folder != Path("/")}
    for path in sorted(whole, key=len, reverse=True):  # the path, then the folders above it
        line = line.replace(path, " ")
    names = {part for path in passed for part in Path(path).parts if part != "/"}
    for name in sorted(names, key=len, reverse=True):  # a name alone, not inside a longer word such as --data
        line = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", " ", line)
    return line


_SCRIPTS: dict[str, object] = {}


def _script(name):
    if name not in _SCRIPTS:
        path = REPO / ("app.py" if name == "app" else f"scripts/{name}.py")
        spec = importlib.util.spec_from_file_location(f"bad_input_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


def test_the_table_covers_every_script_and_60_cases():
    assert len(CASES) >= 60
    scripts = {"prepare_data", "train", "evaluate", "generate", "push_to_hub", "export", "app", "serve"}
    assert {script for script, _, _ in CASES} == scripts


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_a_bad_input_is_one_error_line_status_2_and_touches_nothing(case, paths, capsys, monkeypatch):
    script, args, mentioned = case
    argv = [arg.format(**{name: str(path) for name, path in paths.items()}) for arg in args]
    main = _script(script).main
    monkeypatch.setattr(sys, "stdin", None)  # no case may wait for input
    roots = [paths["root"], paths["data"], paths["run"]]
    before = _snapshot(*roots)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        main(argv)
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert exit.value.code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    cause = _without_paths(lines[0], [arg for arg in argv if arg not in args])
    assert mentioned.lower() in cause.lower(), f"{mentioned!r} not in {cause!r} (the line less the paths it echoes)"
    assert _snapshot(*roots) == before
