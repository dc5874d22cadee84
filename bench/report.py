"""Render BENCHMARKS.md from bench/results/*.json: every figure in it comes from a results file.

    python bench/report.py            # write BENCHMARKS.md
    python bench/report.py --check    # exit 1 if BENCHMARKS.md is not what the results files render to

The results files are written by the scripts that measured them (`bench/machine.py:write_results`), each naming the
CPU, the commit, the model's shape and the command. Which file is shown where:
- "Where we stand" and the sections after it show, per benchmark and CPU, the newest file measured on the current
  `cpu-demo` shape (configs/cpu-demo.yaml) and not marked as history;
- "History" shows every other file: older runs, retired shapes, and the figures converted from the hand-written
  results of earlier sessions (marked `history`, naming their source), labelled with their shape and commit; files
  that are not JSON are listed as links, not as figures.
A benchmark without a section of its own in SECTIONS is rendered generically (its scalars as a list, its lists and
tables of records as tables), so a new benchmark appears as soon as it writes results; a dedicated section is one
entry in SECTIONS.
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from machine import CPU_DEMO_CONFIG, RESULTS_DIR, ROOT, SHAPE_NAMES

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
CURRENT_CONFIG = CPU_DEMO_CONFIG


# ------------------------------------------------------------------------------------------- records
@dataclass
class Record:
    """One results file: what write_results wrote (benchmark, date, machine, shape, command, results)."""

    path: Path
    data: dict

    @property
    def benchmark(self) -> str:
        return self.data["benchmark"]

    @property
    def results(self) -> dict:
        return self.data["results"]

    @property
    def cpu(self) -> str:
        return self.data.get("machine", {}).get("cpu") or "unknown CPU"

    @property
    def commit(self) -> str:
        return self.data.get("machine", {}).get("commit") or "unknown commit"

    @property
    def history(self) -> dict | None:
        return self.data.get("history")

    def sort_key(self) -> tuple:
        return self.data.get("date", ""), self.path.name


def current_shape(config_path: Path = CURRENT_CONFIG) -> dict:
    """The shape fields configs/cpu-demo.yaml sets: what "the current shape" means in this report."""
    model = yaml.safe_load(config_path.read_text(encoding="utf-8"))["model"]
    return {key: value for key, value in model.items() if key in SHAPE_NAMES}


def is_current_shape(shape: dict | None, current: dict) -> bool:
    """A results file without a model shape (data throughput, ...) is of every shape."""
    if shape is None:
        return True
    return all(shape.get(key) == value for key, value in current.items())


def load(results_dir: Path) -> tuple[list[Record], list[Path]]:
    """The results files (sorted by date) and the other files (raw, not JSON) in results_dir."""
    records, raw = [], []
    for path in sorted(results_dir.iterdir()):
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not {"benchmark", "results"} <= set(data):
                raise ValueError(f"{path}: not a results file of bench/machine.py:write_results (no benchmark and "
                                 f"results keys)")
            records.append(Record(path, data))
        elif path.is_file():
            raw.append(path)
    return sorted(records, key=Record.sort_key), raw


def split_current(records: list[Record], current: dict) -> tuple[list[Record], list[Record]]:
    """(current, history): the newest file per (benchmark, CPU) on the current shape, and all the others."""
    newest: dict[tuple[str, str], Record] = {}
    for record in records:  # sorted by date: a later file replaces an earlier one
        if record.history is None and is_current_shape(record.data.get("shape"), current):
            newest[(record.benchmark, record.cpu)] = record
    chosen = {id(record) for record in newest.values()}
    return ([r for r in records if id(r) in chosen], [r for r in records if id(r) not in chosen])


# ------------------------------------------------------------------------------------------- formatting
LABELS = {
    "tokens_per_s": "tokens/s", "cpu_tokens_per_s": "tokens/s (CPU time)", "peak_rss_mb": "peak RSS MB",
    "mfu": "MFU", "vs_llama": "vs Llama", "vs_llama_best": "vs Llama's best", "seconds": "seconds",
    "vs_llama_same_precision": "vs Llama, same precision", "vs_generate_fp32": "vs generate() fp32",
    "val_bits_per_byte": "val bits/byte", "wall_s": "wall s", "cpu_s": "CPU s", "mb_s": "MB/s",
    "max_logit_difference": "largest logit difference", "top1_agreement": "top token agrees",
    "vs_one_client": "vs one client",
}


def number(value) -> str:
    """One way to print a figure: thousands separators for large numbers, 3 decimals for small ones."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    if value == 0 or abs(value) >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def cell(value, column: str = "") -> str:
    """One table cell; ratios (columns vs_...) as 1.23x, MFU as a percentage."""
    if isinstance(value, float) and column.startswith("vs_"):
        value = f"{value:.2f}x"
    elif isinstance(value, float) and column == "mfu":
        value = f"{value:.1%}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    text = number(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def table(rows: list[dict], first: str | None = None) -> str:
    """A Markdown table of records, columns in order of first appearance (`first`: a column for the row names)."""
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(LABELS.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, ""), c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def generic(results: dict) -> str:
    """Any results dict: scalars as a list, lists of records and dicts of records as tables, other dicts as lists."""
    scalars, blocks = [], []
    for key, value in results.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            blocks.append(table(value) if key == "rows" else f"{key}:\n\n{table(value)}")
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            blocks.append(f"{key}:\n\n{table([{'name': name, **row} for name, row in value.items()])}")
        elif isinstance(value, dict):
            scalars += [f"- {key}.{sub}: {cell(v)}" for sub, v in value.items()]
        else:
            scalars.append(f"- {key}: {cell(value)}")
    return "\n\n".join(part for part in ["\n".join(scalars), *blocks] if part)


