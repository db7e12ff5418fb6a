#!/usr/bin/env python3
"""Target mode's cost, measured in one run: a whole target-mode run with an empty search cache
(measurement, calibration, search, write), then a second target from that cache alternated with
a plain `convert IN OUT Q4_K_M` of the same model at the same threads (each cached round starts
from a copy of the cache the cold run left, so every round is a second target, never a third;
afterwards the second target is made once without the cache and must be the same bytes). Issue 16 asks: the whole
cold run under 5 minutes for a 135 M-weight model on 2 cores, and the cached one under 1.5x the
plain convert. Wall and CPU seconds (user + sys of the child) are both printed, with the load
average, because on a shared machine the wall time is mostly other people's work.

    python scripts/bench_target.py                          # stories260K (tiny: a smoke run)
    python scripts/bench_target.py --model smollm2-f32.gguf --imatrix im.gguf --text calib.txt \
        --first 4.5 --second 5 --threads 2 --rounds 3     # --target-bpw values; --sizes for --target-size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
COLD_LIMIT_S = 300.0
CACHED_LIMIT = 1.5


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + sys)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quantize_cli.cli", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DATA / "stories260K.gguf")
    ap.add_argument("--imatrix", type=Path)
    ap.add_argument("--text", type=Path, default=DATA / "calibration-en.txt")
    ap.add_argument("--first", default="7.5", help="--target-bpw of the cold run")
    ap.add_argument("--second", default="8", help="--target-bpw of the run from the cache")
    ap.add_argument("--sizes", help="FIRST,SECOND as --target-size values instead of --first/--second")
    ap.add_argument("--search-chunks", default="1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="plain / cached pairs, alternated")
    ap.add_argument("--no-check", action="store_true", help="skip the uncached run that checks the bytes")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.sizes:
        first, second = (["--target-size", s] for s in args.sizes.split(","))
    else:
        first, second = ["--target-bpw", args.first], ["--target-bpw", args.second]
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        imatrix = args.imatrix
        if imatrix is None:
            imatrix = tmp / "imatrix.gguf"
            run(["imatrix", str(args.model), "-f", str(args.text), "-o", str(imatrix), "-c", "128", "--chunks", "8"])
        common = ["--imatrix", str(imatrix), "--threads", str(args.threads), "--quiet"]
        run(["convert", str(args.model), str(tmp / "warm.gguf"), "Q8_0", *common])  # load kernels once, untimed
        (tmp / "warm.gguf").unlink()
        search = ["--search-text", str(args.text), "--search-chunks", args.search_chunks, "--search-cache", str(tmp / "cache")]
        cold = run(["convert", str(args.model), str(tmp / "t1.gguf"), *first, *search, *common])
        load_cold = [load[0], os.getloadavg()[0]]
        load.append(load_cold[1])
        cache_bytes = sum(p.stat().st_size for p in (tmp / "cache").iterdir())
        # each round starts from the cache the cold run left: a second target, never a third
        shutil.copytree(tmp / "cache", tmp / "cold-cache")
        plain, cached = [], []
        for _ in range(args.rounds):
            plain.append(run(["convert", str(args.model), str(tmp / "plain.gguf"), "Q4_K_M", *common]))
            shutil.rmtree(tmp / "cache")
            shutil.copytree(tmp / "cold-cache", tmp / "cache")
            cached.append(run(["convert", str(args.model), str(tmp / "t2.gguf"), *second, *search, *common]))
            load.append(os.getloadavg()[0])
        if not args.no_check:  # the cached file is the file a run without the cache writes
            run(["convert", str(args.model), str(tmp / "t2-uncached.gguf"), *second, *search[:4], *common])
            same = (tmp / "t2.gguf").read_bytes() == (tmp / "t2-uncached.gguf").read_bytes()
            if not same:
                raise SystemExit("error: the second target from the cache differs from the same run without it")
    ratios_wall = [c[0] / p[0] for p, c in zip(plain, cached)]
    ratios_cpu = [c[1] / p[1] for p, c in zip(plain, cached)]
    med = statistics.median
    result = {"model": str(args.model), "threads": args.threads, "first": first, "second": second,
              "cold_wall_s": round(cold[0], 2), "cold_cpu_s": round(cold[1], 2),
              "plain_q4_k_m_wall_s": [round(p[0], 2) for p in plain], "plain_q4_k_m_cpu_s": [round(p[1], 2) for p in plain],
              "cached_wall_s": [round(c[0], 2) for c in cached], "cached_cpu_s": [round(c[1], 2) for c in cached],
              "cached_over_plain_wall": round(med(ratios_wall), 3), "cached_over_plain_cpu": round(med(ratios_cpu), 3),
              "cache_bytes_after_cold": cache_bytes, "cold_load_average_1min": [round(v, 2) for v in load_cold],
              "load_average_1min": [round(v, 2) for v in load]}
    print(f"{args.model.name}, {args.threads} threads, load average {min(load):.1f}-{max(load):.1f}:")
    print(f"  cold target run ({' '.join(first)}, empty cache): {cold[0]:.1f} s wall, {cold[1]:.1f} s CPU "
          f"(target < {COLD_LIMIT_S:.0f} s{'' if cold[0] < COLD_LIMIT_S else '; wall over it'}), load average "
          f"{load_cold[0]:.1f} before, {load_cold[1]:.1f} after; cache {cache_bytes / 2**20:.1f} MiB")
    print(f"  second target from the cache ({' '.join(second)}) against a plain Q4_K_M, {args.rounds} alternated pairs: "
          f"wall {med([c[0] for c in cached]):.2f} / {med([p[0] for p in plain]):.2f} s = {med(ratios_wall):.2f}x, "
          f"CPU {med([c[1] for c in cached]):.2f} / {med([p[1] for p in plain]):.2f} s = {med(ratios_cpu):.2f}x "
          f"(medians; target < {CACHED_LIMIT}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
