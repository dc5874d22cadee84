"""The data pipeline: tokenizer, story files, token files, meta.json, reuse, and every bad input's one-line error."""

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from slm_hf.data import stories as stories_module
from slm_hf.data import tokenize as tokenize_module
from slm_hf.data import load_tokens, prepare_data, read_meta, read_stories
from slm_hf.errors import SLMError
from slm_hf.tokenization import EOS_TOKEN, load_tokenizer, save_tokenizer, tokenizer_sha256, train_tokenizer

TRICKY = [
    "Café, naïve, façade, Ærøskøbing, Ελληνικά, 日本語",
    "emoji 😀👍🏽👨‍👩‍👧 and a flag 🇫🇷",
    "\ttabs\t\tinside\tand trailing\t",
    "runs   of    spaces     ",
    "   leading spaces",
    "new\nlines\n\n\nand\r\nwindows\rbreaks\n",
    "decomposed e\u0301 vs composed \u00e9, zero\u200bwidth, nbsp\u00a0here",
    "",
    "Once upon a time, Lily said: \"Hi!\" 123 4567 $%&*@#",
]


def decode_split(tokenizer, data_dir, split):
    return tokenizer.decode(load_tokens(data_dir, split).tolist())


def write_txt(path, stories):
    path.write_text("".join(f"{story}\n{EOS_TOKEN}\n" for story in stories), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_tokenizer(sample_stories):
    return train_tokenizer(sample_stories["train"][:300], vocab_size=400, show_progress=False)


@pytest.fixture(scope="module")
def prepare_script():
    """scripts/prepare_data.py as a module, to call its main() in this process (fast; a subprocess test is below)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "prepare_data.py"
    spec = importlib.util.spec_from_file_location("prepare_data_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_has_one_flag_per_data_option(prepare_script):
    """scripts/prepare_data.py spells DataOptions' fields as flags (it parses before importing slm_hf): the same set."""
    from slm_hf.data.options import OPTION_NAMES

    dests = {action.dest for action in prepare_script.build_parser()._actions}
    assert set(OPTION_NAMES) <= dests
    assert dests - set(OPTION_NAMES) == {"help", "source", "out", "num_proc", "overwrite", "no_progress"}


# --- tokenizer --------------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_tricky_text_after_save_and_load(small_tokenizer, tmp_path):
    save_tokenizer(small_tokenizer, tmp_path / "tok")
    reloaded = (AutoTokenizer.from_pretrained(tmp_path / "tok"), load_tokenizer(tmp_path / "tok"))
    for tokenizer in (small_tokenizer, *reloaded):
        for text in TRICKY:
            assert tokenizer.decode(tokenizer.encode(text)) == text
        assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == EOS_TOKEN
        assert tokenizer.eos_token_id == tokenizer.pad_token_id == 0
        assert tokenizer.padding_side == "left"
        batch = tokenizer(["Hi", "Once upon a time there was"], padding=True)
        assert batch["input_ids"][0][0] == 0 and batch["attention_mask"][0][0] == 0  # left-padded with eos
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # loadable by transformers 4.x too
    assert tokenizer_sha256(load_tokenizer(tmp_path / "tok")) == tokenizer_sha256(small_tokenizer)


def test_tokenizer_training_is_deterministic_and_sized(sample_stories):
    stories = sample_stories["train"][:200]
    first = train_tokenizer(stories, vocab_size=300, show_progress=False)
    second = train_tokenizer(stories, vocab_size=300, show_progress=False)
    assert len(first) == 300
    assert tokenizer_sha256(first) == tokenizer_sha256(second)
    assert tokenizer_sha256(first) != tokenizer_sha256(train_tokenizer(stories, 301, show_progress=False))


@pytest.mark.parametrize("vocab_size", [0, 100, 256])
def test_vocab_size_too_small_for_bytes_plus_specials(vocab_size):
    with pytest.raises(SLMError, match="at least 257"):
        train_tokenizer(["a story"], vocab_size=vocab_size)


# --- reading stories --------------------------------------------------------------------------------------------


def test_read_stories_handles_separators_bom_crlf_gzip_and_chunk_boundaries(tmp_path, monkeypatch):
    raw = ("\ufeffFirst story.\r\nSecond line.\r\n<|endoftext|>\r\n"
           "Second <|endoftext|> inside a line stays.\n<|endoftext|>  \n\n\n<|endoftext|>\n"
           "Last story, no separator after it 😀\n")
    path = tmp_path / "s.txt"
    path.write_bytes(raw.encode("utf-8"))
    expected = ["First story.\r\nSecond line.", "Second <|endoftext|> inside a line stays.",
                "Last story, no separator after it 😀"]
    assert read_stories(path) == expected
    assert read_stories(path, limit=2) == expected[:2]
    with gzip.open(tmp_path / "s.txt.gz", "wb") as file:
        file.write(raw.encode("utf-8"))
    assert read_stories(tmp_path / "s.txt.gz") == expected
    for chunk in (1, 3, 7, 13):  # separators and multi-byte characters cut across chunk boundaries
        monkeypatch.setattr(stories_module, "READ_CHUNK", chunk)
        assert read_stories(path) == expected, chunk


# --- prepared folders -------------------------------------------------------------------------------------------


def test_splits_round_trip_through_bin_files(tiny_data_dir, sample_stories):
    meta = read_meta(tiny_data_dir)
    tokenizer = load_tokenizer(tiny_data_dir / meta["tokenizer"]["path"])
    for split, stories in (("train", sample_stories["train"][:400]), ("val", sample_stories["val"])):
        tokens = load_tokens(tiny_data_dir, split)
        assert tokens.dtype == np.uint16 and meta["dtype"] == "uint16"
        assert decode_split(tokenizer, tiny_data_dir, split) == EOS_TOKEN.join(stories) + EOS_TOKEN
        counts = meta["splits"][split]
        assert counts["tokens"] == len(tokens)
        assert counts["stories"] == len(stories) == int((tokens == 0).sum())
        assert counts["bytes"] == sum(len(story.encode("utf-8")) for story in stories)
        assert counts["bytes_per_token"] == pytest.approx(counts["bytes"] / counts["tokens"], abs=1e-5)
    assert meta["format_version"] == 1 and meta["source"] == "sample"
    assert meta["vocab_size"] == len(tokenizer) == 512 and meta["eos_token_id"] == 0
    assert meta["tokenizer"]["sha256"] == tokenizer_sha256(tokenizer)
    assert meta["options"]["max_stories"] == 400
    assert AutoTokenizer.from_pretrained(tiny_data_dir / "tokenizer").eos_token_id == 0


def test_rerun_reuses_identical_inputs_and_rebuilds_on_change(tmp_path, sample_stories, small_tokenizer):
    save_tokenizer(small_tokenizer, tmp_path / "tok")
    out = tmp_path / "out"
    first = prepare_data("sample", out_dir=out, tokenizer=str(tmp_path / "tok"), max_stories=50, show_progress=False)
    mtime = (out / "train.bin").stat().st_mtime_ns
    again = prepare_data("sample", out_dir=out, tokenizer=str(tmp_path / "tok"), max_stories=50, show_progress=False)
    assert not first.reused and again.reused and again.meta == first.meta
    assert (out / "train.bin").stat().st_mtime_ns == mtime
    # Same tokenizer, different data: rebuilt in place.
    more = prepare_data("sample", out_dir=out, tokenizer=str(tmp_path / "tok"), max_stories=80, show_progress=False)
    assert not more.reused and more.meta["splits"]["train"]["stories"] == 80
    assert decode_split(small_tokenizer, out, "train") == EOS_TOKEN.join(sample_stories["train"][:80]) + EOS_TOKEN
    # A damaged folder is never reused.
    with open(out / "val.bin", "ab") as file:
        file.write(b"\0\0")
    with pytest.raises(SLMError, match="does not match meta.json"):
        load_tokens(out, "val")
    assert not prepare_data("sample", out_dir=out, tokenizer=str(tmp_path / "tok"), max_stories=80,
                            show_progress=False).reused
    assert len(load_tokens(out, "val")) == more.meta["splits"]["val"]["tokens"]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer", "train.bin", "val.bin"]


def test_val_fraction_holds_out_a_seeded_subset(tmp_path, sample_stories, small_tokenizer):
    stories = sample_stories["train"][:100]
    source = write_txt(tmp_path / "stories.txt", stories)
    save_tokenizer(small_tokenizer, tmp_path / "tok")

    def val_stories(seed, out):
        prepare_data(str(source), out_dir=tmp_path / out, tokenizer=str(tmp_path / "tok"), val_fraction=0.1,
                     seed=seed, show_progress=False)
        return [decode_split(small_tokenizer, tmp_path / out, split).split(EOS_TOKEN)[:-1]
                for split in ("train", "val")]

    train, val = val_stories(0, "a")
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val) == sorted(stories)
    assert train == [story for story in stories if story not in val]  # the training stories keep their order
    assert val_stories(0, "b") == [train, val]
    assert val_stories(1, "c")[1] != val