SHAPE_WORDS = {"num_attention_heads": "heads", "num_key_value_heads": "key/value heads",
               "intermediate_size": "intermediate", "vocab_size": "vocabulary", "max_position_embeddings": "context",
               "batch_size": "batch"}


def shape_text(shape: dict | None) -> str:
    """"256 x 3, 4 heads, intermediate 704, ..." (width x layers first); a shape of another form as its words."""
    if not shape:
        return "no model"
    if shape.get("varies"):  # a results file of runs of several shapes (bench_quality.py with --set)
        return "one per run (see the table)"
    if "hidden_size" not in shape or "num_hidden_layers" not in shape:
        return ", ".join(f"{k} {cell(v)}" for k, v in shape.items())
    rest = [f"{SHAPE_WORDS.get(k, k)} {number(v)}" for k, v in shape.items()
            if k not in ("hidden_size", "num_hidden_layers")]
    return ", ".join([f"{shape['hidden_size']} x {shape['num_hidden_layers']}", *rest])


def provenance(record: Record) -> str:
    """The line under every rendered results file: when, on what, which code, which shape, which command."""
    machine = record.data.get("machine", {})
    flags = ", ".join(machine.get("cpu_flags") or []) or "none of the bf16/AMX flags recorded"
    known = {key: value if value is not None else "not recorded" for key, value in machine.items()}
    parts = [f"{record.data.get('date', 'undated')}", f"CPU {record.cpu} ({flags})",
             f"cores {known.get('cores', 'not recorded')}, threads {known.get('threads', 'not recorded')}",
             f"torch {known.get('torch', 'not recorded')}, transformers {known.get('transformers', 'not recorded')}",
             f"commit {record.commit}", f"shape {shape_text(record.data.get('shape'))}"]
    text = "; ".join(parts) + f". Command: `{record.data.get('command', '?')}`. File: `{relative(record.path)}`."
    if record.history:
        text += f" Converted from `{record.history['source']}`"
        text += f" ({record.history['note']})." if record.history.get("note") else "."
    return "*" + text + "*"


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------- sections
def rows_by(results: dict, **match) -> list[dict]:
    return [row for row in results.get("rows", []) if all(row.get(k) == v for k, v in match.items())]


def run_shape(run: dict) -> str:
    """A quality run's model shape: recorded by bench_quality.py since 2026-12-06, else what its config set."""
    if run.get("shape"):
        return shape_text(run["shape"])
    model = run.get("config", {}).get("model", {})
    width, layers = model.get("hidden_size"), model.get("num_hidden_layers")
    set_fields = f"{width or 'preset'} x {layers or 'preset'}"
    return f"preset {model.get('preset')}" if not (width or layers) else f"{set_fields} (preset {model.get('preset')})"


