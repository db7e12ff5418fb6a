"""What IQ1_S (kernels/iq1_s.py) and IQ1_M (kernels/iq1_m.py) share: ternary (-1, 0, 1) weights in
groups of 8 drawn from the 2048-point iq1s grid, plus a per-group shift of +-IQ1S_DELTA; the grid
tables, a stable sort and the neighbour search of quantize_row_iq1_s_impl / quantize_row_iq1_m_impl.

The grid comes from the gguf package at run time; kernels.iq_tables rebuilds from it the lookup
tables of iq2xs_init_impl(GGML_TYPE_IQ1_S) (kmap: 2-bit pattern -> grid index; for patterns off
the grid, the nearest grid points in the C's order), which decide the neighbour search's ties.

Numba's cache checks only a kernel's own file: after editing this module, clear
kernels/__pycache__/*.nb[ic] (the family modules' cached kernels inline these helpers).
"""

import numpy as np
from numba import njit

from . import iq_tables
from .gguf_compat import GGMLQuantizationType as T

f32 = np.float32

QK_K = 256

IQ1S_DELTA = f32(0.125)
FLT_MAX = f32(np.finfo(np.float32).max)
F0 = f32(0.0)
F1 = f32(1.0)
F2 = f32(2.0)
F15 = f32(15.0)
HALF = f32(0.5)
FQK_K = f32(QK_K)


def iq1_tables():
    """(levels uint8 (2048, 8) digits 0..2, kmap int32 (43692,), kneighbors uint16): iq2xs_init_impl's
    tables for the iq1s grid, built once per process by kernels.iq_tables (shared by IQ1_S and IQ1_M)."""
    t = iq_tables.tables(T.IQ1_S)
    return t.levels, t.kmap, t.kneighbors


# ---------------------------------------------------------------- shared pieces

@njit(cache=True, nogil=True)
def _stable_sort(xs, idx, n):
    # glibc's qsort (2.36 here) sorts these small arrays with a merge sort, so equal values keep their
    # order: any stable sort on the float key gives its permutation (iq1_sort_helper compares values only).
    for j in range(1, n):
        v = xs[j]
        t = idx[j]
        i = j
        while i > 0 and xs[i - 1] > v:
            xs[i] = xs[i - 1]
            idx[i] = idx[i - 1]
            i -= 1
        xs[i] = v
        idx[i] = t


@njit(cache=True, nogil=True)
def _find_best_neighbour2(neighbours, start, grid_l, x, xo, weight, wo, scale, xg, L, lo, cost):
    """iq1_find_best_neighbour2: grid point nearest (weighted) to x[xo:xo+8] at this scale, in
    neighbour-list order, first minimum wins. Writes its digits to L[lo:lo+8]."""
    # Each term w*diff*diff of the C's sum depends only on (element, level): compute the 8 x 3
    # terms once, then every neighbour's d2 adds its 8 terms in the C's order (same bits).
    for i in range(8):
        w = weight[wo + i]
        xv = x[xo + i]
        for l in range(3):
            diff = scale * xg[l] - xv
            cost[i, l] = w * diff * diff
    num_neighbors = np.int64(neighbours[start])
    best_score = FLT_MAX
    grid_index = -1
    for j in range(1, num_neighbors + 1):
        g = np.int64(neighbours[start + j])
        d2 = F0
        for i in range(8):
            d2 += cost[i, grid_l[g, i]]
        if d2 < best_score:
            best_score = d2
            grid_index = g
    if grid_index < 0:
        # Only reached when every neighbour's d2 is inf/NaN. The C fallback scans the whole grid but
        # reads xval[i] with i the grid index, i.e. input beyond the group: we read the same input
        # where it exists (x is the whole chunk) and treat memory past it as NaN (never chosen).
        for i in range(grid_l.shape[0]):
            d2 = F0
            for j in range(8):
                w = weight[wo + j]
                q = xg[grid_l[i, j]]
                xv = x[xo + i] if xo + i < x.size else f32(np.nan)
                diff = scale * q - xv
                d2 += w * diff * diff
            if d2 < best_score:
                best_score = d2
                grid_index = i
    if grid_index < 0:
        raise ValueError("IQ1: no grid point found (ggml aborts here: GGML_ASSERT(grid_index >= 0))")
    for i in range(8):
        L[lo + i] = grid_l[grid_index, i]
    return grid_index