def test_folder_of_txt_files_uses_valid_named_files_for_validation(tmp_path, sample_stories, small_tokenizer):
    folder = tmp_path / "stories"
    folder.mkdir()
    write_txt(folder / "TinyStories-train.txt", sample_stories["train"][:30])
    write_txt(folder / "more-train.txt", sample_stories["train"][30:40])
    write_txt(folder / "TinyStories-valid.txt", sample_stories["val"][:5])
    save_tokenizer(small_tokenizer, tmp_path / "tok")
    result = prepare_data(str(folder), out_dir=tmp_path / "out", tokenizer=str(tmp_path / "tok"), show_progress=False)
    assert result.meta["splits"]["train"]["stories"] == 40 and result.meta["splits"]["val"]["stories"] == 5
    expected = EOS_TOKEN.join(sample_stories["val"][:5]) + EOS_TOKEN
    assert decode_split(small_tokenizer, tmp_path / "out", "val") == expected


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet_folder", "jsonl_file"])
def test_datasets_code_path_on_local_data(layout, tmp_path, sample_stories, small_tokenizer, datasets_cache):
    """The `datasets` path a Hub id takes (load_dataset(path) with split inference), on local folders and files."""
    from datasets import Dataset, DatasetDict

    train, val = sample_stories["train"][:60], sample_stories["val"][:8]
    splits = DatasetDict(train=Dataset.from_dict({"id": list(range(60)), "story": train}),
                         validation=Dataset.from_dict({"id": list(range(8)), "story": val}))
    if layout == "save_to_disk":
        source = tmp_path / "saved"
        splits.save_to_disk(source)
    elif layout == "parquet_folder":
        source = tmp_path / "parquet"
        source.mkdir()
        splits["train"].to_parquet(source / "train-00000-of-00001.parquet")
        splits["validation"].to_parquet(source / "validation-00000-of-00001.parquet")
    else:
        source = tmp_path / "stories.jsonl"
        splits["train"].to_json(source)
    save_tokenizer(small_tokenizer, tmp_path / "tok")
    out = tmp_path / "out"
    result = prepare_data(str(source), out_dir=out, tokenizer=str(tmp_path / "tok"), text_column="story",
                          show_progress=False)
    if layout == "jsonl_file":  # no validation split: 5% held out
        assert result.meta["splits"]["val"]["stories"] == 3 and result.meta["splits"]["train"]["stories"] == 57
    else:
        assert result.meta["validation"] == "the source's validation split ('validation')"
        assert decode_split(small_tokenizer, out, "train") == EOS_TOKEN.join(train) + EOS_TOKEN
        assert decode_split(small_tokenizer, out, "val") == EOS_TOKEN.join(val) + EOS_TOKEN
    with pytest.raises(SLMError, match=r"no column 'text' in .*its columns are: id, story"):
        prepare_data(str(source), out_dir=tmp_path / "other", tokenizer=str(tmp_path / "tok"), show_progress=False)


