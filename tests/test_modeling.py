"""The model contract: SLMForCausalLM behaves as a native transformers causal LM (real tiny models, no mocks)."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from must_run import needs_a_compiler
from slm_hf import SLMConfig, SLMForCausalLM, SLMModel
from slm_hf.tokenization import save_tokenizer, train_tokenizer
from share_fixtures import BLOCK_SLM_HF

POSITIONS = ["rope", "learned"]
# A tiny folder saved at commit 23ca221 (see its README).
SAVED_AT_23CA221 = Path(__file__).parent / "fixtures" / "saved_at_23ca221"


def make_model(seed: int = 0, **overrides) -> SLMForCausalLM:
    torch.manual_seed(seed)
    return SLMForCausalLM(SLMConfig.from_preset("tiny", **overrides)).eval()


def greedy(model, input_ids, **kwargs) -> torch.Tensor:
    # eos_token_id=None: every row generates exactly max_new_tokens, so outputs compare position by position.
    return model.generate(input_ids, max_new_tokens=24, do_sample=False, eos_token_id=None, **kwargs)


def random_ids(*shape: int, seed: int = 1, vocab_size: int = 512) -> torch.Tensor:
    return torch.randint(1, vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def left_pad(rows: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = row
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


@pytest.fixture(scope="module")
def tokenizer(sample_stories):
    return train_tokenizer(sample_stories["train"][:300], vocab_size=512, show_progress=False)


# ------------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("position", POSITIONS)
def test_cached_and_uncached_greedy_generation_agree(position):
    model = make_model(position_embedding_type=position)
    prompt = random_ids(2, 9)
    cached = greedy(model, prompt, use_cache=True)
    assert cached.shape == (2, 9 + 24)
    assert torch.equal(cached, greedy(model, prompt, use_cache=False))


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("position", POSITIONS)
def test_left_padded_batch_row_matches_the_row_alone(position, cache_implementation):
    model = make_model(position_embedding_type=position)
    rows = [random_ids(11, seed=2), random_ids(4, seed=3), random_ids(7, seed=4)]
    input_ids, attention_mask = left_pad(rows)
    batch = greedy(
        model, input_ids, attention_mask=attention_mask, pad_token_id=0, cache_implementation=cache_implementation
    )
    for row, out in zip(rows, batch):
        alone = greedy(model, row[None], cache_implementation=cache_implementation)[0]
        assert torch.equal(out[-len(alone) :], alone)


def test_beam_search_scores_match_a_recomputation_of_the_beams():
    """Beam search reorders the cache between steps: a wrong reorder would score beams with the wrong past."""
    model = make_model()
    prompt = random_ids(1, 6)
    out = model.generate(
        prompt, num_beams=4, num_return_sequences=4, max_new_tokens=10, min_new_tokens=10, do_sample=False,
        length_penalty=0.0, eos_token_id=None, output_scores=True, return_dict_in_generate=True,
    )
    assert out.sequences.shape == (4, 16) and len({tuple(s.tolist()) for s in out.sequences}) == 4
    with torch.no_grad():
        log_probs = model(out.sequences).logits.log_softmax(-1)[:, 5:-1]
    recomputed = log_probs.gather(-1, out.sequences[:, 6:, None]).sum((1, 2))
    torch.testing.assert_close(out.sequences_scores, recomputed, atol=1e-4, rtol=1e-4)
    assert torch.all(out.sequences_scores[:-1] >= out.sequences_scores[1:])  # best first
    uncached = model.generate(
        prompt, num_beams=4, max_new_tokens=10, min_new_tokens=10, do_sample=False, length_penalty=0.0,
        eos_token_id=None, use_cache=False,
    )
    assert torch.equal(uncached[0], out.sequences[0])


def test_seeded_sampling_is_reproducible():
    model = make_model()
    prompt = random_ids(2, 5)

    def sample(seed, **kwargs):
        torch.manual_seed(seed)
        return model.generate(prompt, do_sample=True, top_k=50, temperature=1.0, max_new_tokens=20, **kwargs)

    assert torch.equal(sample(7), sample(7))
    assert torch.equal(sample(7), sample(7, use_cache=False))
    assert not torch.equal(sample(7), sample(8))


def test_grouped_query_attention():
    for kv_heads in (4, 2, 1):  # multi-head, grouped, multi-query
        model = make_model(num_attention_heads=4, num_key_value_heads=kv_heads)
        head_dim = model.config.head_dim
        assert model.model.layers[0].self_attn.qkv_proj.out_features == (4 + 2 * kv_heads) * head_dim
        prompt = random_ids(1, 8)
        assert torch.equal(greedy(model, prompt), greedy(model, prompt, use_cache=False))
        model.config._attn_implementation = "eager"
        eager = model(prompt).logits
        model.config._attn_implementation = "sdpa"
        torch.testing.assert_close(model(prompt).logits, eager, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize("position", POSITIONS)
def test_eager_and_sdpa_attention_agree(position):
    model = make_model(position_embedding_type=position)
    assert model.config._attn_implementation == "sdpa"  # the default
    input_ids, attention_mask = left_pad([random_ids(10, seed=5), random_ids(6, seed=6)])
    with torch.no_grad():
        sdpa = model(input_ids, attention_mask=attention_mask).logits
        sdpa_plain = model(input_ids).logits
        model.config._attn_implementation = "eager"
        eager = model(input_ids, attention_mask=attention_mask).logits
        eager_plain = model(input_ids).logits
    real = attention_mask.bool()  # padded positions attend to nothing: their outputs are meaningless
    torch.testing.assert_close(sdpa[real], eager[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa_plain, eager_plain, atol=1e-5, rtol=1e-5)


def test_rotary_positions_are_relative_also_beyond_the_trained_context():
    """Rotary attention depends only on distances: shifting every position leaves the logits unchanged, also past
    max_position_embeddings."""
    model = make_model(max_position_embeddings=16)
    input_ids = random_ids(2, 12)
    positions = torch.arange(12)[None].expand(2, -1)
    with torch.no_grad():
        reference = model(input_ids, position_ids=positions).logits
        for shift in (5, 300):
            shifted = model(input_ids, position_ids=positions + shift).logits
            torch.testing.assert_close(shifted, reference, atol=2e-5, rtol=1e-4)
    prompt = random_ids(1, 10)
    assert torch.equal(greedy(model, prompt), greedy(model, prompt, use_cache=False))  # 34 positions > 16


def test_rotary_angles_of_a_bf16_copy_are_computed_in_fp32():
    """Only the final cos/sin may be rounded to bf16: frequencies rounded to bf16 would turn late positions by tenths
    of a radian."""
    model = make_model(hidden_size=96, num_attention_heads=2, num_key_value_heads=1).to(torch.bfloat16)
    positions = torch.arange(256)[None]
    cos, sin = model.model.rotary_emb(positions, torch.bfloat16)
    assert cos.dtype == torch.bfloat16 and cos.shape == (1, 256, 1, 48)
    angles = positions[0, :, None].double() / 10000.0 ** (torch.arange(0, 48, 2, dtype=torch.float64) / 48)
    assert (cos[0, :, 0].double() - torch.cat((angles.cos(), angles.cos()), -1)).abs().max() < 0.01
    assert (sin[0, :, 0].double() - torch.cat((-angles.sin(), angles.sin()), -1)).abs().max() < 0.01


def test_logits_to_keep():
    model = make_model()
    input_ids = random_ids(2, 10)
    with torch.no_grad():
        full = model(input_ids).logits
        assert full.shape == (2, 10, 512)
        torch.testing.assert_close(model(input_ids, logits_to_keep=1).logits, full[:, -1:])
        torch.testing.assert_close(model(input_ids, logits_to_keep=3).logits, full[:, -3:])
        torch.testing.assert_close(model(input_ids, logits_to_keep=torch.tensor([0, 4])).logits, full[:, [0, 4]])


def test_initial_loss_is_close_to_log_vocab():
    for preset in ("tiny", "small"):
        torch.manual_seed(0)
        model = SLMForCausalLM(SLMConfig.from_preset(preset))
        input_ids = random_ids(4, 64, vocab_size=model.config.vocab_size)
        with torch.no_grad():
            loss = model(input_ids, labels=input_ids).loss.item()
        assert abs(loss - math.log(model.config.vocab_size)) < 0.1, (preset, loss)


def test_labels_and_shift_labels_give_the_same_loss():
    """`labels` are shifted inside; `shift_labels` (the training loop's y windows) are already shifted."""
    model = make_model()
    tokens = random_ids(3, 17)
    with torch.no_grad():
        from_labels = model(tokens, labels=tokens).loss
        from_shifted = model(input_ids=tokens[:, :-1], shift_labels=tokens[:, 1:], use_cache=False).loss
    torch.testing.assert_close(from_labels, from_shifted)


@pytest.mark.parametrize("dropout, attention_dropout", [(0.2, None), (0.2, 0.0), (0.0, 0.2)])
def test_training_forward_builds_no_cache_and_dropout_is_active_only_in_training(dropout, attention_dropout):
    model = make_model(dropout=dropout, attention_dropout=attention_dropout).train()
    tokens = random_ids(2, 12)
    first, second = model(tokens), model(tokens)
    assert first.cache is None
    assert not torch.allclose(first.logits, second.logits)  # each of the residual and the attention dropout draws
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, model(tokens).logits)
        assert model(tokens).cache is not None


