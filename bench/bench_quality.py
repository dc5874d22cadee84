"""Quality per minute of compute: "I have N minutes on this machine; what is the best story model I can get?"

Each recipe trains for a fixed wall-clock budget with the project's own loop (`slm_hf.training.train` with the
config's `max_minutes`), then its `best/` model (lowest validation loss during training; `final/` if there is none)
is scored on the whole validation split of the data folder: bits per byte, exact byte counts
(`slm_hf.evaluation.evaluate_data_folder`: every token of val.bin predicted once, in non-overlapping windows of the
model's context).

Recipes (`--recipes`):
    seed     configs/seed.yaml as it is: the reference tutorial's recipe (GPT-2 style, 131k-token steps)
    ours     configs/cpu-demo.yaml: our best recipe (for the README's 10 minutes)
    ours-dropout  the same with dropout 0.1 on the embeddings and residual branches (none on the attention
             probabilities): for longer budgets, which pass over the 2.5M training tokens many times
    llama    transformers' LlamaForCausalLM (bench/peers.py) of ours' shape (width, depth, heads, intermediate,
             vocabulary and context of cpu-demo.yaml) trained by our loop with a plain recipe, pinned here:
             batch 16 x 256, AdamW 2e-3 cosine to 2e-4, warmup 100, weight decay 0.1, clip 1.0, eager, bf16 where
             this CPU's bf16 products are fast (else fp32, as ours)

Data: the shared TinyStories text (train.txt for training, valid.txt for validation only) prepared once with
`slm_hf.data.prepare_data` into OUT/data (a BPE trained on train.txt: the default vocabulary, or `--vocab-size`),
reused on later runs.

Outputs, in OUT (default runs/bench-quality): runs/{recipe}-{budget}min/ (each a full training run), results.json
(written after every run; a rerun skips the runs it already holds, so an interrupted benchmark resumes),
quality_per_minute.png (bits per byte against minutes, one line per recipe, each run's validation curve thin),
and a markdown table on stdout; then the runs of this invocation as bench/results/quality_<cpu>_<date>.json
(bench/machine.py:write_results; `--results-out` names another file), which bench/report.py renders.

    python bench/bench_quality.py                                        # 10, 30 and 60 minutes: about 7 hours
    python bench/bench_quality.py --budgets 10 --recipes ours llama      # one budget, two recipes
    python bench/bench_quality.py --recipes ours --rerun                 # retrain `ours` after tuning cpu-demo
    python bench/bench_quality.py --recipes ours --budgets 10 --tag lr3e-3 --set learning_rate=3e-3 min_lr=3e-4
    python bench/bench_quality.py --report --budgets 10 30 60           # the tables and plot of the runs done
    OMP_NUM_THREADS=1 python bench/bench_quality.py --budgets 0.5 --out /tmp/bq    # a quick check
    python bench/bench_quality.py --steps 600 --recipes ours --tag wsd --set lr_schedule=wsd   # learning per token
    python bench/bench_quality.py --budgets 10 --recipes ours --vocab-size 8192 --out runs/bench-quality-8192

`--steps N` trains each run for N optimizer steps instead of N minutes: a comparison of learning per token that a
busy machine cannot change (runs `{recipe}-{N}steps`; the seed recipe keeps its own batch). Minutes decide what a
user gets; steps separate "learns more per token" from "runs faster".
"""

import argparse
import datetime
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # the scripts' command_line module

import torch  # noqa: E402
from machine import describe, model_shape, write_results  # noqa: E402
from peers import build_llama  # noqa: E402

from slm_hf.atomic_files import write_json  # noqa: E402
from slm_hf.configuration_slm import DEFAULT_VOCAB_SIZE, SHAPE_FIELDS  # noqa: E402
from slm_hf.data import prepare_data, read_meta  # noqa: E402
from command_line import exit_on_error  # noqa: E402

