"""The GPU check: one command that, on one H100 in under 8 minutes, checks what a CPU cannot and writes one results
file (benchmark "gpu_check", bench/machine.py:write_results).

    python bench/gpu_check.py [--out FILE] [--work DIR] [--data DIR] [--parts fp16 profile ...] [--dry-run]

Its parts, each with its own time limit (`PARTS`); a part that fails is recorded and the others still run:

- fp16: `gpu-small` in fp16 with loss scaling under `accelerate launch --config_file` (a single-GPU config file):
  MFU, no NaN, the loss falls, the updates the loss scaler skipped.
- profile: where the time of one training step goes (`torch.profiler` over the loop's own `optimizer_step`): the
  kernels with the most GPU time and how busy the GPU is.
- bf16: bf16 with and without `compile`, same seed and batches: the two loss curves side by side (the bf16 + compile
  divergence seen once on torch 2.11, reproduced or gone on this torch).
- fsdp2: Accelerate's FSDP2 (`fsdp_version: 2`, sharded state dict) on one GPU: train with sharded checkpoints,
  resume from the middle one into a new folder, the losses after it against the uninterrupted run, and a `final/`
  that `from_pretrained` loads in a process that sees no GPU.
- overflow: a real GradScaler overflow: the loss of one chosen update is multiplied by 1e6 (its fp16 gradients
  overflow), the update is skipped and the scale halved, and the scaler's state saved in a checkpoint resumes into
  a run whose losses and final scale equal the uninterrupted one's.

Without --data the shipped sample is prepared first (part "data"). Without CUDA, or with --dry-run, every part is
built (its command lines and config files, each config parsed as the run would parse it) and recorded as skipped:
the suite runs that (tests/test_gpu_check.py), so the check cannot rot while no GPU is at hand. Exits 1 when a part
failed. docs/benchmarks.md has the command the device machine runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
GPU_SMALL = ROOT / "configs" / "gpu-small.yaml"
PARTS = ("fp16", "profile", "bf16", "fsdp2", "overflow")
# Seconds each part may take, "data" (preparing the shipped sample) included: together they fit 8 minutes.
LIMITS = {"data": 40, "fp16": 120, "profile": 60, "bf16": 120, "fsdp2": 90, "overflow": 50}
PEAK_TFLOPS = 989.0  # H100 SXM dense fp16/bf16
MFU_TARGET = 0.40
# Losses after a resume may differ from the uninterrupted run's by this much and still count as exact: cuBLAS and
# the embedding's backward (atomic adds) are not bit-deterministic on a GPU. The measured difference is recorded.
RESUME_TOLERANCE = 1e-4
INITIAL_SCALE = 65536.0  # torch's GradScaler's, which Accelerate keeps; it grows only every 2,000 clean updates
OVERFLOW_FACTOR = 1e6  # x INITIAL_SCALE: far beyond fp16's 65,504 in the gradients


# ------------------------------------------------------------------------------------------- what a part runs
@dataclass
class Command:
    """One process a part starts; its output goes to `log`."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        prefix = " ".join(f"{key}={shlex.quote(value)}" for key, value in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.argv)


@dataclass
class Part:
    """A part of the check: its commands (run in order, each stopping the part if it fails), the config files they
    read (parsed by `validate`), and `check`, which reads their outputs into the part's results."""

    name: str
    commands: list[Command]
    check: Callable[[], dict]
    validate: Callable[[], None] = lambda: None
    files: list[Path] = field(default_factory=list)