@pytest.mark.parametrize("position", POSITIONS)
def test_activation_checkpointing_gives_the_same_gradients(position):
    model = make_model(position_embedding_type=position).train()
    tokens = random_ids(2, 16)

    def gradients():
        model.zero_grad()
        model(tokens, labels=tokens).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.model.gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_its_gradient_equal_pytorch_cross_entropy_in_fp32(dtype):
    """The model's chunked loss against `F.cross_entropy` of the fp32 logits, ignored (-100) targets included, over
    several chunks; the gradient comes back in the logits' own dtype."""
    from slm_hf.loss_slm import causal_lm_loss

    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 50, 97)).to(dtype).requires_grad_()
    targets = torch.randint(0, 97, (3, 50))
    targets[0, :7] = -100
    loss = causal_lm_loss(logits, shift_labels=targets, chunk=16)
    loss.backward()
    expected_logits = logits.detach().float().requires_grad_()
    expected = torch.nn.functional.cross_entropy(expected_logits.view(-1, 97), targets.view(-1))
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert logits.grad.dtype == dtype
    tolerance = 1e-7 if dtype == torch.float32 else 1e-2 * expected_logits.grad.abs().max().item()
    torch.testing.assert_close(logits.grad.float(), expected_logits.grad, atol=tolerance, rtol=1e-2)
    assert logits.grad[0, :7].abs().sum() == 0  # ignored positions get no gradient


