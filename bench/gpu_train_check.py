"""GPU check of the training loop: train `gpu-small` (fp16 with loss scaling) on the shipped sample for a few
minutes; check the loss falls with no NaN and no runaway skipped updates; report tokens/s, MFU and bits per byte.

    python bench/gpu_train_check.py --out OUT [--data DIR] [--minutes 3] [--max-steps 600] [key=value ...]

Without --data it first prepares the shipped sample into OUT/data. Writes OUT/summary.json and the results file
bench/results/gpu_train_check_<cpu>_<date>.json (bench/machine.py:write_results) and prints it; the run
itself goes to OUT/run (metrics.jsonl, final/, ...). `key=value` overrides go to scripts/train.py (e.g.
`batch_size=256 compile=true`).
MFU counts 6 x (weights of every matrix product) + 12 x layers x width x context FLOPs per token, against the
card's dense fp16 peak (`--peak-tflops`, default 989: H100 SXM).
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default=str(ROOT / "configs" / "gpu-small.yaml"))
    parser.add_argument("--data", type=Path, help="a prepared data folder (default: prepare the shipped sample)")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    data = args.data
    if data is None:
        data = args.out / "data"
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_data.py"), "--out", str(data)], check=True)
        print(f"data prepared in {time.perf_counter() - started:.0f} s", flush=True)
    run = args.out / "run"
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", args.config, "--data", str(data)]
    command += ["--out", str(run), "--overwrite", f"max_minutes={args.minutes}", f"max_steps={args.max_steps}"]
    command += args.overrides
    status = subprocess.run(command).returncode

    metrics = run / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "val/loss" in r]
    speeds = sorted(r["tokens_per_s"] for r in train if "tokens_per_s" in r)
    results = json.loads((run / "final" / "training_results.json").read_text()) if status == 0 else {}
    flops_per_token = model_flops_per_token(run / "final") if status == 0 else None
    median_speed = speeds[len(speeds) // 2] if speeds else None
    summary = {
        "status": status,
        "overrides": args.overrides,
        "steps": train[-1]["step"] if train else 0,
        "first_losses": [r["train/loss"] for r in train[:3]],
        "last_losses": [r["train/loss"] for r in train[-3:]],
        "no_nan": all(math.isfinite(r["train/loss"]) for r in train),
        "loss_fell": bool(train) and train[-1]["train/loss"] < train[0]["train/loss"] - 1.0,
        "skipped_steps": max((r.get("skipped_steps", 0) for r in train), default=0),
        "median_tokens_per_s": median_speed,
        "tokens_per_s_windows": [round(speed) for speed in speeds],
        "mfu": median_speed * flops_per_token / (args.peak_tflops * 1e12) if flops_per_token else None,
        "evals": [{k: r[k] for k in ("step", "val/loss", "val/bits_per_byte", "train/eval_loss")} for r in evals],
        "precision": results.get("precision"),
        "device": results.get("device"),
        "peak_memory_gib": results.get("peak_memory_gib"),
        "wall_time_s": results.get("wall_time_s"),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    if status == 0:
        from machine import model_shape, write_results
        from transformers import AutoConfig

        import slm_hf  # noqa: F401  (registers the model)

        summary["gpu"] = results.get("device")
        write_results("gpu_train_check", summary, shape=model_shape(AutoConfig.from_pretrained(run / "final")))
    print(json.dumps(summary, indent=2))
    sys.exit(0 if status == 0 and summary["no_nan"] and summary["loss_fell"] else 1)


def model_flops_per_token(model_dir: Path) -> float:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import slm_hf  # noqa: F401  (registers the model)

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    block = json.loads((model_dir / "training_results.json").read_text())["config"]["block_size"]
    return 6 * weights + 12 * config.num_hidden_layers * config.hidden_size * block


if __name__ == "__main__":
    main()