def test_worker_processes_give_the_same_tokens(tmp_path, small_tokenizer, monkeypatch):
    save_tokenizer(small_tokenizer, tmp_path / "tok")
    monkeypatch.setattr(tokenize_module, "BATCH_STORIES", 16)  # several batches per worker
    outs = {}
    for num_proc in (None, 1, 2):
        out = tmp_path / f"out{num_proc}"
        prepare_data("sample", out_dir=out, tokenizer=str(tmp_path / "tok"), max_stories=100, num_proc=num_proc,
                     show_progress=False)
        outs[num_proc] = (out / "train.bin").read_bytes()
    assert outs[None] == outs[1] == outs[2]


def test_vocabulary_over_65535_tokens_uses_uint32(tmp_path, small_tokenizer):
    state = json.loads(small_tokenizer.backend_tokenizer.to_str())  # the same tokenizer, its vocabulary padded out
    vocab = state["model"]["vocab"]
    vocab.update({f"unused{i}": i for i in range(len(vocab), 65536)})
    big = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)), eos_token=EOS_TOKEN)
    assert len(big) == 65536
    save_tokenizer(big, tmp_path / "big")
    result = prepare_data("sample", out_dir=tmp_path / "out", tokenizer=str(tmp_path / "big"), max_stories=20,
                          show_progress=False)
    assert result.meta["dtype"] == "uint32" and load_tokens(tmp_path / "out", "train").dtype == np.uint32


