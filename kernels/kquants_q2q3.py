"""Q2_K and Q3_K: the 2- and 3-bit K-quants (ggml-quants.c); what every K-quant shares is in
kquants_common (its docstring says how the row functions mirror the C).

Q2_K: 256 weights per 84-byte block (scales: 16; qs: 64; d, dmin: fp16), quantize_row_q2_K_ref/_impl
Q3_K: 256 weights per 110-byte block (hmask: 32; qs: 64; scales: 12; d: fp16), quantize_row_q3_K_ref/_impl
"""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .kquants_common import (
    _F2,
    _F256,
    _IMPL_RDELTA,
    _IMPL_RMIN,
    _ONE,
    _ZERO,
    _dequantize_with,
    _get_fp16,
    _put_fp16,
    _requantize,
)
from .solvers import (
    fp16_to_fp32_fast,
    fp32_to_fp16_fast,
    make_q3_quants_row,
    make_qkx2_quants,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int_fast,
    solver_scratch,
)

f32 = np.float32

QK_K = 256
Q2_K_BYTES = 84  # scales: 16; qs: 64; d, dmin: fp16
Q3_K_BYTES = 110  # hmask: 32; qs: 64; scales: 12; d: fp16

_Q4SCALE = f32(15.0)  # q4scale in quantize_row_q2_K_ref
_M32 = f32(-32.0)
# (rmin, rdelta) of the make_qkx2/qkx3_quants calls
_Q2_REF_RMIN, _Q2_REF_RDELTA = f32(-0.5), f32(0.1)


@njit(cache=True, nogil=True)
def _pack_2bit(L, y, o):
    # qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6, j = 0, 128
    for j in range(0, QK_K, 128):
        for l in range(32):
            y[o + j // 4 + l] = (np.int64(L[j + l]) | (np.int64(L[j + l + 32]) << 2)
                                 | (np.int64(L[j + l + 64]) << 4) | (np.int64(L[j + l + 96]) << 6)) & 0xFF


# ---------------------------------------------------------------------------------------------
# Q2_K: 256 weights per 84-byte block (scales: 16 x (4-bit scale | 4-bit min << 4); qs: 64;
# d, dmin: fp16). Mirrors quantize_row_q2_K_ref / quantize_row_q2_K_impl / dequantize_row_q2_K.


