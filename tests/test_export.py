"""Exports for other runtimes (scripts/export.py, slm_hf.exporting), each checked with the real runtime against our
own model: the Llama folder in transformers 5 (in-process) and transformers 4.x (a second venv), the GGUF files in
llama.cpp, the ONNX file in onnxruntime. The lower-precision copies (GGUF f16 and q8_0, and the int8 inference copy
`quantize_int8` makes) are held to a bound on their logits and to our greedy tokens (see COPY_BOUNDS)."""

import json
import shutil
import subprocess
import textwrap

import pytest
import torch

from must_run import import_or_unavailable
from other_runtimes import transformers4_python
from share_fixtures import SAMPLE_VALID, offline_env, trained_run

STORIES = [
    "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog.",
    "Tom saw a big red ball. He kicked it high! \"Look, Mom,\" he said.",
]
GREEDY_TOKENS = 40
GREEDY_PROMPTS = ["Once upon a time", "Tom saw a big red ball.", "Lily and her mom went to the park."]
# What a lower-precision copy must keep of our fp32 model, over the first 10 shipped validation stories (teacher-
# forced, 128 tokens each) on the tiny test model: (the largest logit difference, the least share of positions with
# our top-1 token). Set between what each copy measured (the tests print it) and what a broken one measured: f16
# rounded like bf16, q8_0 with scales 2% off, int8 truncated instead of rounded.
COPY_BOUNDS = {"f16": (2e-3, 0.999), "q8_0": (0.02, 0.99), "int8": (0.02, 0.99)}


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    return trained_run(tmp_path_factory) / "final"


@pytest.fixture(scope="module")
def slm(final):
    from slm_hf.generation import load_pretrained

    return load_pretrained(final, device="cpu")


@pytest.fixture(scope="module")
def llama_dir(final, tmp_path_factory):
    from slm_hf.exporting import export_model

    return export_model(final, "llama", tmp_path_factory.mktemp("export") / "llama")


def _prompt_ids(tokenizer, text):
    return [tokenizer.eos_token_id] + tokenizer.encode(text, add_special_tokens=False)


def _greedy(model, ids, new_tokens=GREEDY_TOKENS):
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                pad_token_id=0, temperature=None, top_k=None, top_p=None)
    return output[0, len(ids):].tolist()


def _forward_greedy(model, ids, new_tokens=GREEDY_TOKENS):
    """Greedy tokens from full forward passes (no cache, no generate()): the reference for runtimes that decode
    with their own loop. (On the barely trained test model some top-2 logits differ by 1e-5, and generate()'s
    first-step logits differ from a plain forward pass by about 6e-3 here: not a reference for those.)"""
    tokens = list(ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(ids):]


@pytest.fixture(scope="module")
def fp32_reference(slm):
    """What the copies are compared with, computed once: the validation windows (the first 10 shipped validation
    stories, 128 tokens each), our logits on them, and our greedy tokens (full forward passes) after each prompt."""
    from slm_hf.evaluation import read_story_file

    model, tokenizer = slm
    windows = [_prompt_ids(tokenizer, story)[:128] for story in read_story_file(SAMPLE_VALID, max_stories=10)]
    with torch.no_grad():
        logits = [model(torch.tensor([ids])).logits[0].numpy() for ids in windows]
    greedy = {text: _forward_greedy(model, _prompt_ids(tokenizer, text)) for text in GREEDY_PROMPTS}
    return windows, logits, greedy


def _assert_logits_follow_ours(copy, ours_by_window, theirs_by_window):
    """`copy`'s logits (one [positions, vocab] array a window) within its bound of ours, and its top-1 token ours at
    its share of the positions at least (COPY_BOUNDS)."""
    import numpy as np

    ours, theirs = np.concatenate(ours_by_window), np.concatenate(theirs_by_window)
    error = float(abs(theirs - ours).max())
    agreement = float((theirs.argmax(-1) == ours.argmax(-1)).mean())
    print(f"{copy}: max |logit difference| {error:.2e}, top-1 agreement {agreement:.4f} over {len(ours)} positions")
    bound, least_agreement = COPY_BOUNDS[copy]
    assert error < bound and agreement >= least_agreement, (error, agreement)