def quality_body(results: dict) -> str:
    """The quality runs: bits per byte on the whole validation split, and each run against Llama of its budget."""
    runs = results.get("runs", {})
    rows = []
    for name, run in runs.items():
        llama = runs.get(f"llama-{run.get('budget')}")
        rows.append({"run": name, "shape": run_shape(run), "parameters": run.get("parameters"),
                     "precision": run.get("precision"),
                     "steps": run.get("steps"), "tokens": run.get("tokens"), "tokens_per_s": run.get("tokens_per_s"),
                     "val_bits_per_byte": run.get("val_bits_per_byte"),
                     "vs Llama, same budget": f"{run['val_bits_per_byte'] / llama['val_bits_per_byte'] - 1:+.1%}"
                     if llama else "-"})
    data = results.get("data", {})
    val = data.get("splits", {}).get("val", {})
    text = f"Validation: {number(val.get('stories', '?'))} stories, {number(val.get('tokens', '?'))} tokens" \
        if val else ""
    return "\n\n".join(part for part in [text, table(rows)] if part)


def copy_fidelity_body(results: dict) -> str:
    """Each inference copy against the fp32 model, then the learning check's losses at three learning rates."""
    copies = [{"copy": name, **figures} for name, figures in results.get("copies", {}).items()]
    learning = results.get("learning", {})
    losses = [{"learning rate": name, "val loss at step 50": loss}
              for name, loss in learning.get("val_loss_at_step_50", {}).items()]
    if "uniform_guess_loss" in learning:
        losses.append({"learning rate": "a uniform guess", "val loss at step 50": learning["uniform_guess_loss"]})
    return "\n\n".join(part for part in [table(copies, "copy"), table(losses, "learning rate")] if part)


def serve_body(results: dict) -> str:
    """Many users at once: per target (the OpenAI-compatible server, the Gradio app through its HTTP API and through
    gradio_client) and number of concurrent clients, what completed, time to first token and to the end, aggregate
    tokens/s, its ratio to one client's, and the CPU the clients took (where the file has it)."""
    rows = []
    for target in ("server", "app", "app_gradio_client"):
        for run in results.get(target, {}).get("rounds", []):
            rows.append({"target": target, "clients": run["clients"], "requests": run["requests"],
                         "completed": run["completed"], "refused": len(run["refused"]), "failed": len(run["failed"]),
                         "first token p50 s": run["ttft_p50_s"], "first token p95 s": run["ttft_p95_s"],
                         "end p50 s": run["end_p50_s"], "end p95 s": run["end_p95_s"],
                         "tokens_per_s": run["tokens_per_s"], "vs_one_client": run["speedup_vs_one_client"],
                         **({"clients' CPU s": run["client_cpu_s"]} if "client_cpu_s" in run else {})})
    memory = results.get("server", {}).get("memory")
    lines = [f"{number(results.get('max_tokens', '?'))} new tokens per story, "
             f"{number(results.get('requests_per_client', '?'))} stories per client, one after the other."]
    if memory:
        lines.append(f"Server memory: {number(memory['rss_mib_after_100'])} MiB after 100 requests, "
                     f"{number(memory['rss_mib_after_1000'])} MiB after 1,000 ({memory['growth']:+.1%}).")
    if results.get("note"):
        lines.append(f"Note: {results['note']}")
    return "\n\n".join([" ".join(lines), table(rows)])


