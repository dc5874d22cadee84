"""The tiny training runs the training tests share: scripts/train.py as a subprocess on a small data folder, and
the uninterrupted reference run (module fixtures: each test module that imports them builds its own)."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slm_hf.data import prepare_data

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
TINY = ROOT / "configs" / "tiny.yaml"
# One thread: the tiny model gains nothing from two, and on a busy machine threads waiting on each other make
# it many times slower. HF_HUB_OFFLINE: nothing may come from the network.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# 200 updates of 2 micro-batches of 8 x 64 tokens: a few seconds, long enough to interrupt.
RUN = ["max_steps=200", "gradient_accumulation_steps=2", "save_interval=20", "eval_interval=50", "log_interval=5"]
# What "it learns" means for the tiny preset at step 50: a validation loss half a nat below ln 512, the loss of a
# uniform guess over its 512 tokens. A run at a hundredth of the recipe's learning rate (how a run once trained, its
# rate stuck at the first warmup step) ends within a hair of ln 512, so "below ln 512" let it pass: this margin
# does not (test_a_run_at_a_hundredth_of_the_learning_rate_has_not_learned).
UNIFORM_GUESS_LOSS = math.log(512)
LEARNING_MARGIN = 0.5


def has_learned(val_loss: float) -> bool:
    return val_loss < UNIFORM_GUESS_LOSS - LEARNING_MARGIN


def train_command(data, out, *extra, config=TINY):
    return [sys.executable, str(TRAIN), "--config", str(config), "--data", str(data), "--out", str(out), *extra]


def run_train(data, out, *extra, env=ENV, check=True):
    result = subprocess.run(train_command(data, out, *extra), env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def start_train(data, out, *extra, env=ENV, stderr=subprocess.DEVNULL):
    command = train_command(data, out, *extra)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def step_losses(out):
    """{step: train/loss} and {step: val/loss} from a run's metrics.jsonl (each step must appear once)."""
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
    assert len({step for step, _ in train}) == len(train), "a step was logged twice"
    return dict(train), dict(val)


def wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"train.py ended (status {process.returncode}) before the test could interrupt it")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.01)


def logged_steps(out):
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return max((r["step"] for r in lines), default=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_data("sample", out_dir=out, vocab_size=512, max_stories=400, show_progress=False)
    return out


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted run: 1 process, 2 micro-batches per update."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    run_train(data_dir, out, *RUN)
    return out
