"""Starting, stopping and scaling a run the ways users do, through the real launchers as subprocesses.

`python scripts/train.py`, `accelerate launch` (without a config file, with one from `accelerate config default`,
with `--cpu`), the documented 2-process CPU route and `torchrun`: the threads and processes each really gets,
Ctrl-C to the whole process group (a checkpoint, exit 130, an exact resume), the one-run-per-folder lock, the
refusals of what a launcher cannot do here, and the output as a terminal and a log file show it.
"""

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ports import fresh_ports, port_was_taken, run_on_a_free_port
from slm_hf.training.launchers import Launch, process_count_problem
from slm_hf.training.config import TrainingConfig

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "scripts" / "train.py")
TINY = str(ROOT / "configs" / "tiny.yaml")
BIN = Path(sys.executable).parent
ACCELERATE = [str(BIN / "accelerate"), "launch"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# Short runs: no sample stories, few evaluation batches.
QUICK = ["sample_tokens=0", "eval_iters=2"]
# Long enough to be interrupted after its first logged steps, short enough to resume in seconds.
RUN = ["max_steps=60", "gradient_accumulation_steps=2", "save_interval=100", "eval_interval=100", "log_interval=5",
       *QUICK]
HEADER = re.compile(r"on cpu \((\d+) threads\) x(\d+) \((.+?), distributed type (\w+)\), precision ([^,]+),")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An empty HF_HOME: no `accelerate config` file of the machine's user changes what is tested."""
    return tmp_path_factory.mktemp("hf_home")


def environment(home, **extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(home)}
    for name in ("OMP_NUM_THREADS", "ACCELERATE_USE_CPU", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR"):
        env.pop(name, None)
    env.update(extra)
    return env


def train_args(data, out, *extra):
    return [TRAIN, "--config", TINY, "--data", str(data), "--out", str(out), *extra]


def launched(launcher: str, processes: int = 1, port: int | None = None) -> list[str]:
    """The command line that starts scripts/train.py under `launcher` (the 2-process ones rendezvous on `port`)."""
    if launcher == "python":
        return [sys.executable]
    if launcher == "accelerate":
        return ACCELERATE
    if launcher == "accelerate-2":  # the documented 2-process CPU route (ACCELERATE_USE_CPU=true in its env)
        return [*ACCELERATE, "--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(port)]
    if launcher == "torchrun":
        return [*TORCHRUN, "--nproc_per_node", str(processes), "--master_port", str(port)]
    raise ValueError(launcher)


def run(command, env, timeout=300):
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def header(output: str) -> dict:
    match = HEADER.search(output)
    assert match, output[-3000:]
    threads, processes, launcher, distributed, precision = match.groups()
    return dict(threads=int(threads), processes=int(processes), launcher=launcher, distributed=distributed,
                precision=precision)


def train_losses(out) -> dict[int, float]:
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def wait_for_steps(out: Path, process: subprocess.Popen, steps: int, timeout: float = 240) -> None:
    """Wait until the run has logged `steps` training steps (metrics.jsonl is flushed every log_interval steps)."""
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before step {steps}")
        time.sleep(0.1)
    raise AssertionError(f"no step {steps} within {timeout} s")


@pytest.fixture(scope="module")
def reference(tiny_data_dir, home, tmp_path_factory):
    """An uninterrupted single-process run of RUN, one thread."""
    out = tmp_path_factory.mktemp("launchers") / "reference"
    result = run([sys.executable, *train_args(tiny_data_dir, out, *RUN)], environment(home, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# --------------------------------------------------------------------------------------------- threads
def test_every_launcher_trains_on_the_threads_python_uses(tiny_data_dir, home, tmp_path):
    """accelerate launch sets OMP_NUM_THREADS=1 by default; the run gives itself the cores python would use."""
    config_file = tmp_path / "accelerate_default.yaml"
    made = run([str(BIN / "accelerate"), "config", "default", "--config_file", str(config_file)], environment(home))
    assert made.returncode == 0, made.stderr
    env = environment(home)
    starts = {
        "python": [sys.executable],
        "accelerate launch": ACCELERATE,
        "accelerate launch --config_file": [*ACCELERATE, "--config_file", str(config_file)],
        "accelerate launch --cpu": [*ACCELERATE, "--cpu"],
    }
    headers = {}
    for name, start in starts.items():
        result = run([*start, *train_args(tiny_data_dir, tmp_path / name.replace(" ", "_"), "max_steps=2", *QUICK)],
                     env)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
        headers[name] = header(result.stdout)
    threads = {name: h["threads"] for name, h in headers.items()}
    assert len(set(threads.values())) == 1, threads
    assert [h["launcher"] for h in headers.values()] == ["python"] + ["accelerate launch"] * 3
    assert all(h["processes"] == 1 and h["distributed"] == "NO" for h in headers.values())
    # The user's own OMP_NUM_THREADS is kept: test_ctrl_c_saves_a_checkpoint_and_resume_continues, every launcher.


# ------------------------------------------------------------------------------------------------ Ctrl-C
@pytest.mark.parametrize(
    "launcher, processes",
    [("python", 1), ("accelerate", 1), ("accelerate-2", 2), ("torchrun", 2)],
)
def test_ctrl_c_saves_a_checkpoint_and_resume_continues(launcher, processes, tiny_data_dir, reference, home, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the launcher forwards its own signal too."""
    out = tmp_path / "run"
    # 2 processes x 1 micro-batch see the windows of 1 process x 2 micro-batches (the reference).
    run_args = RUN if processes == 1 else [*RUN, "gradient_accumulation_steps=1"]
    env = environment(home, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    for port in fresh_ports():
        command = [*launched(launcher, processes, port), *train_args(tiny_data_dir, out, *run_args)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   cwd=ROOT, start_new_session=True)
        try:
            wait_for_steps(out, process, 10)
            os.killpg(process.pid, signal.SIGINT)
            stdout, stderr = process.communicate(timeout=120)
            break
        except AssertionError:
            stdout, stderr = process.communicate(timeout=120)
            if not port_was_taken(stdout + stderr):
                raise
            shutil.rmtree(out, ignore_errors=True)  # what the run wrote before it lost its port
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    else:
        raise AssertionError(f"every port the run was given was taken first:\n{stderr[-2000:]}")
    stopped = re.search(r"stopped by SIG(?:INT|TERM) at step (\d+); checkpoint saved", stdout)
    assert stopped, stdout[-2000:] + stderr[-3000:]
    step = int(stopped.group(1))
    assert header(stdout)["threads"] == 1  # the user's OMP_NUM_THREADS=1, kept by every launcher
    assert (out / "checkpoints" / f"step_{step:07d}").is_dir() and not (out / "final").exists()
    if launcher == "python":
        assert process.returncode == 130, stderr[-3000:]
    elif launcher != "torchrun":  # torchrun reports the signal its own way (exit 1, its traceback)
        # accelerate launch exits 130 itself, or, when its own SIGINT lands after its child ended, reports the
        # child's 130 in a CalledProcessError (seen on a loaded machine): the training process exited 130 either way.
        assert process.returncode == 130 or "returned non-zero exit status 130" in stderr, stderr[-3000:]

    resumed = run_on_a_free_port(lambda port: run(
        [*launched(launcher, processes, port), *train_args(tiny_data_dir, out, *run_args, "--resume", "auto")], env))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {step}," in resumed.stdout and (out / "final" / "model.safetensors").is_file()
    losses, expected = train_losses(out), train_losses(reference)
    assert losses.keys() == expected.keys()
    if processes == 1:
        assert losses == expected  # bit for bit: fp32, one thread
    else:
        assert all(losses[s] == pytest.approx(expected[s], abs=1e-4) for s in expected)


# ------------------------------------------------------------------------------------------ one run, one folder
def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tiny_data_dir, home, tmp_path):
    out = tmp_path / "busy"
    env = environment(home, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, *train_args(tiny_data_dir, out, "max_steps=100000", *QUICK)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for_steps(out, first, 5)
        second = run([sys.executable, *train_args(tiny_data_dir, out, "max_steps=10", "--resume", "auto", *QUICK)],
                     env)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith(f"error: {out} is in use by another training run (pid {first.pid} ")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM


# ------------------------------------------------------------------------------------------- refusals
def test_launches_that_cannot_do_what_was_asked_are_refused_in_one_line(tiny_data_dir, home, tmp_path):
    env = environment(home)
    out = tmp_path / "never"
    result = run([*ACCELERATE, "--cpu", "--num_processes", "2", *train_args(tiny_data_dir, out, *QUICK)], env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
    assert "accelerate launch was asked for 2 processes but started one" in errors[0]
    assert "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N" in errors[0]

    result = run([*ACCELERATE, "-q", "--mixed_precision", "fp16",
                  *train_args(tiny_data_dir, out, "mixed_precision=auto", *QUICK)], env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error: accelerate launch --mixed_precision fp16: fp16 mixed precision needs a CUDA GPU" in result.stderr
    assert not out.exists()

    # What Accelerate would do with WORLD_SIZE=2 but one process of its own: refused, naming the working command.
    launch = Launch("torchrun", world_size=2, local_world_size=2, launcher_environ={}, launcher_cmdline=[])
    assert "torchrun started 2 processes but Accelerate runs 1" in process_count_problem(launch, 1)
    assert process_count_problem(launch, 2) is None


def test_the_launchers_precision_is_honoured(tiny_data_dir, home, tmp_path):
    env = environment(home)
    result = run([*ACCELERATE, "--mixed_precision", "no",
                  *train_args(tiny_data_dir, tmp_path / "no", "mixed_precision=auto", "max_steps=2", *QUICK)], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert header(result.stdout)["precision"] == "fp32"
    result = run([*ACCELERATE, "--mixed_precision", "bf16",
                  *train_args(tiny_data_dir, tmp_path / "bf16", "mixed_precision=auto", "max_steps=2", *QUICK)], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert header(result.stdout)["precision"] == "bf16 with fp32 master weights"


def test_fsdp_asked_on_a_cpu_says_what_runs_instead(tiny_data_dir, home, tmp_path):
    env = environment(home, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    result = run_on_a_free_port(lambda port: run(
        [*ACCELERATE, "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2", "--main_process_port", str(port),
         *train_args(tiny_data_dir, tmp_path / "fsdp", "max_steps=2", *QUICK)], env))
    assert result.returncode == 0, result.stderr[-3000:]
    assert header(result.stdout)["processes"] == 2 and header(result.stdout)["distributed"] == "MULTI_CPU"
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: FSDP")]
    assert warnings == ["warning: FSDP was asked for but Accelerate runs MULTI_CPU (it needs GPUs): weights are not "
                        "sharded and checkpoints are plain"]


# ---------------------------------------------------------------------------------------------- output
def run_in_terminal(command, env, timeout=300) -> str:
    """Run `command` with a pseudo-terminal as its standard output and error, as a person's terminal; its output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
                               cwd=ROOT)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("launcher", ["accelerate"])  # where they glued (python writes the same way)
def test_messages_never_glue_to_the_progress_bar(launcher, tiny_data_dir, home, tmp_path):
    env = environment(home, OMP_NUM_THREADS="1")
    args = train_args(tiny_data_dir, tmp_path / "run", "max_steps=40", "eval_interval=20", "log_interval=1", *QUICK)
    screen = run_in_terminal([*launched(launcher), *args], env)
    assert "\r" in screen  # a live bar
    lines = [line.rsplit("\r", 1)[-1] for line in screen.replace("\r\n", "\n").split("\n")]
    evaluations = [line for line in lines if "val loss" in line]
    assert len(evaluations) == 3 and all(line.startswith(("step 20:", "step 40:", "done:")) for line in evaluations)


def test_a_log_file_gets_plain_lines(tiny_data_dir, home, tmp_path):
    log = tmp_path / "train.log"
    env = environment(home, OMP_NUM_THREADS="1")
    args = train_args(tiny_data_dir, tmp_path / "run", "max_steps=40", "eval_interval=20", *QUICK)
    with open(log, "w") as file:
        result = subprocess.run([*ACCELERATE, *args], env=env, stdout=file, stderr=subprocess.STDOUT, cwd=ROOT,
                                timeout=300)
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert re.search(r"^step 40/40 \(100%\): loss [\d.]+, lr [\d.e+-]+, [\d,]+ tok/s", text, re.MULTILINE), text


# ---------------------------------------------------------------------------------------------- precision values
@pytest.mark.parametrize("spelling", ["no", "'no'", '"no"'])
def test_precision_values_are_typed_by_the_field_not_by_yaml_1_1(spelling, tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"model: tiny\nmixed_precision: {spelling}\ncompile: no\n")
    config = TrainingConfig.load(config_file)
    assert config.mixed_precision == "no" and config.compile is False
    for value in ("no", "fp16", "bf16", "auto"):
        assert TrainingConfig.load(config_file, [f"mixed_precision={value}"]).mixed_precision == value
    assert TrainingConfig.load(config_file, ["compile=yes"]).compile is True
