"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: the legacy 32-weight block quants (ggml-quants.c).

Without an imatrix ggml_quantize_chunk runs quantize_row_*_ref (Q8_0 always does: it ignores
the imatrix). With one, Q4_0/Q5_0 solve with make_qx_quants and Q4_1/Q5_1 with
make_qkx3_quants, on weights qw[j] * sqrt(sigma2 + x[j]^2) (quantize_row_*_impl).

Each row function mirrors its C function over one row; a block occupies bytes
y[i*bs:(i+1)*bs] of the row, fields little-endian in the order of ggml-common.h.
"""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .common import ABS_MASK, NOT_FINITE, absmax_scan, roundf
from .solvers import fp16_to_fp32_fast, fp32_to_fp16_fast, make_qkx3_quants, make_qx_quants, solver_scratch

f32 = np.float32

QK = 32  # QK4_0 == QK4_1 == QK5_0 == QK5_1 == QK8_0
_ZERO = f32(0.0)
_ONE = f32(1.0)
_HALF = f32(0.5)
_FLT_MAX = f32(3.4028234663852886e38)
_INT_MIN_F = f32(-2147483648.0)
_INT_LIM_F = f32(2147483648.0)
# make_qkx3_quants arguments of quantize_row_q4_1_impl / q5_1_impl (-0.9f, 0.05f)
_RMIN = f32(-0.9)
_RDELTA = f32(0.05)
_CHUNKS = 256  # imatrix paths: rows go in up to this many chunks, each with its own scratch


@njit(cache=True, nogil=True, error_model="numpy")
def _byte(v):
    """The low byte (0..255) of a float converted to int8_t/uint8_t, as x86-64 does it:
    cvttss2si truncates toward zero and yields INT_MIN (low byte 0) for NaN or out of range."""
    ok = (v >= _INT_MIN_F) & (v < _INT_LIM_F)  # select, not a branch: the loops stay vectorizable
    return np.int64(v if ok else _ZERO) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _int8(v):
    """(int8_t)v for a float v, as a signed value."""
    b = _byte(v)
    return b - 256 if b >= 128 else b


@njit(cache=True, nogil=True, error_model="numpy")
def _put_fp16(y, o, f):
    h = fp32_to_fp16_fast(f)
    y[o] = h & 0xFF
    y[o + 1] = h >> 8


@njit(cache=True, nogil=True, error_model="numpy")
def _get_fp16(y, o):
    return fp16_to_fp32_fast(np.int64(y[o]) | (np.int64(y[o + 1]) << 8))


@njit(cache=True, nogil=True, error_model="numpy")
def _put_u32(y, o, v):
    y[o] = v & 0xFF
    y[o + 1] = (v >> 8) & 0xFF
    y[o + 2] = (v >> 16) & 0xFF
    y[o + 3] = (v >> 24) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _get_u32(y, o):
    return np.int64(y[o]) | (np.int64(y[o + 1]) << 8) | (np.int64(y[o + 2]) << 16) | (np.int64(y[o + 3]) << 24)


@njit(cache=True, nogil=True, error_model="numpy")
def _mul_add(x, d, m):
    """x*d + m, two roundings (no FMA). When both x*d and m are NaN, x86's addss returns its first
    operand, the product, in ggml; LLVM may commute the add, so pick the product explicitly."""
    t = x * d
    v = t + m
    return t if t != t else v


@njit(cache=True, nogil=True, error_model="numpy")
def _sigma2(x):
    # quantize_row_*_impl: mean square of the whole row, summed in float in index order.
    sum_x2 = _ZERO
    for j in range(x.size):
        sum_x2 += x[j] * x[j]
    return sum_x2 / f32(x.size)


@njit(cache=True, nogil=True, error_model="numpy")
def _impl_weights(xb, qw, o, sigma2, weight):
    # weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j])
    for j in range(QK):
        weight[j] = qw[o + j] * np.sqrt(sigma2 + xb[j] * xb[j])


@njit(cache=True, nogil=True, error_model="numpy")
def _chunk_bounds(c, nchunks, nrows):
    return c * nrows // nchunks, (c + 1) * nrows // nchunks


# ---------------------------------------------------------------------------------------------
# Q4_0: 32 weights per 18-byte block (d: fp16; qs: 16, low nibble j, high nibble j+16).
# quantize_row_q4_0_ref / quantize_row_q4_0_impl / dequantize_row_q4_0

_SIGN_BIT = np.uint32(0x80000000)


@njit(cache=True, nogil=True, error_model="numpy")
def _signed_absmax_scan(xs):
    """quantize_row_q4_0_ref's scan over one block as the C writes it: the first value of largest
    magnitude (`if (amax < fabsf(v))`), 0 when every value is zero."""
    amax = _ZERO
    max_ = _ZERO
    for j in range(QK):
        v = xs[j]
        if amax < abs(v):
            amax = abs(v)
            max_ = v
    return max_


@njit(cache=True, nogil=True, error_model="numpy")
def _signed_absmax(xs, xbs):
    """The same value from two unsigned max reductions over the block's bits `xbs` (they
    vectorize; the float compare chain does not): the largest magnitude among non-negative
    values and among negative ones. For finite floats the order of |bits| is the order of
    |value|, so the larger of the two is the C's amax, with its sign. Equal magnitudes of both
    signs (then which came first decides), Inf and NaN take the C scan."""
    pos = np.uint32(0)
    neg = np.uint32(0)
    for j in range(QK):
        b = xbs[j]
        m = b & ABS_MASK
        is_neg = b >= _SIGN_BIT
        pos = max(pos, np.uint32(0) if is_neg else m)
        neg = max(neg, m if is_neg else np.uint32(0))
    if pos >= NOT_FINITE or neg >= NOT_FINITE or (pos == neg and pos != 0):
        return _signed_absmax_scan(xs)
    if pos > neg:
        return np.uint32(pos).view(np.float32)  # the bits of that value itself
    if neg > pos:
        return np.uint32(neg | _SIGN_BIT).view(np.float32)
    return _ZERO  # all zeros (of either sign): the C keeps its initial 0.0f


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def quantize_row_q4_0_ref(x, y):
    # Blocks are taken as slices: indices known to be non-negative let LLVM vectorize the loops
    # (x[a + j] with a signed a carries Python's negative-index wraparound, which it cannot).
    nb = x.size // QK
    xb = x.view(np.uint32)
    for i in range(nb):
        xs = x[i * QK:(i + 1) * QK]
        max_ = _signed_absmax(xs, xb[i * QK:(i + 1) * QK])
        d = max_ / f32(-8)
        id_ = _ONE / d if d != 0 else _ZERO
        ys = y[i * 18:(i + 1) * 18]
        _put_fp16(ys, 0, d)
        for j in range(QK // 2):
            x0 = xs[j] * id_
            x1 = xs[QK // 2 + j] * id_
            xi0 = min(15, _int8(x0 + f32(8.5))) & 0xFF  # MIN(15, (int8_t)(x0 + 8.5f)) stored as uint8_t
            xi1 = min(15, _int8(x1 + f32(8.5))) & 0xFF
            ys[2 + j] = (xi0 | (xi1 << 4)) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_row_q4_0_impl(x, y, qw, weight, L, scratch):
    sigma2 = _sigma2(x)
    nb = x.size // QK
    for ib in range(nb):
        xb = x[ib * QK:(ib + 1) * QK]
        _impl_weights(xb, qw, ib * QK, sigma2, weight)
        d = make_qx_quants(QK, 8, xb, L, 1, weight, scratch)
        o = ib * 18
        _put_fp16(y, o, d)
        for j in range(16):
            y[o + 2 + j] = (np.int64(L[j]) | (np.int64(L[j + 16]) << 4)) & 0xFF


# One prange driver per type, here and in every family, on purpose: written once, it loses Numba's
# cache (scripts/bench_drivers.py, Q6_K and Q8_0; Numba 0.68, 2 cores at load ~17, 3 fresh
# processes each). A factory building one @njit(parallel=True, cache=True) driver per row function
# from a closure misses in every process, because Numba keys a closure's entry by a pickle of its
# cells and a dispatcher pickles with a per-process random uuid: each process recompiles (7.3-11.7 s,
# against 0.9-1.1 s to load these drivers) and adds one more entry to the index. A driver taking
# the row function as an argument misses the same way (its signature holds the dispatcher's type):
# 4.4-8.6 s. A first-class function (types.FunctionType) caches (0.9-1.1 s) and ran at the same
# speed within the noise, but each call costs 5-10 times more (a one-row Q6_K call 7.9-9.1 ms
# against 0.8-1.8 ms: the dispatcher is converted to a pointer on every call), the row function is
# called through that pointer, and it fits only rows of one fixed signature, not the imatrix
# paths' per-chunk scratch below.
@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _quantize_q4_0(x, qw):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK * 18), dtype=np.uint8)
    if qw is None:
        for r in prange(nrows):
            quantize_row_q4_0_ref(x[r], y[r])
    else:
        nchunks = min(nrows, _CHUNKS)
        for c in prange(nchunks):
            weight = np.empty(QK, dtype=np.float32)
            L = np.empty(QK, dtype=np.int8)
            scratch = solver_scratch()
            r0, r1 = _chunk_bounds(c, nchunks, nrows)
            for r in range(r0, r1):
                quantize_row_q4_0_impl(x[r], y[r], qw, weight, L, scratch)
    return y


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _dequantize_q4_0(blob, n):
    nrows = blob.shape[0]
    y = np.empty((nrows, n), dtype=np.float32)
    for r in prange(nrows):
        b = blob[r]
        for i in range(n // QK):
            o = i * 18
            d = _get_fp16(b, o)
            for j in range(QK // 2):
                q = b[o + 2 + j]
                y[r, i * QK + j] = f32(np.int32(q & 0x0F) - 8) * d
                y[r, i * QK + j + QK // 2] = f32(np.int32(q >> 4) - 8) * d
    return y


# ---------------------------------------------------------------------------------------------
# Q4_1: 32 weights per 20-byte block (d, m: fp16; qs: 16, low nibble j, high nibble j+16).
# quantize_row_q4_1_ref / quantize_row_q4_1_impl / dequantize_row_q4_1

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def quantize_row_q4_1_ref(x, y):
    nb = x.size // QK
    for i in range(nb):
        min_ = _FLT_MAX
        max_ = -_FLT_MAX
        for j in range(QK):
            v = x[i * QK + j]
            if v < min_:
                min_ = v
            if v > max_:
                max_ = v
        d = (max_ - min_) / f32(15)
        id_ = _ONE / d if d != 0 else _ZERO
        o = i * 20
        _put_fp16(y, o, d)
        _put_fp16(y, o + 2, min_)
        for j in range(QK // 2):
            x0 = (x[i * QK + j] - min_) * id_
            x1 = (x[i * QK + QK // 2 + j] - min_) * id_
            xi0 = min(15, _int8(x0 + _HALF)) & 0xFF
            xi1 = min(15, _int8(x1 + _HALF)) & 0xFF
            y[o + 4 + j] = (xi0 | (xi1 << 4)) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_row_q4_1_impl(x, y, qw, weight, L, Laux, scratch):
    sigma2 = _sigma2(x)
    nb = x.size // QK
    for ib in range(nb):
        xb = x[ib * QK:(ib + 1) * QK]
        _impl_weights(xb, qw, ib * QK, sigma2, weight)
        d, min_ = make_qkx3_quants(QK, 15, xb, weight, L, Laux, _RMIN, _RDELTA, 36, False, scratch)
        o = ib * 20
        _put_fp16(y, o, d)
        _put_fp16(y, o + 2, -min_)
        for j in range(16):
            y[o + 4 + j] = (np.int64(L[j]) | (np.int64(L[j + 16]) << 4)) & 0xFF


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _quantize_q4_1(x, qw):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK * 20), dtype=np.uint8)
    if qw is None:
        for r in prange(nrows):
            quantize_row_q4_1_ref(x[r], y[r])
    else:
        nchunks = min(nrows, _CHUNKS)
        for c in prange(nchunks):
            weight = np.empty(QK, dtype=np.float32)
            L = np.empty(QK, dtype=np.uint8)
            Laux = np.empty(QK, dtype=np.uint8)
            scratch = solver_scratch()
            r0, r1 = _chunk_bounds(c, nchunks, nrows)
            for r in range(r0, r1):
                quantize_row_q4_1_impl(x[r], y[r], qw, weight, L, Laux, scratch)
    return y


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _dequantize_q4_1(blob, n):
    nrows = blob.shape[0]
    y = np.empty((nrows, n), dtype=np.float32)
    for r in prange(nrows):
        b = blob[r]
        for i in range(n // QK):
            o = i * 20
            d = _get_fp16(b, o)
            m = _get_fp16(b, o + 2)
            for j in range(QK // 2):
                q = b[o + 4 + j]
                y[r, i * QK + j] = _mul_add(f32(q & 0x0F), d, m)
                y[r, i * QK + j + QK // 2] = _mul_add(f32(q >> 4), d, m)
    return y


# ---------------------------------------------------------------------------------------------
# Q5_0: 32 weights per 22-byte block (d: fp16; qh: u32, bit j = 5th bit of weight j; qs: 16).
# quantize_row_q5_0_ref / quantize_row_q5_0_impl / dequantize_row_q5_0

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def quantize_row_q5_0_ref(x, y):
    nb = x.size // QK
    xb = x.view(np.uint32)
    for i in range(nb):
        xs = x[i * QK:(i + 1) * QK]
        max_ = _signed_absmax(xs, xb[i * QK:(i + 1) * QK])
        d = max_ / f32(-16)
        id_ = _ONE / d if d != 0 else _ZERO
        ys = y[i * 22:(i + 1) * 22]
        _put_fp16(ys, 0, d)
        qh = 0
        for j in range(QK // 2):
            x0 = xs[j] * id_
            x1 = xs[QK // 2 + j] * id_
            xi0 = min(31, _int8(x0 + f32(16.5))) & 0xFF
            xi1 = min(31, _int8(x1 + f32(16.5))) & 0xFF
            ys[6 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
            qh |= ((xi0 & 0x10) >> 4) << j
            qh |= ((xi1 & 0x10) >> 4) << (j + QK // 2)
        _put_u32(ys, 2, qh)


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_row_q5_0_impl(x, y, qw, weight, L, scratch):
    sigma2 = _sigma2(x)
    nb = x.size // QK
    for ib in range(nb):
        xb = x[ib * QK:(ib + 1) * QK]
        _impl_weights(xb, qw, ib * QK, sigma2, weight)
        d = make_qx_quants(QK, 16, xb, L, 1, weight, scratch)
        o = ib * 22
        _put_fp16(y, o, d)
        qh = 0
        for j in range(16):
            xi0 = np.int64(L[j]) & 0xFF  # int8_t L -> uint8_t
            xi1 = np.int64(L[j + 16]) & 0xFF
            y[o + 6 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
            qh |= ((xi0 & 0x10) >> 4) << j
            qh |= ((xi1 & 0x10) >> 4) << (j + QK // 2)
        _put_u32(y, o + 2, qh)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _quantize_q5_0(x, qw):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK * 22), dtype=np.uint8)
    if qw is None:
        for r in prange(nrows):
            quantize_row_q5_0_ref(x[r], y[r])
    else:
        nchunks = min(nrows, _CHUNKS)
        for c in prange(nchunks):
            weight = np.empty(QK, dtype=np.float32)
            L = np.empty(QK, dtype=np.int8)
            scratch = solver_scratch()
            r0, r1 = _chunk_bounds(c, nchunks, nrows)
            for r in range(r0, r1):
                quantize_row_q5_0_impl(x[r], y[r], qw, weight, L, scratch)
    return y


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _dequantize_q5_0(blob, n):
    nrows = blob.shape[0]
    y = np.empty((nrows, n), dtype=np.float32)
    for r in prange(nrows):
        b = blob[r]
        for i in range(n // QK):
            o = i * 22
            d = _get_fp16(b, o)
            qh = _get_u32(b, o + 2)
            for j in range(QK // 2):
                xh_0 = ((qh >> j) << 4) & 0x10
                xh_1 = (qh >> (j + 12)) & 0x10
                q = np.int64(b[o + 6 + j])
                y[r, i * QK + j] = f32(((q & 0x0F) | xh_0) - 16) * d
                y[r, i * QK + j + QK // 2] = f32(((q >> 4) | xh_1) - 16) * d
    return y


# ---------------------------------------------------------------------------------------------
# Q5_1: 32 weights per 24-byte block (d, m: fp16; qh: u32, bit j = 5th bit of weight j; qs: 16).
# quantize_row_q5_1_ref / quantize_row_q5_1_impl / dequantize_row_q5_1

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def quantize_row_q5_1_ref(x, y):
    nb = x.size // QK
    for i in range(nb):
        min_ = _FLT_MAX
        max_ = -_FLT_MAX
        for j in range(QK):
            v = x[i * QK + j]
            if v < min_:
                min_ = v
            if v > max_:
                max_ = v
        d = (max_ - min_) / f32(31)
        id_ = _ONE / d if d != 0 else _ZERO
        o = i * 24
        _put_fp16(y, o, d)
        _put_fp16(y, o + 2, min_)
        qh = 0
        for j in range(QK // 2):
            x0 = (x[i * QK + j] - min_) * id_
            x1 = (x[i * QK + QK // 2 + j] - min_) * id_
            xi0 = _byte(x0 + _HALF)  # (uint8_t)(x0 + 0.5f): no clamp in the C
            xi1 = _byte(x1 + _HALF)
            y[o + 8 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
            qh |= ((xi0 & 0x10) >> 4) << j
            qh |= ((xi1 & 0x10) >> 4) << (j + QK // 2)
        _put_u32(y, o + 4, qh)


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_row_q5_1_impl(x, y, qw, weight, L, Laux, scratch):
    sigma2 = _sigma2(x)
    nb = x.size // QK
    for ib in range(nb):
        xb = x[ib * QK:(ib + 1) * QK]
        _impl_weights(xb, qw, ib * QK, sigma2, weight)
        d, min_ = make_qkx3_quants(QK, 31, xb, weight, L, Laux, _RMIN, _RDELTA, 36, False, scratch)
        o = ib * 24
        _put_fp16(y, o, d)
        _put_fp16(y, o + 2, -min_)
        qh = 0
        for j in range(16):
            xi0 = np.int64(L[j])
            xi1 = np.int64(L[j + 16])
            y[o + 8 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
            qh |= ((xi0 & 0x10) >> 4) << j
            qh |= ((xi1 & 0x10) >> 4) << (j + QK // 2)
        _put_u32(y, o + 4, qh)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _quantize_q5_1(x, qw):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK * 24), dtype=np.uint8)
    if qw is None:
        for r in prange(nrows):
            quantize_row_q5_1_ref(x[r], y[r])
    else:
        nchunks = min(nrows, _CHUNKS)
        for c in prange(nchunks):
            weight = np.empty(QK, dtype=np.float32)
            L = np.empty(QK, dtype=np.uint8)
            Laux = np.empty(QK, dtype=np.uint8)
            scratch = solver_scratch()
            r0, r1 = _chunk_bounds(c, nchunks, nrows)
            for r in range(r0, r1):
                quantize_row_q5_1_impl(x[r], y[r], qw, weight, L, Laux, scratch)
    return y


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _dequantize_q5_1(blob, n):
    nrows = blob.shape[0]
    y = np.empty((nrows, n), dtype=np.float32)
    for r in prange(nrows):
        b = blob[r]
        for i in range(n // QK):
            o = i * 24
            d = _get_fp16(b, o)
            m = _get_fp16(b, o + 2)
            qh = _get_u32(b, o + 4)
            for j in range(QK // 2):
                xh_0 = ((qh >> j) << 4) & 0x10
                xh_1 = (qh >> (j + 12)) & 0x10
                q = np.int64(b[o + 8 + j])
                y[r, i * QK + j] = _mul_add(f32((q & 0x0F) | xh_0), d, m)
                y[r, i * QK + j + QK // 2] = _mul_add(f32((q >> 4) | xh_1), d, m)
    return y


# ---------------------------------------------------------------------------------------------
# Q8_0: 32 weights per 34-byte block (d: fp16; qs: 32 int8). quantize_row_q8_0_ref (the
# imatrix is ignored: quantize_q8_0 always runs the ref path) / dequantize_row_q8_0

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def quantize_row_q8_0_ref(x, y):
    nb = x.size // QK
    xb = x.view(np.uint32)
    for i in range(nb):
        xs = x[i * QK:(i + 1) * QK]
        xbs = xb[i * QK:(i + 1) * QK]
        # amax as an unsigned max over |bits| (vectorizes; equal to the C's MAX chain for finite
        # values); a block with Inf or NaN takes the C's chain, whose NaN result depends on order
        m = np.uint32(0)
        for j in range(QK):
            m = max(m, xbs[j] & ABS_MASK)
        amax = np.uint32(m).view(np.float32) if m < NOT_FINITE else absmax_scan(xs)
        d = amax / f32(127)
        id_ = _ONE / d if d != 0 else _ZERO
        ys = y[i * 34:(i + 1) * 34]
        _put_fp16(ys, 0, d)
        for j in range(QK):
            ys[2 + j] = _byte(roundf(xs[j] * id_))


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _quantize_q8_0(x):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK * 34), dtype=np.uint8)
    for r in prange(nrows):
        quantize_row_q8_0_ref(x[r], y[r])
    return y


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _dequantize_q8_0(blob, n):
    nrows = blob.shape[0]
    y = np.empty((nrows, n), dtype=np.float32)
    for r in prange(nrows):
        b = blob[r]
        for i in range(n // QK):
            o = i * 34
            d = _get_fp16(b, o)
            for j in range(QK):
                q = np.int32(b[o + 2 + j])
                y[r, i * QK + j] = f32(q - 256 if q >= 128 else q) * d
    return y


# ---------------------------------------------------------------------------------------------

def quantize_q4_0(x, imatrix=None):
    return _quantize_q4_0(x, imatrix)


def quantize_q4_1(x, imatrix=None):
    return _quantize_q4_1(x, imatrix)


def quantize_q5_0(x, imatrix=None):
    return _quantize_q5_0(x, imatrix)


def quantize_q5_1(x, imatrix=None):
    return _quantize_q5_1(x, imatrix)


def quantize_q8_0(x, imatrix=None):
    return _quantize_q8_0(x)  # quantize_q8_0 ignores quant_weights


KERNELS = [
    Kernel(T.Q4_0, quantize_q4_0, _dequantize_q4_0),
    Kernel(T.Q4_1, quantize_q4_1, _dequantize_q4_1),
    Kernel(T.Q5_0, quantize_q5_0, _dequantize_q5_0),
    Kernel(T.Q5_1, quantize_q5_1, _dequantize_q5_1),
    Kernel(T.Q8_0, quantize_q8_0, _dequantize_q8_0),
]
