"""Training: the loop end to end on the tiny preset, through scripts/train.py as a subprocess.

One uninterrupted reference run (module fixture) is compared with runs killed by SIGKILL, stopped by SIGTERM,
killed inside a checkpoint save, and run on 2 processes: the per-step losses must match (bit for bit in fp32 on a
CPU, within rounding for 2 processes).
"""

import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from must_run import needs_a_compiler
from slm_hf.data import prepare_data
from slm_hf.errors import SLMError
from slm_hf.training import (
    MANIFEST_FILE,
    BatchShape,
    LossScaleWatch,
    Schedule,
    TrainingState,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
)
from slm_hf.training.config import TrainingConfig

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
TINY = ROOT / "configs" / "tiny.yaml"
# One thread: the tiny model gains nothing from two, and on a busy machine threads waiting on each other make
# it many times slower. HF_HUB_OFFLINE: nothing may come from the network.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
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
# 100 updates of 2 micro-batches of 8 x 64 tokens: a few seconds, long enough to interrupt.
RUN = ["max_steps=100", "gradient_accumulation_steps=2", "save_interval=20", "eval_interval=25", "log_interval=5"]
# What "it learns" means for the tiny preset at step 50: a validation loss half a nat below ln 512, the loss of a
# uniform guess over its 512 tokens. A run at a hundredth of the recipe's learning rate (how a run once trained, its
# rate stuck at the first warmup step) ends within a hair of ln 512, so "below ln 512" let it pass: this margin
# does not (test_a_run_at_a_hundredth_of_the_learning_rate_has_not_learned).
UNIFORM_GUESS_LOSS = math.log(512)
LEARNING_MARGIN = 0.5


def has_learned(val_loss: float) -> bool:
    return val_loss < UNIFORM_GUESS_LOSS - LEARNING_MARGIN


def train_command(data, out, *extra, config=TINY):
    return [sys.executable, str(TRAIN), "--config", str(config), "--data", str(data), "--out", str(out), *extra]


def run_train(data, out, *extra, env=ENV, check=True):
    result = subprocess.run(train_command(data, out, *extra), env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def start_train(data, out, *extra, env=ENV, stderr=subprocess.DEVNULL):
    command = train_command(data, out, *extra)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def step_losses(out):
    """{step: train/loss} and {step: val/loss} from a run's metrics.jsonl (each step must appear once)."""
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
    assert len({step for step, _ in train}) == len(train), "a step was logged twice"
    return dict(train), dict(val)


def wait_for(condition, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"train.py ended (status {process.returncode}) before the test could interrupt it")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.01)


