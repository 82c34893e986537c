# Two commands for a new user:  `make demo`  and  `make test`.
# Both create .venv (Python 3.11) and install the pinned requirements on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/demo.toml
WORK   ?= work/demo
DATA   ?= data/ATLAS_2

export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND ?= tensorflow

.PHONY: install demo test bench weights mutation clean

# ANTsPy (predict --register) goes in with --no-deps: its numpy/scipy caps are stale (requirements-antspyx.txt).
$(STAMP): requirements.txt requirements-dev.txt requirements-antspyx.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-cache-dir --disable-pip-version-check --no-deps -r requirements-antspyx.txt
	$(BIN)/python -m pip install -q --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m raxnet demo --config $(CONFIG) --work-dir $(WORK) --data-root $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest

# The shipped weights (weights/demo): synthetic ATLAS from its own seed -> stages 01-08 -> export, then a warm
# restart of those networks on the same subjects and split (configs/weights_demo_restart.toml). Resumable.
weights: $(STAMP)
	$(BIN)/python -m raxnet demo --config configs/weights_demo.toml
	$(BIN)/python -m raxnet export-weights --work-dir work/weights_demo --out work/weights_demo/export \
	    --note "configs/weights_demo.toml: phase 1 of make weights (3,000 steps per plane)"
	$(BIN)/python -m raxnet demo --config configs/weights_demo_restart.toml
	$(BIN)/python -m raxnet export-weights --work-dir work/weights_demo_restart --model raxnet-tversky_focal_slice \
	    --out weights/demo \
	    --note "configs/weights_demo.toml then configs/weights_demo_restart.toml (make weights): synthetic ATLAS, 600 whole-head subjects, seed 20262, 2 mm, 3,000 steps per plane + a 1,500-step warm restart with the per-lesion-slice Tversky loss (tversky_focal_slice, bias augmentation 0.2 and a brain-scaled bias field bias_brain 0.35); demo weights, not for clinical use"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Mutation-testing benchmark (bench/mutation, README "Mutation testing"): mutmut over the core modules, two
# workers (the 2-core machine) at nice 19; not part of `make test` or CI.
# MUTATION_ARGS="--modules metrics,planes --label x" for a subset, "--max-children 1" for one worker.
MUTMUT_STAMP := $(VENV)/.mutmut-installed
$(MUTMUT_STAMP): $(STAMP) bench/mutation/requirements.txt
	$(BIN)/python -m pip install -q --no-cache-dir --disable-pip-version-check -r bench/mutation/requirements.txt
	touch $(MUTMUT_STAMP)

mutation: $(MUTMUT_STAMP)
	$(BIN)/python bench/mutation/run_mutation.py $(MUTATION_ARGS)

clean:
	rm -rf work data .pytest_cache
