# `make test` works on a fresh clone: it makes .venv, installs what the tests need and runs them.
# On a machine with no NVIDIA GPU torch is pinned to the 2.13.0 CPU wheel (an unpinned torch pulls a
# multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: test env bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: setup.py Makefile | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
ifeq ($(HAS_GPU),)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q "triton==3.7.1"
endif
	$(BIN)/pip install -q -e ".[test]"
	touch $@

env: $(VENV)/.installed

test: env
	$(BIN)/python -m pytest -q tests

bench: env
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m pytest -q bench --benchmark-json=bench/results/cpu-bench.json

clean:
	rm -rf $(VENV) *.egg-info
