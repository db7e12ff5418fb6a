#!/usr/bin/env python3
"""Target mode's cost, measured in one run: a plain convert (Q4_K_M), a whole target-mode run with
an empty search cache (measurement, calibration, search, write), and a second target from the
cache. Issue 16 asks: the whole run under 5 minutes for a 135 M-weight model on 2 cores, and the
cached one under 1.5x the plain convert.

    python scripts/bench_target.py                          # stories260K (tiny: a smoke run)
    python scripts/bench_target.py --model smollm2-f32.gguf --imatrix im.gguf --text calib.txt \
        --sizes 85MiB,70MiB --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def run(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quantize_cli.cli", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DATA / "stories260K.gguf")
    ap.add_argument("--imatrix", type=Path)
    ap.add_argument("--text", type=Path, default=DATA / "calibration-en.txt")
    ap.add_argument("--sizes", default="330000,300000", help="two --target-size values")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    first, second = args.sizes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        imatrix = args.imatrix
        if imatrix is None:
            imatrix = tmp / "imatrix.gguf"
            run(["imatrix", str(args.model), "-f", str(args.text), "-o", str(imatrix), "-c", "128", "--chunks", "8"])
        common = ["--imatrix", str(imatrix), "--threads", str(args.threads), "--quiet"]
        run(["convert", str(args.model), str(tmp / "warm.gguf"), "Q8_0", *common])  # load kernels once, untimed
        plain = run(["convert", str(args.model), str(tmp / "plain.gguf"), "Q4_K_M", *common])
        search = ["--search-text", str(args.text), "--search-cache", str(tmp / "cache")]
        cold = run(["convert", str(args.model), str(tmp / "t1.gguf"), "--target-size", first, *search, *common])
        warm = run(["convert", str(args.model), str(tmp / "t2.gguf"), "--target-size", second, *search, *common])
    result = {"model": str(args.model), "threads": args.threads, "plain_q4_k_m_s": round(plain, 2),
              "target_cold_s": round(cold, 2), "target_from_cache_s": round(warm, 2),
              "cached_over_plain": round(warm / plain, 3)}
    print(f"{args.model.name}, {args.threads} threads: plain Q4_K_M {plain:.2f} s; target mode, empty cache "
          f"{cold:.2f} s; second target from the cache {warm:.2f} s = {warm / plain:.2f}x the plain convert")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
