"""Measure quantized files against their base on held-out text: size, bpw, PPL, mean KLD, same-top %.

    python scripts/target_eval.py BASE.gguf TEXT Q1.gguf Q2.gguf ... [--chunks 4] [--ctx 256]

Runs the runtime's forward pass (float32 NumPy) on `chunks` chunks of `ctx` tokens from the start
of TEXT, for the base and each file; KLD and PPL are over the second half of each chunk, as
llama-perplexity scores them. Prints a Markdown table. Issue 16's acceptance table is made with it
(the eval/ `compare` command replaces it once it is on main).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantize_cli.plan.target_sensitivity import calibration_tokens, log_softmax  # noqa: E402
from quantize_cli.runtime import model as runtime  # noqa: E402
from quantize_cli.runtime.blas import set_threads  # noqa: E402
from quantize_cli.sources import open_source  # noqa: E402


def scores(path: Path, chunks: list[np.ndarray]) -> list[np.ndarray]:
    model = runtime.Model(path)
    try:
        return [log_softmax(model.forward(c))[len(c) // 2:-1].astype(np.float32) for c in chunks]
    finally:
        model.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("text", type=Path)
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    chunks = calibration_tokens(args.base, args.text, args.chunks, args.ctx)
    targets = [c[len(c) // 2 + 1:] for c in chunks]
    base = scores(args.base, chunks)

    def row(path: Path, logp: list[np.ndarray]) -> str:
        nll = np.concatenate([-lp[np.arange(len(t)), t] for lp, t in zip(logp, targets)])
        kld = np.concatenate([(np.exp(b) * (b - lp)).sum(-1) for b, lp in zip(base, logp)])
        same = np.concatenate([b.argmax(-1) == lp.argmax(-1) for b, lp in zip(base, logp)])
        with open_source(path) as src:
            n = sum(t.n_elements for t in src.tensors)
            data = sum(t.nbytes for t in src.tensors)
        size = path.stat().st_size
        return (f"| {path.name} | {size:,} | {data * 8 / n:.4f} | {np.exp(nll.mean()):.4f} | "
                f"{kld.mean():.6f} ± {kld.std() / np.sqrt(len(kld)):.6f} | {100 * same.mean():.2f} |")

    print(f"{args.chunks} chunks x {args.ctx} tokens of {args.text.name}, scored on the second half of each chunk")
    print("| file | bytes | bpw | PPL | mean KLD | same top % |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row(args.base, base), flush=True)
    for path in args.files:
        print(row(path, scores(path, chunks)), flush=True)


if __name__ == "__main__":
    main()