def test_compiled_loss_equals_the_chunked_one():
    """Under torch.compile (training's compile=true) the loss is plain fp32 cross-entropy for the compiler to fuse."""
    needs_a_compiler()
    from slm_hf.loss_slm import causal_lm_loss

    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 40, 97)).requires_grad_()
    labels = torch.randint(0, 97, (2, 40))
    labels[1, 30:] = -100
    losses, gradients = [], []
    for loss_function in (causal_lm_loss, torch.compile(causal_lm_loss, dynamic=False)):
        logits.grad = None
        loss = loss_function(logits=logits, labels=labels, vocab_size=97)
        loss.backward()
        losses.append(loss.detach())
        gradients.append(logits.grad.clone())
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(gradients[1], gradients[0])


def test_bf16_eager_attention_stays_close_to_fp32_sdpa():
    """On a CPU the training loop runs bf16 copies with eager attention (plain bf16 matrix products)."""
    torch.manual_seed(0)
    model = SLMForCausalLM(SLMConfig.from_preset("small", num_hidden_layers=2)).eval()
    input_ids = random_ids(2, 64, vocab_size=4096)
    with torch.no_grad():
        fp32 = model(input_ids, labels=input_ids)
        model.to(torch.bfloat16).set_attn_implementation("eager")
        bf16 = model(input_ids, labels=input_ids)
    assert abs(bf16.loss.item() - fp32.loss.item()) < 0.01
    agreement = (bf16.logits.argmax(-1) == fp32.logits.argmax(-1)).float().mean().item()
    assert agreement > 0.9, agreement


def test_bf16_copy_stays_close_to_fp32():
    torch.manual_seed(0)
    model = SLMForCausalLM(SLMConfig.from_preset("small", num_hidden_layers=2)).eval()
    input_ids = random_ids(2, 32, vocab_size=4096)
    with torch.no_grad():
        fp32 = model(input_ids).logits
        bf16 = model.to(torch.bfloat16)(input_ids).logits
    assert bf16.dtype == torch.bfloat16
    error = (bf16.float() - fp32).abs().max().item()
    assert error < 0.1 * fp32.std().item(), error  # bf16 keeps ~3 significant digits: measured ~0.04 std
    agreement = (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item()
    assert agreement > 0.9, agreement


def test_bf16_copy_generates_with_dynamic_and_static_caches():
    model = make_model(seed=3).to(torch.bfloat16)
    input_ids, attention_mask = left_pad([random_ids(9, seed=7), random_ids(5, seed=8)])
    dynamic = greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0)
    static = greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0, cache_implementation="static")
    assert dynamic.shape == (2, 9 + 24)
    assert torch.equal(dynamic, static)


