"""lm-evaluation-harness on the repository's local task (lm_eval_tasks/) agrees with our own evaluation.

The command is the README's, run as a user runs it: the `lm_eval` console script on a trained model folder (loaded
as remote code: lm-eval does not import slm_hf), here on the first 40 of the shipped validation stories.
"""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from must_run import import_or_unavailable
from share_fixtures import REPO, SAMPLE_VALID, offline_env, trained_run

MARKER = "<!-- lm-eval: tests/test_lm_eval.py runs this command -->"
MAX_STORIES = 16


def _readme_command() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return shlex.split(block.replace("\\\n", " "))


def test_lm_eval_bits_per_byte_equal_evaluate_py(tmp_path_factory, tmp_path, run_script):
    import_or_unavailable("lm_eval", "pip install 'slm-hf[eval]'; make setup installs it")
    model = trained_run(tmp_path_factory) / "final"
    lm_eval = Path(sys.executable).parent / "lm_eval"
    assert lm_eval.exists() or shutil.which("lm_eval"), "the lm_eval console script is not installed"
    command = _readme_command()
    assert command[0] == "lm_eval" and "pretrained=runs/cpu-demo/final,trust_remote_code=True" in command
    command = [str(lm_eval) if lm_eval.exists() else "lm_eval"] + [
        word.replace("runs/cpu-demo/final", str(model)) for word in command[1:]
    ] + [
        "--metadata", json.dumps({"max_stories": MAX_STORIES}),  # the shipped stories, the first 16
        "--batch_size", "8",
        "--device", "cpu",
        "--output_path", str(tmp_path / "lm_eval"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=offline_env(), cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "lm_eval").rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]["tinystories_bpb"]["bits_per_byte,none"]

    ours = run_script(
        "evaluate.py", "--model", model, "--data", SAMPLE_VALID, "--max-stories", MAX_STORIES, "--no-quality",
        "--json", tmp_path / "ours.json",
    )
    assert ours.returncode == 0, ours.stderr
    report = json.loads((tmp_path / "ours.json").read_text())
    mine = report["bits_per_byte"]
    print(f"bits per byte on {MAX_STORIES} stories: lm_eval {theirs:.5f}, evaluate.py {mine:.5f}")
    assert theirs == pytest.approx(mine, rel=0.005), (theirs, mine)