def _assert_greedy_follows_ours(copy, model, prompt, ours, theirs):
    """`theirs` (the copy's greedy tokens after `prompt`) are `ours`, or part from them only at a near tie: where our
    top two logits were closer than twice the copy's logit bound (COPY_BOUNDS), so that its rounding may pick
    either."""
    parted = next((at for at, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    if parted is None:
        assert len(theirs) == len(ours)
        return
    with torch.no_grad():
        first, second = model(torch.tensor([prompt + ours[:parted]])).logits[0, -1].topk(2).values.tolist()
    print(f"{copy}: greedy tokens part at token {parted} of {len(ours)}, where ours led by {first - second:.2e}")
    assert first - second < 2 * COPY_BOUNDS[copy][0], (parted, first - second)


# ------------------------------------------------------------------------------------------------------- llama
def test_llama_folder_is_a_plain_llama(llama_dir):
    names = sorted(path.name for path in llama_dir.iterdir())
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= set(names)
    assert not any(name.endswith(".py") for name in names)  # no remote code
    config = json.loads((llama_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config
    assert json.loads((llama_dir / "tokenizer_config.json").read_text())["model_input_names"] == [
        "input_ids", "attention_mask"]


def test_llama_logits_and_greedy_tokens_match_ours(slm, llama_dir):
    from transformers import LlamaForCausalLM

    model, tokenizer = slm
    llama = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    assert type(llama).__module__.startswith("transformers.models.llama")
    for story in STORIES:
        ids = torch.tensor([_prompt_ids(tokenizer, story)])
        with torch.no_grad():
            ours, theirs = model(ids).logits, llama(ids).logits
        assert (ours - theirs).abs().max().item() < 1e-4
    prompt = _prompt_ids(tokenizer, "Once upon a time")
    assert _greedy(llama, prompt) == _greedy(model, prompt)


def test_llama_tokenizer_starts_texts_the_way_the_model_was_trained(slm, llama_dir):
    from transformers import AutoTokenizer

    _, tokenizer = slm
    exported = AutoTokenizer.from_pretrained(llama_dir)
    for story in STORIES:
        encoded = exported(story)
        assert sorted(encoded.keys()) == ["attention_mask", "input_ids"]
        assert encoded["input_ids"] == _prompt_ids(tokenizer, story)
        assert exported.decode(encoded["input_ids"], skip_special_tokens=True) == story


# Runs in the transformers 4.x venv: load the folder as a user of that version would, greedy-decode, print JSON.
_TRANSFORMERS4_CHECK = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, prompt, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0].tolist()
        output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    print(json.dumps({"version": transformers.__version__, "class": type(model).__name__,
                      "keys": sorted(inputs.keys()), "input_ids": inputs["input_ids"][0].tolist(),
                      "logits": logits, "new_tokens": output[0, inputs["input_ids"].shape[1]:].tolist()}))
    """
)


def test_llama_folder_loads_and_generates_in_transformers_4(slm, llama_dir, tmp_path):
    python = transformers4_python()
    model, tokenizer = slm
    prompt = "Once upon a time"
    done = subprocess.run([str(python), "-c", _TRANSFORMERS4_CHECK, str(llama_dir), prompt, str(GREEDY_TOKENS)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**offline_env(), "PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["version"].startswith("4.") and result["class"] == "LlamaForCausalLM"
    assert result["keys"] == ["attention_mask", "input_ids"]  # no token_type_ids, which generate() would refuse
    ids = _prompt_ids(tokenizer, prompt)
    assert result["input_ids"] == ids
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0]
    assert (ours - torch.tensor(result["logits"])).abs().max().item() < 1e-4
    assert result["new_tokens"] == _greedy(model, ids)


def test_an_untied_head_exports_to_a_llama_with_the_same_logits(final, slm, tmp_path):
    from transformers import LlamaForCausalLM

    from slm_hf import SLMConfig, SLMForCausalLM
    from slm_hf.exporting import export_model

    model, tokenizer = slm
    untied = SLMForCausalLM(SLMConfig(**{**model.config.to_dict(), "tie_word_embeddings": False})).eval()
    untied.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        untied.lm_head.weight.copy_(model.lm_head.weight + 0.01 * torch.randn_like(model.lm_head.weight))
    folder = tmp_path / "untied"
    untied.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (final / name).is_file():
            shutil.copy(final / name, folder / name)
    llama = LlamaForCausalLM.from_pretrained(export_model(folder, "llama", tmp_path / "llama")).eval()
    assert not llama.config.tie_word_embeddings
    assert llama.lm_head.weight.data_ptr() != llama.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([_prompt_ids(tokenizer, STORIES[0])])
    with torch.no_grad():
        assert (llama(ids).logits - untied(ids).logits).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------------- the script
def test_exports_refuse_what_a_llama_cannot_express(final, tmp_path, run_script):
    from slm_hf.errors import SLMError
    from slm_hf.exporting import export_model

    for number, (change, words) in enumerate((
        ({"position_embedding_type": "learned"}, "learned absolute positions"),
        ({"norm_type": "layernorm"}, "LayerNorm"),
        ({"mlp_type": "gelu", "bias": True}, "GELU feed-forward network .*and biases"),
    )):
        folder = tmp_path / f"model-{number}"
        shutil.copytree(final, folder)
        config = json.loads((folder / "config.json").read_text())
        config.update(change)
        (folder / "config.json").write_text(json.dumps(config))
        for target in ("llama", "gguf", "onnx"):
            with pytest.raises(SLMError, match=f"^this model cannot be exported to {target}: it uses .*{words}"):
                export_model(folder, target, tmp_path / "out")
            assert not (tmp_path / "out").exists()
    dropped = tmp_path / "model-dropped"  # saved by an earlier version with an option since dropped, switched on
    shutil.copytree(final, dropped)
    config = json.loads((dropped / "config.json").read_text())
    (dropped / "config.json").write_text(json.dumps({**config, "qk_norm": True}))
    with pytest.raises(SLMError, match=r"config.json: SLMConfig.qk_norm=True is an option slm_hf dropped"):
        export_model(dropped, "llama", tmp_path / "out")
    done = run_script("export.py", "--model", folder, "--to", "gguf", "--out", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: this model cannot be exported to gguf: it uses a GELU feed-forward network")


def test_export_script_writes_the_folder_and_refuses_to_overwrite(final, tmp_path, run_script):
    out = tmp_path / "llama"
    done = run_script("export.py", "--model", final, "--to", "llama", "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and (out / "model.safetensors").is_file()
    again = run_script("export.py", "--model", final, "--to", "llama", "--out", out)
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: {out} exists and is not empty; choose another --out or pass --overwrite")
    missing = run_script("export.py", "--model", tmp_path / "nothing", "--to", "llama", "--out", tmp_path / "x")
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr


# -------------------------------------------------------------------------------------------------------- gguf
@pytest.fixture(scope="module")
def gguf_files(final, tmp_path_factory):
    from slm_hf.exporting import export_model

    out = tmp_path_factory.mktemp("gguf")
    return {kind: export_model(final, "gguf", out, gguf_type=kind) for kind in ("f32", "f16", "q8_0")}


def _llama_cpp(path, **options):
    llama_cpp = import_or_unavailable("llama_cpp", "pip install 'slm-hf[export]'; make setup installs it")
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, **options)


def test_gguf_files_are_written_in_each_type(gguf_files):
    import gguf

    sizes = {kind: path.stat().st_size for kind, path in gguf_files.items()}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]
    for kind, path in gguf_files.items():
        reader = gguf.GGUFReader(str(path))
        types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
        assert types["blk.0.attn_norm.weight"] == "F32"
        assert types["blk.0.attn_q.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[kind]


def test_llama_cpp_tokenizes_like_the_llama_tokenizer(gguf_files, llama_dir):
    from transformers import AutoTokenizer

    llm = _llama_cpp(gguf_files["f32"], vocab_only=True)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    for text in STORIES + ["  Spaces,\ttabs\nand émoji 🙂 don't break it.", "1234 + 5678 = 6912"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == tokenizer(text)["input_ids"]
        ids = tokenizer(text)["input_ids"]
        assert llm.detokenize(ids[1:]).decode() == text


def _llama_cpp_greedy(llm, prompt):
    llm.reset()
    generated = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        generated.append(token)
        if len(generated) == GREEDY_TOKENS:
            break
    return generated


def _llama_cpp_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return llm.scores[: len(ids)].copy()


def test_llama_cpp_generates_our_greedy_tokens_at_f32(slm, gguf_files):
    model, tokenizer = slm
    prompt = _prompt_ids(tokenizer, "Once upon a time")
    llm = _llama_cpp(gguf_files["f32"], logits_all=True)
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0].numpy()
    assert abs(_llama_cpp_logits(llm, prompt) - ours).max() < 1e-3
    assert _llama_cpp_greedy(llm, prompt) == _forward_greedy(model, prompt)


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_llama_cpp_follows_our_logits_and_greedy_tokens_at_f16_and_q8_0(slm, fp32_reference, gguf_files, gguf_type):
    """f16: our greedy tokens exactly, on every prompt. q8_0: its logits within the bound, and our greedy tokens up
    to a near tie (on the barely trained test model, the first token after "Once upon a time" is one)."""
    model, tokenizer = slm
    windows, logits, greedy = fp32_reference
    llm = _llama_cpp(gguf_files[gguf_type], logits_all=True)
    _assert_logits_follow_ours(gguf_type, logits, [_llama_cpp_logits(llm, ids) for ids in windows])
    for text in GREEDY_PROMPTS:
        prompt = _prompt_ids(tokenizer, text)
        ours, theirs = greedy[text], _llama_cpp_greedy(llm, prompt)
        if gguf_type == "f16":
            assert theirs == ours, text
        else:
            _assert_greedy_follows_ours(gguf_type, model, prompt, ours, theirs)


# ------------------------------------------------------------------------------------------------ the int8 copy
def test_the_int8_copy_follows_our_fp32_logits_and_greedy_tokens(slm, fp32_reference, final):
    """`load_pretrained(..., int8=True)` (generate.py --int8, the app's --int8) against the fp32 model it came from:
    logits within the bound over the validation windows, and generate()'s greedy tokens ours up to a near tie."""
    from slm_hf.generation import load_pretrained

    model, tokenizer = slm
    windows, logits, _ = fp32_reference
    int8, _ = load_pretrained(final, device="cpu", int8=True)
    with torch.no_grad():
        theirs = [int8(torch.tensor([ids])).logits[0].float().numpy() for ids in windows]
    _assert_logits_follow_ours("int8", logits, theirs)
    for text in GREEDY_PROMPTS:
        prompt = _prompt_ids(tokenizer, text)
        _assert_greedy_follows_ours("int8", model, prompt, _greedy(model, prompt), _greedy(int8, prompt))


# -------------------------------------------------------------------------------------------------------- onnx
@pytest.fixture(scope="module")
def onnx_dir(final, tmp_path_factory):
    from slm_hf.exporting import export_model

    return export_model(final, "onnx", tmp_path_factory.mktemp("onnx") / "onnx")


def test_onnxruntime_generates_our_greedy_tokens_with_its_kv_cache(slm, onnx_dir):
    import numpy as np
    import onnxruntime

    from slm_hf.exporting.to_onnx import ONNX_FILE, onnx_greedy

    model, tokenizer = slm
    config = json.loads((onnx_dir / "config.json").read_text())
    session = onnxruntime.InferenceSession(str(onnx_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    prompt = _prompt_ids(tokenizer, STORIES[0])
    empty = np.zeros((1, config["num_key_value_heads"], 0, config["head_dim"]), np.float32)
    feeds = {"input_ids": np.array([prompt]), "attention_mask": np.ones((1, len(prompt)), np.int64),
             "position_ids": np.arange(len(prompt))[None]}
    feeds.update({name.name: empty for name in session.get_inputs()[3:]})
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0].numpy()
    assert abs(session.run(["logits"], feeds)[0][0] - ours).max() < 1e-4
    prompt = _prompt_ids(tokenizer, "Once upon a time")
    assert onnx_greedy(onnx_dir / ONNX_FILE, config, prompt, GREEDY_TOKENS, session=session) == _forward_greedy(
        model, prompt)
