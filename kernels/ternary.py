"""TQ1_0 and TQ2_0: ternary weights {-1, 0, 1} times one fp16 scale per 256 (BitNet b1.58,
TriLMs), as ggml's quantize_row_tq1_0_ref / quantize_row_tq2_0_ref and dequantize_row_tq1_0 /
dequantize_row_tq2_0. ggml ignores the imatrix for both."""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .common import ABS_MASK, NOT_FINITE, absmax_scan, fp16_to_fp32, fp32_to_fp16, roundf

f32 = np.float32

QK_K = 256
TQ1_BYTES = 54  # qs: 48; qh: 4; d: fp16
TQ2_BYTES = 66  # qs: 64; d: fp16

_ZERO = f32(0.0)
_ONE = f32(1.0)


@njit(cache=True, nogil=True)
def _trit(v):
    """(int)(lroundf(v) + 1): the ternary digit 0, 1, 2 of v in [-1, 1].

    v is not finite only when 1/amax overflowed (subnormal amax); glibc's lroundf then returns
    LONG_MIN, and LONG_MIN + 1 truncated to int is 1.
    """
    if not abs(v) < np.inf:
        return 1
    return np.int32(roundf(v)) + 1


@njit(cache=True, nogil=True)
def _amax_id(xs, xbs):
    """amax of one block (`xs`, its bits `xbs`) and 1/amax. For finite values the C's MAX chain is
    the largest |bits| read as a float: an unsigned max that vectorizes. Inf or NaN take the chain
    itself (its NaN result depends on the order)."""
    m = np.uint32(0)
    for j in range(QK_K):
        m = max(m, xbs[j] & ABS_MASK)
    amax = np.uint32(m).view(np.float32) if m < NOT_FINITE else absmax_scan(xs)
    id = _ONE / amax if amax != _ZERO else _ZERO
    return amax, id


@njit(cache=True, nogil=True)
def _pack5(q):
    """Five trits (or four, shifted up one) in base 3 as a fraction of 243, rounded up into a byte."""
    return (q * 256 + (243 - 1)) // 243


# TQ1_0: 256 weights per 54-byte block (qs: 48, five trits per byte; qh: 4, four trits per byte; d: fp16);
# quantize_row_tq1_0_ref
@njit(cache=True, nogil=True, parallel=True)
def _quantize_tq1_0_rows(x):
    nrows, n_per_row = x.shape
    nb = n_per_row // QK_K
    y = np.zeros((nrows, nb * TQ1_BYTES), dtype=np.uint8)
    # blocks as slices: non-negative indices keep LLVM free to vectorize (x[a + j] with a signed a
    # carries negative-index wraparound)
    for r in prange(nrows):
        xr = x[r]
        xb = xr.view(np.uint32)
        yr = y[r]
        for i in range(nb):
            xs = xr[i * QK_K:(i + 1) * QK_K]
            ys = yr[i * TQ1_BYTES:(i + 1) * TQ1_BYTES]
            d, id = _amax_id(xs, xb[i * QK_K:(i + 1) * QK_K])
            dh = fp32_to_fp16(d)
            ys[52] = dh & 0xFF
            ys[53] = dh >> 8
            # qs[0:32]: five trits each, from x[m + n*32]
            for m in range(32):
                q = 0
                for n in range(5):
                    q = (q * 3 + _trit(xs[m + n * 32] * id)) & 0xFF
                ys[m] = _pack5(q)
            # qs[32:48]: five trits each, from x[160 + m + n*16]
            for m in range(16):
                q = 0
                for n in range(5):
                    q = (q * 3 + _trit(xs[160 + m + n * 16] * id)) & 0xFF
                ys[32 + m] = _pack5(q)
            # qh[0:4]: four trits each, from x[240 + j + m*4], then shifted to the top trit
            for j in range(4):
                q = 0
                for m in range(4):
                    q = (q * 3 + _trit(xs[240 + j + m * 4] * id)) & 0xFF
                q = (q * 3) & 0xFF
                ys[48 + j] = _pack5(q)
    return y


