"""Evaluation and generation: bits per byte and its byte counts, the scoring windows, agreement with training's
evaluation and between the data-folder and raw-text paths, story-quality measures, and the two scripts."""

import io
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from share_fixtures import REPO, SAMPLE_VALID, data_folder, offline_env, trained_run
from slm_hf.errors import SLMError
from slm_hf.evaluation import (
    evaluate_texts,
    evaluate_tokens,
    first_stories,
    read_story_file,
    story_windows,
    token_byte_lengths,
)
from slm_hf.generation import GenerationSettings, encode_prompt, generate_ids, load_pretrained, stream_to_terminal
from slm_hf.story_quality import distinct_n, repetition_rate, story_quality


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return data_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(run):
    return load_pretrained(run / "final", device="cpu")


@pytest.fixture(scope="module")
def stories():
    return read_story_file(SAMPLE_VALID, max_stories=40)


# ---------------------------------------------------------------------------------------------- bytes, windows
def test_token_bytes_add_up_to_the_utf8_size_of_the_text(loaded):
    _, tokenizer = loaded
    lengths = token_byte_lengths(tokenizer)
    text = "Lily's café had a 🐶 and \"big\" cakes.\n\nThe end  —  tabs\tand  spaces."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert lengths[ids].sum() == len(text.encode("utf-8"))
    assert lengths[tokenizer.eos_token_id] == 0  # <|endoftext|> is predicted but is no text


@pytest.mark.parametrize("length,context,stride", [(5, 8, 4), (8, 8, 4), (9, 8, 4), (30, 8, 4), (30, 8, 8), (31, 6, 1)])
def test_story_windows_predict_each_token_once_within_the_context(length, context, stride):
    ids = np.arange(100, 100 + length)
    windows = story_windows(ids, context, stride)
    scored = np.concatenate([targets[targets >= 0] for _, targets in windows])
    assert scored.tolist() == ids[1:].tolist()  # every token but the first, once, in order
    for index, (inputs, targets) in enumerate(windows):
        assert len(inputs) == len(targets) <= context
        assert (targets[targets >= 0] == inputs[targets >= 0] + 1).all()  # each target follows its input
        if index:  # later windows score only new tokens, each with at least context - stride of history
            assert int(np.argmax(targets >= 0)) >= context - stride


def test_evaluate_texts_equals_the_model_loss_on_a_story_that_fits(loaded, stories):
    model, tokenizer = loaded
    story = stories[0][:300].rsplit(".", 1)[0] + "."  # a story's opening, shorter than the context
    ids = torch.tensor([[tokenizer.eos_token_id] + tokenizer.encode(story, add_special_tokens=False) + [0]])
    assert ids.shape[1] <= model.config.max_position_embeddings
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids, use_cache=False).loss.item()
    report = evaluate_texts(model, tokenizer, [story])
    assert report.tokens == ids.shape[1] - 1
    assert report.bytes == len(story.encode("utf-8"))
    assert report.loss == pytest.approx(expected, rel=1e-5)
    assert report.bits_per_byte == pytest.approx(report.nats / math.log(2) / report.bytes)
    assert report.perplexity == pytest.approx(math.exp(report.loss))


def test_long_stories_are_scored_in_overlapping_windows(loaded, stories):
    model, tokenizer = loaded
    whole = evaluate_texts(model, tokenizer, stories[:8])
    windowed = evaluate_texts(model, tokenizer, stories[:8], context=32, stride=16)
    assert windowed.tokens == whole.tokens and windowed.bytes == whole.bytes
    assert windowed.windows > whole.windows
    assert windowed.loss > whole.loss - 0.05  # less history can only hurt a little on average


def test_evaluate_tokens_default_windows_cover_the_stream(loaded):
    model, tokenizer = loaded
    tokens = np.arange(1, 301) % 50
    report = evaluate_tokens(model, tokens, context=64, token_bytes=token_byte_lengths(tokenizer))
    assert report.tokens == 299 and report.windows == 5  # 4 full windows and a shorter last one
    assert report.bytes == token_byte_lengths(tokenizer)[tokens[1:]].sum()
    with pytest.raises(SLMError, match="outside"):
        evaluate_tokens(model, tokens, context=64, starts=[299])


def test_first_stories_cuts_after_the_nth_end_of_text():
    tokens = np.array([0, 5, 6, 0, 7, 0, 8, 9, 0])
    assert first_stories(tokens, 0, 2).tolist() == [0, 5, 6, 0, 7, 0]
    assert first_stories(tokens, 0, 10).tolist() == tokens.tolist()


