"""The model card: rendered from the folder's own files, with valid Hub metadata and the measured numbers."""

import json
import shutil
import stat
import subprocess
import sys
import zipfile

import pytest
import yaml
from huggingface_hub import ModelCard

from share_fixtures import REPO, trained_run
from slm_hf.model_card import check_model_card, render_model_card, template_path, write_model_card


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    return trained_run(tmp_path_factory) / "final"


@pytest.fixture(scope="module")
def card_text(final):
    return (final / "README.md").read_text(encoding="utf-8")


def _metadata(text):
    return yaml.safe_load(text.split("---\n")[1])


def test_training_writes_a_card_with_valid_metadata(final, card_text):
    assert check_model_card(final / "README.md") == []
    metadata = _metadata(card_text)
    assert metadata["license"] == "apache-2.0" and metadata["language"] == "en"
    assert metadata["datasets"] == ["roneneldan/TinyStories"]
    assert metadata["pipeline_tag"] == "text-generation" and metadata["library_name"] == "transformers"
    assert "custom_code" in metadata["tags"]


def test_card_numbers_come_from_the_folders_files(final, card_text):
    results = json.loads((final / "training_results.json").read_text())
    config = json.loads((final / "config.json").read_text())
    card = ModelCard.load(final / "README.md")
    reported = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert reported == {
        "loss": round(results["val/loss"], 4),
        "perplexity": round(results["val/perplexity"], 4),
        "bits_per_byte": round(results["val/bits_per_byte"], 4),
    }
    body = card.text
    headline = f"| {results['val/loss']:.4f} | {results['val/perplexity']:.2f} | {results['val/bits_per_byte']:.4f} |"
    assert headline in body
    assert f"| Layers | {config['num_hidden_layers']} |" in body
    assert f"| Hidden size | {config['hidden_size']} |" in body
    assert f"| Context | {config['max_position_embeddings']} tokens |" in body
    assert f"| Parameters | {results['parameters']:,}" in body
    assert f"| Tokens seen | {results['tokens']:,} |" in body
    assert "CDLA-Sharing-1.0" in body and "trust_remote_code=True" in body and "pipeline(" in body
    if (final / "loss_curve.png").is_file():
        assert "](loss_curve.png)" in body


def test_card_shows_seeded_samples_with_their_prompts(final, card_text):
    assert card_text.count("> **") == 3  # three sample stories, each with its prompt in bold
    assert "seed\n0" in card_text or "seed 0" in card_text
    again = render_model_card(final)
    assert str(again) == card_text  # deterministic: re-rendering changes nothing


def test_each_folders_card_samples_its_own_weights(tmp_path, tiny_data_dir):
    """best/ and final/ share their card's stories only when they hold the same step: a run whose validation loss
    rose at the end (a learning rate of 1.0 diverges) has a best/ of step 4 and a final/ of step 8."""
    from slm_hf.training import train
    from slm_hf.training.config import TrainingConfig

    config = TrainingConfig.load(REPO / "configs" / "tiny.yaml", [
        "max_steps=8", "eval_interval=4", "learning_rate=1.0", "min_lr=1.0", "warmup_steps=0", "sample_tokens=0",
        "eval_iters=2"])
    run = train(config, tiny_data_dir, tmp_path / "run").out_dir
    best, final = (json.loads((run / name / "training_results.json").read_text())["step"] for name in ("best", "final"))
    assert (best, final) == (4, 8)
    cards = {name: (run / name / "README.md").read_text(encoding="utf-8") for name in ("best", "final")}
    assert cards["final"] == str(render_model_card(run / "final"))  # its stories are sampled again from final/
    assert cards["best"] == str(render_model_card(run / "best"))
    samples = {name: [line for line in card.splitlines() if line.startswith("> ")] for name, card in cards.items()}
    assert samples["best"] != samples["final"]


def test_card_without_training_results_says_less_and_fails_the_check(tmp_path, final):
    bare = tmp_path / "bare"
    shutil.copytree(final, bare)
    (bare / "training_results.json").unlink()
    path = write_model_card(bare, repo_id="someone/bare-model", num_samples=1)
    text = path.read_text()
    assert "someone/bare-model" in text and "## Training" not in text
    assert any("model-index" in problem for problem in check_model_card(path))


