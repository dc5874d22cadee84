"""The stories of the `tinystories_bpb` lm-eval task (tinystories_bpb.yaml): read the way slm_hf reads them."""

from importlib.resources import files

import datasets

from slm_hf.evaluation import read_story_file

SHIPPED_VALIDATION = files("slm_hf") / "sample_data" / "tinystories_valid.txt.gz"


def validation_stories(stories=None, max_stories=None, **_lm_eval_metadata):
    """A `validation` split of {"text": story} rows from `stories` (a .txt / .txt.gz / .jsonl file; default: the
    validation sample shipped in slm_hf). lm-eval passes the task's metadata (and `--metadata`) as keywords."""
    texts = read_story_file(stories or SHIPPED_VALIDATION, None if max_stories is None else int(max_stories))
    return {"validation": datasets.Dataset.from_dict({"text": texts})}
