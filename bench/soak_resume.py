"""Fault soak: a training run killed with SIGKILL at many seeded random moments, resumed each time with
`--resume auto`, must end exactly as an uninterrupted run: the same per-step training losses, validation losses and
final weights, bit for bit; `final/` complete (model card included), loadable and generating; no `.tmp-*` or
`.trash-*` left behind.

The run is the `tiny` preset with dropout 0.1 (every random state matters), gradient accumulation 2, an evaluation
every 20 updates, a checkpoint every 10 (`keep_last: 2`). Each kill aims at one phase of the run, at a step drawn
from the seed, and is timed from what the run writes (no sleep or switch in the product code): a training step
(after the step's loss is logged, plus a random delay), an evaluation (the step's loss flushed, its validation
loss not yet), a checkpoint save (its `.tmp-` folder appears), the rotation of old checkpoints (a third checkpoint
or a `.trash-` folder), the `best/` export, the `final/` export and the model card (written inside `.tmp-final/`
after the loss curve). After each kill the phase the run was really in is read from the folder it left.

    python bench/soak_resume.py                                  # 20 kills, then 5 on 2 processes, 3 compiled, ...
    python bench/soak_resume.py --kills 4 --skip-ddp --skip-compiled --skip-accumulation    # a quick check

Results: bench/results/soak_resume_<cpu>_<date>.json (or --json; bench/machine.py:write_results) and the figures
printed; bench/report.py renders them into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
TRAIN = ROOT / "scripts" / "train.py"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",  # the soak reads the run's lines as they come
}
EVAL_INTERVAL, SAVE_INTERVAL, KEEP_LAST = 20, 10, 2
SOAK_RUN = [
    "model.dropout=0.1",
    "gradient_accumulation_steps=2",
    f"eval_interval={EVAL_INTERVAL}",
    f"save_interval={SAVE_INTERVAL}",
    f"keep_last={KEEP_LAST}",
    "log_interval=5",
]
# The phases a kill can aim at, in the order they come within one step.
PHASES = ("step", "eval", "best", "save", "rotate", "final", "card")
MODEL_FOLDER_FILES = (
    "model.safetensors", "config.json", "generation_config.json", "configuration_slm.py", "modeling_slm.py",
    "tokenizer.json", "training_results.json", "train_config.yaml", "loss_curve.png", "README.md",
)  # fmt: skip


@dataclass(order=True)
class Target:
    """A kill aimed at `phase` around update `step` (for final/card: the end of the run)."""

    step: int
    order: int
    phase: str = field(compare=False)
    delay_s: float = field(compare=False, default=0.0)
    retry: bool = field(compare=False, default=False)  # a second aim at a window the first kill missed


def kill_plan(kills: int, max_steps: int, seed: int) -> list[Target]:
    """`kills` targets drawn from `seed`, spread over the run and its phases, in the order the run meets them."""
    rng = random.Random(seed)
    evals = list(range(EVAL_INTERVAL, max_steps + 1, EVAL_INTERVAL))
    saves = list(range(SAVE_INTERVAL, max_steps + 1, SAVE_INTERVAL))
    choices = {
        "step": lambda: rng.randint(1, max_steps - 1),
        "eval": lambda: rng.choice(evals),
        "best": lambda: rng.choice(evals),
        "save": lambda: rng.choice(saves),
        "rotate": lambda: rng.choice(saves[KEEP_LAST:]),
        "final": lambda: max_steps,
        "card": lambda: max_steps,
    }
    # Every phase at least once (when there are kills enough), the rest drawn at random.
    phases = list(PHASES)[:kills] + [rng.choice(PHASES) for _ in range(kills - len(PHASES))]
    targets = []
    for phase in phases:
        targets.append(Target(choices[phase](), PHASES.index(phase), phase, rng.uniform(0, 0.05)))
    return sorted(targets)


def train_command(data: Path, out: Path, extra: list[str], processes: int = 1) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]  # a free port
    return [*launcher, str(TRAIN), "--config", str(TINY), "--data", str(data), "--out", str(out), *extra]


def run_env(processes: int) -> dict[str, str]:
    return {**ENV, "ACCELERATE_USE_CPU": "true"} if processes > 1 else ENV


def run_to_end(data: Path, out: Path, extra: list[str], processes: int = 1, resume: bool = False) -> str:
    command = train_command(data, out, [*extra, *(["--resume", "auto"] if resume else [])], processes)
    result = subprocess.run(command, env=run_env(processes), capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"train.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def logged_records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line being written
            break
    return records


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith((".tmp-", ".trash-")))


def reached(target: Target, out: Path) -> bool:
    """Whether the run is in the target's phase now (or, for a step, past its step)."""
    checkpoints = out / "checkpoints"
    if target.phase in ("step", "eval"):
        records = logged_records(out)
        trained = [r["step"] for r in records if "train/loss" in r]
        if target.phase == "step":
            return bool(trained) and trained[-1] >= target.step
        evaluated = any("val/loss" in r and r["step"] == target.step for r in records)
        return bool(trained) and trained[-1] == target.step and not evaluated
    if target.phase == "save":
        return (checkpoints / f".tmp-step_{target.step:07d}").exists()
    if target.phase == "rotate":
        if not checkpoints.is_dir():
            return False
        names = [p.name for p in checkpoints.iterdir()]
        newest = f"step_{target.step:07d}"
        steps = [n for n in names if n.startswith("step_")]
        return newest in steps and (len(steps) > KEEP_LAST or any(n.startswith(".trash-") for n in names))
    if target.phase == "best":
        return (out / ".tmp-best").exists()
    if target.phase == "final":
        return (out / ".tmp-final").exists()
    if target.phase == "card":
        return (out / ".tmp-final" / "loss_curve.png").exists()
    raise ValueError(target.phase)