def prepare_scale_body(records: list[Record]) -> str:
    """Every prepare_scale file in one table per measurement (newest first): preparing, then training from it."""
    rows, trained, notes = [], [], []
    for record in records:
        results = record.results
        given = results.get("tokenizer", "trained by prepare_data") != "trained by prepare_data"
        for row in results.get("sizes", []):
            checks = [value for key, value in row.items() if isinstance(value, bool)]
            rows.append({"corpus MB": round(row["text_bytes"] / 1e6), "path": row["path"],
                         "tokenizer": row.get("tokenizer") or ("given" if given else "trained"),
                         "peak RSS MB": row["peak_rss_mb"], "of it anonymous MB": row.get("peak_anon_mb", "-"),
                         "MB/s": row["mb_per_s"], "CPU-s/MB": row.get("cpu_s_per_mb", "-"),
                         "train tokens": row["train_tokens"], "train.bin checks": "pass" if all(checks) else "FAIL",
                         "commit": record.commit, "file": record.path.name})
        for folder, runs in results.get("training", {}).items():
            names = {"anywhere": "windows start anywhere", "stories": "windows start at stories", "resumed": "resumed"}
            if "start_up_s" in runs:  # the first files: one run per folder, start-up timed from planning the run
                runs = {"train_tokens_in_folder": runs.get("train_tokens_in_folder"), "old": runs}
                names = {"old": "windows start anywhere (start-up: plan_run + start)"}
            for label, name in names.items():
                if label in runs:
                    run = runs[label]
                    trained.append({"folder": folder, "train tokens": runs.get("train_tokens_in_folder", "-"),
                                    "run": name,
                                    "start-up s": run["start_up_s"], "tokens/s": run["tokens_per_s"],
                                    "CPU s": run.get("cpu_s", "-"),
                                    "batches drawn": run.get("batches_drawn", "-"), "peak RSS MB": run["peak_rss_mb"],
                                    "of it anonymous MB": run.get("peak_anon_mb", "-"),
                                    "commit": record.commit, "file": record.path.name})
        stopped = (" (stopped before it finished: the rows measured are kept)" if results.get("complete") is False
                   else "")
        if results.get("note") or stopped:
            notes.append(f"- `{record.path.name}`: {results.get('note', '')}{stopped}")
    parts = [table(rows)] if rows else []
    if trained:
        parts += ["Training from the prepared folders (the tiny preset, a few steps; start-up: from `train()` to the "
                  "first batch drawn; the resident memory beyond the anonymous part is mapped files, train.bin's "
                  "pages among them: the page cache's, shared and reclaimable, not a copy):", table(trained)]
    return "\n\n".join(parts + ["Notes:\n\n" + "\n".join(notes)] * bool(notes))


def gpu_check_body(results: dict) -> str:
    """One row per part: its status and the figures it recorded."""
    rows = [{"part": name, "status": part.get("status"),
             **{key: value for key, value in part.items() if isinstance(value, (int, float)) and key != "passed"}}
            for name, part in results.get("parts", {}).items()]
    return table(rows) if rows else generic(results)


@dataclass
class Section:
    """How one benchmark is shown: a title, what it measures (prose without figures) and a renderer of its results.

    `across_files` renders every file of the benchmark (newest first) in its current section, instead of one section
    per file; `missing` is shown when no results file of the benchmark exists."""

    title: str
    about: str = ""
    body: callable = field(default=generic)
    across_files: callable = None
    missing: str = ""


