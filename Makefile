# The README's two commands:  `make demo` (main job, offline, ~15 min on 2 cores)  and  `make test`.
# Both create ./.venv on first use. TORCH_SPEC picks the PyTorch build: on this project's machines the pinned
# version is a CPU wheel on local disk; elsewhere pass e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,demo,export,eval,serve]"
	touch $@

# Prepare the shipped TinyStories sample, train the cpu-demo preset, print a story from the final model.
demo: setup
	$(BIN)/python scripts/prepare_data.py --out data/sample
	$(BIN)/python scripts/train.py --config configs/cpu-demo.yaml --data data/sample --out runs/cpu-demo --resume auto
	$(BIN)/python scripts/generate.py --model runs/cpu-demo/final --prompt "Once upon a time" --seed 0

test: setup
	bash scripts/install_browser.sh
	bash scripts/install_web.sh
	$(BIN)/python -m pytest -q --numprocesses auto --dist loadfile --no-loadscope-reorder

# The side-by-side benchmarks on this machine (bench/suite.py, docs/benchmarks.md), results in bench/results/ and
# BENCHMARKS.md re-rendered: about 30 minutes on 2 cores. BENCH_QUICK=1: a smoke run of the plumbing (a few minutes),
# its figures under runs/bench-quick/, never in bench/results/.
bench: setup
	$(BIN)/python bench/suite.py $(if $(filter 1,$(BENCH_QUICK)),--quick)

clean:
	rm -rf $(VENV) data/sample runs/cpu-demo runs/bench runs/bench-quick
