.PHONY: install test quality style demo clean

# `make test` / `make demo` create the environment on first use, so a fresh clone needs no other step.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines get the CPU build of torch (on this project's machines `torch==2.13.0` resolves to it); machines with
# an NVIDIA driver get the regular CUDA build. Override with e.g. `make install TORCH_SPEC="torch==2.8.0"`.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.6" || echo "torch==2.13.0")
check_dirs := depo_trl tests benchmarks

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest tests

quality: install
	$(BIN)/ruff check $(check_dirs)
	$(BIN)/ruff format --check $(check_dirs)

style: install
	$(BIN)/ruff check --fix $(check_dirs)
	$(BIN)/ruff format $(check_dirs)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
