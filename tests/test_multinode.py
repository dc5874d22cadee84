"""Past one machine: two "machines" on 127.0.0.1, resuming on another process count, and a launcher that dies.

The multi-node commands a user types, each started twice as the two machines would start them: `torchrun --nnodes 2`
(c10d rendezvous) and `accelerate launch --num_machines 2 --machine_rank 0|1`. One run (global rank 0 alone holds
the folder's lock and writes it), the losses of one process with accumulation 2, Ctrl-C to one machine's process
group stopping both with a checkpoint, and `--resume auto` going on exactly. Then the same batches on another
process count (2 x 1 <-> 1 x 2), the refusal of a count that cannot continue them, and workers that save and stop
when their launcher is SIGKILLed. The runs are shared: one uninterrupted reference, each other run compared to it.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from ports import free_port, fresh_ports, port_was_taken
from test_launchers import (
    ACCELERATE,
    QUICK,
    ROOT,
    TORCHRUN,
    environment,
    train_args,
    train_losses,
    wait_for_steps,
)

from slm_hf.errors import SLMError
from slm_hf.training.checkpoints import checkpoint_problem, list_checkpoints
from slm_hf.training.outputs import Resume, check_batch_shape
from slm_hf.training.state import BatchShape, TrainingState

# 1 process x 2 micro-batches per step, checkpoints at steps 30 and 60 (the 2 x 1 runs drop the accumulation).
STEPS = 60
RUN = [f"max_steps={STEPS}", "gradient_accumulation_steps=2", "save_interval=30", "eval_interval=30",
       "log_interval=5", *QUICK]
TWO_PROCESSES = [*RUN, "gradient_accumulation_steps=1"]
TOLERANCE = 1e-5  # 2 processes average their gradients in another order than 1 process accumulating 2


def two_machines(launcher: str, port: str) -> list[list[str]]:
    """The launcher command of each of the two machines, as docs/training.md gives it (one process per machine)."""
    if launcher == "torchrun":
        command = [*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}"]
        return [command, command]
    return [[*ACCELERATE, "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip",
             "127.0.0.1", "--main_process_port", port, "--num_processes", "2"] for rank in (0, 1)]


class Machines:
    """The two launchers of a 2-machine run, each in a process group of its own (as on two machines), their output
    in files. Started once the run holds its folder's lock (or has ended); a port that another program took
    meanwhile is retried with a new one."""

    def __init__(self, launcher: str, out: Path, args: list[str], env: dict, logs: Path, timeout: float = 120):
        self.launcher, self.env, self.logs = launcher, env, logs
        for _attempt in range(3):
            self._start(str(free_port()), args)
            deadline = time.monotonic() + timeout
            while not (out / ".run.lock.json").is_file() and all(p.poll() is None for p in self.processes):
                assert time.monotonic() < deadline, f"{launcher}: no run within {timeout} s: {self.output()[-3000:]}"
                time.sleep(0.1)
            if all(p.poll() is None for p in self.processes) or "already in use" not in self.output():
                return
            self.stop()
        raise AssertionError(f"no free port for {launcher} after 3 tries")

    def _start(self, port: str, args: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes = []
        for rank, command in enumerate(two_machines(self.launcher, port)):
            with open(self.logs / f"machine{rank}.log", "w") as log:
                self.processes.append(subprocess.Popen([*command, *args], env=self.env, stdout=log,
                                                       stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True))

    def wait(self, timeout: float = 240) -> list[int]:
        try:
            return [process.wait(timeout=timeout) for process in self.processes]
        finally:
            self.stop()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def output(self) -> str:
        return "\n".join((self.logs / f"machine{rank}.log").read_text(errors="replace") for rank in (0, 1))


def workers(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The training processes a launcher started (its child processes that run scripts/train.py)."""
    return [child for child in psutil.Process(launcher.pid).children(recursive=True)
            if any(word.endswith("train.py") for word in child.cmdline())]