def test_a_failing_run_leaves_the_previous_folder_intact(tmp_path, sample_stories, small_tokenizer):
    save_tokenizer(small_tokenizer, tmp_path / "tok")
    out = tmp_path / "out"
    good = prepare_data("sample", out_dir=out, tokenizer=str(tmp_path / "tok"), max_stories=40, show_progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    folder = tmp_path / "src"
    folder.mkdir()
    write_txt(folder / "train.txt", sample_stories["train"][:20])
    (folder / "valid.txt").write_text(f"\n{EOS_TOKEN}\n   \n{EOS_TOKEN}\n")  # fails after train.bin is tokenized
    with pytest.raises(SLMError, match="no stories found in the validation split"):
        prepare_data(str(folder), out_dir=out, tokenizer=str(tmp_path / "tok"), overwrite=True, show_progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # no staging folder left behind
    assert read_meta(out) == good.meta and len(load_tokens(out, "train")) == good.meta["splits"]["train"]["tokens"]


def test_read_meta_and_load_tokens_errors(tmp_path, tiny_data_dir):
    with pytest.raises(SLMError, match="not a prepared data folder"):
        read_meta(tmp_path)
    with pytest.raises(SLMError, match="split must be one of train, val"):
        load_tokens(tiny_data_dir, "test")


# --- bad inputs: one line on stderr, exit status 2, nothing written -----------------------------------------------


def bad_inputs(tmp_path, tokenizer_dir):
    (tmp_path / "empty.txt").touch()
    (tmp_path / "blank.txt").write_text(f"\n{EOS_TOKEN}\n \t \n{EOS_TOKEN}\n")
    (tmp_path / "latin1.txt").write_bytes(f"A fine story.\n{EOS_TOKEN}\nCaf".encode() + b"\xe9 au lait\n")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (tmp_path / "nul.txt").write_bytes(b"A story.\n<|endoftext|>\nRIFF\0\0\0WAVE")
    (tmp_path / "utf16.jsonl").write_bytes('{"text": "hi"}\n'.encode("utf-16"))
    (tmp_path / "table.jsonl").write_text('{"story": "One day.", "id": 1}\n{"story": "Two.", "id": 2}\n')
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.md").write_text("no stories here")
    return {
        "missing path": (["--source", tmp_path / "no_such.txt"], "no such file or folder"),
        "empty file": (["--source", tmp_path / "empty.txt"], "empty.txt is empty"),
        "no stories": (["--source", tmp_path / "blank.txt"], "no stories found in"),
        "folder without stories": (["--source", tmp_path / "nothing"], "no stories found in"),
        "non-UTF-8": (["--source", tmp_path / "latin1.txt"],
                      "latin1.txt is not UTF-8 text: byte 0xe9 at byte offset 31"),
        "binary": (["--source", tmp_path / "image.txt"], "image.txt is not UTF-8 text: byte 0x89 at byte offset 0"),
        "NUL bytes": (["--source", tmp_path / "nul.txt"], "nul.txt looks binary, not UTF-8 text (NUL byte at byte "
                                                          "offset 27)"),
        "UTF-16 table": (["--source", tmp_path / "utf16.jsonl"], "utf16.jsonl is not UTF-8 text: byte 0xff at byte "
                                                                 "offset 0"),
        "missing text column": (["--source", tmp_path / "table.jsonl"], "its columns are: story, id"),
        "vocab too small": (["--vocab-size", "200"], "vocab size 200 is too small"),
        "hub offline": (["--source", "someone/not-cached-stories"], "loading it as a Hub dataset failed"),
        "not a tokenizer": (["--tokenizer", tmp_path / "nothing"], "is not a tokenizer folder"),
        "different tokenizer": (["--max-stories", "50", "--tokenizer", tokenizer_dir], "different tokenizer"),
    }


@pytest.fixture
def bad_input_cases(tmp_path, small_tokenizer, datasets_cache):
    save_tokenizer(small_tokenizer, tmp_path / "tok")
    return bad_inputs(tmp_path, tmp_path / "tok")


BAD_INPUTS = ["missing path", "empty file", "no stories", "folder without stories", "non-UTF-8", "binary", "NUL bytes",
              "UTF-16 table", "missing text column", "vocab too small", "hub offline", "not a tokenizer",
              "different tokenizer"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_and_exit_2(case, bad_input_cases, tmp_path, prepare_script, tiny_data_dir, capsys):
    args, message = bad_input_cases[case]
    out = tmp_path / "out"
    if case == "different tokenizer":  # a folder made with another tokenizer; refused, and left as it was
        out = tiny_data_dir
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        prepare_script.main([*map(str, args), "--out", str(out), "--no-progress"])
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], error_lines
    if case == "different tokenizer":
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    else:
        assert not out.exists()


def test_script_end_to_end_in_a_subprocess(tmp_path, run_script, datasets_cache):
    out = tmp_path / "data"
    args = ["--out", out, "--max-stories", "120", "--vocab-size", "300", "--no-progress"]
    first = run_script("prepare_data.py", *args)
    assert first.returncode == 0, first.stderr
    assert "wrote" in first.stderr and read_meta(out)["splits"]["train"]["stories"] == 120
    again = run_script("prepare_data.py", *args)
    assert again.returncode == 0 and "up to date" in again.stderr and "reusing" in again.stderr
    (tmp_path / "bad.txt").write_bytes(b"ok\n<|endoftext|>\n\xff\xfe")
    bad = run_script("prepare_data.py", "--source", tmp_path / "bad.txt", "--out", tmp_path / "bad_out")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'bad.txt'} is not UTF-8 text: byte 0xff at byte "
                                               f"offset 17 is invalid"]
    assert not (tmp_path / "bad_out").exists()


def test_hub_text_files_path_reports_offline_clearly(tmp_path, prepare_script):
    assert prepare_script.parse_data_files(["train=TinyStoriesV2-GPT4-train.txt", "validation=v.txt", "x.txt"]) == {
        "train": ["TinyStoriesV2-GPT4-train.txt", "x.txt"], "validation": ["v.txt"]}
    with pytest.raises(SLMError, match=r"cannot download .* from the Hub dataset roneneldan/TinyStories \(HF_HUB_OFF"):
        prepare_data("roneneldan/TinyStories", out_dir=tmp_path / "out", show_progress=False,
                     data_files={"train": "TinyStoriesV2-GPT4-train.txt"})
    assert not (tmp_path / "out").exists()
