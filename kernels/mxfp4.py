"""MXFP4 and NVFP4: E2M1 4-bit floats with a shared power-of-two (MXFP4, E8M0) or UE4M3 (NVFP4)
scale, as ggml's quantize_row_mxfp4_ref / quantize_row_nvfp4_ref and dequantize_row_mxfp4 /
dequantize_row_nvfp4. ggml ignores the imatrix for both.

The E2M1 grid is kept doubled (kvalues_mxfp4: 0, 1, 2, 3, 4, 6, 8, 12 and negatives), so both
scale decoders return half the scale. Scale decoding is a 256-entry table of exact float32s.
"""

import math

import numpy as np
from gguf.quants import MXFP4 as _GGUF_MXFP4
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T

f32 = np.float32

QK_MXFP4 = 32
MXFP4_BYTES = 17  # e: E8M0; qs: 16 nibbles
QK_NVFP4 = 64
QK_NVFP4_SUB = 16
NVFP4_BYTES = 36  # d: 4 UE4M3 (one per 16 weights); qs: 32 nibbles

_ZERO = f32(0.0)
_SIX = f32(6.0)
_MAX_UE4M3 = f32(448.0)
_SUB_SCALE = f32(512.0)
_HALF = f32(0.5)

KVALUES_MXFP4 = np.array(_GGUF_MXFP4.kvalues, dtype=np.int8)


def _e8m0_half_table():
    """ggml_e8m0_to_fp32_half for every byte: 2**(e - 128), with the two subnormal patterns below e = 2."""
    e = np.arange(256, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23)).astype(np.uint32)
    return bits.view(np.float32)


def _ue4m3_table():
    """ggml_ue4m3_to_fp32 for every byte (already halved, to match the doubled grid); bit 7 is ignored."""
    table = np.zeros(256, dtype=np.float32)
    for x in range(256):
        if x in (0, 0x7F):
            continue
        exp = (x >> 3) & 0xF
        man = x & 0x7
        raw = math.ldexp(man, -9) if exp == 0 else math.ldexp(1.0 + man / 8.0, exp - 7)
        table[x] = raw * 0.5  # exact: at most 4 significant bits
    return table


@njit(cache=True, nogil=True)
def fp4_indices(xr, a0, n, dv, mags, L, best, ax):
    """best_index_mxfp4(xr[a0 + j], dv[j]) for j < n, into L (best, ax: scratch of n floats).

    ggml takes the first index with the least fabsf(kvalues[i]*d - x) over all 16 codes. The codes
    are 0..7 = +mags and 8..15 = -mags, so a code of the other sign never errs less than code 0
    (which comes first), and -m*d - x is exactly -(m*d - |x|) for x < 0: the answer is the first
    least fabsf(mags[k]*d - |x|) over k < 8, plus 8 for negative x when k > 0. Looping codes outside
    and weights inside lets the compiler vectorize across weights; the scale comes per weight so
    that NVFP4 runs its four 16-weight scales as one 64-weight loop (16-long loops ran ~10x slower).
    """
    for j in range(n):
        ax[j] = abs(xr[a0 + j])
        best[j] = ax[j]  # code 0: fabsf(0*d - x)
        L[j] = 0
    for k in range(1, 8):
        m = mags[k]
        for j in range(n):
            err = abs(m * dv[j] - ax[j])
            if err < best[j]:
                best[j] = err
                L[j] = k
    for j in range(n):
        if xr[a0 + j] < _ZERO and L[j] != 0:
            L[j] += 8


@njit(cache=True, nogil=True)
def e8m0_of_amax(amax):
    """(uint8_t)(floorf(log2f(amax)) - 2 + 127), or 0 for amax == 0.

    Compiled, math.log2 of a float32 calls libm's log2f, as ggml does; only its floor matters.
    The uint8_t cast of the float goes through a 32-bit int on x86-64, so subnormal amax wraps
    (-8 -> 248) and an infinite one gives 0.
    """
    if not amax > _ZERO:
        return 0
    if amax == np.inf:
        return 0
    # np.float32 is a no-op when compiled; uncompiled (NUMBA_DISABLE_JIT) it rounds libm's double log2 as log2f would
    return (math.floor(np.float32(math.log2(amax))) - 2 + 127) & 0xFF


