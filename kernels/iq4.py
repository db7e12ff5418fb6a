"""IQ4_NL and IQ4_XS: 4-bit non-linear quants on the kvalues_iq4nl grid, as ggml's
quantize_iq4_nl / quantize_iq4_xs (both through quantize_row_iq4_nl_impl, ntry = 7) and
dequantize_row_iq4_nl / dequantize_row_iq4_xs.

Without an imatrix ggml weights each value by x*x; with one, by qw * sqrt(sigma2 + x*x).
The grid values are int8 in C and promoted to float at every use, so a float32 copy of the
table gives the same arithmetic.
"""

import numpy as np
from gguf.quants import IQ4_NL as _GGUF_IQ4_NL
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .common import fp16_to_fp32, fp32_to_fp16, nearest_int

f32 = np.float32

QK4_NL = 32
QK_K = 256
NL_BYTES = 18  # d: fp16; qs: 16
XS_BYTES = 136  # d: fp16; scales_h: u16; scales_l: 4; qs: 128
NTRY = 7  # quantize_iq4_nl and quantize_iq4_xs both pass ntry = 7, with or without an imatrix

_GROUP_MAX_EPS = f32(1e-15)
_ZERO = f32(0.0)
_ONE = f32(1.0)

KVALUES_IQ4NL = np.array(_GGUF_IQ4_NL.kvalues, dtype=np.int8)


def nearest_thresholds(values):
    """For each neighbour pair (a, b) of the sorted grid, the least float32 x in (a, b] at which
    best_index_int8's tie test `x - a < b - x` (float32) fails, so that best_index_int8(x) is the
    count of thresholds <= x. The test is monotone in x (rounding is), so bisection on the ordered
    float32 bit patterns finds it exactly. For kvalues_iq4nl these are the midpoints."""
    v = np.asarray(values, dtype=np.float32)

    def key(f):  # float32 -> int, order preserving
        bits = int(np.float32(f).view(np.uint32))
        return bits if bits < 0x80000000 else -(bits & 0x7FFFFFFF)

    def unkey(k):
        return np.uint32(k if k >= 0 else (-k) | 0x80000000).view(np.float32)

    t = np.empty(v.size - 1, dtype=np.float32)
    for k in range(v.size - 1):
        a, b = v[k], v[k + 1]
        lo, hi = key(a), key(b)  # the test holds at a and fails at b
        while hi - lo > 1:
            mid = (lo + hi) // 2
            x = unkey(mid)
            if np.float32(x - a) < np.float32(b - x):
                lo = mid
            else:
                hi = mid
        t[k] = unkey(hi)
    return t


@njit(cache=True, nogil=True, inline="always")
def best_index_int8(t, x):
    """best_index_int8(16, kvalues, x) from the 15 thresholds t of nearest_thresholds(kvalues).

    ggml bisects to the bracketing pair, then ties go to the upper value; counting thresholds
    gives the same index for every float32 (NaN: 15, as ggml's bisection ends there), with no
    data-dependent branches, so loops over weights vectorize.
    """
    if x != x:
        return 15
    return (np.int32(x >= t[0]) + np.int32(x >= t[1]) + np.int32(x >= t[2]) + np.int32(x >= t[3])
            + np.int32(x >= t[4]) + np.int32(x >= t[5]) + np.int32(x >= t[6]) + np.int32(x >= t[7])
            + np.int32(x >= t[8]) + np.int32(x >= t[9]) + np.int32(x >= t[10]) + np.int32(x >= t[11])
            + np.int32(x >= t[12]) + np.int32(x >= t[13]) + np.int32(x >= t[14]))