def passed(target: Target, out: Path) -> bool:
    """Whether the run has gone past the target's moment without meeting it (then the kill comes at once, and the
    soak aims at the next occurrence of the phase)."""
    if target.phase in ("step", "final", "card"):
        return False
    trained = [r["step"] for r in logged_records(out) if "train/loss" in r]
    return bool(trained) and trained[-1] > target.step


def observed_phase(out: Path, before: list[dict]) -> str:
    """The phase a killed run was in, from what it left."""
    left = leftovers(out)
    checkpoints = out / "checkpoints"
    steps = [p for p in checkpoints.iterdir() if p.name.startswith("step_")] if checkpoints.is_dir() else []
    if any(name.startswith(".tmp-final") for name in left):
        return "card" if (out / ".tmp-final" / "loss_curve.png").exists() else "final"
    if any(name.startswith("checkpoints/.trash-") for name in left) or len(steps) > KEEP_LAST:
        return "rotate"
    if any(name.startswith("checkpoints/.tmp-step_") for name in left):
        return "save"
    if any(name.startswith((".tmp-best", ".trash-best")) for name in left):
        return "best"
    if (out / "final").is_dir():
        return "after the end"
    records = logged_records(out)
    if records and "train/loss" in records[-1] and records[-1]["step"] % EVAL_INTERVAL == 0:
        return "eval"
    return "step"