SECTIONS = {
    "train_step": Section(
        "Training step", "The full training step of the loop (`slm_hf.training.optimizer_step`: forward, backward, "
        "clipping, fused AdamW) of SLM against `LlamaForCausalLM` of the same shape (bench/peers.py), every precision "
        "applied to both alike, each (model, precision) in its own process, repeats interleaved, medians; MFU against "
        "the bf16 peak of a 2048^3 product measured in the same run. `bf16-autocast` is Accelerate's autocast "
        "(eager), `bf16-master-compiled` the loop's CPU bf16 with each layer and the loss compiled (`compile: true`)."),
    "generate": Section(
        "Generation speed", "Greedy `generate()` of exactly the given number of new tokens, random weights of the "
        "shape (speed does not depend on them), warmed up, runs interleaved, medians; `int8` is `quantize_int8()`, "
        "`compiled` a static cache with `torch.compile` of the decoding step; the ratio is to Llama's `generate()` "
        "in fp32 in the same run."),
    "runtimes": Section(
        "Speed across runtimes", "Greedy decoding at batch 1 of one trained model folder in each runtime: our "
        "`generate()` (fp32, int8), llama.cpp (llama-cpp-python) on our GGUF export at f32, f16 and q8_0, "
        "onnxruntime on our ONNX export; same prompt, same number of tokens, one thread unless stated."),
    "quality": Section(
        "Quality after a fixed budget", "Each recipe trains for the same wall-clock budget with the project's loop, "
        "then its best model is scored on the whole validation split (bits per byte, exact bytes); `llama` is "
        "`LlamaForCausalLM` of ours' shape trained with a plain recipe pinned in bench/bench_quality.py.",
        quality_body),
    "data": Section(
        "Data pipeline", "Tokenization throughput of the pipeline's encoder against the usual `datasets.map` recipe "
        "on the shared TinyStories text, end to end `prepare_data`, and the extrapolation to the full 1.9 GB "
        "training split."),
    "soak_resume": Section(
        "Fault soak", "A run killed at seeded moments aimed at each phase, resumed with `--resume auto`, compared "
        "bit for bit with an uninterrupted run (bench/soak_resume.py)."),
    "copy_fidelity": Section(
        "Copy fidelity: the bounds the tests assert", "The int8 copy and the GGUF f16 and q8_0 files (run in "
        "llama.cpp) against the fp32 model on the same positions: the largest logit difference and how often the "
        "top token agrees (tests/test_export.py asserts bounds from these figures); and the validation loss of the "
        "tiny test model after 50 steps at the test's learning rate and at a tenth and a hundredth of it, beside a "
        "uniform guess (tests/test_training.py's \"has not learned\" check).",
        copy_fidelity_body),
    "serve": Section(
        "Many users at once", "Concurrent clients, each sending streamed stories from one prompt, one after the other "
        "(bench/bench_serve.py, localhost, greedy): against scripts/serve.py (`transformers serve` with continuous "
        "batching, through the `openai` client) and against app.py (the Gradio page's continuous batching; `app`: "
        "through the page's HTTP API, as a browser or `curl` reads it; `app_gradio_client`: through `gradio_client`, "
        "whose polling reader takes CPU from the app on a shared machine; files before 2026-12-06's last: "
        "`app` meant `gradio_client`, sampling); a refusal is counted with its message, a 5xx or a traceback as a "
        "failure.", serve_body),
    "bench_suite": Section(
        "`make bench`: what each piece cost", "The wall time of each piece of the last `make bench` (bench/suite.py) "
        "on this CPU, and its exit status (0: the piece wrote its results)."),
    "prepare_scale": Section(
        "Preparing the full dataset's size", "`prepare_data` on TinyStories' train.txt repeated up to each size, up to "
        "the full training split's 1.9 GB (bench/bench_prepare_scale.py), for local .txt files and for the `datasets` "
        "path (.jsonl): the peak memory of the process tree (the anonymous part beside it; the rest is mapped "
        "files), MB/s (it depends on how busy the shared machine was: see each file's note), CPU-seconds per MB (it "
        "does not), and train.bin checked (token and story counts, stories decoded and found in the source). Then "
        "short runs training from the largest folder beside the shipped sample's. Every results file is a row here.",
        across_files=prepare_scale_body),
    "gpu_check": Section(
        "The GPU check", "What a CPU cannot show, on one GPU in under 8 minutes (bench/gpu_check.py; "
        "docs/benchmarks.md says how to run it on the device machine): fp16 with loss scaling, a step's profile, "
        "bf16 with and without `compile`, FSDP2 with a sharded checkpoint and an exact resume, a real GradScaler "
        "overflow.",
        gpu_check_body, missing="Not run on a GPU yet: no results file. The command is ready: "
        "`python bench/gpu_check.py --out bench/results/gpu_check_h100_<date>.json` on one GPU (its CPU-side parts "
        "run in the suite: tests/test_gpu_check.py)."),
}


def section(benchmark: str) -> Section:
    return SECTIONS.get(benchmark) or Section(f"{benchmark} (generic rendering)")


# ------------------------------------------------------------------------------------------- where we stand
def ratio_text(mine: float | None, peer: float | None) -> str:
    return f"{mine / peer:.2f}x" if mine and peer else "not measured"


def goal(name: str, measured: str | None = None, met: bool | None = None) -> tuple[str, str, str]:
    """One row of "Where we stand": a goal, what was measured ("not measured" if nothing), and whether it is met."""
    if measured is None:
        return name, "not measured", "-"
    return name, measured, "yes" if met else "no"


