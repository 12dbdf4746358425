# Thin wrappers over the `elta` command line (the real interface). Each target installs first.
#   make train DATASET=para METHOD=elta GPUS=4 DATA_ROOT=/data/PARA ARGS="optim.lr=1e-4"
#   make train DATASET=para METHOD=elta GPUS=4 DATA_ROOT=/data/PARA RESUME=1   # continue it
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch comes first and pinned, so pip never swaps in another multi-GB build. A GPU user picks
# the CUDA build here, e.g. TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DATASET ?= synthetic
METHOD ?= elta
GPUS ?=
NODES ?= 1
DATA_ROOT ?=
ARGS ?=
# RESUME=1: continue the newest unfinished run of DATASET and METHOD (elta train resume=last)
RESUME ?=
TEST_ENV := OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled

DATA_ARGS := dataset=$(DATASET) $(if $(DATA_ROOT),data.root=$(DATA_ROOT)) \
	$(if $(GPUS),trainer.accelerator=gpu trainer.devices=$(GPUS)) \
	$(if $(filter-out 1,$(NODES)),trainer.num_nodes=$(NODES)) $(ARGS)
RUN_ARGS := method=$(METHOD) $(DATA_ARGS)

METHODS ?= vanilla elta
SEEDS ?= 3
COUNT ?=
.PHONY: install train selftrain compare sweep test lint bench
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -e '.[dev]'
	touch $@

train: install
	$(BIN)/elta train $(RUN_ARGS) $(if $(filter-out 0,$(RESUME)),resume=last)

selftrain: install
	$(BIN)/elta self-train $(RUN_ARGS)

compare: install
	$(BIN)/elta compare-train $(DATA_ARGS) --methods "$(METHODS)" --seeds $(SEEDS)

sweep: install
	$(BIN)/elta sweep experiments/sweeps/$(METHOD).yaml $(DATA_ARGS) $(if $(COUNT),--count $(COUNT))

test: install
	$(TEST_ENV) $(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks

bench: install
	$(TEST_ENV) $(BIN)/python benchmarks/elta_overhead.py
	$(TEST_ENV) $(BIN)/python benchmarks/image_decode.py
	$(TEST_ENV) $(BIN)/python benchmarks/part_overhead.py
	$(TEST_ENV) $(BIN)/python benchmarks/train_throughput.py