class Lines:
    """The stdout lines of a process, read by a thread as they come."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def saw(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in list(self.lines))


def kill_at(target: Target, data: Path, out: Path, extra: list[str], processes: int = 1) -> dict:
    """Start (or resume) the run, kill it (all its processes) with SIGKILL at `target`; what happened."""
    resume = out.exists()
    command = train_command(data, out, [*extra, *(["--resume", "auto"] if resume else [])], processes)
    process = subprocess.Popen(
        command, env=run_env(processes), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,  # its own process group: torchrun's workers die with it
    )  # fmt: skip
    lines = Lines(process.stdout)
    while not lines.saw("training ") and process.poll() is None:  # metrics.jsonl rewritten, leftovers removed
        time.sleep(0.005)
    hit = False
    checked = 0.0
    while process.poll() is None:
        if reached(target, out):
            hit = True
            break
        if time.monotonic() - checked > 0.02:  # reading metrics.jsonl is slower than looking for a folder
            if passed(target, out):
                break
            checked = time.monotonic()
        time.sleep(0.0002)
    if hit and target.phase == "step":
        time.sleep(target.delay_s)
    if process.poll() is not None:
        lines.thread.join(5)
        return {"target": f"{target.phase}@{target.step}", "killed": False, "status": process.returncode}
    kill_tree(process)
    lines.thread.join(5)
    phase = observed_phase(out, [])
    return {
        "target": f"{target.phase}@{target.step}",
        "killed": True,
        "hit": hit,
        "observed": phase,
        "resumed_from": next((line.split()[2] for line in lines.lines if line.startswith("resumed from")), None),
        "leftovers": leftovers(out),
    }


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and every process under it at once (torchrun starts its workers in their own sessions)."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(tree, timeout=30)


def compare(out: Path, reference: Path, exact: bool = True) -> dict:
    """The checks of a soaked run against an uninterrupted one."""
    import torch
    from safetensors.torch import load_file

    def losses(folder):
        records = logged_records(folder)
        train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
        val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
        return train, val

    (train, val), (train_ref, val_ref) = losses(out), losses(reference)
    report = {
        "train_steps": len(train),
        "steps_logged_once": len({s for s, _ in train}) == len(train) and len({s for s, _ in val}) == len(val),
    }
    final, final_ref = load_file(out / "final" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    if exact:
        report["train_losses_equal"] = train == train_ref
        report["val_losses_equal"] = val == val_ref
        report["final_weights_equal"] = final.keys() == final_ref.keys() and all(
            torch.equal(final[k], final_ref[k]) for k in final_ref
        )
    else:
        report["max_train_loss_difference"] = max(abs(a[1] - b[1]) for a, b in zip(train, train_ref))
        report["max_val_loss_difference"] = max(abs(a[1] - b[1]) for a, b in zip(val, val_ref))
        report["max_weight_difference"] = max((final[k] - final_ref[k]).abs().max().item() for k in final_ref)
        report["same_steps"] = [s for s, _ in train] == [s for s, _ in train_ref] and [s for s, _ in val] == [
            s for s, _ in val_ref
        ]
    for name in ("final", "best"):
        report[f"{name}_complete"] = all((out / name / file).is_file() for file in MODEL_FOLDER_FILES)
    report["best_weights_equal"] = (out / "best").is_dir() and (
        (out / "best" / "model.safetensors").read_bytes() == (reference / "best" / "model.safetensors").read_bytes()
    )
    report["leftovers"] = leftovers(out)
    report["generates"] = generates(out / "final")
    return report


def generates(folder: Path) -> bool:
    import slm_hf  # noqa: F401  (registers the model)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer("Once upon a time", return_tensors="pt")
    story = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return story.shape[1] > inputs["input_ids"].shape[1]


def soak(
    data: Path, work: Path, kills: int, max_steps: int, seed: int, processes: int = 1, extra: tuple[str, ...] = (),
    reference: Path | None = None, log=print, targets: list[Target] | None = None,
) -> dict:  # fmt: skip
    """Run the reference (unless given) and the killed run; kill it `kills` times, resume to the end; compare."""
    run = [*SOAK_RUN, f"max_steps={max_steps}", *extra]
    if processes > 1:  # the same micro-batches per update on 2 processes
        run = [arg for arg in run if not arg.startswith("gradient_accumulation_steps")] + [
            "gradient_accumulation_steps=1"
        ]
    if reference is None:
        reference = work / "reference"
        started = time.perf_counter()
        run_to_end(data, reference, run, processes)
        log(f"reference run: {time.perf_counter() - started:.0f} s")
    out = work / "killed"
    events = []
    plan = list(targets) if targets is not None else kill_plan(kills, max_steps, seed)
    while plan:
        target = plan.pop(0)
        event = kill_at(target, data, out, run, processes)
        events.append(event)
        log(json.dumps(event))
        # A narrow window missed (the kill came after it, elsewhere): aim once more, at the phase's next occurrence.
        interval = EVAL_INTERVAL if target.phase in ("eval", "best") else SAVE_INTERVAL
        if event["killed"] and not event["hit"] and not target.retry and target.step + interval <= max_steps:
            plan = sorted([Target(target.step + interval, target.order, target.phase, retry=True), *plan])
    run_to_end(data, out, run, processes, resume=True)
    report = compare(out, reference)
    killed = sum(event["killed"] for event in events)
    survived = killed if all(report[k] for k in report if k.endswith(("_equal", "_complete", "_once", "generates"))) else 0
    return {
        "processes": processes,
        "run": run,
        "kills_planned": len(targets) if targets is not None else kills,
        "kills": killed,
        "kills_survived": survived if not report["leftovers"] else 0,
        "aimed_phase_hit": sum(bool(e.get("hit")) for e in events),
        "phases_hit": {phase: sum(e.get("observed") == phase for e in events) for phase in (*PHASES, "after the end")},
        "events": events,
        "checks": report,
    }


def accumulation_comparison(data: Path, work: Path, max_steps: int) -> dict:
    """2 processes x accumulation 2 against 1 process x accumulation 4: the same 4 micro-batches per update. Dropout
    0: each process draws its own dropout masks, so with dropout the two runs differ by design."""
    run = [*SOAK_RUN, f"max_steps={max_steps}", "model.dropout=0.0"]
    one = [a for a in run if not a.startswith("gradient_accumulation_steps")] + ["gradient_accumulation_steps=4"]
    two = [a for a in run if not a.startswith("gradient_accumulation_steps")] + ["gradient_accumulation_steps=2"]
    run_to_end(data, work / "accumulation-1x4", one)
    run_to_end(data, work / "accumulation-2x2", two, processes=2)
    return compare(work / "accumulation-2x2", work / "accumulation-1x4", exact=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--ddp-kills", type=int, default=5)
    parser.add_argument("--compiled-kills", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/slm-soak"))
    parser.add_argument("--json", type=Path, help="the results file (default: bench/machine.py's name for it)")
    parser.add_argument("--skip-single", action="store_true", help="keep the 1-process figures already in --json")
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--skip-compiled", action="store_true")
    parser.add_argument("--skip-accumulation", action="store_true")
    args = parser.parse_args(argv)

    from slm_hf.data import prepare_data

    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    data = args.work / "data"
    prepare_data("sample", out_dir=data, vocab_size=512, max_stories=400, show_progress=False)
    from machine import write_results

    earlier = args.json and args.skip_single and args.json.is_file()
    results = json.loads(args.json.read_text())["results"] if earlier else {}
    results.update(seed=args.seed)
    started = time.perf_counter()

    def save():
        results["wall_time_s"] = round(time.perf_counter() - started)
        args.json = write_results("soak_resume", results, out=args.json,
                                  command=["python", "bench/soak_resume.py", *(argv or sys.argv[1:])])

    if not args.skip_single:
        results["single_process"] = soak(data, args.work / "single", args.kills, args.max_steps, args.seed)
        save()
    if not args.skip_ddp:
        results["two_processes"] = soak(data, args.work / "ddp", args.ddp_kills, args.max_steps, args.seed + 1, 2)
        save()
    if not args.skip_accumulation:
        results["accumulation_2x2_vs_1x4"] = accumulation_comparison(data, args.work / "accumulation", args.max_steps)
        save()
    if not args.skip_compiled:
        results["compiled"] = soak(
            data, args.work / "compiled", args.compiled_kills, args.max_steps, args.seed + 2, extra=("compile=true",)
        )
        save()
    for name in ("single_process", "two_processes", "compiled"):
        if name in results:
            r = results[name]
            print(f"{name}: {r['kills_survived']}/{r['kills']} kills survived, phases {r['phases_hit']}, "
                  f"checks {r['checks']}")
    if "accumulation_2x2_vs_1x4" in results:
        print(f"accumulation 2x2 vs 1x4: {results['accumulation_2x2_vs_1x4']}")
    print(f"results in {args.json}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