def goals(current: list[Record]) -> list[tuple[str, str, str]]:
    """(goal, measured, met?) from the current results of one CPU; "not measured" where a benchmark is missing."""
    by_name = {record.benchmark: record.results for record in current}
    rows = []

    train = by_name.get("train_step", {})
    compiled = [row for row in rows_by(train, model="slm") if row["precision"].endswith("compiled")]
    ours = max(compiled, key=lambda row: row["tokens_per_s"]) if compiled else None
    llama_compiled = rows_by(train, model="llama", precision=ours["precision"]) if ours else []
    llama_eager = [row["tokens_per_s"] for row in rows_by(train, model="llama") if "compiled" not in row["precision"]]
    name = "training step >= 1.5x Llama of the same shape, both compiled (issue 4)"
    if ours and llama_compiled:
        ratio = ours["tokens_per_s"] / llama_compiled[0]["tokens_per_s"]
        eager = ratio_text(ours["tokens_per_s"], max(llama_eager) if llama_eager else None)
        rows.append(goal(name, f"{ratio:.2f}x ({number(ours['tokens_per_s'])} tokens/s, {ours['precision']}, MFU "
                               f"{ours.get('mfu', 0):.1%}); {eager} Llama's best eager mode", ratio >= 1.5))
    else:
        rows.append(goal(name))
    slm_rows, llama_rows = rows_by(train, model="slm"), rows_by(train, model="llama")
    name = "training step >= 3x Llama at Llama's best precision (issue 6)"
    if slm_rows and llama_rows:
        best, peer = (max(rows_, key=lambda row: row["tokens_per_s"]) for rows_ in (slm_rows, llama_rows))
        ratio = best["tokens_per_s"] / peer["tokens_per_s"]
        rows.append(goal(name, f"{ratio:.2f}x (SLM {best['precision']} against Llama {peer['precision']})",
                         ratio >= 3))
    else:
        rows.append(goal(name))

    generate = by_name.get("generate", {})
    llama = rows_by(generate, model="llama", batch=1)
    ours = [row for row in rows_by(generate, batch=1) if row["model"].startswith("slm")]
    name = "generate() at batch 1 >= 3x Llama's generate()"
    if llama and ours:
        best = max(ours, key=lambda row: row["tokens_per_s"])
        ratio = best["tokens_per_s"] / llama[0]["tokens_per_s"]
        rows.append(goal(name, f"{ratio:.2f}x, {number(best['tokens_per_s'])} tokens/s ({best['model']})", ratio >= 3))
    else:
        rows.append(goal(name))

    runs = by_name.get("quality", {}).get("runs", {})
    ours, llama = runs.get("ours-10min"), runs.get("llama-10min")
    name = "<= 0.90 bits/byte after 10 minutes on this CPU"
    rows.append(goal(name, f"{ours['val_bits_per_byte']:.3f}", ours["val_bits_per_byte"] <= 0.90) if ours
                else goal(name))
    name = ">= 10% below Llama of the same shape after 10 minutes"
    if ours and llama:
        below = 1 - ours["val_bits_per_byte"] / llama["val_bits_per_byte"]
        rows.append(goal(name, f"{below:.1%} below ({ours['val_bits_per_byte']:.3f} vs "
                               f"{llama['val_bits_per_byte']:.3f})", below >= 0.10))
    else:
        rows.append(goal(name))

    seconds = by_name.get("data", {}).get("full_split_extrapolated_s")
    name = "the full 1.9 GB training split to train.bin in <= 300 s"
    rows.append(goal(name, f"{seconds:.0f} s (extrapolated from the measured rate)", seconds <= 300)
                if seconds is not None else goal(name))
    rows += [(goal_name, "not measured by `make bench`; earlier measurements of other shapes: History", "-")
             for goal_name in GOALS_OUTSIDE_THE_SUITE]
    return rows


# The goals of the issues that `make bench` does not measure (longer runs, a GPU): listed, never given a figure here.
GOALS_OUTSIDE_THE_SUITE = (
    ">= 10% below Llama of the same shape after 30 and 60 minutes",
    "<= 0.60 bits/byte after 60 minutes",
    ">= 40% MFU on an H100 for `gpu-small`",
)


def where_we_stand(current: list[Record], shape: dict) -> str:
    cpus = sorted({record.cpu for record in current})
    lines = [f"## Where we stand\n\nThe goals of the issues against the newest results on the current `cpu-demo` "
             f"shape ({shape_text(shape)}, configs/cpu-demo.yaml), one table per CPU; the sections below give each "
             f"figure's run. Figures of other shapes or older runs are only in \"History\"."]
    if not cpus:
        lines.append("No results on the current shape yet: run `make bench`.")
        cpus_rows = [("(no CPU)", goals([]))]
    else:
        cpus_rows = [(cpu, goals([r for r in current if r.cpu == cpu])) for cpu in cpus]
    for cpu, rows in cpus_rows:
        lines.append(f"**{cpu}**\n\n| goal | measured | met? |\n|---|---|---|\n"
                     + "\n".join(f"| {goal} | {measured} | {met} |" for goal, measured, met in rows))
    return "\n\n".join(lines)