from slm_hf.errors import SLMError  # noqa: E402
from slm_hf.evaluation import evaluate_data_folder  # noqa: E402
from slm_hf.generation import load_pretrained  # noqa: E402
from slm_hf.training import train  # noqa: E402
from slm_hf.training.metrics import save_figure  # noqa: E402
from slm_hf.training.config import TrainingConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SHARED_DATA = ROOT.parent / "shared" / "data" / "tinystories"
RECIPES = ("seed", "ours", "ours-dropout", "llama")
COLORS = {"seed": "tab:gray", "ours": "tab:blue", "ours-dropout": "tab:cyan", "llama": "tab:orange"}
UNBOUNDED_STEPS = 1_000_000  # the time budget decides

# The plain Llama recipe, pinned here (not read from cpu-demo.yaml, which is being tuned): a sane default a user
# would start from. Its model has ours' shape (`recipe_config`); monitoring settings (eval_interval, eval_iters,
# sample_tokens, ...) follow cpu-demo.yaml.
LLAMA_RECIPE = dict(
    batch_size=16,
    block_size=256,
    gradient_accumulation_steps=1,
    learning_rate=2e-3,
    min_lr=2e-4,
    lr_schedule="cosine",  # pinned: before 2026-12-04 this recipe took cpu-demo's schedule (wsd since 2026-12-03)
    warmup_steps=100,
    warmup_start_factor=0.0,
    weight_decay=0.1,
    decay_all_parameters=False,
    betas=(0.9, 0.95),
    eps=1e-8,
    grad_clip=1.0,
    mixed_precision="auto",  # as ours: bf16 where this CPU's bf16 products are fast (the same as "bf16" there),
                             # fp32 where bf16 is emulated (pinned "bf16" trained Llama many times slower there)
    compile=False,  # plain: eager PyTorch
)


# ------------------------------------------------------------------------------------------------- data
def prepare(shared_data: Path, out: Path, vocab_size: int) -> Path:
    """OUT/data from the shared text folder (train.txt -> train split, valid.txt -> validation split), reused if
    already there. Refuses a folder without a validation file: the split must be the shared validation stories."""
    for name in ("train.txt", "valid.txt"):
        if not (shared_data / name).is_file():
            raise SLMError(f"{shared_data / name} not found; pass --shared-data, the folder with train.txt and "
                           f"valid.txt (stories separated by <|endoftext|> lines)")
    # prepare_data reads a folder of .txt files by name: files named valid/validation/val/dev are the validation
    # split, the others the training split.
    prepared = prepare_data(str(shared_data), out_dir=out / "data", vocab_size=vocab_size)
    if not prepared.meta.get("validation", "").startswith("the source's validation split"):
        raise SLMError(f"{shared_data}: no validation file was recognised (expected valid.txt)")
    splits = prepared.meta["splits"]
    print(f"# data {prepared.directory}{' (reused)' if prepared.reused else ''}: train {splits['train']['tokens']:,} "
          f"tokens ({splits['train']['stories']:,} stories), val {splits['val']['tokens']:,} tokens "
          f"({splits['val']['stories']:,} stories), vocabulary {prepared.meta['vocab_size']:,}")
    return prepared.directory


# ---------------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Budget:
    """How long each run trains: `amount` minutes of wall clock (`unit` "min") or optimizer steps ("steps")."""

    amount: float
    unit: str = "min"

    def __str__(self) -> str:
        return f"{self.amount:g}{self.unit}"

    def limits(self) -> dict:
        """The TrainingConfig fields that end a run after this budget."""
        if self.unit == "steps":
            return {"max_steps": int(self.amount), "max_minutes": None}
        return {"max_steps": UNBOUNDED_STEPS, "max_minutes": self.amount}


