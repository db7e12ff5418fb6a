#!/usr/bin/env bash
# Build llama.cpp's reference tools (llama-quantize, llama-imatrix, llama-perplexity) from the
# llama-cpp-python sdist, CPU-only Release, into $LLAMA_CPP_BUILD (default ../ref/build).
# Nothing built here is committed. About 4 minutes on 2 cores.
#   scripts/build_llama_cpp.sh            # downloads the sdist with pip if needed
#   LLAMA_CPP_SRC=/path/to/llama.cpp scripts/build_llama_cpp.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${LLAMA_CPP_WORK:-$here/../ref}
build=${LLAMA_CPP_BUILD:-$work/build}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
mkdir -p "$work"
if [ -z "${LLAMA_CPP_SRC:-}" ]; then
  sdist_dir="$work/llama_cpp_python-$version"
  if [ ! -d "$sdist_dir/vendor/llama.cpp" ]; then
    python3 -m pip download --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$work" >/dev/null
    tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
  fi
  LLAMA_CPP_SRC="$sdist_dir/vendor/llama.cpp"
fi
cmake -S "$LLAMA_CPP_SRC" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target llama-quantize llama-imatrix llama-perplexity >/dev/null
ls "$build/bin/llama-quantize" "$build/bin/llama-imatrix" "$build/bin/llama-perplexity"
