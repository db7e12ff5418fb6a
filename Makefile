PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test test-reference test-all bench lint golden clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[test]'

# Default tier: no compiler, no llama.cpp needed. Reference tests run too when llama-cpp-python is installed.
test:
	$(BIN)/python -m pytest -q -m "not slow"

test-reference:
	$(BIN)/python -m pytest -q -m reference

test-all:
	$(BIN)/python -m pytest -q

bench:
	$(BIN)/python scripts/bench_kernels.py

lint:
	$(BIN)/python -m compileall -q quantize_cli kernels scripts tests

golden:
	$(BIN)/python scripts/make_golden.py

clean:
	rm -rf $(VENV) build *.egg-info
