"""The figures behind two test criteria, measured on the tests' own tiny model and written as results:

- how closely each lower-precision copy follows the fp32 model (tests/test_export.py's COPY_BOUNDS): GGUF f16 and
  q8_0 in llama.cpp and the int8 copy (`quantize_int8`), as the largest logit difference and the share of positions
  with the fp32 model's top-1 token, over the first 10 shipped validation stories (128 tokens each);
- what "it learns" means for the tiny preset (tests/test_training.py's has_learned): the validation loss at step 50
  at the preset's learning rate, at 1/10 and at 1/100 of it, beside ln 512 (a uniform guess), with the recipe of
  tests/test_training.py (2 micro-batches an update, its data: the sample's first 400 stories).

    python bench/copy_fidelity.py      # a few minutes on 2 cores; writes bench/results/copy_fidelity_<cpu>_<date>.json

The model is the tests' (tests/share_fixtures.py): configs/tiny.yaml trained 30 steps on the shipped sample.
"""

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import model_shape, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
SAMPLE_VALID = ROOT / "slm_hf" / "sample_data" / "tinystories_valid.txt.gz"


def follows(ours: list, theirs: list) -> dict:
    """The largest logit difference and the top-1 agreement of `theirs` against `ours` (one array a window)."""
    import numpy as np

    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    return {"max_logit_difference": float(abs(theirs - ours).max()),
            "top1_agreement": float((theirs.argmax(-1) == ours.argmax(-1)).mean()), "positions": len(ours)}


def copies(final: Path, work: Path) -> dict:
    import llama_cpp
    import torch

    from slm_hf.evaluation import read_story_file
    from slm_hf.exporting import export_model
    from slm_hf.generation import load_pretrained

    model, tokenizer = load_pretrained(final, device="cpu")
    int8, _ = load_pretrained(final, device="cpu", int8=True)
    windows = [([tokenizer.eos_token_id] + tokenizer.encode(story, add_special_tokens=False))[:128]
               for story in read_story_file(SAMPLE_VALID, max_stories=10)]
    with torch.no_grad():
        ours = [model(torch.tensor([ids])).logits[0].numpy() for ids in windows]
        results = {"int8": follows(ours, [int8(torch.tensor([ids])).logits[0].float().numpy() for ids in windows])}
    for gguf_type in ("f16", "q8_0"):
        path = export_model(final, "gguf", work / gguf_type, gguf_type=gguf_type)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, logits_all=True)
        theirs = []
        for ids in windows:
            llm.reset()
            llm.eval(ids)
            theirs.append(llm.scores[: len(ids)].copy())
        results[f"gguf_{gguf_type}"] = follows(ours, theirs)
    return results


def learning(data: Path, work: Path) -> dict:
    from slm_hf.training import train
    from slm_hf.training.config import TrainingConfig

    recipe = TrainingConfig.load(TINY)
    run = ["max_steps=50", "gradient_accumulation_steps=2", "eval_interval=50", "save_interval=50"]
    losses = {}
    for fraction in (1, 10, 100):
        rates = [f"learning_rate={recipe.learning_rate / fraction}", f"min_lr={recipe.min_lr / fraction}"]
        out = train(TrainingConfig.load(TINY, [*run, *rates]), data, work / f"lr-{fraction}").out_dir
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[f"lr/{fraction}"] = next(r["val/loss"] for r in records if r.get("step") == 50 and "val/loss" in r)
    return {"val_loss_at_step_50": losses, "uniform_guess_loss": math.log(512)}


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import torch

    from slm_hf import SLMConfig
    from slm_hf.data import prepare_data
    from slm_hf.training import train
    from slm_hf.training.config import TrainingConfig

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        prepare_data("sample", out_dir=work / "data", vocab_size=512, show_progress=False)
        config = TrainingConfig.load(TINY, ["max_steps=30", "eval_interval=15"])
        final = train(config, work / "data", work / "run").out_dir / "final"
        shape = model_shape(SLMConfig.from_pretrained(final))
        # tests/test_training.py's data: the first 400 stories of the sample
        prepare_data("sample", out_dir=work / "data-400", vocab_size=512, max_stories=400, show_progress=False)
        results = {"copies": copies(final, work), "learning": learning(work / "data-400", work)}
    print(json.dumps(results, indent=2))
    print(write_results("copy_fidelity", results, shape=shape))


if __name__ == "__main__":
    main()