# -------------------------------------------------------------------------- agreement with training, and paths
def test_data_folder_loss_equals_trainings_evaluation_on_the_same_windows(run, data_dir, loaded):
    """training_results.json's val/loss is training's own evaluation of this model (its fixed validation batches);
    evaluate_tokens on the same windows of val.bin gives the same number."""
    from slm_hf.data import load_tokens
    from slm_hf.training import TokenWindows
    from slm_hf.training.config import TrainingConfig

    model, _ = loaded
    results = json.loads((run / "final" / "training_results.json").read_text())
    config = TrainingConfig.from_dict(results["config"])
    tokens = load_tokens(data_dir, "val")
    windows = TokenWindows(tokens, config.block_size, config.batch_size, config.seed, stream=1)
    starts = []
    for index in range(config.eval_iters):  # the batches training evaluates on (one process)
        batch_starts = np.random.default_rng([config.seed, 1, index]).integers(
            0, len(tokens) - config.block_size, size=config.batch_size
        )
        inputs, _ = windows.batch(index)
        assert (inputs.numpy() == tokens[batch_starts[:, None] + np.arange(config.block_size)]).all()
        starts.extend(batch_starts.tolist())
    report = evaluate_tokens(model, tokens, context=config.block_size, starts=starts)
    assert report.loss == pytest.approx(results["val/loss"], rel=1e-5)


def test_bits_per_byte_agree_between_data_folder_and_raw_text(tmp_path, data_dir, loaded):
    """One model, one text: the data folder's validation split, scored packed (evaluate_data_folder) and as a raw
    text file of the same stories (decoded from val.bin: byte-level BPE round-trips exactly): within 1%."""
    from slm_hf.data import load_tokens
    from slm_hf.evaluation import evaluate_data_folder

    model, tokenizer = loaded
    tokens = load_tokens(data_dir, "val")
    ends = np.flatnonzero(tokens == tokenizer.eos_token_id)
    stories = [tokenizer.decode(piece) for piece in np.split(tokens, ends + 1) if len(piece[piece != 0])]
    text_file = tmp_path / "val.txt"
    text_file.write_text("".join(story.replace("<|endoftext|>", "").strip() + "\n<|endoftext|>\n" for story in stories))

    packed = evaluate_data_folder(model, tokenizer, data_dir)
    raw = evaluate_texts(model, tokenizer, read_story_file(text_file))
    assert abs(packed.tokens / raw.tokens - 1) < 0.01 and abs(packed.bytes / raw.bytes - 1) < 0.01
    assert abs(packed.bits_per_byte / raw.bits_per_byte - 1) < 0.01


def test_data_folder_of_another_tokenizer_is_refused(tmp_path, loaded, data_dir):
    from slm_hf.evaluation import evaluate_data_folder
    from slm_hf.tokenization import train_tokenizer

    model, _ = loaded
    other = train_tokenizer(["a b c"] * 20, vocab_size=300, show_progress=False)
    with pytest.raises(SLMError, match="different tokenizer"):
        evaluate_data_folder(model, other, data_dir)


# --------------------------------------------------------------------------------------------- story quality
def test_repetition_and_distinct_ngrams():
    assert repetition_rate("the cat sat on the mat") == 0
    assert repetition_rate("a b c d a b c d a b c d") == pytest.approx(1 - 4 / 9)
    assert repetition_rate("too short") is None
    assert distinct_n(["a b", "a b"], 1) == 0.5
    assert distinct_n(["a b c", "c b a"], 2) == 1.0


def test_story_quality_is_reproducible_and_measured(loaded):
    model, tokenizer = loaded
    prompts = ["Once upon a time", "Tom had a dog."]
    settings = GenerationSettings(max_new_tokens=40, seed=3)
    first = story_quality(model, tokenizer, prompts, settings)
    second = story_quality(model, tokenizer, prompts, settings)
    assert first == second
    assert first["stories"] == 2 and [s["prompt"] for s in first["samples"]] == prompts
    assert all(s["text"].startswith(s["prompt"]) for s in first["samples"])
    assert 0 <= first["ended_with_eos"] <= 1 and 0 < first["distinct_1"] <= 1
    assert 0 < first["mean_new_tokens"] <= 40
    assert first["settings"]["seed"] == 3


