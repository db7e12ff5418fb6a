"""Q1_0 and Q2_0: sign bits (Q1_0) and 2-bit {-1, 0, 1, 2} codes (Q2_0) times one fp16 scale per
block, as ggml's quantize_row_q1_0_ref / quantize_row_q2_0_ref and dequantize_row_q1_0 /
dequantize_row_q2_0 (ggml types 41 and 42). With an imatrix ggml runs the same code row by row, so
the imatrix changes nothing.

gguf 0.19.0 names Q1_0 but not Q2_0; kernels/gguf_compat.py adds it to gguf's enum. Q2_0 registers
only when that member is ggml's type 42 with ggml's block size (64 weights, 18 bytes).
"""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType as T
from .common import fp16_to_fp32, fp32_to_fp16, roundf

f32 = np.float32

QK1_0 = 128
Q1_0_BYTES = 18  # d: fp16; qs: 16
QK2_0 = 64
Q2_0_BYTES = 18  # d: fp16; qs: 16
GGML_TYPE_Q2_0 = 42

_ZERO = f32(0.0)
_ONE = f32(1.0)
_QK1_0_F = f32(QK1_0)
_INT_RANGE = f32(2.0**31)


# Q1_0: 128 weights per 18-byte block (d: fp16, mean |x|; qs: 16, bit j set where x[j] >= 0); quantize_row_q1_0_ref
@njit(cache=True, nogil=True, parallel=True)
def _quantize_q1_0_rows(x):
    nrows, n_per_row = x.shape
    nb = n_per_row // QK1_0
    y = np.zeros((nrows, nb * Q1_0_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        xr = x[r]
        for i in range(nb):
            a = i * QK1_0
            b = i * Q1_0_BYTES
            sum_abs = _ZERO
            for j in range(QK1_0):
                sum_abs += abs(xr[a + j])
            dh = fp32_to_fp16(sum_abs / _QK1_0_F)
            y[r, b] = dh & 0xFF
            y[r, b + 1] = dh >> 8
            for k in range(QK1_0 // 8):
                q = 0
                for bit in range(8):
                    if xr[a + 8 * k + bit] >= _ZERO:
                        q |= 1 << bit
                y[r, b + 2 + k] = q
    return y


@njit(cache=True, nogil=True, parallel=True)
def _dequantize_q1_0_rows(blob, n_per_row):
    nrows = blob.shape[0]
    nb = n_per_row // QK1_0
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in prange(nrows):
        for i in range(nb):
            b = i * Q1_0_BYTES
            d = fp16_to_fp32(np.uint16(blob[r, b]) | (np.uint16(blob[r, b + 1]) << np.uint16(8)))
            neg_d = -d
            o = i * QK1_0
            for j in range(QK1_0):
                y[r, o + j] = d if (blob[r, b + 2 + j // 8] >> (j % 8)) & 1 else neg_d
    return y


@njit(cache=True, nogil=True)
def _q2_0_code(v):
    """(int)roundf(v) + 1 clamped to [0, 3]. v is not finite only when 1/amax overflowed; x86-64's
    float-to-int conversion then gives INT_MIN, which clamps to 0."""
    if not abs(v) < _INT_RANGE:
        return 0
    q = np.int32(roundf(v)) + 1
    return min(3, max(0, q))


# Q2_0: 64 weights per 18-byte block (d: fp16, amax; qs: 16, four 2-bit codes per byte, low bits first);
# quantize_row_q2_0_ref
@njit(cache=True, nogil=True, parallel=True)
def _quantize_q2_0_rows(x):
    nrows, n_per_row = x.shape
    nb = n_per_row // QK2_0
    y = np.zeros((nrows, nb * Q2_0_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        xr = x[r]
        for i in range(nb):
            a = i * QK2_0
            b = i * Q2_0_BYTES
            amax = _ZERO
            for j in range(QK2_0):
                v = abs(xr[a + j])
                if v > amax:
                    amax = v
            d = amax
            id = _ONE / d if d > _ZERO else _ZERO
            dh = fp32_to_fp16(d)
            y[r, b] = dh & 0xFF
            y[r, b + 1] = dh >> 8
            for k in range(QK2_0 // 4):
                q = 0
                for m in range(4):
                    q |= _q2_0_code(xr[a + 4 * k + m] * id) << (2 * m)
                y[r, b + 2 + k] = q
    return y


@njit(cache=True, nogil=True, parallel=True)
def _dequantize_q2_0_rows(blob, n_per_row):
    nrows = blob.shape[0]
    nb = n_per_row // QK2_0
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in prange(nrows):
        for i in range(nb):
            b = i * Q2_0_BYTES
            d = fp16_to_fp32(np.uint16(blob[r, b]) | (np.uint16(blob[r, b + 1]) << np.uint16(8)))
            o = i * QK2_0
            for j in range(QK2_0):
                q = (np.int32(blob[r, b + 2 + j // 4]) >> (2 * (j % 4))) & 3
                y[r, o + j] = f32(q - 1) * d
    return y


def quantize_q1_0(x, imatrix=None):
    return _quantize_q1_0_rows(x)


def dequantize_q1_0(blob, n_per_row):
    return _dequantize_q1_0_rows(blob, n_per_row)


def quantize_q2_0(x, imatrix=None):
    return _quantize_q2_0_rows(x)


def dequantize_q2_0(blob, n_per_row):
    return _dequantize_q2_0_rows(blob, n_per_row)


KERNELS = [
    Kernel(T.Q1_0, quantize_q1_0, dequantize_q1_0),
]

_Q2_0 = getattr(T, "Q2_0", None)
if _Q2_0 is not None and int(_Q2_0) == GGML_TYPE_Q2_0 and GGML_QUANT_SIZES.get(_Q2_0) == (QK2_0, Q2_0_BYTES):
    KERNELS.append(Kernel(_Q2_0, quantize_q2_0, dequantize_q2_0))
