# mnist-bench — `make` lists the targets. Command-line variables (NAME=, TRIALS=, ...) are handed
# to the CLI, which rejects unknown ones: make itself would accept any VAR= silently.
.DEFAULT_GOAL := help
SHELL := bash

VENV := .venv
ifeq ($(origin PYTHON),command line)
  PY := $(PYTHON)
  SETUP :=
else
  PY := $(VENV)/bin/python
  SETUP := $(VENV)/.installed
endif

# Offline MNIST mirror: ../shared/datasets/mnist beside the checkout, else .data/mnist; neither
# present means torchvision downloads into .data/.
ifeq ($(MNIST_DIR),)
  MNIST_DIR := $(patsubst %/train-images-idx3-ubyte.gz,%,$(firstword $(wildcard \
    $(abspath ../shared/datasets/mnist)/train-images-idx3-ubyte.gz \
    $(abspath .data/mnist)/train-images-idx3-ubyte.gz)))
endif
export MNIST_DIR

# Settings given as environment variables (`SMOKE=1 make study ...`) count too: $(call env,KEYS)
# hands over those of KEYS that come from the environment.
env = $(foreach v,$(1),$(if $(filter environment,$(origin $(v))),$(v)=$($(v))))
STUDY_KEYS := NAME TRIALS TIMEOUT DEVICE SEED SMOKE RESULTS_DIR WORKERS STORAGE PRECISION FAST \
  REPLICATES SAMPLER
WORKER_KEYS := NAME STORAGE WORKERS SMOKE RESULTS_DIR
FINALIZE_KEYS := NAME K SEEDS DEVICE REFRESH SMOKE RESULTS_DIR
REPRODUCE_KEYS := ENTRY N_SEEDS DEVICE SAVE THREADS RESULTS_DIR
BENCH_KEYS := DEVICE EPOCHS QUICK MODELS ROWS SEED RESULTS_DIR
BENCH_STUDY_KEYS := NAME TRIALS WORKERS DEVICE SEED SMOKE RESULTS_DIR
SOAK_KEYS := STORAGE MINUTES WORKERS SEED RESULTS_DIR

.PHONY: help setup study worker finalize report reproduce promote leaderboard bench bench-study soak list test \
  test-full test-gpu docs lint clean

help: ## show this help
	@echo "usage: make TARGET [NAME=study] [KEY=VALUE ...]"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "study settings: NAME TRIALS TIMEOUT DEVICE=auto|cpu|cuda SEED SMOKE=1 RESULTS_DIR"
	@echo "                REPLICATES=k (the whole study k times, seeds SEED..SEED+k-1)"
	@echo "                SAMPLER=tpe|random|qmc (tpe: the study file's own sampler)"
	@echo "                WORKERS=n STORAGE=postgresql://user@host/db PRECISION=auto|fp32|bf16 FAST=0"
	@echo "finalize settings: NAME K SEEDS DEVICE REFRESH=1 SMOKE=1 RESULTS_DIR"
	@echo "reproduce settings: ENTRY N_SEEDS=3 DEVICE=auto|cpu|cuda SAVE=1 THREADS RESULTS_DIR"
	@echo "bench settings: DEVICE=auto|cpu|cuda EPOCHS QUICK=1 MODELS=a,b ROWS=a,b SEED RESULTS_DIR"
	@echo "bench-study settings: NAME TRIALS=20 WORKERS=1,2 DEVICE SEED SMOKE=1 RESULTS_DIR"
	@echo "soak settings: MINUTES=5 WORKERS=4 SEED STORAGE=postgresql://... RESULTS_DIR"
	@echo "PYTHON=python3 uses that interpreter instead of creating $(VENV)"

setup: $(SETUP) ## create .venv and install the package with dev tools (idempotent)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,postgres]'
	touch $@

# The targets that run Python are not echoed (@), all alike: the line would repeat what was typed
# plus PYTHON=..., and STORAGE= may hold a password. The CLI prints what it resolved instead.
study: $(SETUP) ## run or continue a study: make study NAME=mlp_vs_cnn [TRIALS= TIMEOUT= DEVICE= SEED= SMOKE=1]
	@$(PY) -m bench study $(call env,$(STUDY_KEYS)) $(MAKEOVERRIDES)

worker: $(SETUP) ## add workers to a running study: make worker NAME=x [STORAGE=postgresql://... WORKERS=2]
	@$(PY) -m bench worker $(call env,$(WORKER_KEYS)) $(MAKEOVERRIDES)

finalize: $(SETUP) ## score the validation-chosen finalists on test: make finalize NAME=x [K=1 SEEDS=2 REFRESH=1]
	@$(PY) -m bench finalize $(call env,$(FINALIZE_KEYS)) $(MAKEOVERRIDES)

report: $(SETUP) ## re-render results/NAME/report.html from the store: make report NAME=x
	@$(PY) -m bench report $(call env,NAME SMOKE RESULTS_DIR) $(MAKEOVERRIDES)

reproduce: $(SETUP) ## re-run leaderboard entries: make reproduce [ENTRY=id N_SEEDS=3 DEVICE= SAVE=1]
	@$(PY) -m bench reproduce $(call env,$(REPRODUCE_KEYS)) $(MAKEOVERRIDES)

promote: $(SETUP) ## make a study's best finalist a leaderboard entry: make promote NAME=mlp_vs_cnn
	@$(PY) -m bench promote $(call env,NAME RESULTS_DIR) $(MAKEOVERRIDES)

leaderboard: $(SETUP) ## print the leaderboard table and write results/leaderboard.md
	@$(PY) -m bench leaderboard $(call env,RESULTS_DIR) $(MAKEOVERRIDES)

bench: $(SETUP) ## seconds per epoch, tutorial pipeline vs harness: make bench [DEVICE= QUICK=1 EPOCHS= MODELS=]
	@$(PY) -m bench bench $(call env,$(BENCH_KEYS)) $(MAKEOVERRIDES)

bench-study: $(SETUP) ## trials per minute, 1 vs more workers: make bench-study NAME=x [TRIALS=20 WORKERS=1,2]
	@$(PY) -m bench bench-study $(call env,$(BENCH_STUDY_KEYS)) $(MAKEOVERRIDES)

# Not echoed (@): STORAGE= may hold a password.
soak: $(SETUP) ## kill a smoke study's processes at random, then check: make soak [MINUTES=5 WORKERS=4 STORAGE=]
	@$(PY) -m bench soak $(call env,$(SOAK_KEYS)) $(MAKEOVERRIDES)

list: $(SETUP) ## list registered models, optimizers, schedules and studies
	@$(PY) -m bench list

test: $(SETUP) ## fast tests (CPU, minutes)
	@$(PY) -m pytest

test-full: $(SETUP) ## all CPU tests, slow ones included
	@$(PY) -m pytest -m 'not gpu'

test-gpu: $(SETUP) ## CUDA tests (run on a GPU machine)
	@$(PY) -m pytest -m gpu

docs: $(SETUP) ## regenerate docs/knobs.md and docs/schema.md from the registries and schemas
	@$(PY) -m bench.reference

lint: $(SETUP) ## ruff
	@$(PY) -m ruff check bench tests studies

clean: ## remove caches and build files (results/ and .venv are kept)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
