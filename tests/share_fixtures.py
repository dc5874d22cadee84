"""Trained model folders for the evaluate / generate / model card / Hub / demo tests.

`trained_run(tmp_path_factory)` runs the real pipeline once per test session: `prepare_data` on the package's
TinyStories sample (small vocabulary), then `train` with configs/tiny.yaml for a few steps. The run's `final/` is
a Hub-ready folder like any a user gets: weights, code, tokenizer, training_results.json, loss curve, model card.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_VALID = Path("/work/shared/data/tinystories/valid.txt")
_CACHE: dict[str, Path] = {}


def trained_run(tmp_path_factory) -> Path:
    """The output folder of a short tiny-model training run (built on first use, shared by the session)."""
    if "run" not in _CACHE and not _pipeline_available():  # TEMPORARY until slm_hf.data lands
        _CACHE["data"], _CACHE["run"] = _hand_made_run(tmp_path_factory.mktemp("share-run"))
    if "run" not in _CACHE:
        from slm_hf.data import prepare_data
        from slm_hf.training import train
        from slm_hf.training_config import TrainingConfig

        root = tmp_path_factory.mktemp("share-run")
        data_dir = root / "data"
        prepare_data(source="sample", out_dir=data_dir, vocab_size=512)
        config = TrainingConfig.load(REPO / "configs" / "tiny.yaml", ["max_steps=30", "eval_interval=15"])
        outcome = train(config, data_dir, root / "run")
        _CACHE["data"] = data_dir
        _CACHE["run"] = outcome.out_dir
    return _CACHE["run"]


def data_folder(tmp_path_factory) -> Path:
    """The data folder `trained_run` trained on."""
    trained_run(tmp_path_factory)
    return _CACHE["data"]


def offline_env(**extra: str) -> dict[str, str]:
    """The environment for running a script as a subprocess: offline, slm_hf importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _pipeline_available() -> bool:
    try:
        import slm_hf.data  # noqa: F401
    except ImportError:
        return False
    return True


def _hand_made_run(root: Path) -> tuple[Path, Path]:
    """TEMPORARY stand-in for the pipeline: a data folder and run made by hand in the documented formats."""
    import json

    import numpy as np
    import torch

    from slm_hf import SLMConfig, SLMForCausalLM
    from slm_hf.evaluation import read_stories
    from slm_hf.model_card import write_model_card
    from slm_hf.tokenization import save_tokenizer, tokenizer_sha256, train_tokenizer

    train_stories = read_stories(Path("/work/shared/data/tinystories/train.txt"), 600)
    val_stories = read_stories(SHARED_VALID, 60)
    tokenizer = train_tokenizer(train_stories, vocab_size=512, show_progress=False)
    data = root / "data"
    save_tokenizer(tokenizer, data / "tokenizer")
    splits = {}
    for split, stories in (("train", train_stories), ("val", val_stories)):
        ids = []
        for story in stories:
            ids += tokenizer.encode(story, add_special_tokens=False) + [0]
        np.asarray(ids, dtype=np.uint16).tofile(data / f"{split}.bin")
        size = sum(len(story.encode()) for story in stories)
        splits[split] = {"tokens": len(ids), "stories": len(stories), "bytes": size, "bytes_per_token": size / len(ids)}
    meta = {"format_version": 1, "tokenizer": {"path": "tokenizer", "sha256": tokenizer_sha256(tokenizer),
            "name_or_path": "tokenizer"}, "vocab_size": len(tokenizer), "eos_token_id": 0, "dtype": "uint16",
            "splits": splits, "source": "hand-made", "options": {}}
    (data / "meta.json").write_text(json.dumps(meta))
    stream = torch.from_numpy(np.fromfile(data / "train.bin", dtype=np.uint16).astype(np.int64))
    torch.manual_seed(0)
    model = SLMForCausalLM(SLMConfig.from_preset("tiny", vocab_size=len(tokenizer)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        starts = torch.randint(len(stream) - 65, (8,))
        x = torch.stack([stream[i : i + 64] for i in starts])
        y = torch.stack([stream[i + 1 : i + 65] for i in starts])
        loss = model(input_ids=x, shift_labels=y, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = root / "run" / "final"
    model.save_pretrained(final)
    save_tokenizer(tokenizer, final)
    results = {"step": 60, "tokens": 60 * 512, "wall_time_s": 3.0, "val/loss": 5.0, "val/perplexity": 148.4,
               "val/bits_per_byte": 3.1, "train/loss": float(loss), "precision": "fp32", "device": "cpu",
               "num_processes": 1, "parameters": model.num_parameters(), "config": {"batch_size": 8},
               "data": {"source": "hand-made", "val_tokens": splits["val"]["tokens"]}, "history": []}
    (final / "training_results.json").write_text(json.dumps(results))
    write_model_card(final)
    return data, root / "run"