# ------------------------------------------------------------------------------------------------ generation
def test_generation_settings_are_validated():
    with pytest.raises(SLMError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(SLMError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


def test_sampling_knobs_left_unset_are_the_model_generation_config(loaded):
    """generation_config.json (written by training) is the one place a model's sampling defaults are decided."""
    model, tokenizer = loaded
    saved = model.generation_config
    assert saved.do_sample and saved.temperature and saved.top_k and saved.top_p  # training wrote them
    unset = GenerationSettings(max_new_tokens=20, seed=5)
    resolved = unset.for_model(model)
    assert (resolved.temperature, resolved.top_k, resolved.top_p) == (saved.temperature, saved.top_k, saved.top_p)
    assert GenerationSettings().for_model(model).max_new_tokens == saved.max_new_tokens
    explicit = GenerationSettings(max_new_tokens=20, seed=5, temperature=saved.temperature, top_k=saved.top_k,
                                  top_p=saved.top_p)
    assert generate_ids(model, tokenizer, "Tom", unset) == generate_ids(model, tokenizer, "Tom", explicit)
    # A folder whose generation_config does not sample is decoded greedily, as generate() itself would.
    assert GenerationSettings().resolved(GenerationConfig(), context=64) == GenerationSettings(
        max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)


def test_generation_stays_inside_the_context(loaded):
    model, tokenizer = loaded
    context = model.config.max_position_embeddings
    prompt = "Lily had a ball. " * 6
    room = context - len(encode_prompt(tokenizer, prompt))
    (ids,) = generate_ids(model, tokenizer, prompt, GenerationSettings(max_new_tokens=500, temperature=0))
    assert len(ids) <= room
    with pytest.raises(SLMError, match="shorten the prompt"):
        generate_ids(model, tokenizer, "Lily had a ball. " * 200, GenerationSettings())


# --------------------------------------------------------------------------------------------------- scripts
def _script(name, *args, stdin=None, env=None):
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=offline_env(**(env or {})), timeout=300)


def test_evaluate_script_reports_json_and_a_summary(run, tmp_path):
    text = tmp_path / "stories.jsonl"
    text.write_text("".join(json.dumps({"text": s}) + "\n" for s in read_story_file(SAMPLE_VALID, 5)))
    report_file = tmp_path / "eval.json"
    done = _script("evaluate.py", "--model", run / "final", "--data", text, "--json", report_file)
    assert done.returncode == 0, done.stderr
    report = json.loads(report_file.read_text())
    assert report["kind"] == "text" and report["stories"] == 5
    assert report["bits_per_byte"] == pytest.approx(report["loss"] * report["tokens"] / math.log(2) / report["bytes"])
    assert len(report["quality"]["samples"]) == report["quality"]["stories"] > 0
    assert "bits per byte" in done.stderr and done.stdout == ""

    missing = _script("evaluate.py", "--model", run / "final", "--data", tmp_path / "nope.txt", "--no-quality")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: ")


def test_streamed_stories_are_reproducible_with_a_seed(loaded):
    model, tokenizer = loaded
    settings = GenerationSettings(max_new_tokens=30, seed=7, num_return_sequences=2)
    first, second = io.StringIO(), io.StringIO()
    assert stream_to_terminal(model, tokenizer, ["Once upon a time"], settings, out=first) == 2
    stream_to_terminal(model, tokenizer, ["Once upon a time"], settings, out=second)
    assert first.getvalue() == second.getvalue()
    assert first.getvalue().startswith("Once upon a time") and first.getvalue().count("Once upon a time") >= 2


def _as_hub_cache(final, hf_home, repo_id="someone/slm-test"):
    """`final/` laid out as a Hub download in the cache under `hf_home`: loading `repo_id` offline then runs the
    Hub-id code path for real (resolution through refs/main and snapshots/), no network needed."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(final, repo / "snapshots" / commit)
    return repo_id


def test_generate_script_streams_stories_for_prompts_from_stdin_from_a_hub_id(run, tmp_path):
    repo_id = _as_hub_cache(run / "final", tmp_path)
    piped = _script("generate.py", "--model", repo_id, "--max-new-tokens", 5, stdin="Tom ran.\n\nLily sang.\n",
                    env={"HF_HOME": str(tmp_path)})
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("Tom ran.") and "\nLily sang." in piped.stdout

    unknown = _script("generate.py", "--model", "someone/not-there", "--prompt", "x", env={"HF_HOME": str(tmp_path)})
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines()[-1].startswith("error: cannot load")
    bad = _script("generate.py", "--model", run / "final", "--prompt", "x", "--top-p", 2)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: top_p")
    fast = _script("generate.py", "--model", run / "final", "--prompt", "Tom ran.", "--max-new-tokens", 5, "--int8")
    assert fast.returncode == 0 and fast.stdout.startswith("Tom ran.") and len(fast.stdout) > len("Tom ran.\n")
