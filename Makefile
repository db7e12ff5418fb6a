PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# llama.cpp as the reference (compiles it: ~4 min on 2 cores, then cached by pip)
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36

.PHONY: install install-reference test test-reference test-all bench bench-kernels bench-e2e bench-perplexity bench-target bench-hf bench-imatrix-moe lint golden clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install -e '.[test]'

install-reference:
	$(BIN)/pip install '$(LLAMA_CPP_PYTHON)'

# Default tier needs no compiler; the reference tier runs too when llama-cpp-python is installed
# (make install-reference) and skips, saying why, when it is not.
test:
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-reference:
	$(BIN)/python -m pytest -q -m reference

test-all:
	$(BIN)/python -m pytest -q

# Kernels against ggml_quantize_chunk, then whole conversions against llama-quantize (needs
# scripts/build_llama_cpp.sh or $$LLAMA_QUANTIZE; generates its inputs into ~/.cache/pyquantize-bench)
bench: bench-kernels bench-e2e bench-perplexity bench-target bench-hf

bench-kernels:
	$(BIN)/python scripts/bench_kernels.py

bench-e2e:
	$(BIN)/python scripts/bench.py --json bench-out/e2e.json

# perplexity tokens/s and peak RSS against llama-perplexity (SmolLM2-135M F16; see the script's docstring)
bench-perplexity:
	$(BIN)/python scripts/bench_perplexity.py --compare --json bench-out/perplexity.json

# target mode (issue 16): a whole search with an empty cache (wall and CPU), and a second target
# from the cache alternated with a plain Q4_K_M convert (ratios from the same run). stories260K by
# default; a real model: make bench-target TARGET_BENCH="--model M.gguf --imatrix I.gguf --text T.txt --first 4.5 --second 5"
bench-target:
	$(BIN)/python scripts/bench_target.py $(TARGET_BENCH) --json bench-out/target.json

# a 349 M-weight BF16 sharded Hugging Face checkpoint to Q4_K_M: one pass against convert_hf_to_gguf.py +
# llama-quantize (needs a torch interpreter, PYQUANTIZE_TORCH_PYTHON; skipped with a message without one)
bench-hf:
	$(BIN)/python scripts/bench_hf.py --json bench-out/hf.json

# imatrix tokens/s against llama-imatrix on a Mixtral-style MoE of 101 M expert weights (minutes)
bench-imatrix-moe:
	$(BIN)/python scripts/make_arch_models.py $(HOME)/.cache/pyquantize-bench mixtral-bench
	$(BIN)/python scripts/bench_imatrix.py --model $(HOME)/.cache/pyquantize-bench/mixtral-bench.gguf --chunks 6

lint:
	$(BIN)/python -m compileall -q quantize_cli kernels scripts tests

golden:
	$(BIN)/python scripts/make_golden.py

clean:
	rm -rf $(VENV) build *.egg-info