# ------------------------------------------------------------------------------------------- the document
HEADER = """# Benchmarks

This file is rendered by `python bench/report.py` from the results files in bench/results/ (JSON, each written by
the script that measured it, naming the machine, the commit, the model's shape and the command); do not edit it by
hand: the test suite fails when it differs from the render. `make bench` measures the side-by-side suite on the
machine at hand and re-renders it (see docs/benchmarks.md)."""


def render_record(record: Record, level: str, records: list[Record] = ()) -> str:
    chosen = section(record.benchmark)
    title = f"{level} {chosen.title}, {record.cpu}"
    if record.history:
        title += f", {record.data.get('date', 'undated')}, shape {shape_text(record.data.get('shape'))}, " \
                 f"commit {record.commit}"
    if chosen.across_files:
        same = [other for other in records if (other.benchmark, other.cpu) == (record.benchmark, record.cpu)]
        body = chosen.across_files(sorted(same, key=Record.sort_key, reverse=True) or [record])
    else:
        body = chosen.body(record.results)
    parts = [title, chosen.about, provenance(record), body]
    return "\n\n".join(part for part in parts if part)


# What a raw (not JSON) file in bench/results/ is, where its name does not say it.
RAW_NOTES = {
    "BENCHMARKS_handwritten_until_c74a0be.md": "BENCHMARKS.md as written by hand up to commit c74a0be: the analyses "
    "and figures of earlier sessions (the 288 x 6 shape, GPU runs on torch 2.11, recipe searches), transcribed by hand",
    "quality_per_minute.png": "the plot of the 2026-11-27 quality runs (288 x 6)",
    "recipe_screen_tiny_amd_2026-12-03.txt": "the recipe and architecture screen at tiny scale (200 steps): the "
    "measurements that dropped QK-norm, the logit soft-cap and zero-initialised projections (squared ReLU: also the "
    "`relu2` runs at the `small` size above)",
}


def render(results_dir: Path = RESULTS_DIR, config_path: Path = CURRENT_CONFIG) -> str:
    records, raw = load(results_dir)
    shape = current_shape(config_path)
    current, history = split_current(records, shape)
    order = list(SECTIONS)
    current.sort(key=lambda r: (order.index(r.benchmark) if r.benchmark in order else len(order), r.benchmark, r.cpu))
    parts = [HEADER, where_we_stand(current, shape)]
    parts += [render_record(record, "##", records) for record in current]
    measured = {record.benchmark for record in records}
    parts += [f"## {chosen.title}\n\n{chosen.about}\n\n{chosen.missing}" for name, chosen in SECTIONS.items()
              if chosen.missing and name not in measured]
    history = [record for record in history if not section(record.benchmark).across_files]  # rows of the current
    parts.append("## History\n\nResults of older runs, of retired shapes or of older code, newest first, each "
                 "labelled with its shape and commit. They are not today's figures.")
    parts += [render_record(record, "###") for record in reversed(history)]
    if raw:
        parts.append("### Raw files, not converted\n\nKept as they were written (logs, plots, hand-written tables "
                     "that could not be converted faithfully); no figure of theirs is quoted here.\n\n"
                     + "\n".join(f"- [{path.name}]({relative(path)})" + (f": {RAW_NOTES[path.name]}" if path.name in
                                  RAW_NOTES else "") for path in raw))
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the render")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR,
                        help="folder of results files (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD, help="the rendered file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        text = render(args.results)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: cannot render the benchmarks report: {error}", file=sys.stderr)
        return 2
    if args.check:
        if not args.out.is_file() or args.out.read_text(encoding="utf-8") != text:
            print(f"error: {relative(args.out)} differs from what {relative(args.results)} renders to; run "
                  f"`python bench/report.py` and commit the result", file=sys.stderr)
            return 1
        print(f"{relative(args.out)} is up to date with {relative(args.results)}")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {relative(args.out)} from {relative(args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