def logged_steps(out):
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return max((r["step"] for r in lines), default=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    prepare_data("sample", out_dir=out, vocab_size=512, max_stories=400, show_progress=False)
    return out


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted run: 1 process, 2 micro-batches per update."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    run_train(data_dir, out, *RUN)
    return out


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
    assert sorted(train) == list(range(1, 101)) and sorted(val) == [25, 50, 75, 100]
    assert has_learned(val[50]) and val[100] < val[50], val
    for name in ("final", "best"):
        folder = reference / name
        for file in HUB_FILES:
            assert (folder / file).is_file(), f"{name}/{file}"
    assert (reference / "final" / "loss_curve.png").is_file() and (reference / "loss_curve.png").is_file()
    results = json.loads((reference / "final" / "training_results.json").read_text())
    assert results["step"] == 100 and results["tokens"] == 100 * 2 * 8 * 64 and results["num_processes"] == 1
    shape = {"micro_batch_size": 8, "micro_batches_per_step": 2, "processes": 1, "block_size": 64,
             "tokens_per_step": 2 * 8 * 64}
    assert results["batch"] == shape
    assert json.loads((list_checkpoints(reference)[-1] / "training_state.json").read_text())["batch"] == shape
    assert results["val/loss"] == pytest.approx(val[100])
    bits_per_byte = val[100] / math.log(2) / results["data"]["val_bytes_per_token"]
    assert results["val/bits_per_byte"] == pytest.approx(bits_per_byte)
    assert [entry["step"] for entry in results["history"]] == [25, 50, 75, 100]
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
    # The cosine was fitted to the budget: the last update's rate is the schedule's at that step of `fitted` steps
    # (where a busy machine slowed down, the budget ends the run before `fitted`: the clock decides where, not how),
    # and it has decayed: without the fitting, 100,000 steps would have kept it at the peak 3e-3.
    schedule = Schedule.from_config(TrainingConfig.load(TINY, budget))
    assert [x for x in lr if x is not None][-1] == pytest.approx(schedule.lr(results["step"], fitted))
    assert schedule.lr(results["step"], fitted) < 0.95 * 3e-3

    run_train(data_dir, out, "--overwrite", "max_steps=20")  # the earlier run's outputs go, a new run comes
    assert sorted(step_losses(out)[0]) == list(range(1, 21))
    assert [path.name for path in list_checkpoints(out)] == ["step_0000010", "step_0000020"]
    assert json.loads((out / "final" / "training_results.json").read_text())["step"] == 20


# ----------------------------------------------------------------------------------- interrupt and resume
def test_sigkill_mid_run_then_resume_repeats_the_losses_exactly(data_dir, reference, tmp_path):
    out = tmp_path / "killed"
    process = start_train(data_dir, out, *RUN)
    wait_for(lambda: logged_steps(out) >= 65, process)  # past the checkpoint at 60, before the one at 80
    process.send_signal(signal.SIGKILL)
    process.wait()
    newest = list_checkpoints(out)[-1]
    assert newest.name in ("step_0000060", "step_0000080")

    resumed = run_train(data_dir, out, *RUN, "--resume", "auto")
    assert f"resumed from {newest} (step {int(newest.name[5:])}," in resumed.stdout
    assert step_losses(out) == step_losses(reference)  # every step, bit for bit


def test_sigterm_saves_a_checkpoint_and_exits_then_resumes_exactly(data_dir, reference, tmp_path):
    out = tmp_path / "stopped"
    process = start_train(data_dir, out, *RUN, stderr=subprocess.PIPE)
    wait_for(lambda: logged_steps(out) >= 30, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    stopped_at = logged_steps(out)
    assert 30 <= stopped_at < 100 and latest_checkpoint(out).name == f"step_{stopped_at:07d}"
    assert not (out / "final").exists()

    run_train(data_dir, out, *RUN, "--resume", "auto")
    assert step_losses(out) == step_losses(reference)


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


def test_kill_during_checkpoint_save_leaves_nothing_to_resume_from(data_dir, reference, tmp_path):
    """SIGKILL while a checkpoint is being written (its `.tmp-` folder exists): resuming ignores and removes the
    half-written folder, takes the previous checkpoint and still repeats the losses exactly. The save takes tens of
    milliseconds, so the test polls for the folder and kills at once; when it arrives too late (the folder already
    renamed into place), it resumes and tries the next save."""
    out = tmp_path / "killed-saving"
    checkpoints = out / "checkpoints"
    hits = 0
    for attempt in range(4):
        resume = ("--resume", "auto") if attempt else ()
        process = start_train(data_dir, out, *RUN, *resume)
        partial = None
        while partial is None and process.poll() is None:
            partial = next(checkpoints.glob(".tmp-step_*"), None) if checkpoints.is_dir() else None
            if partial is None:
                time.sleep(0.001)  # poll, not spin: a spinning test takes the core the run needs to reach its save
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, "the run ended before a save could be interrupted"
        if partial is not None and partial.is_dir():
            hits += 1
            step = int(partial.name.removeprefix(".tmp-step_"))
            assert all(int(path.name[5:]) < step for path in list_checkpoints(out))
            newest = latest_checkpoint(out)
            assert newest is None or int(newest.name[5:]) == step - 20  # the previous save, intact
            break
    assert hits == 1, "no kill landed inside a checkpoint save in 4 tries"

    resumed = run_train(data_dir, out, *RUN, "--resume", "auto")
    assert f"removed {partial}" in resumed.stdout
    if newest is None:  # killed in the first save: a fresh start
        assert "resumed from" not in resumed.stdout and "up to step 100" in resumed.stdout
    else:
        assert f"resumed from {newest} (step {step - 20}," in resumed.stdout
    assert step_losses(out) == step_losses(reference)
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob(".trash-*"))


def test_resume_auto_skips_a_damaged_newest_checkpoint_and_ends_equal(data_dir, reference, tmp_path):
    """A byte flipped inside the newest checkpoint (same size): --resume auto warns once, naming it, resumes from
    the one before, and the run ends with the losses and final weights of the uninterrupted run."""
    out = tmp_path / "damaged"
    shutil.copytree(reference, out)
    shutil.rmtree(out / "final")  # as if killed after the last checkpoint, before exporting final/
    newest, previous = list_checkpoints(out)[-1], list_checkpoints(out)[-2]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert "model.safetensors does not match its sha256" in checkpoint_problem(newest)

    resumed = run_train(data_dir, out, *RUN, "--resume", "auto")
    warnings = [line for line in resumed.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: skipping damaged checkpoint {newest}: model.safetensors does not match its "
                        f"sha256 in {MANIFEST_FILE}"]
    assert f"resumed from {previous} (step {int(previous.name[5:])}," in resumed.stdout
    assert step_losses(out) == step_losses(reference)

    from safetensors.torch import load_file

    final, expected = load_file(out / "final" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)
    from slm_hf.model_card import check_model_card

    assert check_model_card(out / "final" / "README.md") == []


def test_resume_from_a_named_checkpoint_continues_exactly_and_keep_last_leaves_that_many(data_dir, reference,
                                                                                          tmp_path):
    """`--resume PATH` with a checkpoint folder (here the reference's at step 80, into a new --out) trains steps
    81-100 only, with the reference's losses bit for bit. `keep_last N` leaves exactly N checkpoints beside final/
    and best/: the reference's 2 (the preset's), and 3 in the branch (changed on resume, as checkpoint settings may
    be, with a save every 5 updates)."""
    assert sorted(os.listdir(reference / "checkpoints")) == ["step_0000080", "step_0000100"]
    named = reference / "checkpoints" / "step_0000080"
    out = tmp_path / "branch"
    resumed = run_train(data_dir, out, *RUN, "save_interval=5", "keep_last=3", "--resume", named)
    assert f"resumed from {named} (step 80," in resumed.stdout
    train, val = step_losses(out)
    expected_train, expected_val = step_losses(reference)
    assert sorted(train) == list(range(81, 101)) and sorted(val) == [100]
    assert train == {step: expected_train[step] for step in train} and val[100] == expected_val[100]
    assert sorted(os.listdir(out / "checkpoints")) == ["step_0000090", "step_0000095", "step_0000100"]
    assert (out / "final").is_dir() and (out / "best").is_dir()


def test_a_checkpoint_saved_before_manifests_is_checked_by_its_sizes(reference, tmp_path):
    """Runs saved by earlier versions listed file sizes in training_state.json: they still resume."""
    checkpoint = tmp_path / "step_0000100"
    shutil.copytree(list_checkpoints(reference)[-1], checkpoint)
    (checkpoint / MANIFEST_FILE).unlink()
    state = json.loads((checkpoint / "training_state.json").read_text())
    state["files"] = {path.name: path.stat().st_size for path in checkpoint.iterdir()
                      if path.is_file() and path.name != "training_state.json"}
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    assert checkpoint_problem(checkpoint) is None
    with open(checkpoint / "model.safetensors", "r+b") as file:
        file.truncate(100)
    assert checkpoint_problem(checkpoint).startswith("model.safetensors has 100 bytes instead of")


def test_manifest_hashes_every_file_of_a_checkpoint_subfolders_included(reference, tmp_path):
    checkpoint = tmp_path / "step_0000100"
    shutil.copytree(list_checkpoints(reference)[-1], checkpoint)
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())["files"]
    written = {path.relative_to(checkpoint).as_posix() for path in checkpoint.rglob("*") if path.is_file()}
    assert set(manifest) == written - {MANIFEST_FILE} and "training_state.json" in manifest
    assert checkpoint_problem(checkpoint) is None

    # A sharded state (FSDP's save_state writes subfolders) is covered: an entry for a file in a subfolder.
    shard = checkpoint / "pytorch_model_fsdp_0" / "__0_0.distcp"
    shard.parent.mkdir()
    shard.write_bytes(b"shard")
    manifest[shard.relative_to(checkpoint).as_posix()] = {"size": 5, "sha256": hashlib.sha256(b"shard").hexdigest()}
    (checkpoint / MANIFEST_FILE).write_text(json.dumps({"files": manifest}))
    assert checkpoint_problem(checkpoint) is None
    shard.write_bytes(b"shart")
    assert checkpoint_problem(checkpoint) == f"pytorch_model_fsdp_0/__0_0.distcp does not match its sha256 in {MANIFEST_FILE}"
    shard.unlink()
    assert checkpoint_problem(checkpoint) == "pytorch_model_fsdp_0/__0_0.distcp is missing"
    (checkpoint / MANIFEST_FILE).unlink()  # a save killed before its last file
    assert checkpoint_problem(checkpoint).startswith(f"no readable {MANIFEST_FILE}")


