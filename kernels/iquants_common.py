"""What IQ2_XXS, IQ2_XS, IQ2_S (kernels/iq2.py) and IQ3_XXS, IQ3_S (kernels/iq3.py) share: the
grid search, the block field helpers and the five dequantizers (ggml-quants.c).

Each 256-weight super-block is cut into groups of 8 (IQ2) or 4 (IQ3) magnitudes that must land on
a grid point; signs are stored apart (IQ2_XXS, IQ2_XS, IQ3_XXS keep an even number of minus signs
per 8, flipping the least important weight). The scale search tries a fan of scales, rounds each
group to levels, and when the rounded point is not on the grid picks the nearest of its listed
neighbours (kmap/kneighbors, built in iq_tables as llama.cpp builds them).

Faster than the C, same bytes, by computing each distinct float term once: a neighbour's distance
sum(waux*(scale*q - x)^2) takes, per element, one of 3 (IQ2) or 8 (IQ3) levels q, so the search
fills a table of those terms and each candidate adds 8 (or 4) of them in the C's order; the trial
sums sumqx = sum(w*x*q) and sumq2 = sum(w*q*q) likewise add per-sub-block tables. Each term is
evaluated with the C's operations in the C's order, so every sum and every comparison is the C's.
(Stopping a candidate's sum once it reaches the best so far would also be exact, the terms being
>= 0, but its unpredictable branch costs more than it saves.)

Numba's cache checks only a kernel's own file: after editing this module, clear
kernels/__pycache__/*.nb[ic] (the family modules' cached kernels inline these helpers).
"""

from collections import namedtuple

import numpy as np
from numba import njit, prange

from .iq_tables import ksigns as _ksigns_table
from .iq_tables import tables
from .solvers import fp16_to_fp32_fast as fp16_to_fp32
from .solvers import fp32_to_fp16_fast as fp32_to_fp16
from .solvers import nearest_int_fast as nearest_int

f32 = np.float32

QK_K = 256
_ZERO = f32(0.0)
_ONE = f32(1.0)
_HALF = f32(0.5)
_QUARTER = f32(0.25)
_FLT_MAX = f32(3.4028234663852886e38)

_NO_WEIGHTS = np.zeros(0, dtype=np.float32)

# A row's scratch for the grid search, with the type's tables (one per row: rows run in parallel).
_Search = namedtuple("_Search", "terms wxq wq2 Laux on_grid_aux waux levels kmap kneighbors")

# The search runs in functions compiled with _nrt=False: they never allocate, and without Numba's
# reference counting they skip the atomic incref/decref it adds per array per call (measured at
# 60% of the run time, and a point of contention between threads sharing the tables). The group
# searches are inlined into their callers (inline="always") for the same reason.


# ---------------------------------------------------------------- shared pieces


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _put_fp16(y, o, f):
    h = fp32_to_fp16(f)
    y[o] = h & 0xFF
    y[o + 1] = h >> 8


@njit(cache=True, nogil=True, error_model="numpy")
def _get_fp16(y, o):
    return fp16_to_fp32(np.uint16(y[o]) | (np.uint16(y[o + 1]) << np.uint16(8)))


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _put_u32(y, o, v):
    y[o] = v & 0xFF
    y[o + 1] = (v >> 8) & 0xFF
    y[o + 2] = (v >> 16) & 0xFF
    y[o + 3] = (v >> 24) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _sum_x2(x, o):
    # sum of squares of one super-block, in float, in index order
    sumx2 = _ZERO
    for i in range(QK_K):
        sumx2 += x[o + i] * x[o + i]
    return sumx2


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _signs_even(x, o, weight, xval, k):
    """Magnitudes of the 8 weights x[o + 8k ...] into xval[8k ...]; if an odd number is negative,
    the least important one (smallest weight*x^2) keeps its sign. Returns the 7 stored sign bits."""
    nflip = 0
    s = 0
    for i in range(8):
        v = x[o + 8 * k + i]
        if v >= 0:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            nflip += 1
            s |= 1 << i
    if nflip % 2:
        imin = 0
        v = x[o + 8 * k]
        vmin = weight[8 * k] * v * v
        for i in range(1, 8):
            v = x[o + 8 * k + i]
            ax = weight[8 * k + i] * v * v
            if ax < vmin:
                vmin = ax
                imin = i
        xval[8 * k + imin] = -xval[8 * k + imin]
        s ^= 1 << imin
    return s & 127


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _signs_all(x, o, xval, k):
    """Magnitudes of x[o + 8k ...] into xval; returns all 8 sign bits (IQ2_S, IQ3_S)."""
    s = 0
    for i in range(8):
        v = x[o + 8 * k + i]
        if v >= 0:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            s |= 1 << i
    return s


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _group_max(xval, n):
    m = xval[0]
    for i in range(1, n):
        m = m if m > xval[i] else xval[i]  # C's MAX macro
    return m


