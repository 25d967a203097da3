# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Both create or reuse .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export NO_MKDOCS_2_WARNING ?= 1
# pytest-xdist workers for `make test` (the suite is mostly single-threaded: two workers halve it on 2 cores)
TEST_WORKERS ?= 2

.PHONY: setup browser test lint docs api-doc demo gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	touch $@

setup: $(VENV)/.installed

# The page's browser test needs Chromium and its driver (Debian packages). Installed only when missing
# and when we are root with apt-get; otherwise the browser test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver (apt-get) for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
			|| echo "could not install chromium: the browser test will skip"; \
	else echo "chromium not found and not root: the browser test will skip"; fi

test: setup browser
	$(BIN)/ruff check uit_reid tests benchmarks examples
	$(BIN)/mkdocs build --strict --quiet -d $(VENV)/site
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

lint: setup
	$(BIN)/ruff check uit_reid tests benchmarks examples

docs: setup
	$(BIN)/mkdocs build --strict -d site

# The service's API reference page, regenerated from the app's OpenAPI schema (a test checks it is current).
api-doc: setup
	$(BIN)/python -m uit_reid.serve.api_doc --write docs/serve_api.md

demo: setup
	$(BIN)/uit-reid demo

# On a CUDA machine: GPU throughput, JPEG inference and a NCCL smoke run (exit 3 without a GPU).
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py --json gpu_check.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
