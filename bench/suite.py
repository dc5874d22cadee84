"""`make bench`: the side-by-side benchmarks on the machine at hand, then BENCHMARKS.md re-rendered from the results.

    python bench/suite.py            # the full suite, about 30 minutes on 2 cores (two 10-minute quality runs)
    python bench/suite.py --quick    # a smoke run of the plumbing, a few minutes; figures under runs/bench-quick/

The pieces, in order, each a bench script writing its results file through bench/machine.py:write_results:
  data       bench/bench_data.py: tokenization throughput against datasets.map, end to end prepare_data
  train      bench/bench_train.py: the training step, SLM against Llama of the cpu-demo shape, eager and compiled:
             on a CPU with bf16 arithmetic (AVX512-BF16 or AMX) Accelerate's bf16 autocast and the loop's bf16 with
             compiled layers and loss, elsewhere fp32 and fp32 compiled (bf16 is emulated there, many times slower)
  generate   bench/bench_generate.py: generate() at batch 1, ours (fp32, int8, compiled) and Llama's
  quality    bench/bench_quality.py: ours (cpu-demo) and Llama of its shape, the same minutes each, scored on all
             600 stories of the shared valid.txt
  runtimes   bench/bench_runtimes.py: the quality run's model in generate() fp32 / int8, llama.cpp on its GGUF export
             (f32, f16, q8_0) and onnxruntime
Each piece's wall time is written too (benchmark "bench_suite"), so the suite's own cost is a rendered figure. A
piece that fails is reported and the others still run; the suite then exits 1. `--quick` shrinks every piece (sizes
in QUICK) and writes to runs/bench-quick/ (results/ and BENCHMARKS.md), never to bench/results/.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
QUALITY_MINUTES = {"full": "10", "quick": "0.25"}

BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # lscpu's names of the CPU features that make bf16 products fast

# piece -> (script, arguments of the full suite, arguments of the smoke run); the train piece's precisions are added
# by piece_command (they depend on the CPU)
PIECES = {
    "data": ("bench_data.py", [], ["--repeats", "1", "--max-stories", "2000"]),
    "train": ("bench_train.py", ["--steps", "8", "--warmup", "2", "--repeats", "2"],
              ["--steps", "2", "--warmup", "1", "--repeats", "1"]),
    "generate": ("bench_generate.py", ["--batch-sizes", "1", "--new-tokens", "256", "--repeats", "3", "--variants",
                                       "slm", "llama", "slm-int8", "slm-compiled"],
                 ["--batch-sizes", "1", "--new-tokens", "16", "--repeats", "1", "--variants", "slm", "llama",
                  "slm-int8"]),
    "quality": ("bench_quality.py", ["--recipes", "ours", "llama", "--rerun"],
                ["--recipes", "ours", "llama", "--rerun"]),
    "runtimes": ("bench_runtimes.py", ["--repeats", "3"], ["--new-tokens", "16", "--repeats", "1"]),
}


def train_precisions(mode: str) -> list[str]:
    """Eager and compiled, in the arithmetic this CPU does fast; the smoke run only the eager one."""
    from machine import cpu_flags

    eager, compiled = ("bf16-autocast", "bf16-master-compiled") if BF16_FLAGS & set(cpu_flags()) else \
        ("fp32", "fp32-compiled")
    return [eager, compiled] if mode == "full" else [eager]


def piece_command(name: str, mode: str, out: Path) -> list[str]:
    script, full, quick = PIECES[name]
    arguments = list(full if mode == "full" else quick)
    minutes = QUALITY_MINUTES[mode]
    if name == "train":
        arguments += ["--precisions", *train_precisions(mode)]
    if name == "quality":
        arguments += ["--budgets", minutes, "--out", str(out / "quality")]
    if name == "runtimes":  # the model the quality piece trained (final/: a short run may have no best/)
        arguments += ["--model", str(out / "quality" / "runs" / f"ours-{float(minutes):g}min" / "final")]
    return [sys.executable, str((BENCH / script).relative_to(ROOT)), *arguments]  # run from ROOT


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: every piece shrunk, figures under "
                                                             "runs/bench-quick/, not bench/results/")
    parser.add_argument("--pieces", nargs="+", choices=list(PIECES), default=list(PIECES), help="run only these")
    parser.add_argument("--work", type=Path, help="the runs' folder (default: runs/bench, or runs/bench-quick)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    out = args.work or ROOT / "runs" / ("bench-quick" if args.quick else "bench")
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    report = [sys.executable, str(BENCH / "report.py")]
    if args.quick:
        env["SLM_BENCH_RESULTS"] = str(out / "results")
        report += ["--results", str(out / "results"), "--out", str(out / "BENCHMARKS.md")]
    os.environ.update(env)  # before bench/machine.py is imported: it reads SLM_BENCH_RESULTS then
    sys.path.insert(0, str(BENCH))
    if "runtimes" in args.pieces and "quality" not in args.pieces:
        model = piece_command("runtimes", mode, out)[-1]
        if not Path(model).is_dir():
            print(f"error: the runtimes piece needs the quality piece's model {model}: run the quality piece too",
                  file=sys.stderr)
            return 2

    timings, failed = [], []
    suite_started = time.perf_counter()
    for number, name in enumerate(args.pieces, start=1):
        command = piece_command(name, mode, out)
        print(f"\n== bench {number}/{len(args.pieces)}: {name} ({mode}): {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        status = subprocess.run(command, cwd=ROOT, env=env).returncode
        seconds = time.perf_counter() - started
        timings.append({"piece": name, "wall_s": seconds, "exit_status": status})
        print(f"== {name}: {seconds / 60:.1f} min, exit status {status}", flush=True)
        if status != 0:
            failed.append(name)
    total = time.perf_counter() - suite_started

    from machine import write_results

    write_results("bench_suite", {"mode": mode, "total_wall_s": total, "pieces": timings},
                  command=["make", "bench", *(["BENCH_QUICK=1"] if args.quick else [])])
    print(f"\n== the suite took {total / 60:.1f} min; rendering the report", flush=True)
    rendered = subprocess.run(report, cwd=ROOT, env=env).returncode
    if failed:
        print(f"error: bench pieces failed: {', '.join(failed)} (their output is above)", file=sys.stderr)
        return 1
    return rendered


if __name__ == "__main__":
    sys.exit(main())
