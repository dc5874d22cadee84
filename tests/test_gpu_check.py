"""bench/gpu_check.py, the GPU check, without a GPU: `--dry-run` builds every part (command lines, accelerate config
files, each training config parsed with its overrides) and writes the report with every part skipped, so that the
check cannot rot while no GPU is at hand."""

import json
import subprocess
import sys

import yaml
from conftest import REPO_ROOT

GPU_CHECK = REPO_ROOT / "bench" / "gpu_check.py"
PARTS = ["fp16", "profile", "bf16", "fsdp2", "overflow"]


def dry_run(tmp_path, *args):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(GPU_CHECK), "--dry-run", "--work", str(tmp_path / "work"),
                           "--out", str(out), *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)
    return done, json.loads(out.read_text()) if out.exists() else None


def test_dry_run_builds_every_part_and_writes_a_strict_report_within_eight_minutes_of_limits(tmp_path):
    done, record = dry_run(tmp_path)
    assert done.returncode == 0, done.stderr
    json.dumps(record, allow_nan=False)  # strict JSON
    assert record["benchmark"] == "gpu_check" and record["shape"]["hidden_size"] == 512  # gpu-small's model
    results = record["results"]
    assert list(results["parts"]) == PARTS
    assert all(part["status"] == "skipped: --dry-run" for part in results["parts"].values())
    assert results["limits_total_s"] == sum(results["limits_s"].values()) <= 8 * 60

    # fp16 and FSDP2 run scripts/train.py under `accelerate launch --config_file`, as users start it
    fsdp2 = results["parts"]["fsdp2"]
    first, resumed, loads = fsdp2["commands"]
    assert "-m accelerate.commands.launch --config_file" in first and "scripts/train.py" in first
    assert "--resume" in resumed and "checkpoints/step_0000030" in resumed
    assert loads.startswith("CUDA_VISIBLE_DEVICES=''") and "from_pretrained" in loads
    accelerate_config = yaml.safe_load((tmp_path / "work" / "fsdp2.yaml").read_text())
    assert accelerate_config["distributed_type"] == "FSDP"
    assert accelerate_config["fsdp_config"]["fsdp_version"] == 2
    assert accelerate_config["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert "mixed_precision=fp16" in results["parts"]["fp16"]["commands"][0]
    compiled = [command.endswith("compile=true") for command in results["parts"]["bf16"]["commands"]]
    assert compiled == [False, True]


def test_a_config_that_would_not_parse_fails_every_part_before_anything_runs(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text((REPO_ROOT / "configs" / "gpu-small.yaml").read_text().replace("grad_clip:", "grad_clipp:"))
    done, record = dry_run(tmp_path, "--config", broken, "--parts", "fp16", "overflow")
    assert done.returncode == 1
    assert "failed parts: fp16, overflow" in done.stderr
    for part in record["results"]["parts"].values():
        assert part["status"].startswith("failed: invalid configuration") and "grad_clipp" in part["status"]


def test_the_wheels_for_the_gpu_machine_pin_this_environments_versions_and_leave_torch_to_its_image():
    from importlib.metadata import version

    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_wheels.py"), "--print"],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[1:4] == ["-m", "pip", "download"] and "--no-deps" in words and "3.12" in words
    for name in ("transformers", "accelerate", "datasets", "huggingface-hub", "safetensors"):
        assert f"{name}=={version(name)}" in words
    assert not any(word.startswith(("torch==", "numpy==", "nvidia")) for word in words)
