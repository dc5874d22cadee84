"""BENCHMARKS.md is rendered from bench/results/*.json (bench/report.py): the committed file must be the render, a
new benchmark appears without a renderer of its own, and only results of the current cpu-demo shape are "today's"."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

REPORT = REPO_ROOT / "bench" / "report.py"


def report(*args):
    return subprocess.run([sys.executable, str(REPORT), *map(str, args)], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT)


def record(benchmark, date, results, shape=None, cpu="Test CPU", commit="abc1234", **extra):
    """A results file as bench/machine.py:write_results writes it."""
    return {"benchmark": benchmark, "date": date, "shape": shape, "command": f"python bench/{benchmark}.py",
            "machine": {"cpu": cpu, "cpu_flags": ["avx512_bf16"], "cores": 2, "threads": 2, "torch": "2.13.0",
                        "transformers": "5.0.0", "commit": commit},
            "results": results, **extra}


@pytest.fixture
def current_shape():
    model = yaml.safe_load((REPO_ROOT / "configs" / "cpu-demo.yaml").read_text())["model"]
    return {key: model[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}


def write(folder, name, data):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def test_committed_benchmarks_md_is_the_render():
    result = report("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_with_one_line_when_the_file_differs(tmp_path):
    results = tmp_path / "results"
    write(results, "data_cpu_2026-12-06.json", record("data", "2026-12-06", {"full_split_extrapolated_s": 250.0}))
    out = tmp_path / "BENCHMARKS.md"
    assert report("--results", results, "--out", out).returncode == 0
    assert report("--check", "--results", results, "--out", out).returncode == 0
    out.write_text(out.read_text().replace("250 s", "200 s"))  # a figure typed by hand
    result = report("--check", "--results", results, "--out", out)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "differs from what" in result.stderr


def test_current_history_and_a_benchmark_without_a_renderer(tmp_path, current_shape):
    results = tmp_path / "results"
    train_rows = lambda slm, llama: {"rows": [  # noqa: E731
        {"model": "slm", "precision": "bf16-master-compiled", "tokens_per_s": slm, "mfu": 0.5},
        {"model": "llama", "precision": "bf16-master-compiled", "tokens_per_s": llama},
        {"model": "llama", "precision": "bf16-autocast", "tokens_per_s": 4000.0}]}
    write(results, "train_step_cpu_2026-12-05.json", record("train_step", "2026-12-05", train_rows(7000.0, 7000.0),
                                                            shape=current_shape, commit="old1111"))
    write(results, "train_step_cpu_2026-12-06.json", record("train_step", "2026-12-06", train_rows(9000.0, 6000.0),
                                                            shape=current_shape, commit="new2222"))
    retired = {**current_shape, "hidden_size": 288, "num_hidden_layers": 6}
    write(results, "generate_cpu_2026-12-06.json", record("generate", "2026-12-06", {"rows": [
        {"batch": 1, "model": "slm", "tokens_per_s": 999.0}, {"batch": 1, "model": "llama", "tokens_per_s": 111.0}]},
        shape=retired))
    write(results, "widgets_cpu_2026-12-06.json", record("widgets", "2026-12-06", {
        "clients": 4, "rows": [{"concurrency": 4, "requests_per_s": 12.5}]}))
    (results / "old_notes.txt").write_text("hand-written\n")
    out = tmp_path / "BENCHMARKS.md"
    assert report("--results", results, "--out", out).returncode == 0, "render failed"
    text = out.read_text()
    today, history = text.split("## History")

    # Where we stand: the newest train_step on the current shape (9,000 / 6,000), nothing of the retired shape
    assert ("| training step >= 1.5x Llama of the same shape, both compiled (issue 4) | 1.50x (9,000 tokens/s, "
            "bf16-master-compiled, MFU 50.0%);") in today
    assert "2.25x Llama's best eager mode | yes |" in today
    assert ("| training step >= 3x Llama at Llama's best precision (issue 6) | 1.50x (SLM bf16-master-compiled "
            "against Llama bf16-master-compiled) | no |") in today
    assert "| generate() at batch 1 >= 3x Llama's generate() | not measured | - |" in today
    assert "999" not in today and "old1111" not in today and "new2222" in today
    # the benchmark nobody wrote a renderer for: shown generically, in full
    assert "## widgets (generic rendering), Test CPU" in today
    assert "- clients: 4" in today and "| concurrency | requests_per_s |" in today and "| 4 | 12.5 |" in today
    # History: the older run and the retired shape, each labelled with its shape and commit; raw files as links
    assert "commit old1111" in history and "7,000" in history
    assert "shape 288 x 6" in history and "999" in history
    assert "- [old_notes.txt](" in history


def test_prepare_scale_files_share_one_table_and_the_gpu_check_says_it_has_not_run(tmp_path):
    """Every prepare_scale file is a row of one table (with its commit), none left in History; without a gpu_check
    file its section says so and gives the command, and with one it shows the parts."""
    results = tmp_path / "results"
    size = lambda mb, rss: {"size_mb": mb, "path": "text", "tokenizer": "trained", "text_bytes": mb * 10**6,  # noqa: E731
                            "peak_rss_mb": rss, "mb_per_s": 2.0, "cpu_s_per_mb": 1.25, "train_tokens": 7,
                            "size_matches_tokens": True}
    write(results, "prepare_scale_cpu_a.json", record("prepare_scale", "2026-12-05", {"sizes": [size(20, 601.0)]},
                                                      commit="old1111"))
    write(results, "prepare_scale_cpu_b.json", record("prepare_scale", "2026-12-06", {"sizes": [size(1900, 602.0)]},
                                                      commit="new2222"))
    out = tmp_path / "BENCHMARKS.md"
    assert report("--results", results, "--out", out).returncode == 0, "render failed"
    today, history = out.read_text().split("## History")
    assert "| 20 | text | trained | 601.0 | - | 2.00 | 1.25 | 7 | pass | old1111 | prepare_scale_cpu_a.json |" in today
    assert "| 1,900 | text | trained | 602.0 |" in today and "prepare_scale" not in history
    assert "Not run on a GPU yet: no results file. The command is ready: `python bench/gpu_check.py" in today

    write(results, "gpu_check_h100_2026-12-06.json", record("gpu_check", "2026-12-06", {"parts": {
        "fp16": {"status": "passed", "passed": True, "mfu": 0.41}}}))
    assert report("--results", results, "--out", out).returncode == 0, "render failed"
    text = out.read_text()
    assert "Not run on a GPU yet" not in text and "| fp16 | passed | 41.0% |" in text


def test_a_file_that_is_not_a_results_file_is_one_error_line(tmp_path):
    results = tmp_path / "results"
    write(results, "typed_by_hand.json", {"tokens_per_s": 123})
    result = report("--results", results, "--out", tmp_path / "BENCHMARKS.md")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "typed_by_hand.json: not a results file" in result.stderr


def test_make_bench_runtimes_alone_needs_the_quality_model(tmp_path):
    """`make bench`'s driver refuses, in one line and before measuring anything, a piece whose input is missing."""
    command = [sys.executable, str(REPO_ROOT / "bench" / "suite.py"), "--quick", "--pieces", "runtimes", "--work",
               str(tmp_path / "work")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SLM_BENCH_RESULTS": str(tmp_path / "results")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: the runtimes piece needs the quality piece's model")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "results").exists()