@pytest.mark.parametrize(
    "overrides",
    [{}, dict(hidden_size=36, num_attention_heads=6, num_key_value_heads=3, intermediate_size=50)],
    ids=["cpu-kernel", "widths-not-multiple-of-16"],
)
def test_int8_inference_copy_generates_like_the_model_and_cannot_be_saved(tmp_path, overrides):
    model = make_model(seed=4, **overrides)
    input_ids, attention_mask = left_pad([random_ids(10, seed=9), random_ids(6, seed=10)])
    with torch.no_grad():
        reference = model(input_ids, attention_mask=attention_mask).logits
        model.quantize_int8()
        logits = model(input_ids, attention_mask=attention_mask).logits.float()
    assert model.model.layers[0].self_attn.qkv_proj.weight_int8.dtype == torch.int8
    real = attention_mask.bool()
    assert (logits[real] - reference[real]).abs().max() < 0.1 * reference.std()
    assert (logits[real].argmax(-1) == reference[real].argmax(-1)).float().mean() > 0.9
    batch = greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0)
    assert torch.equal(batch, greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0, use_cache=False))
    alone = greedy(model, input_ids[1:, 4:])
    assert torch.equal(batch[1, 4:], alone[0])
    with pytest.raises(ValueError, match="quantize_int8"):
        model.save_pretrained(tmp_path)


def test_compiled_static_cache_decoding_of_the_int8_copy_matches_eager():
    """The fastest CPU recipe (BENCHMARKS.md): int8 weights, static cache, decoding step compiled by generate()."""
    from transformers import CompileConfig

    model = make_model(seed=5).quantize_int8()
    input_ids, attention_mask = left_pad([random_ids(7, seed=11), random_ids(4, seed=12)])
    eager = greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0)
    compile_config = CompileConfig(fullgraph=True, dynamic=False)  # fullgraph: a graph break fails the test
    compile_config._compile_all_devices = True
    compiled = greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0,
                      cache_implementation="static", compile_config=compile_config)
    assert torch.equal(compiled, eager)


# ------------------------------------------------------------------------------------------------ bad input
def test_too_long_input_with_learned_positions_is_a_value_error():
    model = make_model(position_embedding_type="learned", max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"17 tokens is longer than max_position_embeddings \(16\)"):
        model(random_ids(1, 17))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(random_ids(1, 10), max_new_tokens=10, do_sample=False, eos_token_id=None)
    model(random_ids(1, 16))  # exactly the table's length is fine


@pytest.mark.parametrize("bad_id", [512, 10_000, -1])
def test_out_of_vocabulary_ids_are_a_value_error(bad_id):
    model = make_model()
    input_ids = random_ids(1, 6)
    input_ids[0, 3] = bad_id
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 512\)"):
        model(input_ids)
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 512\)"):
        model.generate(input_ids, max_new_tokens=2)


# -------------------------------------------------------------------------------------------- save and load
def test_auto_classes_are_registered():
    config = SLMConfig.from_preset("tiny")
    assert type(AutoModelForCausalLM.from_config(config)) is SLMForCausalLM
    assert type(AutoModel.from_config(config)) is SLMModel


def test_seed_preset_has_the_reference_parameter_count():
    with torch.device("meta"):
        model = SLMForCausalLM(SLMConfig.from_preset("seed"))
    assert sum(p.numel() for p in model.parameters()) == 29_995_392  # tied: the head shares the embeddings


@pytest.mark.parametrize("position", POSITIONS)
def test_save_and_load_round_trip(tmp_path, position):
    model = make_model(position_embedding_type=position, norm_type="layernorm", mlp_type="gelu", bias=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_slm.py", "modeling_slm.py", "loss_slm.py",
            "int8_slm.py"} <= files  # the architecture and its siblings: the loss and the int8 copy
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_slm.SLMForCausalLM"

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SLMForCausalLM
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, model(input_ids).logits)


