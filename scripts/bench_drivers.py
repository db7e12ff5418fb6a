#!/usr/bin/env python3
"""Why each kernel family keeps one small prange driver per type (issue 19, item 4).

Three ways to write the Q6_K and Q8_0 drivers once instead of per type, against the drivers
in kernels/ ("base"):
- closure: a factory builds one @njit(parallel=True, cache=True) driver per row function;
- arg:     one driver takes the row function (a dispatcher) as its first argument;
- fc:      one driver takes it as a first-class function (types.FunctionType, an explicit
           signature, compiled at import).

    python scripts/bench_drivers.py load VARIANT   # in a fresh process: import + first call,
                                                   # and whether the driver came from the cache
    python scripts/bench_drivers.py speed [REPEAT] [THREADS]   # M weights/s, variants alternated
    python scripts/bench_drivers.py overhead       # one-row calls: fixed cost per call

Run `load` three times per variant: the first may compile, the later ones show whether the
cache holds across processes. Set NUMBA_CACHE_DIR to keep these entries out of kernels/.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

T_START = time.perf_counter()

import numpy as np  # noqa: E402
from numba import njit, prange, types  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels import kquants_q4q8 as K, legacy as L  # noqa: E402


# closure: Numba keys a closure's cache entry by its bytecode and a pickle of its cells; the cell
# holds a dispatcher, whose pickle carries a per-process random uuid, so every process misses
def _k_rows_closure(row, block_bytes):
    @njit(cache=True, nogil=True, parallel=True)
    def rows(x, quant_weights):
        nrows, n = x.shape
        y = np.empty((nrows, n // 256 * block_bytes), dtype=np.uint8)
        for r in prange(nrows):
            row(x[r], y[r], quant_weights)
        return y
    return rows


def _ref_rows_closure(row, block_bytes):
    @njit(cache=True, nogil=True, parallel=True, error_model="numpy")
    def rows(x):
        nrows, n = x.shape
        y = np.empty((nrows, n // 32 * block_bytes), dtype=np.uint8)
        for r in prange(nrows):
            row(x[r], y[r])
        return y
    return rows


q6_k_closure = _k_rows_closure(K._q6_k_row, K.Q6_K_BYTES)
q8_0_closure = _ref_rows_closure(L.quantize_row_q8_0_ref, 34)


# arg: the signature holds the dispatcher's type, which is a new object in every process
@njit(cache=True, nogil=True, parallel=True)
def _k_rows_arg(row, block_bytes, x, quant_weights):
    nrows, n = x.shape
    y = np.empty((nrows, n // 256 * block_bytes), dtype=np.uint8)
    for r in prange(nrows):
        row(x[r], y[r], quant_weights)
    return y


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _ref_rows_arg(row, block_bytes, x):
    nrows, n = x.shape
    y = np.empty((nrows, n // 32 * block_bytes), dtype=np.uint8)
    for r in prange(nrows):
        row(x[r], y[r])
    return y


# fc: a function pointer of a fixed signature; caches, but every call converts the dispatcher
_F32_ROW = types.Array(types.float32, 1, "C")
_U8_ROW = types.Array(types.uint8, 1, "C")
_ROWS = types.Array(types.float32, 2, "C")
_OUT = types.Array(types.uint8, 2, "C")
_ROW_K = types.FunctionType(types.none(_F32_ROW, _U8_ROW, types.none))
_ROW_REF = types.FunctionType(types.none(_F32_ROW, _U8_ROW))


_FC: dict = {}


def _fc_drivers() -> dict:
    """Defined on first use, because an explicit signature compiles (or loads) at definition. They
    reference no free variables, so unlike the closures above their cache keys are stable."""
    if _FC:
        return _FC

    @njit(_OUT(_ROW_K, types.int64, _ROWS, types.none), cache=True, nogil=True, parallel=True)
    def k_rows_fc(row, block_bytes, x, quant_weights):
        nrows, n = x.shape
        y = np.empty((nrows, n // 256 * block_bytes), dtype=np.uint8)
        for r in prange(nrows):
            row(x[r], y[r], quant_weights)
        return y

    @njit(_OUT(_ROW_REF, types.int64, _ROWS), cache=True, nogil=True, parallel=True, error_model="numpy")
    def ref_rows_fc(row, block_bytes, x):
        nrows, n = x.shape
        y = np.empty((nrows, n // 32 * block_bytes), dtype=np.uint8)
        for r in prange(nrows):
            row(x[r], y[r])
        return y

    _FC.update(k=k_rows_fc, ref=ref_rows_fc)
    return _FC


T_IMPORTED = time.perf_counter()

# variant -> (the driver whose cache counters we read, or a function giving it; a call on rows x)
VARIANTS = {
    "Q6_K": {
        "base": (K._q6_k_rows, lambda x: K._q6_k_rows(x, None)),
        "closure": (q6_k_closure, lambda x: q6_k_closure(x, None)),
        "arg": (_k_rows_arg, lambda x: _k_rows_arg(K._q6_k_row, K.Q6_K_BYTES, x, None)),
        "fc": (lambda: _fc_drivers()["k"], lambda x: _fc_drivers()["k"](K._q6_k_row, K.Q6_K_BYTES, x, None)),
    },
    "Q8_0": {
        "base": (L._quantize_q8_0, lambda x: L._quantize_q8_0(x)),
        "closure": (q8_0_closure, lambda x: q8_0_closure(x)),
        "arg": (_ref_rows_arg, lambda x: _ref_rows_arg(L.quantize_row_q8_0_ref, 34, x)),
        "fc": (lambda: _fc_drivers()["ref"], lambda x: _fc_drivers()["ref"](L.quantize_row_q8_0_ref, 34, x)),
    },
}


def _load(name: str) -> None:
    qtype, variant = name.split(":")
    driver, call = VARIANTS[qtype][variant]
    x = np.linspace(-1, 1, 4096, dtype=np.float32).reshape(4, 1024)
    t = time.perf_counter()
    call(x)
    first = time.perf_counter() - t
    if not hasattr(driver, "stats"):
        driver = driver()
    hits = sum(driver.stats.cache_hits.values())
    misses = sum(driver.stats.cache_misses.values())
    print(f"{name:14s} import {T_IMPORTED - T_START:6.3f} s  first call {first:6.3f} s  "
          f"driver cache hits {hits} misses {misses}  load {open('/proc/loadavg').read().split()[0]}")


def _speed(repeat: int, threads: int) -> None:
    import numba

    numba.set_num_threads(threads)
    print(f"threads {numba.get_num_threads()}  load {open('/proc/loadavg').read().split()[:3]}")
    rng = np.random.default_rng(0)
    shapes = {"Q6_K": (1024, 4096), "Q8_0": (4096, 4096)}
    for qtype, variants in VARIANTS.items():
        x = rng.standard_normal(shapes[qtype]).astype(np.float32)
        outs = {v: call(x) for v, (_, call) in variants.items()}  # compile or load first
        same = all(np.array_equal(outs["base"], o) for o in outs.values())
        times: dict[str, list[float]] = {v: [] for v in variants}
        for i in range(repeat):
            order = list(variants) if i % 2 == 0 else list(variants)[::-1]
            for v in order:
                t = time.perf_counter()
                variants[v][1](x)
                times[v].append(time.perf_counter() - t)
        for v, ts in times.items():
            mw = [x.size / t / 1e6 for t in ts]
            print(f"{qtype} {v:8s} median {statistics.median(mw):7.1f} Mw/s  min {min(mw):7.1f}  "
                  f"max {max(mw):7.1f}  (n={repeat})  bytes as base: {same}")


def _overhead() -> None:
    x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    for variant in ("base", "fc"):
        VARIANTS["Q6_K"][variant][1](x)
    for round_ in range(3):
        for variant in ("base", "fc"):
            call = VARIANTS["Q6_K"][variant][1]
            ts = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(2000):
                    call(x)
                ts.append((time.perf_counter() - t) / 2000 * 1e6)
            print(f"round {round_} Q6_K {variant:4s} one-row call median {statistics.median(ts):7.1f} us "
                  f"(min {min(ts):.1f}, max {max(ts):.1f})")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "speed"
    if mode == "load":
        _load(sys.argv[2])
    elif mode == "speed":
        _speed(int(sys.argv[2]) if len(sys.argv) > 2 else 21, int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    elif mode == "overhead":
        _overhead()
    else:
        sys.exit(__doc__)
