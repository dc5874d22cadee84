"""Interrupt and resume: one uninterrupted reference run (module fixture) against runs killed by SIGKILL, stopped by
SIGTERM, killed inside a checkpoint save, resumed from a damaged or a named checkpoint, stopped by a full disk, and run
on 2 processes: the per-step losses must match (bit for bit in fp32 on a CPU, within rounding for 2 processes).
(Split from test_training.py so that the two halves run on two test workers.)
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from slm_hf.training import MANIFEST_FILE, checkpoint_problem, latest_checkpoint, list_checkpoints
from training_runs import (  # noqa: F401 (data_dir, reference: fixtures)
    ENV,
    RUN,
    data_dir,
    logged_steps,
    reference,
    run_train,
    start_train,
    step_losses,
    train_command,
    wait_for,
)


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
    assert 30 <= stopped_at < 200 and latest_checkpoint(out).name == f"step_{stopped_at:07d}"
    assert not (out / "final").exists()

    run_train(data_dir, out, *RUN, "--resume", "auto")
    assert step_losses(out) == step_losses(reference)


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
        assert "resumed from" not in resumed.stdout and "up to step 200" in resumed.stdout
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
    """`--resume PATH` with a checkpoint folder (here the reference's at step 180, into a new --out) trains steps
    181-200 only, with the reference's losses bit for bit. `keep_last N` leaves exactly N checkpoints beside final/
    and best/: the reference's 2 (the preset's), and 3 in the branch (changed on resume, as checkpoint settings may
    be, with a save every 5 updates)."""
    assert sorted(os.listdir(reference / "checkpoints")) == ["step_0000180", "step_0000200"]
    named = reference / "checkpoints" / "step_0000180"
    out = tmp_path / "branch"
    resumed = run_train(data_dir, out, *RUN, "save_interval=5", "keep_last=3", "--resume", named)
    assert f"resumed from {named} (step 180," in resumed.stdout
    train, val = step_losses(out)
    expected_train, expected_val = step_losses(reference)
    assert sorted(train) == list(range(181, 201)) and sorted(val) == [200]
    assert train == {step: expected_train[step] for step in train} and val[200] == expected_val[200]
    assert sorted(os.listdir(out / "checkpoints")) == ["step_0000190", "step_0000195", "step_0000200"]
    assert (out / "final").is_dir() and (out / "best").is_dir()


def test_a_checkpoint_saved_before_manifests_is_checked_by_its_sizes(reference, tmp_path):
    """Runs saved by earlier versions listed file sizes in training_state.json: they still resume."""
    checkpoint = tmp_path / "step_0000200"
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
    checkpoint = tmp_path / "step_0000200"
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
    assert results["num_processes"] == 2 and results["tokens"] == 200 * 2 * 8 * 64
    assert {p.name for p in list_checkpoints(out)[-1].iterdir()} >= {"random_states_0.pkl", "random_states_1.pkl"}
    (train, val), (train_ref, val_ref) = step_losses(out), step_losses(reference)
    assert train.keys() == train_ref.keys() and val.keys() == val_ref.keys()
    for step in train:
        assert train[step] == pytest.approx(train_ref[step], abs=1e-4), step
    for step in val:
        assert val[step] == pytest.approx(val_ref[step], abs=1e-4), step
