"""The same 50-step tiny run gives the same losses as it did before the loop became one `Trainer`.

tests/data/reference_losses_50.json holds the train/loss of every step and the val/loss of every evaluation of a
50-step run of the `tiny` preset on the shipped sample (seed 1337, fp32, one process), recorded at the commit it
names. Training on a CPU in fp32 is deterministic, so the losses must be equal exactly: a refactoring of the loop
that changes the order of the batches, the learning rate of a step, or the optimizer's groups changes them.

Regenerate (only when a change of the losses is intended): `python tests/test_trainer_equivalence.py --write`.
"""

import json
import subprocess
import sys
from pathlib import Path

REFERENCE = Path(__file__).parent / "data" / "reference_losses_50.json"
# Everything that decides the losses, fixed here rather than read from configs/tiny.yaml (which may change).
OPTIONS = dict(
    model={"preset": "tiny"}, batch_size=8, block_size=64, gradient_accumulation_steps=1, max_steps=50,
    learning_rate=3e-3, min_lr=3e-4, warmup_steps=5, weight_decay=0.1, grad_clip=1.0, mixed_precision="no",
    eval_interval=25, eval_iters=2, sample_tokens=0, log_interval=10, save_interval=50, keep_last=1, seed=1337,
)


def losses_of(data_dir: Path, out_dir: Path) -> dict:
    """Train the reference run into `out_dir` and return its losses as metrics.jsonl logged them."""
    import torch

    from slm_hf.training import train
    from slm_hf.training.config import TrainingConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reductions whatever the machine's cores
    try:
        train(TrainingConfig(**OPTIONS), data_dir, out_dir)
    finally:
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "train/loss": [r["train/loss"] for r in records if "train/loss" in r],
        "val/loss": {str(r["step"]): r["val/loss"] for r in records if "val/loss" in r},
    }


def test_the_reference_run_gives_the_recorded_losses(tiny_data_dir, tmp_path):
    reference = json.loads(REFERENCE.read_text())
    losses = losses_of(tiny_data_dir, tmp_path / "run")
    assert len(losses["train/loss"]) == OPTIONS["max_steps"]
    assert losses["train/loss"] == reference["train/loss"]
    assert losses["val/loss"] == reference["val/loss"]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    from slm_hf.data import prepare_data

    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "tiny"  # as tests/conftest.py's tiny_data_dir
        prepare_data("sample", out_dir=data_dir, vocab_size=512, max_stories=400, show_progress=False)
        losses = losses_of(data_dir, Path(folder) / "run")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    REFERENCE.write_text(json.dumps({"commit": commit, "options": OPTIONS, **losses}, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