# IQ4_NL (32 weights per 18-byte block) and IQ4_XS (256 weights per 136-byte block), quantized by one
# kernel as ggml does: quantize_row_iq4_nl_impl(super_block_size, 32, ..., kvalues_iq4nl, qw, 7)
@njit(cache=True, nogil=True)
def _iq4_superblock(x, qw, use_qw, values, t, y, scales, weight, L, Lb):
    """quantize_row_iq4_nl_impl(len(x), 32, ..., ntry=7) for one super-block x into the block bytes y.

    len(x) == 32 is IQ4_NL (y = d, qs); len(x) == 256 is IQ4_XS (y = d, scales_h, scales_l, qs).
    values: the grid as float32; t: its nearest_thresholds; scales, weight, L, Lb: scratch.
    """
    super_block_size = x.shape[0]
    nsub = super_block_size // 32
    sigma2 = _ZERO
    for j in range(super_block_size):
        sigma2 += x[j] * x[j]
    sigma2 *= f32(2.0 / super_block_size)  # 2.f/super_block_size: exact, a power of two

    max_scale = _ZERO
    amax_scale = _ZERO
    v0 = values[0]
    for ib in range(nsub):
        o = ib * 32
        if use_qw:
            for j in range(32):
                weight[j] = qw[o + j] * np.sqrt(sigma2 + x[o + j] * x[o + j])
        else:
            for j in range(32):
                weight[j] = x[o + j] * x[o + j]
        amax = _ZERO
        mx = _ZERO
        for j in range(32):
            ax = abs(x[o + j])
            if ax > amax:
                amax = ax
                mx = x[o + j]
        if amax < _GROUP_MAX_EPS:
            scales[ib] = _ZERO
            continue
        # The first pass's L is always overwritten below (ntry > 0), so it is not kept. Indices are
        # found in a loop of their own (it vectorizes), then summed in ggml's order.
        d = -mx / v0
        id = _ONE / d
        for j in range(32):
            Lb[j] = best_index_int8(t, id * x[o + j])
        sumqx = _ZERO
        sumq2 = _ZERO
        for j in range(32):
            q = values[Lb[j]]
            w = weight[j]
            sumqx += w * q * x[o + j]
            sumq2 += w * q * q
        d = sumqx / sumq2 if sumq2 > _ZERO else _ZERO
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            id = (f32(itry) + v0) / mx
            for j in range(32):
                Lb[j] = best_index_int8(t, id * x[o + j])
            sumqx = _ZERO
            sumq2 = _ZERO
            for j in range(32):
                q = values[Lb[j]]
                w = weight[j]
                sumqx += w * q * x[o + j]
                sumq2 += w * q * q
            if sumq2 > _ZERO and sumqx * sumqx > best * sumq2:
                d = sumqx / sumq2
                best = d * sumqx
        scales[ib] = d
        abs_d = abs(d)
        if abs_d > amax_scale:
            amax_scale = abs_d
            max_scale = d

    if nsub > 1:
        d = -max_scale / f32(32.0)
        dh = fp32_to_fp16(d)
        id = _ONE / d if d != _ZERO else _ZERO
        scales_h = 0
        for k in range(4, 8):
            y[k] = 0
        for ib in range(nsub):
            o = ib * 32
            l = nearest_int(id * scales[ib])
            l = max(-32, min(31, l))
            dl = d * f32(l)
            idl = _ONE / dl if dl != _ZERO else _ZERO
            for j in range(32):
                L[o + j] = best_index_int8(t, idl * x[o + j])
            l += 32
            if ib % 2 == 0:
                y[4 + ib // 2] = l & 0xF
            else:
                y[4 + ib // 2] |= (l & 0xF) << 4
            scales_h |= (l >> 4) << (2 * (ib % 8))
        y[2] = scales_h & 0xFF
        y[3] = (scales_h >> 8) & 0xFF
        qs0 = 8
    else:
        dh = fp32_to_fp16(scales[0])
        id = _ONE / scales[0] if scales[0] != _ZERO else _ZERO
        for j in range(super_block_size):
            L[j] = best_index_int8(t, id * x[j])
        qs0 = 2
    y[0] = dh & 0xFF
    y[1] = dh >> 8
    for i in range(super_block_size // 32):
        for j in range(16):
            y[qs0 + 16 * i + j] = L[32 * i + j] | (L[32 * i + 16 + j] << 4)


@njit(cache=True, nogil=True, parallel=True)
def _quantize_rows(x, qw, use_qw, values, t, super_block_size, block_bytes):
    nrows, n_per_row = x.shape
    nb = n_per_row // super_block_size
    y = np.zeros((nrows, nb * block_bytes), dtype=np.uint8)
    for r in prange(nrows):
        scales = np.empty(super_block_size // 32, dtype=np.float32)
        weight = np.empty(32, dtype=np.float32)
        L = np.empty(super_block_size, dtype=np.uint8)
        Lb = np.empty(32, dtype=np.int32)
        for i in range(nb):
            a = i * super_block_size
            _iq4_superblock(x[r, a:a + super_block_size], qw[a:a + super_block_size], use_qw, values, t,
                            y[r, i * block_bytes:(i + 1) * block_bytes], scales, weight, L, Lb)
    return y


# IQ4_NL: 32 weights per 18-byte block (d: fp16; qs: 16 nibbles); dequantize_row_iq4_nl
@njit(cache=True, nogil=True, parallel=True)
def _dequantize_iq4_nl_rows(blob, n_per_row, values):
    nrows = blob.shape[0]
    nb = n_per_row // QK4_NL
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in prange(nrows):
        for i in range(nb):
            b = i * NL_BYTES
            d = fp16_to_fp32(np.uint16(blob[r, b]) | (np.uint16(blob[r, b + 1]) << np.uint16(8)))
            o = i * QK4_NL
            for j in range(16):
                q = blob[r, b + 2 + j]
                y[r, o + j] = d * values[q & 0xF]
                y[r, o + j + 16] = d * values[q >> 4]
    return y


# IQ4_XS: 256 weights per 136-byte block (d: fp16; scales_h: u16; scales_l: 4; qs: 128); dequantize_row_iq4_xs
@njit(cache=True, nogil=True, parallel=True)
def _dequantize_iq4_xs_rows(blob, n_per_row, values):
    nrows = blob.shape[0]
    nb = n_per_row // QK_K
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in prange(nrows):
        for i in range(nb):
            b = i * XS_BYTES
            d = fp16_to_fp32(np.uint16(blob[r, b]) | (np.uint16(blob[r, b + 1]) << np.uint16(8)))
            scales_h = np.int32(blob[r, b + 2]) | (np.int32(blob[r, b + 3]) << 8)
            for ib in range(8):
                ls = ((np.int32(blob[r, b + 4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4)
                dl = d * f32(ls - 32)
                o = i * QK_K + ib * 32
                qs = b + 8 + ib * 16
                for j in range(16):
                    q = blob[r, qs + j]
                    y[r, o + j] = dl * values[q & 0xF]
                    y[r, o + j + 16] = dl * values[q >> 4]
    return y


_VALUES = KVALUES_IQ4NL.astype(np.float32)
_THRESHOLDS = nearest_thresholds(_VALUES)
assert _THRESHOLDS.size == 15 and np.all(np.diff(_VALUES) > 0)  # best_index_int8 counts 15 thresholds


def _quantize(x, imatrix, super_block_size, block_bytes):
    if imatrix is None:
        qw = np.zeros(x.shape[1], dtype=np.float32)  # unread; keeps one compiled signature
        return _quantize_rows(x, qw, False, _VALUES, _THRESHOLDS, super_block_size, block_bytes)
    return _quantize_rows(x, imatrix, True, _VALUES, _THRESHOLDS, super_block_size, block_bytes)


def quantize_iq4_nl(x, imatrix=None):
    return _quantize(x, imatrix, QK4_NL, NL_BYTES)


def quantize_iq4_xs(x, imatrix=None):
    return _quantize(x, imatrix, QK_K, XS_BYTES)


def dequantize_iq4_nl(blob, n_per_row):
    return _dequantize_iq4_nl_rows(blob, n_per_row, _VALUES)


def dequantize_iq4_xs(blob, n_per_row):
    return _dequantize_iq4_xs_rows(blob, n_per_row, _VALUES)


KERNELS = [
    Kernel(T.IQ4_NL, quantize_iq4_nl, dequantize_iq4_nl),
    Kernel(T.IQ4_XS, quantize_iq4_xs, dequantize_iq4_xs),
]
