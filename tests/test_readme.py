"""The README's "Use it elsewhere" commands, run as written on a trained tiny model (its folder in place of
runs/cpu-demo/final, a temporary folder in place of exports/)."""

import shlex
import subprocess
import sys

from share_fixtures import REPO, offline_env, trained_run

MARKER = "<!-- use-it-elsewhere: tests/test_readme.py runs these commands -->"


def _use_it_elsewhere_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_readmes_use_it_elsewhere_commands_run(tmp_path_factory, tmp_path):
    final = trained_run(tmp_path_factory) / "final"
    commands = _use_it_elsewhere_commands()
    assert [shlex.split(command)[1] for command in commands if command.startswith("python scripts/")] == [
        "scripts/export.py", "scripts/export.py", "scripts/export.py", "scripts/push_to_hub.py"]
    env = {**offline_env(), "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    for command in commands:
        command = command.replace("runs/cpu-demo/final", str(final)).replace("exports/", f"{tmp_path}/exports/")
        argv = [sys.executable if word == "python" else word for word in shlex.split(command)]
        argv = [str(REPO / word) if word.startswith("scripts/") else word for word in argv]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        if "pipeline(" in command:
            assert done.stdout.startswith("Once upon a time") and "<|endoftext|>" not in done.stdout
    exports = tmp_path / "exports"
    assert (exports / "llama" / "model.safetensors").is_file() and (exports / "onnx" / "onnx" / "model.onnx").is_file()
    assert [path.name for path in (exports / "gguf").iterdir()] == [f"slm-{final.parent.name}-q8_0.gguf"]