@njit(cache=True, nogil=True, error_model="numpy")
def _search_scratch(levels, kmap, kneighbors):
    return _Search(np.empty(64, dtype=np.float32), np.empty(256, dtype=np.float32), np.empty(256, dtype=np.float32),
                   np.zeros(32, dtype=np.int64), np.empty(8, dtype=np.bool_), np.empty(32, dtype=np.float32),
                   levels, kmap, kneighbors)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _group8(xval, o, id_, scale, L, terms, levels, kmap, kneighbors, waux):
    """One IQ2 group of 8: levels nearest_int(0.5*(id*x - 1)) clamped to [0, 2] into L[o ...];
    off the grid, iq2_find_best_neighbour at `scale` replaces them. Returns whether u was on the grid."""
    u = 0
    for i in range(8):
        l = max(0, min(2, nearest_int(_HALF * (id_ * xval[o + i] - _ONE))))
        L[o + i] = l
        u |= l << (2 * i)
    gi = kmap[u]
    if gi >= 0:
        return True
    # a candidate's distance is the sum, in element order, of 8 of these 24 terms (see module doc)
    for i in range(8):
        w = waux[o + i]
        xv = xval[o + i]
        for l in range(3):
            diff = scale * f32(2 * l + 1) - xv
            terms[4 * i + l] = w * diff * diff
    off = -gi - 1
    best_d2 = _FLT_MAX
    best = -1
    for j in range(off + 1, off + 1 + kneighbors[off]):
        idx = kneighbors[j]
        d2 = _ZERO
        for i in range(8):
            d2 += terms[4 * i + levels[idx, i]]
        if d2 < best_d2:
            best_d2 = d2
            best = idx
    if best < 0:  # only with NaN or overflowing weights; the C aborts here
        best = kneighbors[off + 1]
    for i in range(8):
        L[o + i] = levels[best, i]
    return False


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _group4(xval, o, id_, scale, L, terms, levels, kmap, kneighbors, waux):
    """One IQ3 group of 4, levels clamped to [0, 7], iq3_find_best_neighbour off the grid; as _group8."""
    u = 0
    for i in range(4):
        l = max(0, min(7, nearest_int(_HALF * (id_ * xval[o + i] - _ONE))))
        L[o + i] = l
        u |= l << (3 * i)
    gi = kmap[u]
    if gi >= 0:
        return True
    for i in range(4):
        w = waux[o + i]
        xv = xval[o + i]
        for l in range(8):
            diff = scale * f32(2 * l + 1) - xv
            terms[8 * i + l] = w * diff * diff
    off = -gi - 1
    best_d2 = _FLT_MAX
    best = -1
    for j in range(off + 1, off + 1 + kneighbors[off]):
        idx = kneighbors[j]
        d2 = _ZERO
        for i in range(4):
            d2 += terms[8 * i + levels[idx, i]]
        if d2 < best_d2:
            best_d2 = d2
            best = idx
    if best < 0:
        best = kneighbors[off + 1]
    for i in range(4):
        L[o + i] = levels[best, i]
    return False


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _group(k, xval, id_, scale, L, s):
    """Group k of a sub-block (8 weights on IQ2 grids, 4 on IQ3 grids); s is the row's _Search."""
    if s.levels.shape[1] == 8:
        return _group8(xval, 8 * k, id_, scale, L, s.terms, s.levels, s.kmap, s.kneighbors, s.waux)
    return _group4(xval, 4 * k, id_, scale, L, s.terms, s.levels, s.kmap, s.kneighbors, s.waux)


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _sum_tables(weight, xval, m, s):
    # the terms of sumqx (w*x*q) and sumq2 (w*q*q) for every element and level, q = 2l + 1, each
    # evaluated left to right as the C does; a trial's sums then add m of them in the C's order
    for i in range(m):
        wx = weight[i] * xval[i]
        for l in range(8):
            q = f32(2 * l + 1)
            s.wxq[8 * i + l] = wx * q
            s.wq2[8 * i + l] = weight[i] * q * q


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sums(L, m, s):
    sumqx = _ZERO
    sumq2 = _ZERO
    for i in range(m):
        sumqx += s.wxq[8 * i + L[i]]
        sumq2 += s.wq2[8 * i + L[i]]
    return sumqx, sumq2


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _fan(is_lo, is_hi, step, kmaxq, den, scale, xval, m, L, on_grid, s):
    """The scale fan all five share: for is in [is_lo, is_hi] try id = (2*kMaxQ - 1 + is*step)/den,
    keep the first trial with the largest sumqx^2/sumq2. Returns the scale; fills L and on_grid."""
    best = _ZERO
    groups = m // s.levels.shape[1]
    for is_ in range(is_lo, is_hi + 1):
        id_ = (f32(2 * kmaxq - 1) + f32(is_) * step) / den
        this_scale = _ONE / id_
        for k in range(groups):
            s.on_grid_aux[k] = _group(k, xval, id_, this_scale, s.Laux, s)
        sumqx, sumq2 = _sums(s.Laux, m, s)
        if sumq2 > _ZERO and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            for i in range(m):
                L[i] = s.Laux[i]
            for k in range(groups):
                on_grid[k] = s.on_grid_aux[k]
    return scale


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _grid_index(L, lo, n, bits, kmap):
    u = 0
    for i in range(n):
        u |= np.int64(L[lo + i]) << (bits * i)
    gi = np.int64(kmap[u])
    return gi if gi >= 0 else np.int64(0)  # off the grid the C aborts ("Oops: found point ... not on grid")


@njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
def _scale_nibble(id_, scale):
    l = np.int64(nearest_int(_HALF * (id_ * scale - _ONE)))
    return max(np.int64(0), min(np.int64(15), l))


# ---------------------------------------------------------------- dequantizers


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _dequantize_rows(blob, n_per_row, kind, values, ksigns):
    """dequantize_row_iq2_xxs / iq2_xs / iq2_s / iq3_xxs / iq3_s (kind 0..4), row by row."""
    nrows = blob.shape[0]
    out = np.empty((nrows, n_per_row), dtype=np.float32)
    nb = n_per_row // QK_K
    for r in prange(nrows):
        q = blob[r]
        y = out[r]
        for i in range(nb):
            if kind == 0:
                _dq_iq2_xxs(q, 66 * i, y, QK_K * i, values, ksigns)
            elif kind == 1:
                _dq_iq2_xs(q, 74 * i, y, QK_K * i, values, ksigns)
            elif kind == 2:
                _dq_iq2_s(q, 82 * i, y, QK_K * i, values)
            elif kind == 3:
                _dq_iq3_xxs(q, 98 * i, y, QK_K * i, values, ksigns)
            else:
                _dq_iq3_s(q, 110 * i, y, QK_K * i, values)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _signed(v, signs, j):
    return -v if signs & (1 << j) else v


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq2_xxs(q, b, y, yo, values, ksigns):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        o = b + 2 + 8 * ib32
        aux1 = np.int64(q[o + 4]) | (np.int64(q[o + 5]) << 8) | (np.int64(q[o + 6]) << 16) | (np.int64(q[o + 7]) << 24)
        db = d * (_HALF + f32(aux1 >> 28)) * _QUARTER
        for l in range(4):
            g = q[o + l]
            signs = ksigns[(aux1 >> (7 * l)) & 127]
            for j in range(8):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(db * values[g, j], signs, j)


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq2_xs(q, b, y, yo, values, ksigns):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        sc = q[b + 66 + ib32]
        db0 = d * (_HALF + f32(sc & 0xF)) * _QUARTER
        db1 = d * (_HALF + f32(sc >> 4)) * _QUARTER
        for l in range(4):
            o = b + 2 + 2 * (4 * ib32 + l)
            v = np.int64(q[o]) | (np.int64(q[o + 1]) << 8)
            dl = db0 if l < 2 else db1
            signs = ksigns[v >> 9]
            for j in range(8):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(dl * values[v & 511, j], signs, j)


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq2_s(q, b, y, yo, values):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        sc = q[b + 74 + ib32]
        db0 = d * (_HALF + f32(sc & 0xF)) * _QUARTER
        db1 = d * (_HALF + f32(sc >> 4)) * _QUARTER
        qh = np.int64(q[b + 66 + ib32])
        for l in range(4):
            dl = db0 if l < 2 else db1
            g = np.int64(q[b + 2 + 4 * ib32 + l]) | ((qh << (8 - 2 * l)) & 0x300)
            signs = q[b + 2 + QK_K // 8 + 4 * ib32 + l]
            for j in range(8):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(dl * values[g, j], signs, j)


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq3_xxs(q, b, y, yo, values, ksigns):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        o = b + 2 + QK_K // 4 + 4 * ib32
        aux = np.int64(q[o]) | (np.int64(q[o + 1]) << 8) | (np.int64(q[o + 2]) << 16) | (np.int64(q[o + 3]) << 24)
        db = d * (_HALF + f32(aux >> 28)) * _HALF
        for l in range(4):
            signs = ksigns[(aux >> (7 * l)) & 127]
            g1 = q[b + 2 + 8 * ib32 + 2 * l]
            g2 = q[b + 2 + 8 * ib32 + 2 * l + 1]
            for j in range(4):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(db * values[g1, j], signs, j)
                y[yo + 32 * ib32 + 8 * l + j + 4] = _signed(db * values[g2, j], signs, j + 4)


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq3_s(q, b, y, yo, values):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        sc = q[b + 106 + ib32 // 2]
        db = d * f32(1 + 2 * ((sc >> 4) if ib32 % 2 else (sc & 0xF)))
        qh = np.int64(q[b + 66 + ib32])
        for l in range(4):
            g1 = np.int64(q[b + 2 + 8 * ib32 + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
            g2 = np.int64(q[b + 2 + 8 * ib32 + 2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)
            signs = q[b + 74 + 4 * ib32 + l]
            for j in range(4):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(db * values[g1, j], signs, j)
                y[yo + 32 * ib32 + 8 * l + j + 4] = _signed(db * values[g2, j], signs, j + 4)


# ---------------------------------------------------------------- public pairs

_KSIGNS = _ksigns_table()


def _tables(qtype):
    t = tables(qtype)
    return t.levels, t.kmap, t.kneighbors


def _needs(qtype, imatrix):
    if imatrix is None:
        raise ValueError(f"{qtype.name} needs an importance matrix (llama.cpp refuses to quantize it without one)")
    return imatrix


def _dequantizer(qtype, kind):
    def dequantize(blob, n_per_row):
        return _dequantize_rows(np.ascontiguousarray(blob), n_per_row, kind, tables(qtype).values, _KSIGNS)
    dequantize.__name__ = f"dequantize_{qtype.name.lower()}"
    return dequantize
