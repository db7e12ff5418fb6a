#!/usr/bin/env python3
"""Quantizer speed, ours against llama.cpp's ggml_quantize_chunk, measured in the same run.

For every type in the kernel registry with a quantizer: M weights/s of ours at 1 and 2 Numba
threads, and of ggml at 1 thread (one ggml_quantize_chunk call) and 2 threads (two calls on
the two halves of the rows, in two Python threads: ctypes releases the GIL). Warm: compile
time (or cache load) is measured first and reported apart. Types that need an imatrix get
one; with --imatrix every type is also measured with one (the impl paths).

Timings interleave ours and ggml and keep the best of --repeat runs, so load from other
processes on the machine hurts both sides alike.

    python scripts/bench_kernels.py                    # 4096 x 4096 random F32
    PYQUANTIZE_BENCH_SMALL=1 python scripts/bench_kernels.py   # 256 x 4096
    python scripts/bench_kernels.py --types Q4_0,Q8_0 --imatrix --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import kernels  # noqa: E402
from gguf import GGMLQuantizationType  # noqa: E402

import ggml_ref  # noqa: E402


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _ggml_two_threads(x, qtype, imatrix):
    half = x.shape[0] // 2
    parts = [x[:half], x[half:]]
    out = [None, None]

    def run(i):
        out[i] = ggml_ref.quantize(parts[i], qtype, imatrix)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def bench_type(qtype, x, imatrix, repeat, have_ggml):
    n_weights = x.size
    t = time.perf_counter()
    kernels.warmup([qtype], with_imatrix=imatrix is not None)
    compile_s = time.perf_counter() - t

    ours = {1: float("inf"), 2: float("inf")}
    ref = {1: float("inf"), 2: float("inf")}
    if have_ggml:
        # also a correctness spot check: the timing is meaningless if the bytes differ
        identical = bool(np.array_equal(kernels.quantize(x[:64], qtype, imatrix), ggml_ref.quantize(x[:64], qtype, imatrix)))
    else:
        identical = None
    for _ in range(repeat):
        for threads in (1, 2):
            kernels.set_threads(threads)
            ours[threads] = min(ours[threads], _best(lambda: kernels.quantize(x, qtype, imatrix), 1))
        if have_ggml:
            ref[1] = min(ref[1], _best(lambda: ggml_ref.quantize(x, qtype, imatrix), 1))
            ref[2] = min(ref[2], _best(lambda: _ggml_two_threads(x, qtype, imatrix), 1))
    kernels.set_threads(None)

    def mws(seconds):
        return n_weights / seconds / 1e6 if seconds != float("inf") else None

    row = {
        "type": qtype.name,
        "imatrix": imatrix is not None,
        "compile_s": round(compile_s, 3),
        "ours_1t": mws(ours[1]),
        "ours_2t": mws(ours[2]),
        "ggml_1t": mws(ref[1]) if have_ggml else None,
        "ggml_2t": mws(ref[2]) if have_ggml else None,
        "identical_spot_check": identical,
    }
    row["ratio_1t"] = row["ours_1t"] / row["ggml_1t"] if have_ggml else None
    row["ratio_2t"] = row["ours_2t"] / row["ggml_2t"] if have_ggml else None
    return row


def _fmt(v, spec):
    width = int(spec.split(".")[0])
    return "-".rjust(width) if v is None else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", help="comma-separated type names (default: every registered quantizer)")
    ap.add_argument("--rows", type=int, help="rows of the test matrix (default 4096, 256 with PYQUANTIZE_BENCH_SMALL=1)")
    ap.add_argument("--cols", type=int, default=4096, help="weights per row (default 4096)")
    ap.add_argument("--imatrix", action="store_true", help="also measure every type with an importance matrix")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement; the best is kept (default 3)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    args = ap.parse_args(argv)

    small = os.environ.get("PYQUANTIZE_BENCH_SMALL", "") not in ("", "0")
    nrows = args.rows or (256 if small else 4096)
    if args.types:
        qtypes = [GGMLQuantizationType[name.strip().upper()] for name in args.types.split(",")]
    else:
        qtypes = [t for t in kernels.registry() if kernels.can_quantize(t) and t != GGMLQuantizationType.F32]

    have_ggml = ggml_ref.lib() is not None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((nrows, args.cols), dtype=np.float32)
    imatrix = np.ascontiguousarray(rng.random(args.cols, dtype=np.float32) ** 2 * 10 + 1e-3)

    print(f"{nrows} x {args.cols} random F32, best of {args.repeat}; M weights/s; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    if not have_ggml:
        print(f"note: ggml columns skipped: {ggml_ref.WHY_ABSENT}")
    header = f"{'type':<9} {'imatrix':<7} {'compile s':>9} {'ours 1t':>8} {'ggml 1t':>8} {'ratio':>6} {'ours 2t':>8} {'ggml 2t':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    rows = []
    for qtype in qtypes:
        needs = kernels.get(qtype).needs_imatrix
        kinds = [True] if needs else ([False, True] if args.imatrix else [False])
        for with_imatrix in kinds:
            row = bench_type(qtype, x, imatrix if with_imatrix else None, args.repeat, have_ggml)
            rows.append(row)
            flag = "" if row["identical_spot_check"] in (True, None) else "  BYTES DIFFER"
            print(f"{row['type']:<9} {'yes' if row['imatrix'] else 'no':<7} {row['compile_s']:>9.2f} "
                  f"{_fmt(row['ours_1t'], '8.1f')} {_fmt(row['ggml_1t'], '8.1f')} {_fmt(row['ratio_1t'], '6.2f')} "
                  f"{_fmt(row['ours_2t'], '8.1f')} {_fmt(row['ggml_2t'], '8.1f')} {_fmt(row['ratio_2t'], '6.2f')}{flag}",
                  flush=True)
    if args.json:
        doc = {"rows": nrows, "cols": args.cols, "repeat": args.repeat, "ggml": have_ggml, "results": rows}
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