# MXFP4: 32 weights per 17-byte block (e: E8M0; qs: 16, x[j] low nibble, x[j + 16] high); quantize_row_mxfp4_ref
@njit(cache=True, nogil=True, parallel=True)
def _quantize_mxfp4_rows(x, mags, e8m0_half):
    nrows, n_per_row = x.shape
    nb = n_per_row // QK_MXFP4
    y = np.zeros((nrows, nb * MXFP4_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        xr = x[r]
        # scales first, then one fp4_indices over the whole row: long loops vectorize best
        L = np.empty(n_per_row, dtype=np.int32)
        dv = np.empty(n_per_row, dtype=np.float32)
        best = np.empty(n_per_row, dtype=np.float32)
        ax = np.empty(n_per_row, dtype=np.float32)
        for i in range(nb):
            a = i * QK_MXFP4
            amax = _ZERO
            for j in range(QK_MXFP4):
                if amax < abs(xr[a + j]):
                    amax = abs(xr[a + j])
            e = e8m0_of_amax(amax)
            y[r, i * MXFP4_BYTES] = e
            dv[a:a + QK_MXFP4] = e8m0_half[e]
        fp4_indices(xr, 0, n_per_row, dv, mags, L, best, ax)
        for i in range(nb):
            a = i * QK_MXFP4
            b = i * MXFP4_BYTES
            for j in range(QK_MXFP4 // 2):
                y[r, b + 1 + j] = L[a + j] | (L[a + j + QK_MXFP4 // 2] << 4)
    return y


@njit(cache=True, nogil=True, parallel=True)
def _dequantize_mxfp4_rows(blob, n_per_row, kvalues, e8m0_half):
    nrows = blob.shape[0]
    nb = n_per_row // QK_MXFP4
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in prange(nrows):
        for i in range(nb):
            b = i * MXFP4_BYTES
            d = e8m0_half[blob[r, b]]
            o = i * QK_MXFP4
            for j in range(QK_MXFP4 // 2):
                q = blob[r, b + 1 + j]
                y[r, o + j] = kvalues[q & 0x0F] * d
                y[r, o + j + QK_MXFP4 // 2] = kvalues[q >> 4] * d
    return y


@njit(cache=True, nogil=True)
def fp32_to_ue4m3(x, bits):
    """ggml_fp32_to_ue4m3: round half up on the mantissa, saturate at 0x7E; bits is the uint32 of x."""
    if not x > _ZERO:
        return 0
    if x > _MAX_UE4M3:
        x = _MAX_UE4M3
        bits = np.uint32(0x43E00000)  # 448.0f
    fp32_exp = np.int32((bits >> np.uint32(23)) & np.uint32(0xFF)) - 127
    fp32_man = np.int32((bits >> np.uint32(20)) & np.uint32(0x7))
    ue4m3_exp = fp32_exp + 7
    if ue4m3_exp <= 0:
        # subnormal: man = (int)(x * 512.0f + 0.5f), in float32
        man = np.int32(x * _SUB_SCALE + _HALF)
        if man > 7:
            man = 7
        if man < 1:
            return 0
        return man
    if ue4m3_exp >= 15:
        return 0x7E
    ue4m3_man = fp32_man + np.int32((bits >> np.uint32(19)) & np.uint32(1))
    if ue4m3_man > 7:
        ue4m3_man = 0
        ue4m3_exp += 1
        if ue4m3_exp >= 15:
            return 0x7E
    return (ue4m3_exp << 3) | ue4m3_man


# NVFP4: 64 weights per 36-byte block (d: 4 UE4M3, one per 16 weights; qs: 32, per 16 weights
# x[j] low nibble, x[j + 8] high); quantize_row_nvfp4_ref
@njit(cache=True, nogil=True, parallel=True)
def _quantize_nvfp4_rows(x, mags, ue4m3):
    nrows, n_per_row = x.shape
    nb = n_per_row // QK_NVFP4
    y = np.zeros((nrows, nb * NVFP4_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        xr = x[r]
        L = np.empty(QK_NVFP4, dtype=np.int32)
        best = np.empty(QK_NVFP4, dtype=np.float32)
        ax = np.empty(QK_NVFP4, dtype=np.float32)
        dv = np.empty(QK_NVFP4, dtype=np.float32)
        for i in range(nb):
            b = i * NVFP4_BYTES
            for s in range(QK_NVFP4 // QK_NVFP4_SUB):
                a = i * QK_NVFP4 + s * QK_NVFP4_SUB
                amax = _ZERO
                for j in range(QK_NVFP4_SUB):
                    if amax < abs(xr[a + j]):
                        amax = abs(xr[a + j])
                scaled = amax / _SIX
                ue = fp32_to_ue4m3(scaled, np.float32(scaled).view(np.uint32))
                y[r, b + s] = ue
                dv[s * QK_NVFP4_SUB:(s + 1) * QK_NVFP4_SUB] = ue4m3[ue]
            fp4_indices(xr, i * QK_NVFP4, QK_NVFP4, dv, mags, L, best, ax)
            for s in range(QK_NVFP4 // QK_NVFP4_SUB):
                for j in range(QK_NVFP4_SUB // 2):
                    o = s * QK_NVFP4_SUB + j
                    y[r, b + 4 + s * (QK_NVFP4_SUB // 2) + j] = L[o] | (L[o + QK_NVFP4_SUB // 2] << 4)
    return y


@njit(cache=True, nogil=True, parallel=True)
def _dequantize_nvfp4_rows(blob, n_per_row, kvalues, ue4m3):
    nrows = blob.shape[0]
    nb = n_per_row // QK_NVFP4
    y = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in prange(nrows):
        for i in range(nb):
            b = i * NVFP4_BYTES
            for s in range(QK_NVFP4 // QK_NVFP4_SUB):
                d = ue4m3[blob[r, b + s]]
                o = i * QK_NVFP4 + s * QK_NVFP4_SUB
                for j in range(QK_NVFP4_SUB // 2):
                    q = blob[r, b + 4 + s * (QK_NVFP4_SUB // 2) + j]
                    y[r, o + j] = kvalues[q & 0x0F] * d
                    y[r, o + j + QK_NVFP4_SUB // 2] = kvalues[q >> 4] * d
    return y


_KVALUES = KVALUES_MXFP4.astype(np.float32)  # int8 promoted to float, as at every use in C
_MAGS = _KVALUES[:8].copy()
# fp4_indices relies on the grid's shape: eight ascending magnitudes from 0, then their negatives
assert _MAGS[0] == 0 and np.all(np.diff(_MAGS) > 0) and np.array_equal(_KVALUES[8:], -_MAGS)
_E8M0_HALF = _e8m0_half_table()
_UE4M3 = _ue4m3_table()


def quantize_mxfp4(x, imatrix=None):
    return _quantize_mxfp4_rows(x, _MAGS, _E8M0_HALF)


def dequantize_mxfp4(blob, n_per_row):
    return _dequantize_mxfp4_rows(blob, n_per_row, _KVALUES, _E8M0_HALF)


def quantize_nvfp4(x, imatrix=None):
    return _quantize_nvfp4_rows(x, _MAGS, _UE4M3)


def dequantize_nvfp4(blob, n_per_row):
    return _dequantize_nvfp4_rows(blob, n_per_row, _KVALUES, _UE4M3)


KERNELS = [
    Kernel(T.MXFP4, quantize_mxfp4, dequantize_mxfp4),
    Kernel(T.NVFP4, quantize_nvfp4, dequantize_nvfp4),
]
