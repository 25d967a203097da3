# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Both create or reuse .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: setup test lint docs demo gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/ruff check uit_reid tests benchmarks examples
	$(BIN)/mkdocs build --strict --quiet -d $(VENV)/site
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check uit_reid tests benchmarks examples

docs: setup
	$(BIN)/mkdocs build --strict -d site

demo: setup
	$(BIN)/uit-reid demo

# On a CUDA machine: GPU throughput, JPEG inference and a NCCL smoke run (exit 3 without a GPU).
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py --json gpu_check.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
