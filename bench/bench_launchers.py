"""Launchers: the same training run started the ways users start it, and the tokens/s each really gets.

`python scripts/train.py`, `accelerate launch` without a config file, with one from `accelerate config default`,
with `--cpu`, and the 2-process CPU routes (`accelerate launch --multi_gpu` and `torchrun`, gloo) train the
`cpu-demo` preset (fp32, not compiled, so that every launcher runs the same code from its first step) for a few
dozen steps on the shipped sample. Reported per launcher: the threads and processes of the run's header and the
median of the tokens/s that metrics.jsonl records after the first flushes, and the ratio to `python`'s. The
launchers are interleaved over the repeats, so load from elsewhere hits them alike. Also the wall time of every
script's `--help` and of `import slm_hf`.

    python bench/bench_launchers.py                      # 60 steps, 3 repeats; bench/results/launchers_*.json
    python bench/bench_launchers.py --steps 20 --repeats 1
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, write_results

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ACCELERATE = [str(BIN / "accelerate"), "launch"]
HEADER = re.compile(r"on cpu \((\d+) threads\) x(\d+) \((.+?), distributed type (\w+)\)")


def launchers(config_file: Path) -> dict[str, tuple[list[str], dict[str, str], int]]:
    """name -> (command prefix, extra environment, processes). Every run sees 2 micro-batches per step."""
    cpu = {"ACCELERATE_USE_CPU": "true"}
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    return {
        "python": ([sys.executable], {}, 1),
        "accelerate launch": (ACCELERATE, {}, 1),
        "accelerate launch --config_file (default)": ([*ACCELERATE, "--config_file", str(config_file)], {}, 1),
        "accelerate launch --cpu": ([*ACCELERATE, "--cpu"], {}, 1),
        "accelerate launch --multi_gpu --num_processes 2 (CPU)": (
            [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--main_process_port", "29613"], cpu, 2),
        "torchrun --nproc_per_node 2 (CPU)": ([*torchrun, "--nproc_per_node", "2", "--master_port", "29614"], cpu, 2),
    }


def run_once(prefix, extra_env, processes: int, data: Path, out: Path, steps: int, batch_size: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env}
    env.pop("OMP_NUM_THREADS", None)
    command = [*prefix, str(ROOT / "scripts" / "train.py"), "--config", str(ROOT / "configs" / "cpu-demo.yaml"),
               "--data", str(data), "--out", str(out), "--overwrite", f"max_steps={steps}", "max_minutes=null",
               "compile=false", "mixed_precision=no", "eval_interval=100000", "eval_iters=1", "sample_tokens=0",
               "log_interval=3", f"batch_size={batch_size}",
               f"gradient_accumulation_steps={2 // processes}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(prefix)} failed:\n{result.stderr[-3000:]}")
    threads, processes_seen, launcher, distributed = HEADER.search(result.stdout).groups()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][2:]  # after the first flushes
    return {"threads": int(threads), "processes": int(processes_seen), "launcher": launcher,
            "distributed": distributed, "tokens_per_s": statistics.median(speeds)}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="windows of 256 tokens per micro-batch")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_launchers_"))
    data = work / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--out", str(data), "--no-progress"],
                   check=True, cwd=ROOT, capture_output=True)
    config_file = work / "accelerate_default.yaml"
    subprocess.run([str(BIN / "accelerate"), "config", "default", "--config_file", str(config_file)], check=True,
                   capture_output=True)
    runs: dict[str, list[dict]] = {}
    for repeat in range(args.repeats):
        for name, (prefix, extra_env, processes) in launchers(config_file).items():
            result = run_once(prefix, extra_env, processes, data, work / "run", args.steps, args.batch_size)
            runs.setdefault(name, []).append(result)
            print(f"repeat {repeat + 1}: {name}: {result}", flush=True)

    python_speed = statistics.median(r["tokens_per_s"] for r in runs["python"])
    table = []
    for name, results in runs.items():
        speed = statistics.median(r["tokens_per_s"] for r in results)
        table.append({"launcher": name, "threads": results[0]["threads"], "processes": results[0]["processes"],
                      "distributed": results[0]["distributed"], "tokens_per_s": round(speed),
                      "vs_python": round(speed / python_speed, 3)})
    startup = {f"{script} --help": round(statistics.median(
        timed([sys.executable, str(ROOT / "scripts" / script), "--help"]) for _ in range(3)), 2)
        for script in ("train.py", "prepare_data.py", "evaluate.py", "generate.py", "push_to_hub.py")}
    startup["app.py --help"] = round(statistics.median(
        timed([sys.executable, str(ROOT / "app.py"), "--help"]) for _ in range(3)), 2)
    startup["import slm_hf"] = round(statistics.median(
        timed([sys.executable, "-c", "import slm_hf"]) for _ in range(3)), 2)
    startup["from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel"] = round(
        statistics.median(timed([sys.executable, "-c", "from transformers import AutoConfig, AutoModel, "
                                 "AutoModelForCausalLM, PreTrainedModel"]) for _ in range(3)), 2)
    cpu = cpu_model()
    report = {"steps": args.steps, "batch_size": args.batch_size, "repeats": args.repeats, "launchers": table,
              "runs": runs, "startup_s": startup}
    path = write_results("launchers", report)
    print(json.dumps({"cpu": cpu, "launchers": table, "startup_s": startup}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
