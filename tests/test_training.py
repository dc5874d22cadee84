"""Training: the recipe, the loop end to end on the tiny preset through scripts/train.py as a subprocess, its model
folders, precisions and compilation. Interrupting and resuming: test_resume.py (the shared runs: training_runs.py).
"""

import importlib.util
import json
import math
import signal
import types

import pytest
import torch

from must_run import needs_a_compiler
from slm_hf.errors import SLMError
from slm_hf.training import (
    BatchShape,
    LossScaleWatch,
    Schedule,
    TrainingState,
    list_checkpoints,
)
from slm_hf.training.config import TrainingConfig
from training_runs import (  # noqa: F401 (data_dir, reference: fixtures)
    ROOT,
    RUN,
    TINY,
    TRAIN,
    data_dir,
    has_learned,
    logged_steps,
    reference,
    run_train,
    start_train,
    step_losses,
    train_command,
    wait_for,
)

HUB_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "configuration_slm.py",
    "modeling_slm.py",
    "tokenizer.json",
    "training_results.json",
    "train_config.yaml",
    "README.md",
)

# --------------------------------------------------------------------------------------------- the recipe
def test_schedule_expresses_the_reference_warmup_and_cosine():
    """The seed preset's schedule, per update, equals the reference's per-micro-step LinearLR + CosineAnnealingLR
    sampled every 32 micro-steps, including its quirk of a minimum above the peak (the rate rises)."""
    seed = TrainingConfig.load(ROOT / "configs" / "seed.yaml")
    schedule = Schedule(seed.learning_rate, seed.min_lr, seed.warmup_steps, seed.warmup_start_factor)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-4)
    reference = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=1000),  # start_factor 1/3
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=19000, eta_min=5e-4),
        ],
        milestones=[1000],
    )
    micro_steps_per_update = seed.gradient_accumulation_steps
    for micro_step in range(20000 + 1):
        if micro_step % micro_steps_per_update == 0:
            update = micro_step // micro_steps_per_update
            assert math.isclose(schedule.lr(update, seed.max_steps), optimizer.param_groups[0]["lr"], rel_tol=1e-4)
        optimizer.step()
        reference.step()
    assert schedule.lr(seed.max_steps, seed.max_steps) == pytest.approx(5e-4)
    assert schedule.lr(seed.warmup_steps, seed.max_steps) == pytest.approx(1e-4)


def test_warmup_stable_decay_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    schedule = Schedule(1e-3, 1e-4, warmup_steps=10, shape="wsd", decay_fraction=0.2)
    assert schedule.lr(5, 100) == pytest.approx(5e-4)
    assert [schedule.lr(n, 100) for n in (10, 50, 80)] == pytest.approx([1e-3] * 3)
    assert schedule.lr(90, 100) == pytest.approx(5.5e-4) and schedule.lr(100, 100) == pytest.approx(1e-4)
    # a time budget refitted max_steps to 200: the stable phase goes on, the decay moves
    assert schedule.lr(100, 200) == pytest.approx(1e-3) and schedule.lr(200, 200) == pytest.approx(1e-4)


def test_a_state_saved_before_the_batch_shape_was_recorded_gets_it_from_its_counts_and_config():
    saved = {"step": 20, "micro_batches_per_step": 4, "num_processes": 2, "precision": "no", "best_val_loss": None}
    state = TrainingState.from_json(saved, micro_batch_size=8, block_size=64)
    assert state.batch == BatchShape(micro_batch_size=8, micro_batches_per_step=4, processes=2, block_size=64)
    assert state.batch.accumulation == 2 and state.batch.tokens_per_step == 4 * 8 * 64
    assert state.best_val_loss == math.inf and TrainingState.from_json(state.to_json(), 1, 1) == state


@pytest.mark.parametrize("override", ["lr_schedule=linear", "decay_fraction=0", "report_to=mlflow"])
def test_recipe_choices_are_checked_on_construction(override):
    with pytest.raises(SLMError, match=override.split("=")[0]):
        TrainingConfig.load(None, [override])


def test_a_config_saved_by_an_earlier_version_loads_unless_it_asks_for_a_dropped_option(tmp_path):
    """Muon and story-start windows were measured and dropped: a config that names them as training goes on anyway
    (every earlier train_config.yaml names all four) loads; one that asks for them is refused in one line."""
    earlier = TrainingConfig.load(TINY).to_dict() | {"optimizer": "adamw", "window_starts": "anywhere",
                                                     "muon_momentum": 0.95, "muon_lr_scale": 1.0}
    assert TrainingConfig.from_dict(earlier) == TrainingConfig.load(TINY)
    for key, value in [("optimizer", "muon"), ("window_starts", "stories"), ("muon_lr_scale", 3.0)]:
        with pytest.raises(SLMError, match=f"^{key}: .* is no longer supported .* remove {key} from the config"):
            TrainingConfig.from_dict(earlier | {key: value})