def train_command(name: str, work: Path, config: Path, data: Path, out: Path, *overrides: str,
                  accelerate_config: Path | None = None, resume: Path | None = None) -> Command:
    """scripts/train.py as users start it: under `accelerate launch --config_file FILE` where one is given."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)] \
        if accelerate_config else [sys.executable]
    argv = [*launcher, str(TRAIN), "--config", str(config), "--data", str(data), "--out", str(out), "--overwrite"]
    if resume is not None:
        argv[-1:] = ["--resume", str(resume)]
    return Command(name, argv + list(overrides), work / f"{name}.log")


def write_accelerate_config(path: Path, distributed_type: str, mixed_precision: str, fsdp: dict | None = None):
    """An `accelerate config` file for one GPU on one machine (FSDP's options under fsdp_config)."""
    import yaml

    config = {"compute_environment": "LOCAL_MACHINE", "distributed_type": distributed_type, "num_machines": 1,
              "num_processes": 1, "machine_rank": 0, "gpu_ids": "0", "mixed_precision": mixed_precision,
              "use_cpu": False, "main_training_function": "main", "rdzv_backend": "static",
              "same_network": True}
    if fsdp:
        config["fsdp_config"] = fsdp
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check_accelerate_config(path: Path) -> None:
    """Parse an accelerate config file as `accelerate launch` does; its fsdp_config keys must be launch options."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    config = ClusterConfig.from_yaml_file(path)
    options = {action.dest for action in launch_command_parser()._actions}
    unknown = sorted(set(config.fsdp_config) - options)
    if unknown:
        raise ValueError(f"{path}: fsdp_config has keys accelerate launch does not know: {unknown}")


def check_train_config(config: Path, overrides: list[str]) -> None:
    """Parse a training config with its overrides as scripts/train.py does (a bad key or value raises SLMError)."""
    from slm_hf.training.config import TrainingConfig

    TrainingConfig.load(config, overrides)


# ----------------------------------------------------------------------------------------------- the parts
def fp16_part(work: Path, data: Path, config: Path, peak_tflops: float) -> Part:
    single = write_accelerate_config(work / "single_gpu.yaml", "NO", "fp16")
    overrides = ["mixed_precision=fp16", "max_minutes=1.0", "max_steps=600", "log_interval=25"]
    command = train_command("fp16", work, config, data, work / "fp16", *overrides, accelerate_config=single)

    def check():
        train = train_records(work / "fp16")
        speeds = sorted(r["tokens_per_s"] for r in train if "tokens_per_s" in r)
        median_speed = speeds[len(speeds) // 2] if speeds else None
        flops = model_flops_per_token(work / "fp16" / "final")
        mfu = median_speed * flops / (peak_tflops * 1e12) if median_speed else None
        results = json.loads((work / "fp16" / "final" / "training_results.json").read_text())
        no_nan = all(math.isfinite(r["train/loss"]) for r in train)
        loss_fell = len(train) > 1 and train[-1]["train/loss"] < train[0]["train/loss"] - 1.0
        return {"passed": no_nan and loss_fell, "steps": train[-1]["step"] if train else 0,
                "first_losses": [r["train/loss"] for r in train[:3]],
                "last_losses": [r["train/loss"] for r in train[-3:]], "no_nan": no_nan, "loss_fell": loss_fell,
                "skipped_steps": max((r.get("skipped_steps", 0) for r in train), default=0),
                "median_tokens_per_s": median_speed, "mfu": mfu, "mfu_target": MFU_TARGET,
                "mfu_target_met": mfu is not None and mfu >= MFU_TARGET, "peak_tflops": peak_tflops,
                "precision": results.get("precision"), "peak_memory_gib": results.get("peak_memory_gib"),
                "wall_time_s": results.get("wall_time_s")}

    return Part("fp16", [command], check, lambda: (check_accelerate_config(single),
                                                      check_train_config(config, overrides)), [single])


def profile_part(work: Path, config: Path) -> Part:
    out = work / "profile.json"
    argv = [sys.executable, __file__, "--config", str(config), "--internal", "profile", str(out)]
    command = Command("profile", argv, work / "profile.log")
    return Part("profile", [command], lambda: {"passed": True, **json.loads(out.read_text())})


def bf16_part(work: Path, data: Path, config: Path) -> Part:
    common = ["mixed_precision=bf16", "max_steps=150", "log_interval=10", "eval_interval=150", "save_interval=150"]
    commands = [train_command(f"bf16_{name}", work, config, data, work / f"bf16_{name}", *common,
                              f"compile={'true' if compiled else 'false'}")
                for name, compiled in (("eager", False), ("compiled", True))]

    def check():
        eager, compiled = (losses(work / f"bf16_{name}") for name in ("eager", "compiled"))
        steps = sorted(set(eager) & set(compiled))
        gaps = [abs(eager[s] - compiled[s]) for s in steps]
        finite = all(math.isfinite(v) for v in [*eager.values(), *compiled.values()])
        diverged = not finite or (bool(steps) and compiled[steps[-1]] > eager[steps[-1]] + 0.5)
        return {"passed": bool(steps) and not diverged, "diverged": diverged,
                "side_by_side": [{"step": s, "eager": eager[s], "compiled": compiled[s]} for s in steps],
                "max_gap": max(gaps, default=None), "final_gap": gaps[-1] if gaps else None}

    return Part("bf16", commands, check,
                lambda: [check_train_config(config, c.argv[c.argv.index("--overwrite") + 1:]) for c in commands])


def fsdp2_part(work: Path, data: Path, config: Path) -> Part:
    fsdp = {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": "SLMDecoderLayer", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_reshard_after_forward": True, "fsdp_offload_params": False, "fsdp_cpu_ram_efficient_loading": False}
    config_file = write_accelerate_config(work / "fsdp2.yaml", "FSDP", "bf16", fsdp)
    overrides = ["mixed_precision=bf16", "compile=false", "batch_size=64", "max_steps=60", "save_interval=30",
                 "eval_interval=30", "keep_last=3", "log_interval=10"]
    full, branch = work / "fsdp2", work / "fsdp2_resumed"
    middle = full / "checkpoints" / "step_0000030"
    final_loads = ("import sys, slm_hf, torch; from transformers import AutoModelForCausalLM; "
                   "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
                   "print(sum(p.numel() for p in m.parameters()), next(m.parameters()).device)")
    commands = [
        train_command("fsdp2", work, config, data, full, *overrides, accelerate_config=config_file),
        train_command("fsdp2_resumed", work, config, data, branch, *overrides, accelerate_config=config_file,
                      resume=middle),
        Command("fsdp2_final_loads", [sys.executable, "-c", final_loads, str(full / "final")],
                work / "fsdp2_final_loads.log", env={"CUDA_VISIBLE_DEVICES": ""}),
    ]

    def check():
        expected, resumed = losses(full), losses(branch)
        gaps = [abs(resumed[s] - expected[s]) for s in sorted(resumed) if s in expected]
        sharded = [p.relative_to(middle).as_posix() for p in middle.rglob("*.distcp")]
        exact = bool(gaps) and min(resumed) == 31 and max(gaps) <= RESUME_TOLERANCE
        loaded = (work / "fsdp2_final_loads.log").read_text().split()
        return {"passed": exact and bool(sharded), "sharded_checkpoint_files": sharded[:8],
                "resumed_steps": [min(resumed, default=None), max(resumed, default=None)],
                "max_loss_gap_after_resume": max(gaps, default=None), "tolerance": RESUME_TOLERANCE,
                "bit_exact": bool(gaps) and max(gaps) == 0.0, "final_loads_without_gpu": loaded[-2:]}

    return Part("fsdp2", commands, check, lambda: (check_accelerate_config(config_file),
                                                      check_train_config(config, overrides)), [config_file])


def overflow_part(work: Path, data: Path, config: Path) -> Part:
    overrides = ["mixed_precision=fp16", "compile=false", "batch_size=64", "max_steps=40", "save_interval=20",
                 "eval_interval=40", "keep_last=3", "log_interval=5"]
    full, branch = work / "overflow", work / "overflow_resumed"

    def run(name, out, at, resume=None):
        spec = {"config": str(config), "overrides": overrides, "data": str(data), "out": str(out),
                "overflow_at": at, "resume": resume}
        return Command(name, [sys.executable, __file__, "--internal", "overflow-train", json.dumps(spec)],
                       work / f"{name}.log")

    commands = [run("overflow", full, 10), run("overflow_resumed", branch, None,
                                               str(full / "checkpoints" / "step_0000020"))]

    def check():
        import torch

        log = (work / "overflow.log").read_text()
        skipped = [int(step) for step in re.findall(r"step (\d+): fp16 gradients overflowed, update skipped", log)]

        def scaler(out, step):
            state = torch.load(out / "checkpoints" / f"step_{step:07d}" / "scaler.pt", weights_only=True)
            return {key: float(value) for key, value in state.items() if key in ("scale", "_growth_tracker")}

        at_20, full_40, resumed_40 = scaler(full, 20), scaler(full, 40), scaler(branch, 40)
        expected, resumed = losses(full), losses(branch)
        gaps = [abs(resumed[s] - expected[s]) for s in sorted(resumed) if s in expected]
        halved = at_20["scale"] == INITIAL_SCALE / 2 ** len([step for step in skipped if step <= 20])
        resumed_equal = bool(gaps) and max(gaps) <= RESUME_TOLERANCE and resumed_40 == full_40
        return {"passed": 10 in skipped and halved and resumed_equal, "skipped_updates": skipped,
                "scaler_at_step_20": at_20, "scale_halved_per_skip": halved, "scaler_at_step_40": full_40,
                "scaler_at_step_40_resumed": resumed_40, "max_loss_gap_after_resume": max(gaps, default=None)}

    return Part("overflow", commands, check, lambda: check_train_config(config, overrides))


def build_parts(names, work: Path, data: Path, config: Path, peak_tflops: float) -> list[Part]:
    builders = {"fp16": lambda: fp16_part(work, data, config, peak_tflops),
                "profile": lambda: profile_part(work, config), "bf16": lambda: bf16_part(work, data, config),
                "fsdp2": lambda: fsdp2_part(work, data, config),
                "overflow": lambda: overflow_part(work, data, config)}
    return [builders[name]() for name in names]


# ------------------------------------------------------------------------------------------- running parts
def run_part(part: Part, limit: float) -> dict:
    """Run a part's commands within `limit` seconds; its results, or why it failed."""
    started = time.perf_counter()
    record = {"limit_s": limit, "commands": [command.shell() for command in part.commands]}
    try:
        for command in part.commands:
            left = limit - (time.perf_counter() - started)
            status = run_command(command, left)
            if status is not None:
                record.update(passed=False, status=f"failed: {command.name} {status} (log {command.log})")
                return record | {"wall_s": round(time.perf_counter() - started, 1)}
        record.update(part.check())
        record["status"] = "passed" if record["passed"] else "failed: checks did not hold"
    except Exception as error:  # a check that cannot read its outputs fails this part, not the others
        record.update(passed=False, status=f"failed: {type(error).__name__}: {error}")
    record["wall_s"] = round(time.perf_counter() - started, 1)
    return record


def run_command(command: Command, seconds: float) -> str | None:
    """Run `command` in a process group of its own, output into its log; None if it succeeded, else why not."""
    if seconds <= 0:
        return "not started: the part's time limit was spent"
    print(f"$ {command.shell()}", flush=True)
    command.log.parent.mkdir(parents=True, exist_ok=True)
    with command.log.open("w") as log:
        process = subprocess.Popen(command.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env=os.environ | command.env, start_new_session=True)
        try:
            status = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"ran past the time limit ({seconds:.0f} s left)"
    return None if status == 0 else f"exited with {status}"


def train_records(out: Path) -> list[dict]:
    metrics = out / "metrics.jsonl"
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if "train/loss" in r]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in train_records(out)}