def lock_holder(out: Path, timeout: float = 60) -> psutil.Process:
    """The process that holds the run's lock, as OUT/.run.lock.json names it."""
    import json

    holder = out / ".run.lock.json"
    deadline = time.monotonic() + timeout
    while not holder.is_file():
        assert time.monotonic() < deadline, f"no {holder} within {timeout} s"
        time.sleep(0.1)
    return psutil.Process(json.loads(holder.read_text())["pid"])


def assert_same_losses(out: Path, reference: Path, since: int = 0) -> None:
    losses, expected = train_losses(out), train_losses(reference)
    expected = {step: loss for step, loss in expected.items() if step > since}
    assert losses.keys() >= expected.keys(), sorted(expected.keys() - losses.keys())
    worst = max(abs(losses[step] - loss) for step, loss in expected.items())
    assert worst <= TOLERANCE, f"losses differ from the reference's by up to {worst:.2e}"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An empty HF_HOME: no `accelerate config` file of the machine's user changes what is tested."""
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(scope="module")
def env(home):
    return environment(home, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")


@pytest.fixture(scope="module")
def reference(tiny_data_dir, env, tmp_path_factory):
    """An uninterrupted run of 1 process x 2 micro-batches; its checkpoints (steps 30, 60) start the resumes."""
    out = tmp_path_factory.mktemp("multinode") / "reference"
    result = subprocess.run([sys.executable, *train_args(tiny_data_dir, out, *RUN)], env=env, capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


# ------------------------------------------------------------------------------------------- two machines
def test_two_machines_train_one_run_stop_together_and_resume_exactly(tiny_data_dir, reference, env, tmp_path):
    """torchrun --nnodes 2, interrupted by Ctrl-C on the machine without rank 0, resumed by accelerate launch
    --num_machines 2: the losses of the uninterrupted 1-process run throughout."""
    out = tmp_path / "run"
    machines = Machines("torchrun", out, train_args(tiny_data_dir, out, *TWO_PROCESSES), env, tmp_path / "torchrun")
    try:
        holder = lock_holder(out)
        assert holder.environ()["RANK"] == "0"  # global rank 0 alone holds the lock
        main = next(i for i, launcher in enumerate(machines.processes) if launcher.pid == holder.ppid())
        other = machines.processes[1 - main]
        wait_for_steps(out, other, 10)
        trainers = workers(machines.processes[0]) + workers(machines.processes[1])
        assert len(trainers) == 2, trainers
        os.killpg(other.pid, signal.SIGINT)  # Ctrl-C in the other machine's terminal
        machines.wait(timeout=120)
    finally:
        machines.stop()
    output = machines.output()
    assert "stopped by SIGTERM at step" in output, output[-3000:]
    assert not any(trainer.is_running() for trainer in trainers)
    checkpoints = sorted(path.name for path in (out / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and not (out / "final").exists(), checkpoints
    stopped_at = int(checkpoints[0].removeprefix("step_"))
    assert 10 <= stopped_at < STEPS

    machines = Machines("accelerate", out, train_args(tiny_data_dir, out, *TWO_PROCESSES, "--resume", "auto"), env,
                        tmp_path / "accelerate")
    assert machines.wait() == [0, 0], machines.output()[-3000:]
    assert f"resumed from {out / 'checkpoints' / checkpoints[0]}" in machines.output()
    # One writer: the folder holds what a 1-process run writes, each step logged once.
    names = {path.name for path in out.iterdir()}
    assert names == {path.name for path in reference.iterdir()}, names
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"train/loss"' in line]
    assert len(steps) == STEPS
    assert_same_losses(out, reference)


# -------------------------------------------------------------------------------- another process count
def test_a_run_resumes_on_another_process_count(tiny_data_dir, reference, env, tmp_path):
    """1 x 2 -> 2 x 1 (torchrun on one machine, from the reference's step 30), then 2 x 1 -> 1 x 2 (python, from step
    45: an odd step, where the micro-batches counted so far are not a multiple of the new accumulation)."""
    two = tmp_path / "two"
    command = [*TORCHRUN, "--standalone", "--nproc_per_node", "2",  # a free port of its own
               *train_args(tiny_data_dir, two, *TWO_PROCESSES, "save_interval=45", "--resume",
                           str(reference / "checkpoints" / "step_0000030"))]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "2 process(es) x 1 micro-batches" in result.stdout
    assert_same_losses(two, reference, since=30)

    one = tmp_path / "one"
    command = train_args(tiny_data_dir, one, *RUN, "--resume", str(two / "checkpoints" / "step_0000045"))
    result = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 process(es) x 2 micro-batches" in result.stdout
    assert_same_losses(one, reference, since=45)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_workers_whose_launcher_is_killed_save_a_checkpoint_and_stop(launcher, tiny_data_dir, env, tmp_path):
    """SIGKILL to the launcher forwards no signal, and its workers run in sessions of their own (torchrun's agent
    starts them so, and `accelerate launch` runs that agent in its own process): they notice and save."""
    out, log = tmp_path / "run", tmp_path / "launcher.log"
    for port in fresh_ports():
        command = [*TORCHRUN, "--standalone", "--nproc_per_node", "2"] if launcher == "torchrun" else [
            *ACCELERATE, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port)]
        with open(log, "w") as output:
            process = subprocess.Popen([*command, *train_args(tiny_data_dir, out, *TWO_PROCESSES)], env=env,
                                       stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        trainers = []
        try:
            wait_for_steps(out, process, 10)
            trainers = workers(process)
            assert len(trainers) == 2, trainers
            process.kill()
            process.wait()
            _, alive = psutil.wait_procs(trainers, timeout=120)
            assert not alive, f"workers still training after their launcher died: {alive}"
            break
        except AssertionError:
            if process.poll() is None or not port_was_taken(log.read_text(errors="replace")):
                raise
            shutil.rmtree(out, ignore_errors=True)  # what the run wrote before it lost its port
        finally:
            for trainer in trainers:
                if trainer.is_running():
                    trainer.kill()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    else:
        raise AssertionError(f"every port the run was given was taken first:\n{log.read_text()[-2000:]}")
    checkpoints = list_checkpoints(out)
    assert len(checkpoints) == 1 and not (out / "final").exists(), checkpoints
    assert checkpoint_problem(checkpoints[0]) is None
    assert 10 <= int(checkpoints[0].name.removeprefix("step_")) < STEPS


def test_a_process_count_that_cannot_continue_the_batches_is_refused_in_one_line(tiny_data_dir, reference, env,
                                                                                 tmp_path):
    checkpoint = reference / "checkpoints" / "step_0000030"
    result = subprocess.run([sys.executable, *train_args(tiny_data_dir, tmp_path / "run", *RUN,
                                                         "gradient_accumulation_steps=3", "--resume", str(checkpoint))],
                            env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert result.stderr == (
        f"error: {checkpoint} was saved by 1 process(es) x gradient_accumulation_steps 2 (2 micro-batches per step) "
        f"but this run has 1 x 3 (3); resume with gradient_accumulation_steps=2 to continue the same batches\n"
    )
    # No accumulation fits 3 processes to 2 micro-batches per step.
    saved = TrainingState(batch=BatchShape(micro_batch_size=8, micro_batches_per_step=2, processes=1, block_size=64))
    three = BatchShape(micro_batch_size=8, micro_batches_per_step=3, processes=3, block_size=64)
    with pytest.raises(SLMError, match=r"this run has 3 x 1 \(3\); no gradient_accumulation_steps matches on 3 "
                                       r"processes: use a process count that divides 2$"):
        check_batch_shape(Resume(checkpoint, saved), three, quiet=False)