def test_config_overrides_and_unknown_keys():
    config = TrainingConfig.load(TINY, ["learning_rate=1e-3", "model.dropout=0.1", "betas=[0.9, 0.99]"])
    assert config.learning_rate == 1e-3 and config.model == {"preset": "tiny", "dropout": 0.1}
    assert config.betas == (0.9, 0.99)
    for override, message in [
        ("lerning_rate=1e-3", "did you mean 'learning_rate'"),
        ("model.hiden_size=64", "did you mean 'model.hidden_size'"),
        ("hidden_size=64", "did you mean 'model.hidden_size'"),
        ("batch_size=1.5", "batch_size must be int"),
        ("mixed_precision=fp32", "mixed_precision must be one of"),
    ]:
        with pytest.raises(SLMError, match=message):
            TrainingConfig.load(TINY, [override])


def test_a_run_at_a_hundredth_of_the_learning_rate_has_not_learned(data_dir, tmp_path):
    """The other side of `has_learned`: the runs below pass it at the recipe's rate; the same 50 updates at 1/100 of
    it must fail it (or else a "learns" check cannot catch a rate bug)."""
    recipe = TrainingConfig.load(TINY)
    slow = [*RUN, "max_steps=50", f"learning_rate={recipe.learning_rate / 100}",
            f"min_lr={recipe.min_lr / 100}"]
    run_train(data_dir, tmp_path / "slow", *slow)
    val = step_losses(tmp_path / "slow")[1]
    assert not has_learned(val[50]), val


