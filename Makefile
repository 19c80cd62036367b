# `make demo` and `make test` each build their own virtual environment (.venv) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Without an NVIDIA driver, torch 2.13.0: this workplace keeps its CPU build on disk, half a gigabyte lighter per
# process than a CUDA build (elsewhere pip takes its default build of that release). Override with TORCH=...
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test,diffusers]"
	# Reference samplers for tests: k-diffusion is loaded without its heavy package __init__ (see tests/).
	$(BIN)/python -m pip install -q torchdiffeq torchsde
	$(BIN)/python -m pip install -q --no-deps k-diffusion==0.1.1.post1
	touch $@

demo: $(VENV)/.installed
	$(BIN)/fastdiffusion train --preset demo

test: $(VENV)/.installed-test
	$(BIN)/ruff check fastdiffusion tests
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not slow" --durations=10

lint: $(VENV)/.installed-test
	$(BIN)/ruff check fastdiffusion tests

clean:
	rm -rf $(VENV) runs