@njit(cache=True, nogil=True)
def _trit_value(byte, pow3):
    """The trit a byte holds at position pow3: ((uint8)(byte * pow3) * 3) >> 8, minus 1."""
    q = (np.int32(byte) * pow3) & 0xFF
    return ((q * 3) >> 8) - 1


@njit(cache=True, nogil=True, parallel=True)
def _dequantize_tq1_0_rows(blob, n_per_row):
    nrows = blob.shape[0]
    nb = n_per_row // QK_K
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in prange(nrows):
        for i in range(nb):
            b = i * TQ1_BYTES
            d = fp16_to_fp32(np.uint16(blob[r, b + 52]) | (np.uint16(blob[r, b + 53]) << np.uint16(8)))
            o = i * QK_K
            pow3 = 1
            for n in range(5):
                for m in range(32):
                    y[r, o] = f32(_trit_value(blob[r, b + m], pow3)) * d
                    o += 1
                pow3 *= 3
            pow3 = 1
            for n in range(5):
                for m in range(16):
                    y[r, o] = f32(_trit_value(blob[r, b + 32 + m], pow3)) * d
                    o += 1
                pow3 *= 3
            pow3 = 1
            for n in range(4):
                for j in range(4):
                    y[r, o] = f32(_trit_value(blob[r, b + 48 + j], pow3)) * d
                    o += 1
                pow3 *= 3
    return y


# TQ2_0: 256 weights per 66-byte block (qs: 64, four 2-bit trits per byte; d: fp16); quantize_row_tq2_0_ref
@njit(cache=True, nogil=True, parallel=True)
def _quantize_tq2_0_rows(x):
    nrows, n_per_row = x.shape
    nb = n_per_row // QK_K
    y = np.zeros((nrows, nb * TQ2_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        xr = x[r]
        xb = xr.view(np.uint32)
        yr = y[r]
        for i in range(nb):
            xs = xr[i * QK_K:(i + 1) * QK_K]
            ys = yr[i * TQ2_BYTES:(i + 1) * TQ2_BYTES]
            d, id = _amax_id(xs, xb[i * QK_K:(i + 1) * QK_K])
            dh = fp32_to_fp16(d)
            ys[64] = dh & 0xFF
            ys[65] = dh >> 8
            for j in range(0, 64, 32):
                for m in range(32):
                    q = 0
                    for n in range(4):
                        q += (_trit(xs[4 * j + m + n * 32] * id) & 3) << (2 * n)
                    ys[j + m] = q
    return y


@njit(cache=True, nogil=True, parallel=True)
def _dequantize_tq2_0_rows(blob, n_per_row):
    nrows = blob.shape[0]
    nb = n_per_row // QK_K
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in prange(nrows):
        for i in range(nb):
            b = i * TQ2_BYTES
            d = fp16_to_fp32(np.uint16(blob[r, b + 64]) | (np.uint16(blob[r, b + 65]) << np.uint16(8)))
            o = i * QK_K
            for j in range(0, 64, 32):
                for l in range(4):
                    for m in range(32):
                        q = (np.int32(blob[r, b + j + m]) >> (2 * l)) & 3
                        y[r, o] = f32(q - 1) * d
                        o += 1
    return y


def quantize_tq1_0(x, imatrix=None):
    return _quantize_tq1_0_rows(x)


def quantize_tq2_0(x, imatrix=None):
    return _quantize_tq2_0_rows(x)


def dequantize_tq1_0(blob, n_per_row):
    return _dequantize_tq1_0_rows(blob, n_per_row)


def dequantize_tq2_0(blob, n_per_row):
    return _dequantize_tq2_0_rows(blob, n_per_row)


KERNELS = [
    Kernel(T.TQ1_0, quantize_tq1_0, dequantize_tq1_0),
    Kernel(T.TQ2_0, quantize_tq2_0, dequantize_tq2_0),
]