def recipe_config(recipe: str, budget: Budget, overrides: tuple[str, ...] = ()) -> tuple[TrainingConfig, object]:
    """The training config of `recipe` for `budget`, and its model factory (None: SLM). `overrides` (`key=value`)
    change cpu-demo.yaml before the recipe's own changes."""
    if recipe == "seed":  # its 625 steps are its recipe; a CPU never gets there in minutes
        seed = TrainingConfig.load(ROOT / "configs" / "seed.yaml")
        return replace(seed, **(budget.limits() if budget.unit == "steps" else {"max_minutes": budget.amount})), None
    config = replace(TrainingConfig.load(ROOT / "configs" / "cpu-demo.yaml", list(overrides)), **budget.limits())
    if recipe == "ours":
        return config, None
    if recipe == "ours-dropout":  # for budgets that pass over the 2.5M training tokens many times
        return replace(config, model={**config.model, "dropout": 0.1, "attention_dropout": 0.0}), None
    if recipe == "llama":
        # the plain recipe at ours' shape: cpu-demo.yaml's preset and its shape fields, nothing else of its model
        shape = {key: value for key, value in config.model.items() if key == "preset" or key in SHAPE_FIELDS}
        return replace(config, model={**shape, "dropout": 0.0}, **LLAMA_RECIPE), build_llama
    raise ValueError(f"unknown recipe {recipe!r}")


@dataclass(frozen=True)
class Variant:
    """A point of the recipe search: `key=value` overrides of our recipes, named by `tag` in the results."""

    tag: str | None = None
    overrides: tuple[str, ...] = ()

    def overrides_for(self, recipe: str) -> tuple[str, ...]:
        return self.overrides if recipe.startswith("ours") else ()

    def label(self, recipe: str) -> str:
        return f"{recipe}+{self.tag}" if self.overrides_for(recipe) else recipe


def run_name(recipe: str, budget: Budget) -> str:
    return f"{recipe}-{budget}"


