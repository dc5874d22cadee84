"""Every command shown in README.md and docs/training.md is one that works: each is parsed by the real parsers.

The launcher's own parser (`accelerate launch`, `torchrun`) reads its part, the script's `parse_args` the rest, and
for training the config file with its `key=value` overrides is loaded and validated. The launchers themselves run
in tests/test_launchers.py, the scripts in their own test files; this file keeps the documents honest: a renamed
flag, a missing config or a bad override in a documented command fails here.
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from slm_hf.training.config import TrainingConfig

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "training.md"]
ENTRY_POINTS = ("python ", "accelerate launch ", "torchrun ")


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) for every entry-point command in the documents' bash blocks."""
    commands = []
    for document in DOCUMENTS:
        for block in re.findall(r"```bash\n(.*?)```", document.read_text(encoding="utf-8"), re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):  # environment assignments
                    words.pop(0)
                if words[:1] == ["python"] and words[1].startswith("-"):  # python -c / -m: run by test_readme.py
                    continue
                if shlex.join(words).startswith(ENTRY_POINTS):
                    commands.append((document.name, shlex.join(words)))
    return commands


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"documented_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_and_arguments(words: list[str]) -> tuple[str, list[str]]:
    """Split a command into the script it runs and that script's arguments, parsing the launcher's own part."""
    if words[0] == "python":
        return words[1], words[2:]
    if words[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        args = launch_command_parser().parse_args(words[2:])
        return args.training_script, args.training_script_args
    if words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(words[1:])
        return args.training_script, args.training_script_args
    raise AssertionError(words)


def test_the_documents_show_commands():
    scripts = {script_and_arguments(shlex.split(command))[0] for _, command in documented_commands()}
    assert {"scripts/train.py", "scripts/prepare_data.py", "scripts/generate.py", "app.py"} <= scripts


@pytest.mark.parametrize("document, command", documented_commands())
def test_documented_command_parses(document, command, tmp_path, monkeypatch):
    script, arguments = script_and_arguments(shlex.split(command))
    monkeypatch.chdir(tmp_path)  # documented model folders exist, as they would after training
    (tmp_path / "runs" / "cpu-demo" / "final").mkdir(parents=True)
    module = load_script(ROOT / script)
    try:
        args = module.parse_args(arguments)
    except SystemExit as exit:  # a usage error: argparse has printed it
        pytest.fail(f"{document}: `{command}` is refused by {script} (status {exit.code})")
    if script == "scripts/train.py":
        overrides = list(args.overrides)
        if args.mixed_precision:
            overrides.append(f"mixed_precision={args.mixed_precision}")
        TrainingConfig.load(ROOT / args.config, overrides)
