"""lm-evaluation-harness on the repository's local task (lm_eval_tasks/) agrees with our own evaluation.

The command is the one lm_eval_tasks/tinystories_bpb.yaml and the README document, run as a user runs it: the
`lm_eval` console script on a trained model folder (loaded as remote code: lm-eval does not import slm_hf).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from share_fixtures import REPO, SAMPLE_VALID, offline_env, trained_run

pytest.importorskip("lm_eval")

MAX_STORIES = 40


def test_lm_eval_bits_per_byte_equal_evaluate_py(tmp_path_factory, tmp_path, run_script):
    model = trained_run(tmp_path_factory) / "final"
    lm_eval = Path(sys.executable).parent / "lm_eval"
    assert lm_eval.exists() or shutil.which("lm_eval"), "the lm_eval console script is not installed"
    command = [
        str(lm_eval if lm_eval.exists() else "lm_eval"),
        "--model", "hf",
        "--model_args", f"pretrained={model},trust_remote_code=True",
        "--include_path", "lm_eval_tasks",
        "--tasks", "tinystories_bpb",
        "--metadata", json.dumps({"stories": str(SAMPLE_VALID), "max_stories": MAX_STORIES}),
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
    assert theirs == pytest.approx(mine, rel=0.005), (theirs, mine)
