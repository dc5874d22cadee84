"""The scripts' front door: `--help` and refusals of bad arguments come before torch and transformers are imported
(so at once: 0.2 s against seconds; BENCHMARKS.md), generate.py does not wait on a terminal for prompts nobody
types, and app.py names a missing local folder without trying the Hub.
"""

import ast
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["scripts/train.py", "scripts/prepare_data.py", "scripts/evaluate.py", "scripts/generate.py",
           "scripts/push_to_hub.py", "scripts/export.py", "scripts/serve.py", "app.py"]
# Runs a script as `python SCRIPT ARGS...` would, then reports whether torch or transformers got imported.
PROBE = """
import os, runpy, sys
script, sys.argv = sys.argv[1], sys.argv[1:]
sys.path[0] = os.path.dirname(script)  # as `python SCRIPT` sets it
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exit:
    code = exit.code
heavy = sorted(name for name in ("torch", "transformers", "slm_hf") if name in sys.modules)
print("imported:", ",".join(heavy) or "nothing", file=sys.stderr)
sys.exit(code)
"""


def probe(script: str, *args: str, cwd: Path = ROOT, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", PROBE, str(ROOT / script), *args], cwd=cwd, env=env, stdin=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_comes_before_the_heavy_imports(script):
    result = probe(script, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
    assert result.stderr.splitlines()[-1] == "imported: nothing"


@pytest.mark.parametrize("script, args", [
    ("scripts/train.py", ["--resume"]),
    ("scripts/prepare_data.py", ["--out", "x", "--vocab-size", "many"]),
    ("scripts/evaluate.py", ["--model", "m", "--data", "d", "--batch-size", "0"]),
    ("scripts/generate.py", ["--model", "m", "--prompt", "p", "--max-new-tokens", "1.5"]),
    ("scripts/push_to_hub.py", ["--model", "m"]),
    ("scripts/export.py", ["--model", "m", "--to", "tflite", "--out", "o"]),
    ("scripts/serve.py", ["--model", "m", "--port", "99999"]),
    ("app.py", ["--port", "http"]),
])
def test_a_bad_argument_is_refused_before_the_heavy_imports(script, args):
    result = probe(script, *args)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 2 and lines[0].startswith("error: "), result.stderr
    assert lines[1] == "imported: nothing"


def test_generate_without_a_prompt_on_a_terminal_says_how_to_give_one():
    controller, terminal = pty.openpty()
    try:
        result = probe("scripts/generate.py", "--model", "runs/cpu-demo/final", stdin=terminal)
    finally:
        os.close(terminal)
        os.close(controller)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and lines[0].startswith("error: no prompt: pass --prompt TEXT"), result.stderr
    assert lines[-1] == "imported: nothing"


@pytest.mark.parametrize("name", ["runs/nonexistent", "runs/demo3/fnal", "./final"])
def test_app_names_a_missing_local_folder_without_the_hub(name, tmp_path):
    (tmp_path / "runs").mkdir()  # runs/ is a local folder: runs/nonexistent cannot be a Hub id
    result = probe("app.py", "--model", name, cwd=tmp_path)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and lines[0] == f"error: model folder {name} does not exist", result.stderr
    assert lines[-1] == "imported: nothing"


def test_the_modules_the_scripts_load_import_only_the_standard_library():
    """`command_line.library_module` loads a library module without slm_hf/__init__.py (which imports torch): the
    module must need nothing else, neither slm_hf nor a third-party package."""
    calls = re.findall(r'library_module\("([^"]+)"\)', "".join(path.read_text() for path in ROOT.glob("scripts/*.py")))
    assert "slm_hf/choices.py" in calls
    for path in set(calls):
        imported = set()
        for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or "").partition(".")[0])
        assert imported <= sys.stdlib_module_names, f"{path} imports {sorted(imported - sys.stdlib_module_names)}"
