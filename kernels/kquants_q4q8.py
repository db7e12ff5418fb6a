"""Q4_K, Q5_K, Q6_K and Q8_K: the 4- to 8-bit K-quants (ggml-quants.c); what every K-quant
shares is in kquants_common (its docstring says how the row functions mirror the C).

Q4_K: 256 weights per 144-byte block (d, dmin: fp16; scales: 12; qs: 128), quantize_row_q4_K_ref/_impl
Q5_K: 256 weights per 176-byte block (d, dmin: fp16; scales: 12; qh: 32; qs: 128), quantize_row_q5_K_ref/_impl
Q6_K: 256 weights per 210-byte block (ql: 128; qh: 64; scales: 16 (int8); d: fp16), quantize_row_q6_K_ref/_impl
Q8_K: 256 weights per 292-byte block (d: float32; qs: 256 (int8); bsums: 16 (int16)), dequantizer only
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
    GROUP_MAX_EPS,
    QKX_LANES,
    QKX_TMP,
    QKX_W,
    QKX_X,
    fp16_to_fp32_fast,
    fp32_to_fp16_fast,
    get_scale_min_k4,
    make_qkx2_quants_lanes,
    make_qp_quants,
    make_qx_quants_lanes,
    nearest_int_fast,
    qkx_lanes_levels,
    qkx_lanes_scratch,
    qx_lanes_levels,
)

f32 = np.float32

QK_K = 256
Q4_K_BYTES = 144  # d, dmin: fp16; scales: 12; qs: 128
Q5_K_BYTES = 176  # d, dmin: fp16; scales: 12; qh: 32; qs: 128
Q6_K_BYTES = 210  # ql: 128; qh: 64; scales: 16 (int8); d: fp16
Q8_K_BYTES = 292  # d: float32; qs: 256 (int8); bsums: 16 (int16)

_F63 = f32(63.0)
_F32 = f32(32.0)
_M128 = f32(-128.0)
_M127 = f32(-127.0)
# (rmin, rdelta) of the make_qkx2/qkx3_quants calls
_Q4_REF_RMIN, _Q4_REF_RDELTA = f32(-1.0), f32(0.1)
_Q5_REF_RMIN, _Q5_REF_RDELTA = f32(-0.5), f32(0.1)


# ---------------------------------------------------------------------------------------------
# Q4_K: 256 weights per 144-byte block (d, dmin: fp16; scales: 12 (8 x 6-bit scale, 6-bit min);
# qs: 128). Mirrors quantize_row_q4_K_ref / quantize_row_q4_K_impl / dequantize_row_q4_K.
# Q5_K: 256 weights per 176-byte block (d, dmin: fp16; scales: 12; qh: 32; qs: 128).
# Mirrors quantize_row_q5_K_ref / quantize_row_q5_K_impl / dequantize_row_q5_K.
# The two share everything but nmax, the solver parameters and the final packing.


@njit(cache=True, nogil=True)
def _put_scale_min_k4(y, s, j, ls, lm):
    # the inverse of get_scale_min_k4; ls, lm may exceed 63 on the imatrix path of Q4_K (C truncates)
    if j < 4:
        y[s + j] = ls & 0xFF
        y[s + j + 4] = lm & 0xFF
    else:
        y[s + j + 4] = ((ls & 0xF) | ((lm & 0xF) << 4)) & 0xFF
        y[s + j - 4] = (np.int64(y[s + j - 4]) | ((ls >> 4) << 6)) & 0xFF
        y[s + j] = (np.int64(y[s + j]) | ((lm >> 4) << 6)) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _k4_requantize(xb, y, o, L, nmax, hd, hm, ds, ms):
    dall = fp16_to_fp32_fast(hd)
    mall = fp16_to_fp32_fast(hm)
    for j in range(QK_K // 32):
        sc, m = get_scale_min_k4(j, y, o + 4)
        ds[32 * j:32 * j + 32] = dall * f32(sc)
        ms[32 * j:32 * j + 32] = mall * f32(m)
    _requantize(xb, ms, ds, L, 0, nmax, 0)


@njit(cache=True, nogil=True, error_model="numpy")
def _k4_ref_put_lanes(xc, ng, s):
    """Group g = 0..ng-1 of xc (32 weights each) into lane g of make_qkx2_quants_lanes' planes,
    with quantize_row_q4_K_ref's weights: av_x + |x|, av_x = sqrtf(sum_x2/32). Each lane sums
    in the C's order; lanes >= ng keep what they held (the search's result there is unused)."""
    LN = QKX_LANES
    for g in range(ng):
        for l in range(32):
            s[QKX_X + l * LN + g] = xc[32 * g + l]
    for g in range(LN):
        s[QKX_TMP + g] = _ZERO
    for l in range(32):
        for g in range(LN):
            v = s[QKX_X + l * LN + g]
            s[QKX_TMP + g] += v * v  # sum_x2 += x*x
    for g in range(LN):
        s[QKX_TMP + g] = np.sqrt(s[QKX_TMP + g] / _F32)  # av_x
    for l in range(32):
        for g in range(LN):
            s[QKX_W + l * LN + g] = s[QKX_TMP + g] + abs(s[QKX_X + l * LN + g])


@njit(cache=True, nogil=True, error_model="numpy")
def _k4_row_ref(x, y, nmax, bs, rmin, rdelta, nstep):
    """quantize_row_q4_K_ref (nmax 15) / quantize_row_q5_K_ref (nmax 31); they differ only in
    nmax, the make_qkx2_quants parameters and the packing of the quants.

    The sub-block searches run QKX_LANES at a time (8 super-blocks) in make_qkx2_quants_lanes
    (a tail of up to 4 super-blocks on 32 lanes), then each super-block is finished as in the
    C. Its L from the search is computed only for sub-blocks whose scale d is 0: elsewhere the
    final requantization overwrites it."""
    nb = x.shape[0] // QK_K
    s = qkx_lanes_scratch()
    L = np.zeros(QK_K, dtype=np.uint8)
    ds = np.empty(QK_K, dtype=np.float32)
    ms = np.empty(QK_K, dtype=np.float32)
    mins = np.zeros(QKX_LANES, dtype=np.float32)
    scales = np.zeros(QKX_LANES, dtype=np.float32)
    iscales = np.zeros(QKX_LANES, dtype=np.float32)
    lmins = np.zeros(QKX_LANES, dtype=np.float32)
    per_call = QKX_LANES // 8
    for c0 in range(0, nb, per_call):
        nbc = min(per_call, nb - c0)
        _k4_ref_put_lanes(x[c0 * QK_K:(c0 + nbc) * QK_K], 8 * nbc, s)
        # lane counts are literals (the lane loops need them at compile time); nmax and nstep are
        # not, so Q4_K and Q5_K, ref and imatrix paths share two compiled searches, not eight
        if nbc > 4:
            make_qkx2_quants_lanes(s, 64, 32, np.int64(nmax), rmin, rdelta, np.int64(nstep), False, scales, mins,
                                   iscales, lmins)
        else:
            make_qkx2_quants_lanes(s, 32, 32, np.int64(nmax), rmin, rdelta, np.int64(nstep), False, scales, mins,
                                   iscales, lmins)
        for ib in range(nbc):
            i = c0 + ib
            xb = x[i * QK_K:(i + 1) * QK_K]
            o = i * bs
            j0 = 8 * ib
            max_scale = _ZERO  # as we are deducting the min, scales are always positive
            max_min = _ZERO
            for j in range(QK_K // 32):
                if scales[j0 + j] > max_scale:
                    max_scale = scales[j0 + j]
                if mins[j0 + j] > max_min:
                    max_min = mins[j0 + j]
            inv_scale = _F63 / max_scale if max_scale > _ZERO else _ZERO
            inv_min = _F63 / max_min if max_min > _ZERO else _ZERO
            hd = fp32_to_fp16_fast(max_scale / _F63)
            hm = fp32_to_fp16_fast(max_min / _F63)
            dall = fp16_to_fp32_fast(hd)
            for j in range(QK_K // 32):
                ls = min(63, nearest_int_fast(inv_scale * scales[j0 + j]) & 0xFF)  # uint8_t ls = nearest_int(...)
                lm = min(63, nearest_int_fast(inv_min * mins[j0 + j]) & 0xFF)
                _put_scale_min_k4(y, o + 4, j, np.int64(ls), np.int64(lm))
                if dall * f32(ls) == _ZERO:  # the requantization keeps the search's L here
                    qkx_lanes_levels(xb[32 * j:32 * j + 32], 32, nmax, iscales[j0 + j], lmins[j0 + j],
                                     L[32 * j:32 * j + 32])
            _k4_requantize(xb, y, o, L, nmax, hd, hm, ds, ms)
            _put_fp16(y, o, hd)
            _put_fp16(y, o + 2, hm)
            if nmax == 15:
                _pack_q4_k(L, y, o)
            else:
                _pack_q5_k(L, y, o)


@njit(cache=True, nogil=True, error_model="numpy")
def _k4_impl_put_lanes(xc, qw, nbc, s, sw):
    """Super-blocks 0..nbc-1 of xc into lanes 8*ib + j of make_qkx2_quants_lanes' planes, with
    quantize_row_q4_K_impl's weights qw * sqrtf(sigma2 + x*x), sigma2 = 2*sum_x2/256 of the
    super-block; sw[8*ib + j] gets their sum. Everything summed in the C's order."""
    LN = QKX_LANES
    for ib in range(nbc):
        xb = xc[ib * QK_K:(ib + 1) * QK_K]
        qb = qw[ib * QK_K:(ib + 1) * QK_K]
        sum_x2 = _ZERO
        for l in range(QK_K):
            sum_x2 += xb[l] * xb[l]
        sigma2 = _F2 * sum_x2 / _F256
        for j in range(QK_K // 32):
            g = 8 * ib + j
            sumw = _ZERO
            for l in range(32):
                v = xb[32 * j + l]
                w = qb[32 * j + l] * np.sqrt(sigma2 + v * v)
                s[QKX_X + l * LN + g] = v
                s[QKX_W + l * LN + g] = w
                sumw += w
            sw[g] = sumw


@njit(cache=True, nogil=True, error_model="numpy")
def _k4_row_impl(x, y, quant_weights, nmax, bs):
    """quantize_row_q4_K_impl (nmax 15) / quantize_row_q5_K_impl (nmax 31), imatrix given.

    make_qkx3_quants(32, nmax, x, weights, ..., -0.9f, 0.05f, 36, false) with weights given is
    make_qkx2_quants with `max <= min` for `max == min` (the same test: min <= max always), so
    the sub-block searches run as lanes in make_qkx2_quants_lanes, as in _k4_row_ref."""
    nb = x.shape[0] // QK_K
    s = qkx_lanes_scratch()
    L = np.zeros(QK_K, dtype=np.uint8)
    Ls = np.zeros(QK_K // 32, dtype=np.uint8)
    Lm = np.zeros(QK_K // 32, dtype=np.uint8)
    ds = np.empty(QK_K, dtype=np.float32)
    ms = np.empty(QK_K, dtype=np.float32)
    sw = np.zeros(QKX_LANES, dtype=np.float32)
    mins = np.zeros(QKX_LANES, dtype=np.float32)
    scales = np.zeros(QKX_LANES, dtype=np.float32)
    iscales = np.zeros(QKX_LANES, dtype=np.float32)
    lmins = np.zeros(QKX_LANES, dtype=np.float32)
    per_call = QKX_LANES // 8
    for c0 in range(0, nb, per_call):
        nbc = min(per_call, nb - c0)
        _k4_impl_put_lanes(x[c0 * QK_K:(c0 + nbc) * QK_K], quant_weights[c0 * QK_K:(c0 + nbc) * QK_K], nbc, s, sw)
        if nbc > 4:  # np.int64(): see _k4_row_ref
            make_qkx2_quants_lanes(s, 64, 32, np.int64(nmax), _IMPL_RMIN, _IMPL_RDELTA, np.int64(36), False, scales,
                                   mins, iscales, lmins)
        else:
            make_qkx2_quants_lanes(s, 32, 32, np.int64(nmax), _IMPL_RMIN, _IMPL_RDELTA, np.int64(36), False, scales,
                                   mins, iscales, lmins)
        for ib in range(nbc):
            i = c0 + ib
            xb = x[i * QK_K:(i + 1) * QK_K]
            o = i * bs
            j0 = 8 * ib
            d_block = make_qp_quants(QK_K // 32, 63, scales[j0:j0 + 8], Ls, sw[j0:j0 + 8])
            m_block = make_qp_quants(QK_K // 32, 63, mins[j0:j0 + 8], Lm, sw[j0:j0 + 8])
            for j in range(QK_K // 32):
                ls = np.int64(Ls[j])
                lm = np.int64(Lm[j])
                if nmax == 31:  # only quantize_row_q5_K_impl clamps here
                    ls = min(63, ls)
                    lm = min(63, lm)
                _put_scale_min_k4(y, o + 4, j, ls, lm)
            hd = fp32_to_fp16_fast(d_block)
            hm = fp32_to_fp16_fast(m_block)
            dall = fp16_to_fp32_fast(hd)
            for j in range(QK_K // 32):
                sc, m = get_scale_min_k4(j, y, o + 4)
                if dall * f32(sc) == _ZERO:  # the requantization keeps the search's L here
                    qkx_lanes_levels(xb[32 * j:32 * j + 32], 32, nmax, iscales[j0 + j], lmins[j0 + j],
                                     L[32 * j:32 * j + 32])
            _k4_requantize(xb, y, o, L, nmax, hd, hm, ds, ms)
            _put_fp16(y, o, hd)
            _put_fp16(y, o + 2, hm)
            if nmax == 15:
                _pack_q4_k(L, y, o)
            else:
                _pack_q5_k(L, y, o)


@njit(cache=True, nogil=True)
def _pack_q4_k(L, y, o):
    q = o + 16
    for j in range(0, QK_K, 64):
        for l in range(32):
            y[q + l] = (np.int64(L[j + l]) | (np.int64(L[j + l + 32]) << 4)) & 0xFF
        q += 32


@njit(cache=True, nogil=True)
def _pack_q5_k(L, y, o):
    qh = o + 16
    ql = o + 48
    for j in range(32):
        y[qh + j] = 0
    m1 = 1
    m2 = 2
    for n in range(0, QK_K, 64):
        for j in range(32):
            # L is in [0, 31]: the C's `if (l > 15) {l -= 16; qh |= m;}` is bit 4, without a branch
            l1 = np.int64(L[n + j])
            l2 = np.int64(L[n + j + 32])
            y[qh + j] = y[qh + j] | (((l1 >> 4) & 1) * m1) | (((l2 >> 4) & 1) * m2)
            y[ql + j] = (l1 & 15) | ((l2 & 15) << 4)
        m1 <<= 2
        m2 <<= 2
        ql += 32


@njit(cache=True, nogil=True, parallel=True)
def _q4_k_rows(x, quant_weights):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * Q4_K_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        if quant_weights is None:
            _k4_row_ref(x[r], y[r], 15, Q4_K_BYTES, _Q4_REF_RMIN, _Q4_REF_RDELTA, 20)
        else:
            _k4_row_impl(x[r], y[r], quant_weights, 15, Q4_K_BYTES)
    return y


@njit(cache=True, nogil=True, parallel=True)
def _q5_k_rows(x, quant_weights):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * Q5_K_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        if quant_weights is None:
            _k4_row_ref(x[r], y[r], 31, Q5_K_BYTES, _Q5_REF_RMIN, _Q5_REF_RDELTA, 15)
        else:
            _k4_row_impl(x[r], y[r], quant_weights, 31, Q5_K_BYTES)
    return y


@njit(cache=True, nogil=True)
def _k4_dequantize_row(b, y, bs, high):
    """dequantize_row_q4_K (high False) / dequantize_row_q5_K (high True: the qh bit adds 16)."""
    for i in range(y.shape[0] // QK_K):
        o = i * bs
        d = _get_fp16(b, o)
        min_ = _get_fp16(b, o + 2)
        q = o + 48 if high else o + 16
        yo = i * QK_K
        is_ = 0
        u1 = 1
        u2 = 2
        for j in range(0, QK_K, 64):
            sc, m = get_scale_min_k4(is_ + 0, b, o + 4)
            d1 = d * f32(sc)
            m1 = min_ * f32(m)
            sc, m = get_scale_min_k4(is_ + 1, b, o + 4)
            d2 = d * f32(sc)
            m2 = min_ * f32(m)
            for l in range(32):
                v = np.int64(b[q + l]) & 0xF
                if high and (np.int64(b[o + 16 + l]) & u1):
                    v += 16
                y[yo + l] = d1 * f32(v) - m1
            for l in range(32):
                v = np.int64(b[q + l]) >> 4
                if high and (np.int64(b[o + 16 + l]) & u2):
                    v += 16
                y[yo + 32 + l] = d2 * f32(v) - m2
            yo += 64
            q += 32
            is_ += 2
            u1 <<= 2
            u2 <<= 2


# ---------------------------------------------------------------------------------------------
# Q6_K: 256 weights per 210-byte block (ql: 128; qh: 64; scales: 16 x int8; d: fp16).
# Mirrors quantize_row_q6_K_ref (quant_weights None) / quantize_row_q6_K_impl / dequantize_row_q6_K.


@njit(cache=True, nogil=True, error_model="numpy")
def _q6_k_put_lanes(xc, qw, ng, s):
    """Group g = 0..ng-1 of xc (16 weights each) into lane g of make_qx_quants_lanes' planes,
    with its importance weights: qw's (the imatrix of these weights) or x*x (qw None)."""
    LN = QKX_LANES
    for g in range(ng):
        for l in range(16):
            v = xc[16 * g + l]
            s[QKX_X + l * LN + g] = v
            s[QKX_W + l * LN + g] = v * v if qw is None else qw[16 * g + l]


@njit(cache=True, nogil=True, error_model="numpy")
def _q6_k_row(x, y, quant_weights):
    """quantize_row_q6_K_ref (quant_weights None) / quantize_row_q6_K_impl. The 16-weight group
    searches run QKX_LANES at a time (4 super-blocks; a tail of up to 2 on 32 lanes) in
    make_qx_quants_lanes; a group's L from the search is computed only where its scale d is 0
    (elsewhere the final requantization overwrites it)."""
    nb = x.shape[0] // QK_K
    s = qkx_lanes_scratch()
    L = np.zeros(QK_K, dtype=np.int8)
    lane_scales = np.zeros(QKX_LANES, dtype=np.float32)
    iscales = np.zeros(QKX_LANES, dtype=np.float32)
    sc = np.empty(QK_K // 16, dtype=np.int64)
    ds = np.empty(QK_K, dtype=np.float32)
    per_call = QKX_LANES // 16
    for c0 in range(0, nb, per_call):
        nbc = min(per_call, nb - c0)
        xc = x[c0 * QK_K:(c0 + nbc) * QK_K]
        if quant_weights is None:
            _q6_k_put_lanes(xc, None, 16 * nbc, s)
        else:
            _q6_k_put_lanes(xc, quant_weights[c0 * QK_K:(c0 + nbc) * QK_K], 16 * nbc, s)
        if nbc > 2:
            make_qx_quants_lanes(s, 64, 16, 32, lane_scales, iscales)
        else:
            make_qx_quants_lanes(s, 32, 16, 32, lane_scales, iscales)
        for ibc in range(nbc):
            i = c0 + ibc
            xb = x[i * QK_K:(i + 1) * QK_K]
            scales = lane_scales[16 * ibc:16 * ibc + 16]
            o = i * Q6_K_BYTES
            max_scale = _ZERO
            max_abs_scale = _ZERO
            for ib in range(QK_K // 16):
                scale = scales[ib]
                abs_scale = abs(scale)
                if abs_scale > max_abs_scale:
                    max_abs_scale = abs_scale
                    max_scale = scale
            if max_abs_scale < GROUP_MAX_EPS:
                for k in range(Q6_K_BYTES):
                    y[o + k] = 0  # memset(&y[i], 0, ...); d = fp16(0) is 0 too
                continue
            iscale = _M128 / max_scale
            hd = fp32_to_fp16_fast(_ONE / iscale)
            _put_fp16(y, o + 208, hd)
            dall = fp16_to_fp32_fast(hd)
            for ib in range(QK_K // 16):
                v = min(127, nearest_int_fast(iscale * scales[ib]))
                sc[ib] = ((v + 128) & 0xFF) - 128  # stored as int8_t
                y[o + 192 + ib] = sc[ib] & 0xFF
                if dall * f32(sc[ib]) == _ZERO:  # the requantization keeps the search's L here
                    qx_lanes_levels(xb[16 * ib:16 * ib + 16], 16, 32, iscales[16 * ibc + ib], L[16 * ib:16 * ib + 16])
            for j in range(QK_K // 16):
                ds[16 * j:16 * j + 16] = dall * f32(sc[j])
            _requantize(xb, None, ds, L, -32, 31, 32)
            ql = o
            qh = o + 128
            for j in range(0, QK_K, 128):
                for l in range(32):
                    l0 = np.int64(L[j + l])
                    l1 = np.int64(L[j + l + 32])
                    l2 = np.int64(L[j + l + 64])
                    l3 = np.int64(L[j + l + 96])
                    y[ql + l] = ((l0 & 0xF) | ((l2 & 0xF) << 4)) & 0xFF
                    y[ql + l + 32] = ((l1 & 0xF) | ((l3 & 0xF) << 4)) & 0xFF
                    y[qh + l] = ((l0 >> 4) | ((l1 >> 4) << 2) | ((l2 >> 4) << 4) | ((l3 >> 4) << 6)) & 0xFF
                ql += 64
                qh += 32


@njit(cache=True, nogil=True, parallel=True)
def _q6_k_rows(x, quant_weights):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * Q6_K_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        _q6_k_row(x[r], y[r], quant_weights)
    return y


@njit(cache=True, nogil=True)
def _q6_k_dequantize_row(b, y):
    for i in range(y.shape[0] // QK_K):
        o = i * Q6_K_BYTES
        d = _get_fp16(b, o + 208)
        ql = o
        qh = o + 128
        sc = o + 192
        yo = i * QK_K
        for n in range(0, QK_K, 128):
            for l in range(32):
                is_ = l // 16
                h = np.int64(b[qh + l])
                q1 = ((np.int64(b[ql + l]) & 0xF) | (((h >> 0) & 3) << 4)) - 32
                q2 = ((np.int64(b[ql + l + 32]) & 0xF) | (((h >> 2) & 3) << 4)) - 32
                q3 = ((np.int64(b[ql + l]) >> 4) | (((h >> 4) & 3) << 4)) - 32
                q4 = ((np.int64(b[ql + l + 32]) >> 4) | (((h >> 6) & 3) << 4)) - 32
                y[yo + l] = d * f32(_s8(b[sc + is_ + 0])) * f32(q1)
                y[yo + l + 32] = d * f32(_s8(b[sc + is_ + 2])) * f32(q2)
                y[yo + l + 64] = d * f32(_s8(b[sc + is_ + 4])) * f32(q3)
                y[yo + l + 96] = d * f32(_s8(b[sc + is_ + 6])) * f32(q4)
            yo += 128
            ql += 64
            qh += 32
            sc += 8


@njit(cache=True, nogil=True)
def _s8(u):
    # a byte read as int8_t
    v = np.int64(u)
    return v - 256 if v > 127 else v


# ---------------------------------------------------------------------------------------------
# Q8_K: 256 weights per 292-byte block (d: float32; qs: 256 x int8; bsums: 16 x int16), the
# intermediate type of ggml's dot products. ggml_quantize_chunk does not accept it, so only the
# dequantizer is registered; quantize_q8_k mirrors quantize_row_q8_K_ref for completeness.


@njit(cache=True, nogil=True, error_model="numpy")
def _q8_k_row(x, y):
    for i in range(x.shape[0] // QK_K):
        xb = x[i * QK_K:(i + 1) * QK_K]
        o = i * Q8_K_BYTES
        max_ = _ZERO
        amax = _ZERO
        for j in range(QK_K):
            ax = abs(xb[j])
            if ax > amax:
                amax = ax
                max_ = xb[j]
        if amax == _ZERO:
            for k in range(Q8_K_BYTES):
                y[o + k] = 0
            continue
        iscale = _M127 / max_
        for j in range(QK_K):
            v = min(127, nearest_int_fast(iscale * xb[j]))
            y[o + 4 + j] = v & 0xFF
        for j in range(QK_K // 16):
            s = 0
            for ii in range(16):
                s += _s8(y[o + 4 + 16 * j + ii])
            y[o + 260 + 2 * j] = s & 0xFF
            y[o + 261 + 2 * j] = (s >> 8) & 0xFF
        bits = np.int64(np.float32(_ONE / iscale).view(np.uint32))
        for k in range(4):
            y[o + k] = (bits >> (8 * k)) & 0xFF


@njit(cache=True, nogil=True, parallel=True)
def _q8_k_rows(x):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * Q8_K_BYTES), dtype=np.uint8)
    for r in prange(nrows):
        _q8_k_row(x[r], y[r])
    return y


@njit(cache=True, nogil=True)
def _q8_k_dequantize_row(b, y):
    for i in range(y.shape[0] // QK_K):
        o = i * Q8_K_BYTES
        bits = np.int64(b[o]) | (np.int64(b[o + 1]) << 8) | (np.int64(b[o + 2]) << 16) | (np.int64(b[o + 3]) << 24)
        d = np.uint32(bits).view(np.float32)
        for j in range(QK_K):
            y[i * QK_K + j] = d * f32(_s8(b[o + 4 + j]))


# ---------------------------------------------------------------------------------------------
# Row drivers


@njit(cache=True, nogil=True, parallel=True)
def _q4_k_dequantize_rows(blob, y):
    for r in prange(blob.shape[0]):
        _k4_dequantize_row(blob[r], y[r], Q4_K_BYTES, False)


@njit(cache=True, nogil=True, parallel=True)
def _q5_k_dequantize_rows(blob, y):
    for r in prange(blob.shape[0]):
        _k4_dequantize_row(blob[r], y[r], Q5_K_BYTES, True)


@njit(cache=True, nogil=True, parallel=True)
def _q6_k_dequantize_rows(blob, y):
    for r in prange(blob.shape[0]):
        _q6_k_dequantize_row(blob[r], y[r])


@njit(cache=True, nogil=True, parallel=True)
def _q8_k_dequantize_rows(blob, y):
    for r in prange(blob.shape[0]):
        _q8_k_dequantize_row(blob[r], y[r])


def quantize_q4_k(x, imatrix=None):
    return _q4_k_rows(x, imatrix)


def quantize_q5_k(x, imatrix=None):
    return _q5_k_rows(x, imatrix)


def quantize_q6_k(x, imatrix=None):
    return _q6_k_rows(x, imatrix)


def quantize_q8_k(x, imatrix=None):
    """quantize_row_q8_K_ref (no imatrix exists for Q8_K). Not registered: see above."""
    return _q8_k_rows(np.ascontiguousarray(x, dtype=np.float32))


dequantize_q4_k = _dequantize_with(_q4_k_dequantize_rows)
dequantize_q5_k = _dequantize_with(_q5_k_dequantize_rows)
dequantize_q6_k = _dequantize_with(_q6_k_dequantize_rows)
dequantize_q8_k = _dequantize_with(_q8_k_dequantize_rows)

KERNELS = [
    Kernel(T.Q4_K, quantize_q4_k, dequantize_q4_k),
    Kernel(T.Q5_K, quantize_q5_k, dequantize_q5_k),
    Kernel(T.Q6_K, quantize_q6_k, dequantize_q6_k),
    Kernel(T.Q8_K, None, dequantize_q8_k),
]