# ------------------------------------------------------------------------------------------- the outputs
def test_final_folder_is_hub_ready_loads_and_generates(reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    train, val = step_losses(reference)
    assert sorted(train) == list(range(1, 201)) and sorted(val) == [50, 100, 150, 200]
    assert has_learned(val[50]) and val[200] < val[50], val
    for name in ("final", "best"):
        folder = reference / name
        for file in HUB_FILES:
            assert (folder / file).is_file(), f"{name}/{file}"
    assert (reference / "final" / "loss_curve.png").is_file() and (reference / "loss_curve.png").is_file()
    results = json.loads((reference / "final" / "training_results.json").read_text())
    assert results["step"] == 200 and results["tokens"] == 200 * 2 * 8 * 64 and results["num_processes"] == 1
    shape = {"micro_batch_size": 8, "micro_batches_per_step": 2, "processes": 1, "block_size": 64,
             "tokens_per_step": 2 * 8 * 64}
    assert results["batch"] == shape
    assert json.loads((list_checkpoints(reference)[-1] / "training_state.json").read_text())["batch"] == shape
    assert results["val/loss"] == pytest.approx(val[200])
    bits_per_byte = val[200] / math.log(2) / results["data"]["val_bytes_per_token"]
    assert results["val/bits_per_byte"] == pytest.approx(bits_per_byte)
    assert [entry["step"] for entry in results["history"]] == [50, 100, 150, 200]
    assert results["config"]["gradient_accumulation_steps"] == 2 and results["precision"] == "fp32"

    model = AutoModelForCausalLM.from_pretrained(reference / "final")
    tokenizer = AutoTokenizer.from_pretrained(reference / "final")
    assert model.generation_config.do_sample and model.generation_config.eos_token_id == tokenizer.eos_token_id
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    story = generator("Once upon a time", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    assert story.startswith("Once upon a time") and len(story) > len("Once upon a time")


def test_time_budget_fits_the_schedule_then_overwrite_replaces_the_run(data_dir, tmp_path):
    out = tmp_path / "budget"
    budget = ["max_minutes=0.1", "max_steps=100000", "warmup_steps=2", "eval_interval=100000", "save_interval=100000"]
    result = run_train(data_dir, out, *budget)
    results = json.loads((out / "final" / "training_results.json").read_text())
    assert "time budget 0.1 min: training to step" in result.stdout
    fitted = int(result.stdout.split("training to step ")[1].split()[0])
    assert 10 < results["step"] <= fitted < 100000
    train, val = step_losses(out)
    assert sorted(val) == [10, results["step"]]  # the speed check at step 10 and the end
    lr = [json.loads(line).get("lr") for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The cosine ran to (or, where a busy machine slowed down and the budget cut the run short, near) min_lr
    # 3e-4 from the peak 3e-3: without the fitting, 100,000 steps would have kept it at the peak.
    assert [x for x in lr if x is not None][-1] < 3e-4 + 0.25 * (3e-3 - 3e-4)

    run_train(data_dir, out, "--overwrite", "max_steps=20")  # the earlier run's outputs go, a new run comes
    assert sorted(step_losses(out)[0]) == list(range(1, 21))
    assert [path.name for path in list_checkpoints(out)] == ["step_0000010", "step_0000020"]
    assert json.loads((out / "final" / "training_results.json").read_text())["step"] == 20


def test_bf16_with_master_weights_resumes_exactly_and_exports_fp32(data_dir, tmp_path):
    """bf16 on a CPU trains a bf16 copy and keeps fp32 master weights: both are in the checkpoints."""
    bf16 = [*RUN, "max_steps=60", "--mixed-precision", "bf16"]
    reference = tmp_path / "bf16"
    assert "fp32 master weights" in run_train(data_dir, reference, *bf16).stdout
    out = tmp_path / "bf16-stopped"
    process = start_train(data_dir, out, *bf16)
    wait_for(lambda: logged_steps(out) >= 25, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_train(data_dir, out, *bf16, "--resume", "auto")
    train, val = step_losses(out)
    assert (train, val) == step_losses(reference) and has_learned(val[50]), val

    from safetensors.torch import load_file

    weights = load_file(out / "final" / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}
    # The exported fp32 weights are not bf16 values: the master weights kept what bf16 would have rounded away.
    embedding = next(tensor for name, tensor in weights.items() if "embed_tokens" in name)
    assert not torch.equal(embedding, embedding.bfloat16().float())


def test_loss_scale_watch_counts_the_updates_a_fused_optimizer_skipped():
    """fp16: a fused AdamW skips an overflowed update inside its own kernel (Accelerate then reports it as done);
    the loss scale, halved, tells."""
    parameter = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.AdamW([parameter], lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    watch = LossScaleWatch(types.SimpleNamespace(scaler=scaler))
    for gradient, skipped in ((math.inf, True), (1.0, False), (math.nan, True)):
        before = parameter.detach().clone()
        scaler.scale((parameter * gradient).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        assert watch.update_was_skipped() is skipped
        assert torch.equal(parameter, before) is skipped
    assert not LossScaleWatch(types.SimpleNamespace(scaler=None)).update_was_skipped()  # no fp16, nothing skipped


def test_compiled_blocks_train_like_eager_and_export_the_same_weights(data_dir, tmp_path):
    needs_a_compiler()
    run = [*RUN, "max_steps=30", "eval_interval=30"]
    run_train(data_dir, tmp_path / "eager", *run)
    run_train(data_dir, tmp_path / "compiled", *run, "compile=true")
    eager, compiled = step_losses(tmp_path / "eager"), step_losses(tmp_path / "compiled")
    for eager_losses, compiled_losses in zip(eager, compiled):
        assert eager_losses.keys() == compiled_losses.keys()
        assert compiled_losses == pytest.approx(eager_losses, abs=2e-3)  # fused kernels round differently

    from safetensors.torch import load_file

    eager = load_file(tmp_path / "eager" / "final" / "model.safetensors")
    compiled = load_file(tmp_path / "compiled" / "final" / "model.safetensors")
    assert compiled.keys() == eager.keys()
    assert all(torch.allclose(compiled[name], eager[name], atol=1e-3) for name in eager)


# ---------------------------------------------------------------------------------------------- bad input
def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overrides_may_come_between_the_flags():
    args = load_train_script().parse_args(["compile=true", "--mixed-precision", "bf16", "max_steps=30", "--overwrite"])
    assert args.overrides == ["compile=true", "max_steps=30"] and args.mixed_precision == "bf16" and args.overwrite


def test_bad_input_is_one_line_and_status_2(tmp_path):
    """As a subprocess: what a user sees."""
    not_data = tmp_path / "not-data"
    not_data.mkdir()
    result = run_train(not_data, tmp_path / "out", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and "meta.json" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_inputs_fail_with_one_line_and_touch_nothing(data_dir, reference, tmp_path, capsys):
    """The same entry point in this process (a subprocess each would take most of this file's time)."""
    script = load_train_script()

    def bad_input(data, out, *extra):
        with pytest.raises(SystemExit) as exit:
            script.main(train_command(data, out, *extra)[2:])
        stderr = capsys.readouterr().err.strip()
        assert exit.value.code == 2 and len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
        return stderr

    assert "vocab_size" in bad_input(data_dir, tmp_path / "a", "model.vocab_size=1000")
    assert "max_position_embeddings" in bad_input(data_dir, tmp_path / "b", "block_size=256")
    assert "did you mean 'learning_rate'" in bad_input(data_dir, tmp_path / "c", "lerning_rate=1e-3")
    assert "CUDA" in bad_input(data_dir, tmp_path / "d", "--mixed-precision", "fp16")
    if importlib.util.find_spec("tensorboard") is None:  # Accelerate would only warn, then log nothing
        assert "pip install tensorboard" in bad_input(data_dir, tmp_path / "d", "--report-to", "tensorboard")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "cannot write" in bad_input(data_dir, blocker / "out")
    assert not any((tmp_path / name).exists() for name in "abcd")

    before = {path: path.stat().st_mtime_ns for path in reference.rglob("*")}
    message = bad_input(data_dir, reference, *RUN)  # an existing run, neither --resume nor --overwrite
    assert "--resume auto" in message and "--overwrite" in message
    message = bad_input(data_dir, reference, *RUN, "learning_rate=1e-2", "--resume", "auto")  # a different run
    assert "learning_rate" in message
    assert {path: path.stat().st_mtime_ns for path in reference.rglob("*")} == before