# ------------------------------------------------------------------------------------------- one run
def train_and_evaluate(
    recipe: str, budget: Budget, data_dir: Path, out: Path, eval_batch_size: int, variant: Variant
) -> dict:
    """Train one recipe for one budget (replacing an unfinished run in its folder), then score its best model."""
    config, model_factory = recipe_config(recipe, budget, variant.overrides_for(recipe))
    label = variant.label(recipe)
    run_dir = out / "runs" / run_name(label, budget)
    print(f"\n## {run_name(label, budget)}: training into {run_dir}", flush=True)
    started = time.perf_counter()
    outcome = train(config, data_dir, run_dir, overwrite=True, model_factory=model_factory)
    if outcome.final_dir is None:
        raise SLMError(f"{run_name(label, budget)} was interrupted ({outcome.interrupted_by}); run again")
    run_seconds = time.perf_counter() - started

    evaluated = run_dir / "best" if (run_dir / "best" / "config.json").is_file() else run_dir / "final"
    final = json.loads((run_dir / "final" / "training_results.json").read_text(encoding="utf-8"))
    at_best = json.loads((evaluated / "training_results.json").read_text(encoding="utf-8"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    sample = next((r.get("sample") for r in records if "val/loss" in r and r["step"] == at_best["step"]), None)

    eval_started = time.perf_counter()
    model, tokenizer = load_pretrained(evaluated, device="cpu")
    report = evaluate_data_folder(model, tokenizer, data_dir, batch_size=eval_batch_size)
    eval_seconds = time.perf_counter() - eval_started
    shape = model_shape(model.config)
    del model

    return {
        "recipe": label,
        "overrides": list(variant.overrides_for(recipe)),
        "budget": str(budget),
        "budget_min": budget.amount if budget.unit == "min" else None,
        "budget_steps": int(budget.amount) if budget.unit == "steps" else None,
        "run_dir": str(run_dir),
        "evaluated": evaluated.name,
        "steps": final["step"],
        "best_step": at_best["step"],
        "tokens": final["tokens"],
        "wall_s": final["wall_time_s"],  # the loop's own clock: training, its evaluations and checkpoints
        "run_s": round(run_seconds, 1),  # train() as a whole: also building the model and writing model folders
        "tokens_per_s": final["tokens"] / final["wall_time_s"],  # what the budget bought, evaluations included
        "train_tokens_per_s": statistics.median(speeds) if speeds else None,  # training steps only
        "val_bits_per_byte": report.bits_per_byte,  # the full validation split, exact bytes
        "val_loss": report.loss,
        "eval_tokens": report.tokens,
        "eval_bytes": report.bytes,
        "eval_s": round(eval_seconds, 1),
        "loop_val_bits_per_byte": at_best["val/bits_per_byte"],  # the loop's estimate at the evaluated step
        "loop_final_val_bits_per_byte": final["val/bits_per_byte"],
        "train_loss": final["train/loss"],
        "loop_val_loss": at_best["val/loss"],
        "precision": final["precision"],
        "parameters": final["parameters"],
        "shape": shape,
        "model_dir": str(evaluated),
        "sample": sample,
        "config": final["config"],
        "date": datetime.date.today().isoformat(),
    }


# ------------------------------------------------------------------------------------------- reports
def table(results: dict, recipes: list[str], budgets: list[Budget]) -> str:
    """Bits per byte (full validation split) per recipe and budget, and the ratio to the Llama recipe."""
    runs = results["runs"]

    def bpb(recipe, budget):
        run = runs.get(run_name(recipe, budget))
        return run["val_bits_per_byte"] if run else None

    header = "| recipe | " + " | ".join(str(b) for b in budgets)
    header += " | vs llama (" + " / ".join(str(b) for b in budgets) + ") |"
    lines = [header, "|---|" + "---:|" * (len(budgets) + 1)]
    for recipe in recipes:
        cells = [f"{v:.3f}" if (v := bpb(recipe, b)) is not None else "-" for b in budgets]
        ratios = []
        for budget in budgets:
            mine, peer = bpb(recipe, budget), bpb("llama", budget)
            ratios.append(f"{mine / peer:.2f}x" if mine is not None and peer else "-")
        lines.append(f"| {recipe} | " + " | ".join(cells) + " | " + " / ".join(ratios) + " |")
    return "\n".join(lines)


def details(results: dict, recipes: list[str], budgets: list[Budget]) -> str:
    lines = [
        "| run | params | precision | steps | tokens | tokens/s | val bits/byte (loop) | val bits/byte (full) "
        "| train loss | wall s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe in recipes:
        for budget in budgets:
            run = results["runs"].get(run_name(recipe, budget))
            if run is None:
                continue
            lines.append(
                f"| {run_name(recipe, budget)} | {run['parameters'] / 1e6:.1f}M | {run['precision']} | "
                f"{run['steps']:,} (best {run['best_step']:,}) | {run['tokens'] / 1e6:.2f}M | "
                f"{run['tokens_per_s']:,.0f} | {run['loop_val_bits_per_byte']:.3f} | {run['val_bits_per_byte']:.3f} | "
                f"{run['train_loss']:.3f} | {run['wall_s']:.0f} |"
            )
    return "\n".join(lines)


def plot(results: dict, recipes: list[str], budgets: list[Budget], path: Path) -> Path:
    """Bits per byte against training minutes, one line per recipe (a point per budget), and each run's validation
    curve as a thin line (the loop's estimate; x = tokens at the run's average speed, evaluations included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for recipe in recipes:
        runs = [results["runs"][name] for b in budgets if (name := run_name(recipe, b)) in results["runs"]]
        if not runs:
            continue
        color = COLORS.get(recipe)
        for run in runs:
            metrics = Path(run["run_dir"]) / "metrics.jsonl"
            if not metrics.is_file():
                continue
            records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
            curve = [(r["tokens"] / run["tokens_per_s"] / 60, r["val/bits_per_byte"])
                     for r in records if "val/bits_per_byte" in r and r["tokens"] > 0]
            if curve:
                axes.plot(*zip(*curve), color=color, linewidth=0.7, alpha=0.45)
        axes.plot([r["wall_s"] / 60 for r in runs], [r["val_bits_per_byte"] for r in runs], color=color, marker="o",
                  linewidth=2, label=recipe)
    axes.set_xlabel("training minutes (wall clock, this machine)")
    axes.set_ylabel("validation bits per byte")
    axes.set_title("Quality per minute of compute (thin: validation during each run)", fontsize=10)
    return save_figure(figure, axes, path)


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--budgets", nargs="+", type=float, default=[10, 30, 60], help="minutes of training")
    parser.add_argument("--steps", nargs="+", type=int, help="optimizer steps of training, instead of --budgets")
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED_DATA,
                        help="folder with train.txt and valid.txt (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quality")
    parser.add_argument("--rerun", action="store_true", help="train the selected runs again even if results.json "
                                                             "holds them")
    parser.add_argument("--report", action="store_true", help="train nothing: the tables and the plot of the "
                                                              "runs results.json holds")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help="size of the BPE trained on train.txt (default: %(default)s); an OUT folder holds one "
                             "vocabulary, so compare another in another --out")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="windows per forward pass when scoring")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="key=value",
                        help="recipe search: override our recipes' config (cpu-demo.yaml); needs --tag")
    parser.add_argument("--tag", help="name of the --set variant: its runs are {recipe}+{tag}-{budget}min")
    parser.add_argument("--results-out", type=Path, help="the results file (default: bench/results/quality_<cpu>_"
                                                         "<date>.json); not written with --report")
    args = parser.parse_args(argv)
    if bool(args.overrides) != bool(args.tag):
        parser.error("--set and --tag go together")
    if any(not (b > 0 and math.isfinite(b)) for b in args.budgets):
        parser.error("--budgets must be positive numbers of minutes")
    if args.steps and any(n < 1 for n in args.steps):
        parser.error("--steps must be positive numbers of steps")
    args.budgets = [Budget(n, "steps") for n in args.steps] if args.steps else [Budget(b) for b in args.budgets]
    return args


@exit_on_error
def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("slm_hf").setLevel(logging.INFO)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {"runs": {}}
    held = results.get("data", {}).get("vocab_size")
    if results["runs"] and held not in (None, args.vocab_size):
        raise SLMError(f"{out} holds runs on a vocabulary of {held:,} tokens, not {args.vocab_size:,}: choose "
                       f"another --out for another vocabulary")
    data_dir = prepare(args.shared_data, out, args.vocab_size)
    results["data"] = {key: read_meta(data_dir)[key] for key in ("source", "vocab_size", "splits", "validation")}
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; results in {results_path}")

    variant = Variant(args.tag, tuple(args.overrides))
    labels = [variant.label(recipe) for recipe in args.recipes]
    for budget in args.budgets:  # the short budgets first: a usable table early
        for recipe in args.recipes:
            name = run_name(variant.label(recipe), budget)
            if name in results["runs"] and not args.rerun:
                print(f"## {name}: done earlier ({results['runs'][name]['val_bits_per_byte']:.3f} bits/byte), "
                      f"skipped")
                continue
            if args.report:
                continue
            run = train_and_evaluate(recipe, budget, data_dir, out, args.eval_batch_size, variant)
            results["runs"][name] = {**run, "machine": describe()}
            write_json(results_path, results)
            print(f"## {name}: {run['steps']:,} steps, {run['tokens']:,} tokens, {run['tokens_per_s']:,.0f} tok/s, "
                  f"val {run['val_bits_per_byte']:.4f} bits/byte on {run['eval_tokens']:,} tokens "
                  f"(loop's estimate {run['loop_val_bits_per_byte']:.4f}), evaluated in {run['eval_s']:.0f} s\n"
                  f"   sample: {run['sample']!r}", flush=True)

    figure = plot(results, labels, args.budgets, out / "quality_per_minute.png")
    print(f"\nValidation bits per byte on {results['data']['splits']['val']['stories']:,} held-out stories "
          f"({results['data']['splits']['val']['tokens']:,} tokens), best model of each run; plot: {figure}\n")
    print(table(results, labels, args.budgets))
    print()
    print(details(results, labels, args.budgets))
    if not args.report:
        write_invocation(results, labels, args.budgets, args.results_out)


def write_invocation(results: dict, labels: list[str], budgets: list[Budget], out: Path | None) -> None:
    """This invocation's runs as one results file; its shape is the runs' shape where they share one."""
    runs = {name: results["runs"][name] for b in budgets for label in labels
            if (name := run_name(label, b)) in results["runs"]}
    shapes = [json.dumps(run.get("shape"), sort_keys=True) for run in runs.values()]
    shape = json.loads(shapes[0]) if shapes and len(set(shapes)) == 1 else {"varies": True}
    path = write_results("quality", {"data": results["data"], "runs": runs}, shape=shape, out=out)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