# ------------------------------------------------------------------------------------------ architecture options
def test_an_untied_head_trains_generates_and_round_trips(tmp_path):
    model = make_model(tie_word_embeddings=False).train()
    input_ids = random_ids(2, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids, labels=input_ids).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(math.isfinite(value) for value in losses) and losses[-1] < losses[0]
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in model.parameters())

    model.eval()
    prompt = random_ids(2, 9)
    assert torch.equal(greedy(model, prompt, use_cache=True), greedy(model, prompt, use_cache=False))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.tie_word_embeddings is False and loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(loaded(input_ids).logits, model(input_ids).logits)


@pytest.mark.parametrize("option, value", [("qk_norm", True), ("logit_softcap", 30.0), ("zero_init_residual", True),
                                           ("mlp_type", "relu2")])
def test_a_folder_saved_with_a_dropped_option_switched_on_is_refused_in_one_line(tmp_path, option, value):
    shutil.copytree(SAVED_AT_23CA221, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, option: value}))
    with pytest.raises(ValueError) as error:
        AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert str(error.value) == (
        f"SLMConfig.{option}={value!r} is an option slm_hf dropped (measured, it did not pay: BENCHMARKS.md, "
        f"History); a folder saved with it loads with trust_remote_code=True, which runs the code saved with the folder"
    )


def test_a_folder_saved_by_an_earlier_version_loads_and_computes_the_same_logits():
    """The fixture was saved at commit 23ca221 (its README): the loss and the int8 copy inside modeling_slm.py, the
    dropped options (QK-norm, soft-cap, zero-init) named in its config.json at their defaults."""
    expected = json.loads((SAVED_AT_23CA221 / "expected_logits.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(SAVED_AT_23CA221).eval()
    assert type(loaded) is SLMForCausalLM
    assert not any(hasattr(loaded.config, name) for name in ("qk_norm", "logit_softcap", "zero_init_residual"))
    input_ids = torch.tensor(expected["input_ids"])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids).logits, torch.tensor(expected["logits"]), atol=1e-5, rtol=0)
    assert greedy(loaded, input_ids).shape == (1, 6 + 24)
    # Built now from the fixture's seed, the model starts from the very weights it was saved with (they were never
    # trained): the default initialisation, its order and its use of the random generator, are unchanged.
    torch.manual_seed(0)
    fresh = SLMForCausalLM(loaded.config).state_dict()
    assert all(torch.equal(fresh[name], weight) for name, weight in loaded.state_dict().items())


REMOTE_CODE_CHECK = """
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline
try:
    import slm_hf
    raise SystemExit("slm_hf is importable: the test would prove nothing")
except ModuleNotFoundError:
    pass

folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert model.lm_head.weight is model.model.embed_tokens.weight
ids = torch.load(sys.argv[2])
assert torch.equal(model(ids).logits, torch.load(sys.argv[3]))
backbone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()  # as natively: the backbone
assert type(backbone).__name__ == "SLMModel", type(backbone)
assert torch.equal(backbone(ids).last_hidden_state, model.model(ids).last_hidden_state)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # it reads the config
prompts = tokenizer(["Once upon a time", "Lily"], return_tensors="pt", padding=True)
out = model.generate(**prompts, max_new_tokens=8, do_sample=False)
assert out.shape == (2, prompts.input_ids.shape[1] + 8), out.shape
generator = pipeline("text-generation", model=folder, trust_remote_code=True)
texts = generator(["Once upon a time", "Lily"], max_new_tokens=8, do_sample=False, batch_size=2)
assert all(text[0]["generated_text"].startswith(p) for text, p in zip(texts, ["Once upon a time", "Lily"])), texts
model.train()  # the chunked loss ships in the folder (loss_slm.py): the model's loss_function, with gradients
loss = model(ids, labels=ids).loss
loss.backward()
assert model.loss_function.__module__.endswith(".loss_slm"), model.loss_function
assert torch.allclose(loss, torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()))
int8 = model.eval().quantize_int8()  # the int8 copy ships in the folder too (int8_slm.py)
assert type(int8.lm_head).__module__.endswith(".int8_slm"), type(int8.lm_head)
out = int8.generate(**prompts, max_new_tokens=8, do_sample=False)
assert out.shape == (2, prompts.input_ids.shape[1] + 8), out.shape
print("OK", type(model).__module__, repr(texts[0][0]["generated_text"]))
"""