def test_a_built_wheel_installs_the_template_and_the_sample_data(tmp_path):
    """In a checkout, slm_hf/templates/model_card.md is a link to the top-level template; a wheel must carry a real
    copy of it (and the TinyStories sample), or an installed slm_hf cannot write cards or prepare data."""
    source = tmp_path / "source"  # a copy of what the build reads, so that the build leaves the checkout as it was
    for name in ("pyproject.toml", "README.md", "model_card.md"):
        shutil.copy2(REPO / name, source / name if source.is_dir() else _mkdir(source) / name)
    shutil.copytree(REPO / "slm_hf", source / "slm_hf", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "wheels"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("slm_hf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        template = archive.getinfo("slm_hf/templates/model_card.md")
        assert not stat.S_ISLNK(template.external_attr >> 16)  # a file, not a link
        assert archive.read(template).decode() == (REPO / "model_card.md").read_text()
        assert archive.read(template).decode() == template_path().read_text()
    assert {"slm_hf/sample_data/tinystories_train.txt.gz", "slm_hf/sample_data/tinystories_valid.txt.gz",
            "slm_hf/sample_data/LICENSE"} <= names


def _mkdir(path):
    path.mkdir(parents=True)
    return path


def test_check_reports_a_missing_card(tmp_path):
    assert check_model_card(tmp_path / "README.md")[0].startswith("no model card")


def test_card_names_both_dropouts_when_they_differ(tmp_path, final):
    folder = tmp_path / "dropout"
    shutil.copytree(final, folder)
    config = json.loads((folder / "config.json").read_text())
    assert f"| Dropout | {config['dropout']} |" in (final / "README.md").read_text()  # one number when alike
    config.update(dropout=0.1, attention_dropout=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    card = str(render_model_card(folder, num_samples=1))
    assert "| Dropout | 0.1 (embeddings, residual branches), 0.0 (attention probabilities) |" in card


# ------------------------------------------------------------------------------------- sampling settings, examples
def test_card_samples_with_the_folders_generation_settings(tmp_path, final, card_text):
    saved = json.loads((final / "generation_config.json").read_text())
    described = f"temperature {saved['temperature']:g}, top-k {saved['top_k']}, top-p {saved['top_p']:g}"
    assert described in card_text.replace("\n", " ")
    folder = tmp_path / "settings"
    shutil.copytree(final, folder)
    (folder / "generation_config.json").write_text(json.dumps({**saved, "temperature": 0.5, "top_k": 7, "top_p": 0.9}))
    card = str(render_model_card(folder, num_samples=1)).replace("\n", " ")
    assert "temperature 0.5, top-k 7, top-p 0.9" in card
    assert card.count("> **") == 1 and card != card_text.replace("\n", " ")


def _python_blocks(card: str) -> list[str]:
    return [block.split("```", 1)[0] for block in card.split("```python\n")[1:]]


def test_the_cards_examples_run_and_start_the_prompt_like_training(final, card_text, tmp_path):
    """Both examples of the card (generate and pipeline), run against the folder as a Hub user would run them."""
    import subprocess
    import sys

    from share_fixtures import offline_env

    blocks = _python_blocks(card_text)
    assert len(blocks) == 2 and 'prefix="<|endoftext|>"' in blocks[1]
    repo_id = _metadata(card_text)["model-index"][0]["name"]
    for block in blocks:
        assert "your-username/" in block
        code = "import torch; torch.manual_seed(0)\n" + block.replace(f"your-username/{repo_id}", str(final))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env={**offline_env(), "PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error"})
        assert done.returncode == 0, done.stderr[-2000:]
        story = done.stdout.strip()
        assert story.startswith("Once upon a time") and len(story) > len("Once upon a time") + 10
        assert "<|endoftext|>" not in story


# ----------------------------------------------------------------------------------------------- your own data
@pytest.fixture(scope="module")
def own_data_final(tmp_path_factory):
    """A tiny model trained, as a user would, on a folder of the user's own .txt stories."""
    from slm_hf.data import SAMPLE_DIR, SAMPLE_FILES, prepare_data, read_stories
    from slm_hf.training import train
    from slm_hf.training.config import TrainingConfig

    root = tmp_path_factory.mktemp("own-data")
    stories = root / "grandmas_stories"
    stories.mkdir()
    texts = read_stories(SAMPLE_DIR / SAMPLE_FILES["train"], limit=300)
    (stories / "stories.txt").write_text("".join(f"{text}\n<|endoftext|>\n" for text in texts), encoding="utf-8")
    prepare_data(str(stories), out_dir=root / "data", vocab_size=512, show_progress=False)
    config = TrainingConfig.load(REPO / "configs" / "tiny.yaml", ["max_steps=6", "eval_interval=6", "eval_iters=2"])
    return train(config, root / "data", root / "run").out_dir / "final"


def test_a_model_of_your_own_data_names_that_data(own_data_final):
    path = own_data_final / "README.md"
    text = path.read_text(encoding="utf-8")
    assert check_model_card(path) == []
    metadata = _metadata(text)
    assert "datasets" not in metadata  # Hub dataset ids only, and local files have none
    assert "tinystories" not in metadata["tags"]
    (result,) = {(r["dataset"]["type"], r["dataset"]["name"]) for r in metadata["model-index"][0]["results"]}
    assert result == ("grandmas_stories", "grandmas_stories (local files)")
    assert "TinyStories" not in text and "CDLA" not in text and "`grandmas_stories` (local files)" in text


def test_a_model_of_your_own_data_pushes(own_data_final, monkeypatch):
    import huggingface_hub.constants
    from unittest import mock

    from huggingface_hub import HfApi

    from slm_hf.hub import push_to_hub

    assert push_to_hub(own_data_final, "someone/grandma-slm", dry_run=True, update_card=False).dry_run
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with mock.patch.object(HfApi, "create_repo") as create_repo, mock.patch.object(HfApi, "upload_folder") as upload:
        create_repo.return_value = mock.Mock(repo_id="someone/grandma-slm")
        push_to_hub(own_data_final, "someone/grandma-slm", token="hf_x", update_card=False)
    assert upload.call_args.kwargs["folder_path"] == str(own_data_final)


def test_a_hub_dataset_other_than_tinystories_is_named_and_accepted(tmp_path, final):
    folder = tmp_path / "hub-data"
    shutil.copytree(final, folder)
    results = json.loads((folder / "training_results.json").read_text())
    results["data"]["source"] = "someone/fairy-tales"
    (folder / "training_results.json").write_text(json.dumps(results))
    path = write_model_card(folder, num_samples=0)
    metadata = _metadata(path.read_text())
    assert metadata["datasets"] == ["someone/fairy-tales"]
    assert {r["dataset"]["type"] for r in metadata["model-index"][0]["results"]} == {"someone/fairy-tales"}
    assert check_model_card(path) == []
    # ...and a card whose model-index reports on a dataset its metadata does not list is refused
    text = path.read_text().replace("- someone/fairy-tales", "- someone/other-data", 1)
    path.write_text(text)
    assert any("someone/fairy-tales" in problem for problem in check_model_card(path))
