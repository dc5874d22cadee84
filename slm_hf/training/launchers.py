"""How the training process was started, and what the launcher decided for it that the run must correct or refuse.

The same `scripts/train.py` runs under plain `python`, `accelerate launch` (with or without a config file) and
`torchrun`. Each launcher leaves marks in the environment, and some of its defaults work against a CPU run:

- Threads. `accelerate launch` sets `OMP_NUM_THREADS=1` unless told otherwise (`--cpu` or a config file may give
  more), and `torchrun` does the same for several processes: PyTorch then trains on one core where plain `python`
  uses all of them (`bench/bench_launchers.py` measures each launcher). `cpu_threads` tells a launcher's default from the user's own choice by
  reading the launcher process's environment and command line, and gives each local process its share of the cores.
- Processes. `accelerate launch --cpu --num_processes 2` (or a `MULTI_CPU` config file) starts one process;
  `accelerate launch --multi_gpu` and `torchrun` on a machine without GPUs start several that Accelerate, unless
  told `ACCELERATE_USE_CPU=true`, treats as independent single runs writing the same folder.
  `wants_cpu_processes` says when several processes must be joined on the CPU; `process_count_problem` names a
  mismatch that cannot be repaired.
- Engines and precision. Accelerate runs DDP where FSDP or DeepSpeed was asked on a CPU (`engine_warning`), and
  passes its own `--mixed_precision` as `ACCELERATE_MIXED_PRECISION`, "no" by default (`launcher_precision`).
- The launcher's death. `launcher_pid` is the parent that started the process: the training loop stops with a
  checkpoint when it is gone (`training/signals.py`).

Reading the launcher (the parent process) goes through psutil, which Accelerate already needs; where it cannot be
read, the environment alone decides and the user's settings are left as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

# The 2-process CPU route, as the messages and docs give it.
CPU_PROCESSES_COMMAND = "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N scripts/train.py ..."


@dataclass(frozen=True)
class Launch:
    """What the launcher of this process asked for, read from the environment and the launcher's own process."""

    launcher: str  # "python", "accelerate launch" or "torchrun"
    world_size: int | None  # WORLD_SIZE, where a launcher set it
    local_world_size: int  # processes on this machine (LOCAL_WORLD_SIZE, else 1)
    launcher_environ: dict[str, str] | None  # the launcher's environment as it was started (None: unreadable)
    launcher_cmdline: list[str]  # the launcher's command line ([] if unreadable)
    launcher_pid: int | None = None  # the launcher's process id (the parent's, when started); None under python

    @classmethod
    def detect(cls, environ: dict[str, str] | None = None) -> Launch:
        environ = os.environ if environ is None else environ
        if "ACCELERATE_MIXED_PRECISION" in environ:  # every accelerate launcher sets it
            launcher = "accelerate launch"
        elif "TORCHELASTIC_RUN_ID" in environ:
            launcher = "torchrun"
        else:
            launcher = "python"
        parent_environ, parent_cmdline = None, []
        launcher_pid = os.getppid() if launcher != "python" else None
        if launcher != "python":
            try:
                parent = psutil.Process().parent()
                if parent is not None:
                    parent_environ, parent_cmdline = parent.environ(), parent.cmdline()
            except (psutil.Error, OSError):
                pass
        world_size = environ.get("WORLD_SIZE")
        return cls(
            launcher=launcher,
            world_size=int(world_size) if world_size and world_size.isdigit() else None,
            local_world_size=max(int(environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1),
            launcher_environ=parent_environ,
            launcher_cmdline=parent_cmdline,
            launcher_pid=launcher_pid,
        )

    def set_by_launcher(self, name: str) -> bool:
        """Whether the environment variable `name` was set by the launcher (True) rather than given by the user."""
        return (
            self.launcher != "python"
            and name in os.environ
            and self.launcher_environ is not None
            and name not in self.launcher_environ
        )

    def launcher_flag(self, flag: str) -> str | None:
        """The value of `--flag VALUE` or `--flag=VALUE` on the launcher's command line, if the user typed it."""
        for i, word in enumerate(self.launcher_cmdline):
            if word == flag and i + 1 < len(self.launcher_cmdline):
                return self.launcher_cmdline[i + 1]
            if word.startswith(flag + "="):
                return word.split("=", 1)[1]
        return None


def usable_cpus() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_threads(launch: Launch) -> tuple[int | None, str | None]:
    """The thread count a CPU run should use where the launcher, not the user, chose one; else (None, None).

    Returns the count and a note for the run's header: each local process gets an equal share of the usable cores,
    as plain `python` (one process) gets all of them. `OMP_NUM_THREADS` or `--num_cpu_threads_per_process` given by
    the user is kept.
    """
    if not launch.set_by_launcher("OMP_NUM_THREADS"):
        return None, None
    if launch.launcher_flag("--num_cpu_threads_per_process") is not None:
        return None, None
    threads = max(usable_cpus() // launch.local_world_size, 1)
    launcher_value = os.environ["OMP_NUM_THREADS"]
    if str(threads) == launcher_value:
        return None, None
    note = (
        f"{launch.launcher} set OMP_NUM_THREADS={launcher_value}; using {threads} thread(s) per process "
        f"({usable_cpus()} usable cores / {launch.local_world_size} local process(es)). "
        f"Set OMP_NUM_THREADS yourself to choose"
    )
    return threads, note


def wants_cpu_processes(launch: Launch, accelerator_available: bool) -> bool:
    """Whether Accelerate must be told to join the launched processes on the CPU (gloo).

    True with `ACCELERATE_USE_CPU=true`, and where a launcher started several processes on a machine without GPUs
    (`accelerate launch --multi_gpu`, `torchrun`): without it each would train alone, on the same output folder.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes", "on"):
        return True
    return (launch.world_size or 1) > 1 and not accelerator_available


def process_count_problem(launch: Launch, num_processes: int) -> str | None:
    """A one-line refusal where the processes Accelerate runs are not those the launcher was asked for."""
    if launch.world_size is not None and launch.world_size != num_processes:
        return (
            f"{launch.launcher} started {launch.world_size} processes but Accelerate runs {num_processes}; "
            f"on a CPU start them with: {CPU_PROCESSES_COMMAND}"
        )
    # accelerate's single-process launcher sets MASTER_ADDR only when asked for several processes or machines.
    if (
        launch.launcher == "accelerate launch"
        and launch.world_size is None
        and num_processes == 1
        and launch.set_by_launcher("MASTER_ADDR")
    ):
        asked = launch.launcher_flag("--num_processes") or "several"
        return (
            f"accelerate launch was asked for {asked} processes but started one (with --cpu, or a MULTI_CPU "
            f"config file, it starts a single process); for several CPU processes run: {CPU_PROCESSES_COMMAND}"
        )
    return None


def engine_warning(distributed_type: str) -> str | None:
    """A warning where the distributed engine asked for (FSDP, DeepSpeed) is not the one Accelerate runs."""
    engines = (("FSDP", "FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
    for engine, name, variable in engines:
        asked = os.environ.get(variable, "").lower() in ("1", "true", "yes", "on")
        if asked and distributed_type != engine:
            return (
                f"warning: {name} was asked for but Accelerate runs {distributed_type} (it needs GPUs): "
                f"weights are not sharded and checkpoints are plain"
            )
    return None


def launcher_precision(launch: Launch) -> tuple[str, str] | None:
    """The precision the launcher asks for and how to name it in a message, or None where it asks for nothing.

    `accelerate launch --mixed_precision X` typed by the user counts whatever X is ("no" included); a config
    file's (`accelerate config`) counts when it is fp16 or bf16 ("no" is also what Accelerate passes when nothing
    was chosen).
    """
    if launch.launcher != "accelerate launch":
        return None
    typed = launch.launcher_flag("--mixed_precision")
    if typed is not None:
        return typed.lower(), f"accelerate launch --mixed_precision {typed}"
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if value in ("fp16", "bf16"):
        return value, f"accelerate's mixed_precision: {value} (accelerate config)"
    return None


__all__ = [
    "CPU_PROCESSES_COMMAND",
    "Launch",
    "cpu_threads",
    "engine_warning",
    "launcher_precision",
    "process_count_problem",
    "usable_cpus",
    "wants_cpu_processes",
]