def test_saved_folder_loads_with_remote_code_where_slm_hf_is_not_importable(tmp_path, tokenizer):
    folder = tmp_path / "model"
    model = make_model()
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    input_ids = random_ids(2, 9)
    with torch.no_grad():
        torch.save(input_ids, tmp_path / "ids.pt")
        torch.save(model(input_ids).logits, tmp_path / "logits.pt")

    # The environment is kept (it may hold the path to transformers): the import blocker is what keeps slm_hf out.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "TOKENIZERS_PARALLELISM": "false"}
    script = BLOCK_SLM_HF + REMOTE_CODE_CHECK
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("OK transformers_modules."), result.stdout


def test_past_key_values_is_the_deprecated_alias_of_cache_as_for_llama():
    """The idiom of hand-written decoding loops before transformers 5: `model(ids, past_key_values=cache)`."""
    model = make_model().eval()
    ids = random_ids(1, 12)
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        with_cache = model(ids[:, -1:], cache=model(ids[:, :-1], use_cache=True).cache).logits[:, -1]
        with pytest.warns(FutureWarning, match="past_key_values"):
            with_alias = model(ids[:, -1:], past_key_values=model(ids[:, :-1], use_cache=True).cache).logits[:, -1]
            backbone = model.model(ids[:, -1:], past_key_values=model.model(ids[:, :-1], use_cache=True).cache)
    assert torch.equal(with_alias, with_cache) and torch.allclose(with_alias, full, atol=1e-5)
    assert backbone.last_hidden_state.shape == (1, 1, model.config.hidden_size)


@pytest.mark.parametrize(
    "keyword, value",
    [("output_attentions", True), ("output_hidden_states", True), ("head_mask", None), ("cache_position", None)],
)
def test_a_keyword_that_would_be_ignored_is_refused(keyword, value):
    model = make_model().eval()
    with pytest.raises(TypeError, match=f"'{keyword}'"):
        model(random_ids(1, 5), **{keyword: value})


def test_keywords_that_change_nothing_are_accepted():
    model = make_model().eval()
    ids = random_ids(1, 5)
    with torch.no_grad():
        plain = model(ids).logits
        same = model(ids, return_dict=True, output_attentions=False, output_hidden_states=False,
                     token_type_ids=torch.zeros_like(ids)).logits
    assert torch.equal(plain, same)
    with pytest.raises(TypeError, match="token_type_ids"):
        model(ids, token_type_ids=torch.ones_like(ids))


def test_pipeline_runs_in_process(tokenizer):
    from transformers import pipeline

    generator = pipeline("text-generation", model=make_model(), tokenizer=tokenizer)
    texts = generator(["Once upon a time", "Tom"], max_new_tokens=5, do_sample=False, batch_size=2,
                      return_full_text=False)
    assert len(texts) == 2 and all(isinstance(t[0]["generated_text"], str) for t in texts)


# ------------------------------------------------------------------------------------------- accelerator
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("position", POSITIONS)
def test_cuda_generation_contract(position):
    model = make_model(position_embedding_type=position).cuda()
    rows = [random_ids(11, seed=2).cuda(), random_ids(4, seed=3).cuda()]
    input_ids, attention_mask = (t.cuda() for t in left_pad([row.cpu() for row in rows]))
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)
        batch = greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0)
        assert torch.equal(batch, greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0,
                                         use_cache=False))
        if dtype == torch.float32:  # bf16 rounding differs between batch shapes
            for row, out in zip(rows, batch):
                assert torch.equal(out[-len(row) - 24 :], greedy(model, row[None])[0])
    # generate() compiles the decoding step by itself on a GPU when the cache is static
    model.float()
    eager = greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0)
    static = greedy(model, input_ids, attention_mask=attention_mask, pad_token_id=0, cache_implementation="static")
    assert torch.equal(static, eager)


@cuda
def test_cuda_out_of_vocabulary_prompt_is_a_value_error():
    model = make_model().cuda()
    input_ids = random_ids(1, 6).cuda()
    input_ids[0, 2] = 512
    with pytest.raises(ValueError, match=r"Token ids must be in \[0, 512\)"):
        model.generate(input_ids, max_new_tokens=2)


@cuda
def test_cuda_int8_copy_dequantizes_on_the_fly():
    model = make_model(seed=4).cuda()
    input_ids = random_ids(2, 10).cuda()
    with torch.no_grad():
        reference = model(input_ids).logits
        logits = model.quantize_int8()(input_ids).logits
    assert (logits - reference).abs().max() < 0.1 * reference.std()
    assert greedy(model, input_ids).shape == (2, 34)
