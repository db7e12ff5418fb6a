PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# llama.cpp as the reference (compiles it: ~4 min on 2 cores, then cached by pip)
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36

.PHONY: install install-reference test test-reference test-all bench lint golden clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[test]'

install-reference:
	$(BIN)/pip install '$(LLAMA_CPP_PYTHON)'

# Default tier needs no compiler; the reference tier runs too when llama-cpp-python is installed
# (make install-reference) and skips, saying why, when it is not.
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