@njit(cache=True, nogil=True, error_model="numpy")
def _q2_k_requantize(xb, y, o, L, dm, mm, ds, ms):
    for j in range(QK_K // 16):
        sc = np.int64(y[o + j])
        ds[16 * j:16 * j + 16] = dm * f32(sc & 0xF)
        ms[16 * j:16 * j + 16] = mm * f32(sc >> 4)
    _requantize(xb, ms, ds, L, 0, 3, 0)


@njit(cache=True, nogil=True, error_model="numpy")
def _q2_k_row_ref(x, y):
    nb = x.shape[0] // QK_K
    sbuf = solver_scratch()
    L = np.zeros(QK_K, dtype=np.uint8)
    ds = np.empty(QK_K, dtype=np.float32)
    ms = np.empty(QK_K, dtype=np.float32)
    Laux = np.zeros(16, dtype=np.uint8)
    weights = np.empty(16, dtype=np.float32)
    mins = np.empty(QK_K // 16, dtype=np.float32)
    scales = np.empty(QK_K // 16, dtype=np.float32)
    for i in range(nb):
        xb = x[i * QK_K:(i + 1) * QK_K]
        o = i * Q2_K_BYTES
        max_scale = _ZERO  # as we are deducting the min, scales are always positive
        max_min = _ZERO
        for j in range(QK_K // 16):
            for l in range(16):
                weights[l] = abs(xb[16 * j + l])
            scale, the_min = make_qkx2_quants(16, 3, xb[16 * j:16 * j + 16], weights, L[16 * j:16 * j + 16],
                                              Laux, _Q2_REF_RMIN, _Q2_REF_RDELTA, 15, True, sbuf)
            scales[j] = scale
            mins[j] = the_min
            if scale > max_scale:
                max_scale = scale
            if the_min > max_min:
                max_min = the_min
        if max_scale > _ZERO:
            iscale = _Q4SCALE / max_scale
            for j in range(QK_K // 16):
                y[o + j] = nearest_int_fast(iscale * scales[j]) & 0xFF
            hd = fp32_to_fp16_fast(max_scale / _Q4SCALE)
        else:
            for j in range(QK_K // 16):
                y[o + j] = 0
            hd = fp32_to_fp16_fast(_ZERO)
        if max_min > _ZERO:
            iscale = _Q4SCALE / max_min
            for j in range(QK_K // 16):
                l = nearest_int_fast(iscale * mins[j])
                y[o + j] = (np.int64(y[o + j]) | (np.int64(l) << 4)) & 0xFF
            hm = fp32_to_fp16_fast(max_min / _Q4SCALE)
        else:
            hm = fp32_to_fp16_fast(_ZERO)
        _q2_k_requantize(xb, y, o, L, fp16_to_fp32_fast(hd), fp16_to_fp32_fast(hm), ds, ms)
        _pack_2bit(L, y, o + 16)
        _put_fp16(y, o + 80, hd)
        _put_fp16(y, o + 82, hm)


@njit(cache=True, nogil=True, error_model="numpy")
def _q2_k_row_impl(x, y, quant_weights):
    nb = x.shape[0] // QK_K
    sbuf = solver_scratch()
    L = np.zeros(QK_K, dtype=np.uint8)
    ds = np.empty(QK_K, dtype=np.float32)
    ms = np.empty(QK_K, dtype=np.float32)
    Laux = np.zeros(16, dtype=np.uint8)
    mins = np.empty(QK_K // 16, dtype=np.float32)
    scales = np.empty(QK_K // 16, dtype=np.float32)
    sw = np.empty(QK_K // 16, dtype=np.float32)
    weight = np.empty(16, dtype=np.float32)
    Ls = np.zeros(QK_K // 16, dtype=np.uint8)
    Lm = np.zeros(QK_K // 16, dtype=np.uint8)
    for i in range(nb):
        xb = x[i * QK_K:(i + 1) * QK_K]
        o = i * Q2_K_BYTES
        sumx2 = _ZERO
        for j in range(QK_K):
            sumx2 += xb[j] * xb[j]
        sigma2 = sumx2 / _F256
        for j in range(QK_K // 16):
            qo = QK_K * i + 16 * j
            for l in range(16):
                weight[l] = quant_weights[qo + l] * np.sqrt(sigma2 + xb[16 * j + l] * xb[16 * j + l])
            s = _ZERO
            for l in range(16):
                s += weight[l]
            sw[j] = s
            scale, the_min = make_qkx3_quants(16, 3, xb[16 * j:16 * j + 16], weight, L[16 * j:16 * j + 16],
                                              Laux, _IMPL_RMIN, _IMPL_RDELTA, 36, False, sbuf)
            scales[j] = scale
            mins[j] = the_min
        dm = make_qp_quants(QK_K // 16, 15, scales, Ls, sw)
        mm = make_qp_quants(QK_K // 16, 15, mins, Lm, sw)
        hd = fp32_to_fp16_fast(dm)
        hm = fp32_to_fp16_fast(mm)
        for j in range(QK_K // 16):
            y[o + j] = (np.int64(Ls[j]) | (np.int64(Lm[j]) << 4)) & 0xFF
        _q2_k_requantize(xb, y, o, L, fp16_to_fp32_fast(hd), fp16_to_fp32_fast(hm), ds, ms)
        _pack_2bit(L, y, o + 16)
        _put_fp16(y, o + 80, hd)
        _put_fp16(y, o + 82, hm)


@njit(cache=True, nogil=True, parallel=True)
def _q2_k_rows(x, quant_weights):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * Q2_K_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        if quant_weights is None:
            _q2_k_row_ref(x[r], y[r])
        else:
            _q2_k_row_impl(x[r], y[r], quant_weights)
    return y


@njit(cache=True, nogil=True)
def _q2_k_dequantize_row(b, y):
    for i in range(y.shape[0] // QK_K):
        o = i * Q2_K_BYTES
        d = _get_fp16(b, o + 80)
        min_ = _get_fp16(b, o + 82)
        yo = i * QK_K
        is_ = 0
        for n in range(0, QK_K, 128):
            q = o + 16 + n // 4
            shift = 0
            for j in range(4):
                for half in range(2):
                    sc = np.int64(b[o + is_])
                    is_ += 1
                    dl = d * f32(sc & 0xF)
                    ml = min_ * f32(sc >> 4)
                    for l in range(16):
                        y[yo] = dl * f32((np.int64(b[q + 16 * half + l]) >> shift) & 3) - ml
                        yo += 1
                shift += 2


# ---------------------------------------------------------------------------------------------
# Q3_K: 256 weights per 110-byte block (hmask: 32; qs: 64; scales: 12 (16 x 6-bit); d: fp16).
# Mirrors quantize_row_q3_K_ref / quantize_row_q3_K_impl / dequantize_row_q3_K.


@njit(cache=True, nogil=True)
def _q3_k_put_scale(y, s, j, l):
    # l in [0, 63]: low 4 bits in scales[j % 8] (high nibble for j >= 8), top 2 in scales[8 + j % 4]
    if j < 8:
        y[s + j] = l & 0xF
    else:
        y[s + j - 8] = y[s + j - 8] | ((l & 0xF) << 4)
    l >>= 4
    y[s + j % 4 + 8] = y[s + j % 4 + 8] | (l << (2 * (j // 4)))


@njit(cache=True, nogil=True, error_model="numpy")
def _q3_k_finish(xb, y, o, L, hd, ds):
    """The common tail of both Q3_K paths: requantize with the fp16-rounded scales, then pack."""
    s = o + 96
    dall = fp16_to_fp32_fast(hd)
    for j in range(QK_K // 16):
        sc = (np.int64(y[s + j]) & 0xF) if j < 8 else (np.int64(y[s + j - 8]) >> 4)
        sc = (sc | (((np.int64(y[s + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
        ds[16 * j:16 * j + 16] = dall * f32(sc)
    _requantize(xb, None, ds, L, -4, 3, 4)
    # The high bit of the first 32 quants goes to bit 0 of hmask[0..31], the next 32 to bit 1, ...
    # (L is in [0, 7], so the C's `if (L[j] > 3) {hmask |= hm; L[j] -= 4;}` is bit 2, without a branch)
    for m in range(QK_K // 8):
        hmask = 0
        for b in range(8):
            lj = np.int64(L[32 * b + m])
            hmask |= ((lj >> 2) & 1) << b
            L[32 * b + m] = lj & 3
        y[o + m] = hmask
    _pack_2bit(L, y, o + 32)
    _put_fp16(y, o + 108, hd)


@njit(cache=True, nogil=True, error_model="numpy")
def _q3_k_row_ref(x, y):
    nb = x.shape[0] // QK_K
    ds = np.empty(QK_K, dtype=np.float32)
    Lrow = np.empty(x.shape[0], dtype=np.int8)
    srow = np.empty(x.shape[0] // 16, dtype=np.float32)
    make_q3_quants_row(x, 4, srow, Lrow)
    for i in range(nb):
        xb = x[i * QK_K:(i + 1) * QK_K]
        L = Lrow[i * QK_K:(i + 1) * QK_K]
        scales = srow[i * (QK_K // 16):(i + 1) * (QK_K // 16)]
        o = i * Q3_K_BYTES
        s = o + 96
        max_scale = _ZERO
        amax = _ZERO
        for j in range(QK_K // 16):
            scale = abs(scales[j])
            if scale > amax:
                amax = scale
                max_scale = scales[j]
        for k in range(12):
            y[s + k] = 0
        if max_scale != _ZERO:
            iscale = _M32 / max_scale
            for j in range(QK_K // 16):
                l = ((nearest_int_fast(iscale * scales[j]) + 128) & 0xFF) - 128  # int8_t l = nearest_int(...)
                l = max(-32, min(31, l)) + 32
                _q3_k_put_scale(y, s, j, l)
            hd = fp32_to_fp16_fast(_ONE / iscale)
        else:
            hd = fp32_to_fp16_fast(_ZERO)
        _q3_k_finish(xb, y, o, L, hd, ds)


@njit(cache=True, nogil=True, error_model="numpy")
def _q3_k_row_impl(x, y, quant_weights):
    nb = x.shape[0] // QK_K
    sbuf = solver_scratch()
    L = np.zeros(QK_K, dtype=np.int8)
    ds = np.empty(QK_K, dtype=np.float32)
    scales = np.empty(QK_K // 16, dtype=np.float32)
    weight = np.empty(16, dtype=np.float32)
    sw = np.empty(QK_K // 16, dtype=np.float32)
    Ls = np.zeros(QK_K // 16, dtype=np.int8)
    for i in range(nb):
        xb = x[i * QK_K:(i + 1) * QK_K]
        o = i * Q3_K_BYTES
        s = o + 96
        sumx2 = _ZERO
        for j in range(QK_K):
            sumx2 += xb[j] * xb[j]
        sigma2 = _F2 * sumx2 / _F256
        for j in range(QK_K // 16):
            qo = QK_K * i + 16 * j
            for l in range(16):
                weight[l] = quant_weights[qo + l] * np.sqrt(sigma2 + xb[16 * j + l] * xb[16 * j + l])
            sumw = _ZERO
            for l in range(16):
                sumw += weight[l]
            sw[j] = sumw
            scales[j] = make_qx_quants(16, 4, xb[16 * j:16 * j + 16], L[16 * j:16 * j + 16], 1, weight, sbuf)
        for k in range(12):
            y[s + k] = 0
        d_block = make_qx_quants(QK_K // 16, 32, scales, Ls, 1, sw, sbuf)
        for j in range(QK_K // 16):
            _q3_k_put_scale(y, s, j, np.int64(Ls[j]))
        _q3_k_finish(xb, y, o, L, fp32_to_fp16_fast(d_block), ds)


@njit(cache=True, nogil=True, parallel=True)
def _q3_k_rows(x, quant_weights):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * Q3_K_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        if quant_weights is None:
            _q3_k_row_ref(x[r], y[r])
        else:
            _q3_k_row_impl(x[r], y[r], quant_weights)
    return y


@njit(cache=True, nogil=True)
def _q3_k_dequantize_row(b, y):
    scales = np.empty(16, dtype=np.int64)
    for i in range(y.shape[0] // QK_K):
        o = i * Q3_K_BYTES
        s = o + 96
        d_all = _get_fp16(b, o + 108)
        for j in range(16):  # the 6-bit scales, as the kmask shuffle of dequantize_row_q3_K unpacks them
            lo = (np.int64(b[s + j]) & 0xF) if j < 8 else (np.int64(b[s + j - 8]) >> 4)
            scales[j] = (lo | (((np.int64(b[s + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32
        yo = i * QK_K
        is_ = 0
        m = 1
        for n in range(0, QK_K, 128):
            q = o + 32 + n // 4
            shift = 0
            for j in range(4):
                for half in range(2):
                    dl = d_all * f32(scales[is_])
                    is_ += 1
                    for l in range(16):
                        k = 16 * half + l
                        v = ((np.int64(b[q + k]) >> shift) & 3) - (0 if (np.int64(b[o + k]) & m) else 4)
                        y[yo] = dl * f32(v)
                        yo += 1
                shift += 2
                m <<= 1


# ---------------------------------------------------------------------------------------------
# Row drivers


@njit(cache=True, nogil=True, parallel=True)
def _q2_k_dequantize_rows(blob, y):
    for r in prange(blob.shape[0]):
        _q2_k_dequantize_row(blob[r], y[r])


@njit(cache=True, nogil=True, parallel=True)
def _q3_k_dequantize_rows(blob, y):
    for r in prange(blob.shape[0]):
        _q3_k_dequantize_row(blob[r], y[r])


def quantize_q2_k(x, imatrix=None):
    return _q2_k_rows(x, imatrix)


def quantize_q3_k(x, imatrix=None):
    return _q3_k_rows(x, imatrix)


dequantize_q2_k = _dequantize_with(_q2_k_dequantize_rows)
dequantize_q3_k = _dequantize_with(_q3_k_dequantize_rows)

KERNELS = [
    Kernel(T.Q2_K, quantize_q2_k, dequantize_q2_k),
    Kernel(T.Q3_K, quantize_q3_k, dequantize_q3_k),
]