def test_full_disk_during_a_save_stops_with_one_line_and_keeps_the_previous_checkpoint(data_dir, tmp_path):
    """A file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk) below the size of a
    checkpoint's optimizer state: the save fails, the run stops with one `error:` line and status 2, the earlier
    checkpoint is untouched and a run without the limit resumes from it."""
    import resource

    out = tmp_path / "full"
    run = [*RUN, "eval_interval=1000", "save_interval=10"]
    run_train(data_dir, out, *run, "max_steps=20")
    previous = latest_checkpoint(out)
    before = {path: path.read_bytes() for path in previous.rglob("*") if path.is_file()}
    limit = (previous / "optimizer.bin").stat().st_size // 2
    assert limit > (previous / "model.safetensors").stat().st_size // 4

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = train_command(data_dir, out, *run, "max_steps=40", "--resume", "auto")
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert result.returncode == 2, result.stderr[-3000:]
    # One error line, no traceback. (The progress bar is left unfinished on that line: the error follows it.)
    error = [line[line.index("error:"):] for line in result.stderr.splitlines() if "error:" in line]
    assert "Traceback" not in result.stderr and len(error) == 1, result.stderr[-3000:]
    assert error[0].startswith("error: cannot save checkpoint "), error
    assert "step_0000030" in error[0] and "file too large" in error[0]
    assert latest_checkpoint(out) == previous and list_checkpoints(out) == [previous.parent / "step_0000010", previous]
    assert {path: path.read_bytes() for path in previous.rglob("*") if path.is_file()} == before
    assert not list(out.rglob(".tmp-*"))

    resumed = run_train(data_dir, out, *run, "max_steps=40", "--resume", "auto")
    assert f"resumed from {previous} (step 20," in resumed.stdout
    assert json.loads((out / "final" / "training_results.json").read_text())["step"] == 40


# ----------------------------------------------------------------------------------------------- processes
def test_two_processes_match_one_process_with_twice_the_accumulation(data_dir, reference, tmp_path):
    out = tmp_path / "ddp"
    run = [arg for arg in RUN if not arg.startswith("gradient_accumulation_steps")] + ["gradient_accumulation_steps=1"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    command = torchrun + train_command(data_dir, out, *run)[1:]
    env = {**ENV, "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "final" / "training_results.json").read_text())
    assert results["num_processes"] == 2 and results["tokens"] == 100 * 2 * 8 * 64
    assert {p.name for p in list_checkpoints(out)[-1].iterdir()} >= {"random_states_0.pkl", "random_states_1.pkl"}
    (train, val), (train_ref, val_ref) = step_losses(out), step_losses(reference)
    assert train.keys() == train_ref.keys() and val.keys() == val_ref.keys()
    for step in train:
        assert train[step] == pytest.approx(train_ref[step], abs=1e-4), step
    for step in val:
        assert val[step] == pytest.approx(val_ref[step], abs=1e-4), step


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
