#!/usr/bin/env python3
"""Tokens/s of `pyquantize imatrix` against llama-imatrix, same model, text, chunks and threads.

Both are measured in this run: llama-imatrix's marginal rate (whole runs of N and of 4 chunks,
differenced) against the time of our chunk loop (the forward passes and collection), and the wall
clock of each whole run (model load and tokenization included). llama-imatrix runs as in the parity tests (-ctk f32
-ctv f32 -fa off) and, for information, with its defaults (F16 KV cache, flash attention auto).

    python scripts/bench_imatrix.py [--model M.gguf] [--text T.txt] [--chunks 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "tests" / "data"


def run_llama(exe: Path, model: Path, text: Path, chunks: int, threads: int, plain: bool) -> float:
    """Wall-clock seconds of one llama-imatrix run."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(exe), "-m", str(model), "-f", str(text), "-o", f"{tmp}/i.gguf", "-c", "512",
               "--chunks", str(chunks), "-t", str(threads)]
        if plain:
            cmd += ["-ctk", "f32", "-ctv", "f32", "-fa", "off"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"llama-imatrix failed:\n{proc.stderr[-2000:]}")
    return wall


def run_ours(model: Path, text: Path, chunks: int, threads: int) -> tuple[float, float]:
    from quantize_cli.imatrix.command import ImatrixOptions, compute_imatrix, set_threads

    set_threads(threads)
    spent = {"s": 0.0, "n": 0}

    def on_chunk(r):
        spent["s"] += r.seconds
        spent["n"] += r.tokens

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        compute_imatrix(model, ImatrixOptions(text_file=text, output=Path(tmp) / "i.gguf", chunks=chunks,
                                              threads=threads), on_chunk=on_chunk)
        wall = time.perf_counter() - t0
    return spent["n"] / spent["s"], wall


def run_libllama(model: Path, text: Path, chunks: int, threads: int, plain: bool) -> float:
    """llama.cpp's forward pass alone through llama-cpp-python's libllama: llama_decode of the same
    chunks, no collection callback. llama-imatrix can only be slower than this."""
    import numpy as np
    import llama_cpp as L

    quiet = L.llama_log_callback(lambda level, text, user: None)
    L.llama_log_set(quiet, None)
    run_libllama.keep = quiet  # the callback must outlive the calls
    L.llama_backend_init()
    m = L.llama_model_load_from_file(str(model).encode(), L.llama_model_default_params())
    cp = L.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = 512
    cp.n_threads = cp.n_threads_batch = threads
    if plain:
        cp.type_k = cp.type_v = 0
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(m, cp)
    vocab = L.llama_model_get_vocab(m)
    data = text.read_bytes()
    buf = (L.llama_token * (len(data) + 16))()
    n = L.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
    tokens = np.array(buf[:n], dtype=np.int32)
    batch = L.llama_batch_init(512, 0, 1)
    spent = 0.0
    for i in range(min(chunks, n // 512)):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        batch.n_tokens = 512
        for k in range(512):
            batch.token[k] = int(tokens[i * 512 + k])
            batch.pos[k] = k
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = 0
            batch.logits[k] = True
        t0 = time.perf_counter()
        L.llama_decode(ctx, batch)
        spent += time.perf_counter() - t0
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(m)
    return min(chunks, n // 512) * 512 / spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DATA / "stories260K.gguf")
    ap.add_argument("--text", type=Path, default=DATA / "calibration-en.txt")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-bin", type=Path, default=Path("/work/ref/build/bin"))
    args = ap.parse_args()
    exe = args.llama_bin / "llama-imatrix"
    ours, ours_wall = run_ours(args.model, args.text, args.chunks, args.threads)
    print(f"model {args.model.name}, {args.chunks} chunks of 512 tokens, {args.threads} threads")
    print(f"  pyquantize imatrix          : {ours:10.0f} tokens/s   (whole run {ours_wall:6.2f} s)")
    try:
        import llama_cpp  # noqa: F401

        for plain, label in ((True, "f32 KV, no flash attn"), (False, "defaults: f16 KV, FA auto")):
            rate = run_libllama(args.model, args.text, args.chunks, args.threads, plain)
            print(f"  libllama decode only ({label:>25}): {rate:10.0f} tokens/s   ratio ours/llama {ours / rate:5.2f}x")
    except ImportError:
        print("  libllama: llama-cpp-python is not installed; skipped")
    if not exe.exists():
        print(f"  llama-imatrix: {exe} not found (scripts/build_llama_cpp.sh builds it); no ratio")
        return
    # llama-imatrix prints no timing we can rely on: time whole runs of `chunks` and of 4 chunks (one
    # batch) and take the difference, which leaves out loading, tokenizing and saving
    small = 4
    for plain, label in ((True, "f32 KV, no flash attn"), (False, "defaults: f16 KV, FA auto")):
        wall = run_llama(exe, args.model, args.text, args.chunks, args.threads, plain)
        wall_small = run_llama(exe, args.model, args.text, small, args.threads, plain)
        if wall <= wall_small * 1.05:  # too noisy to difference (a busy machine): whole runs only
            print(f"  llama-imatrix ({label:>25}):        n/a tokens/s   (whole run {wall:6.2f} s)   "
                  f"ratio ours/llama   n/a (whole run {wall / ours_wall:5.2f}x)")
            continue
        rate = (args.chunks - small) * 512 / (wall - wall_small)
        print(f"  llama-imatrix ({label:>25}): {rate:10.0f} tokens/s   (whole run {wall:6.2f} s)   "
              f"ratio ours/llama {ours / rate:5.2f}x (whole run {wall / ours_wall:5.2f}x)")


if __name__ == "__main__":
    main()