def model_flops_per_token(model_dir: Path) -> float:
    """6 x (weights of every matrix product) + 12 x layers x width x context: the MFU's FLOPs per token."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import slm_hf  # noqa: F401  (registers the model)

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    block = json.loads((model_dir / "training_results.json").read_text())["config"]["block_size"]
    return 6 * weights + 12 * config.num_hidden_layers * config.hidden_size * block


# ------------------------------------------------------------------------- run inside a part's own process
def profile_step(out: Path, config_path: Path, warmup: int = 15, steps: int = 5, rows: int = 15) -> None:
    """Profile the loop's `optimizer_step` of the config's model on random tokens: step time, GPU busy, kernels."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from torch.autograd import DeviceType

    from slm_hf import SLMForCausalLM
    from slm_hf.configuration_slm import DEFAULT_VOCAB_SIZE
    from slm_hf.training import (
        BatchShape,
        TokenWindows,
        TrainingBatches,
        build_optimizer,
        compile_layers_and_loss,
        optimizer_step,
    )
    from slm_hf.training.config import TrainingConfig

    config, model_config = TrainingConfig.load(config_path).resolved(vocab_size=DEFAULT_VOCAB_SIZE, eos_token_id=0)
    shape = BatchShape(config.batch_size, config.gradient_accumulation_steps, processes=1,
                       block_size=config.block_size)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(0)
    model = SLMForCausalLM(model_config)
    optimizer = build_optimizer(model, config)
    if config.compile:
        compile_layers_and_loss(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    tokens = np.random.default_rng(0).integers(0, model_config.vocab_size, 10_000_000).astype(np.uint16)
    windows = TokenWindows(tokens, shape.block_size, shape.micro_batch_size, seed=0, stream=0)
    batches = TrainingBatches(windows, shape, rank=0, device=accelerator.device)  # the Trainer's micro-batches

    def step(n):
        return optimizer_step(accelerator, model, optimizer, batches.of_step(n), config.grad_clip)[0]

    for n in range(warmup):
        step(n)
    torch.cuda.synchronize()
    started = time.perf_counter()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        for n in range(steps):
            step(warmup + n)
        torch.cuda.synchronize()
    wall = (time.perf_counter() - started) / steps
    kernels = [e for e in profile.key_averages() if e.device_type == DeviceType.CUDA]  # not operators: no double count
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    busy = sum(e.self_device_time_total for e in kernels) / 1e6 / steps
    out.write_text(json.dumps({
        "step_ms_profiled": wall * 1e3, "gpu_busy_ms": busy * 1e3, "gpu_busy_share": busy / wall,
        "tokens_per_s_profiled": shape.tokens_per_step / wall, "warmup_steps": warmup, "profiled_steps": steps,
        "kernels": [{"name": e.key[:80], "ms_per_step": e.self_device_time_total / 1e3 / steps, "calls": e.count}
                    for e in kernels[:rows]]}, indent=2))


def overflow_train(spec: dict) -> None:
    """scripts/train.py's run, its model's loss multiplied by OVERFLOW_FACTOR at update `overflow_at` (if any)."""
    from slm_hf import SLMForCausalLM
    from slm_hf.configuration_slm import DEFAULT_VOCAB_SIZE
    from slm_hf.training import train
    from slm_hf.training.config import TrainingConfig

    class OverflowOnce(SLMForCausalLM):
        calls = 0

        def forward(self, *args, **kwargs):
            output = super().forward(*args, **kwargs)
            if self.training:
                OverflowOnce.calls += 1  # one forward per update: gradient_accumulation_steps is 1
                if OverflowOnce.calls == spec["overflow_at"]:
                    output.loss = output.loss * OVERFLOW_FACTOR
            return output

    config = TrainingConfig.load(spec["config"], spec["overrides"])
    resume = spec["resume"]
    train(config, spec["data"], spec["out"], resume=resume, overwrite=resume is None, model_factory=OverflowOnce)


# ---------------------------------------------------------------------------------------------- the report
def gpu_facts() -> dict:
    """The GPU's name, CUDA and driver versions (machine.describe adds them too; here also for the file name)."""
    from machine import gpu_description

    return gpu_description() or {}


def versions() -> dict:
    """The versions of the libraries the parts exercise (machine.describe names torch and transformers)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("accelerate", "datasets", "huggingface_hub", "tokenizers")}


def validate_report(path: Path, parts) -> None:
    """The results file must be strict JSON (no NaN) with a status for every part asked for."""
    record = json.loads(path.read_text())
    json.dumps(record, allow_nan=False)
    missing = [name for name in parts if "status" not in record["results"]["parts"].get(name, {})]
    if missing:
        raise ValueError(f"{path}: no status for parts {missing}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the results file (default: bench/results/gpu_check_<gpu>_<date>"
                                                 ".json; with --dry-run or without CUDA: WORK/gpu_check.json)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu-check", help="runs and logs go here")
    parser.add_argument("--data", type=Path, help="a prepared data folder (default: prepare the shipped sample)")
    parser.add_argument("--config", type=Path, default=GPU_SMALL, help="the training config (default: gpu-small)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help="the card's dense fp16 peak (MFU)")
    parser.add_argument("--dry-run", action="store_true", help="build and check every part's commands, run none")
    parser.add_argument("--internal", nargs=2, help=argparse.SUPPRESS)  # a part's own process
    args = parser.parse_args(argv)
    if args.internal:
        what, value = args.internal
        profile_step(Path(value), args.config) if what == "profile" else overflow_train(json.loads(value))
        return 0

    import torch

    from machine import model_shape, write_results

    from slm_hf.configuration_slm import DEFAULT_VOCAB_SIZE
    from slm_hf.training.config import TrainingConfig

    cuda = torch.cuda.is_available()
    skipped = "skipped: --dry-run" if args.dry_run else None if cuda else "skipped: no CUDA"
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve() if args.data else work / "data"
    steps = ["data"] * (args.data is None) + args.parts
    report = {"parts": {}, "limits_s": {name: LIMITS[name] for name in steps}}
    report["limits_total_s"] = sum(report["limits_s"].values())
    started = time.perf_counter()
    if args.data is None:
        prepare = Command("data", [sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--out", str(data)],
                          work / "data.log")
        report["data"] = {"command": prepare.shell()}
        if not skipped:
            status = run_command(prepare, LIMITS["data"])
            report["data"]["status"] = status or "prepared"
            if status:
                skipped = f"failed: data not prepared ({status})"
    for part in build_parts(args.parts, work, data, args.config.resolve(), args.peak_tflops):
        record = {"limit_s": LIMITS[part.name], "commands": [command.shell() for command in part.commands],
                  "files": [str(path) for path in part.files]}
        try:
            part.validate()
        except Exception as error:  # a config that would not parse fails its part before anything runs
            record.update(passed=False, status=f"failed: invalid configuration: {type(error).__name__}: {error}")
        else:
            record = record | ({"status": skipped} if skipped else run_part(part, LIMITS[part.name]))
        report["parts"][part.name] = record
        print(f"{part.name}: {record['status']}", flush=True)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    gpu = gpu_facts()
    slug = gpu.get("gpu", "").lower().replace("nvidia", "").split()
    default = ROOT / "bench" / "results" / f"gpu_check_{slug[0] if slug else 'gpu'}_{time.strftime('%Y-%m-%d')}.json"
    out = args.out or (work / "gpu_check.json" if skipped else default)
    report["versions"] = versions()
    try:
        shape = model_shape(TrainingConfig.load(args.config).model_config(vocab_size=DEFAULT_VOCAB_SIZE,
                                                                          eos_token_id=0))
    except Exception:  # the parts have recorded why the config does not load
        shape = None
    path = write_results("gpu_check", report, shape=shape, out=out)
    validate_report(path, args.parts)
    print(f"results: {path}")
    failed = [name for name, record in report["parts"].items() if record["status"].startswith("failed")]
    if failed:
        print(f"failed parts: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
