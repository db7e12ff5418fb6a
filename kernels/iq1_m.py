"""IQ1_M: 256 weights per 56-byte block (qs: 32; qh: 16; scales: 4 x uint16 holding the fp16 super-scale
in their top nibbles), quantize_row_iq1_m_impl and dequantize_row_iq1_m, on the grid tables and
neighbour search of kernels/iq1_common.py.
"""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .common import fp16_to_fp32, fp32_to_fp16, nearest_int
from .iq1_common import (F0, F1, F2, F15, FLT_MAX, FQK_K, HALF, IQ1S_DELTA, QK_K, _find_best_neighbour2,
                         _stable_sort, iq1_tables)

f32 = np.float32

IQ1M_BLOCK_SIZE = 16
IQ1M_BLOCK_BYTES = QK_K // 8 + QK_K // 16 + QK_K // 32  # 56
GROUP_MAX_EPS_IQ1_M = f32(1e-7)
IQ1M_FUDGE = f32(1.1125)


# ---------------------------------------------------------------- IQ1_M

# IQ1_M: 256 weights per 56-byte block (qs: 32 low grid-index bytes; qh: 16 bytes, per group of 8
# 3 index bits + delta sign bit; scales: 4 x uint16 of 3-bit scales whose top nibbles hold the fp16
# super-scale); mirrors quantize_row_iq1_m_impl. Without an imatrix the weights are x*x.
@njit(cache=True, nogil=True)
def _quantize_iq1_m_block(x, xo, qw, has_qw, y, yo, grid_l, kmap, neighbours, x_p, x_m,
                          scales, weight, xs, idx, L, index, shifts, px, pw, cost, cq):
    block_size = IQ1M_BLOCK_SIZE
    # shifts (best_k) -> qh bits: 0: +,+  1: +,-  2: -,+  3: -,-
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[xo + i] * x[xo + i]
    sigma2 = F2 * sumx2 / FQK_K
    p2 = x_p[2]
    m2 = x_m[2]
    cp1 = cq[0]
    cp2 = cq[1]
    cm1 = cq[2]
    cm2 = cq[3]
    for ib in range(QK_K // block_size):
        xb = xo + block_size * ib
        if has_qw:
            for i in range(block_size):
                weight[i] = qw[block_size * ib + i] * np.sqrt(sigma2 + x[xb + i] * x[xb + i])
        else:
            for i in range(block_size):
                weight[i] = x[xb + i] * x[xb + i]
        amax = abs(x[xb])
        for i in range(1, block_size):
            a = abs(x[xb + i])
            amax = amax if amax > a else a
        if amax < GROUP_MAX_EPS_IQ1_M:
            scales[ib] = F0
            shifts[ib] = 0
            continue
        for j in range(block_size):
            xs[j] = x[xb + j]
            idx[j] = j
        _stable_sort(xs, idx, block_size)
        best_score = -FLT_MAX
        scale = amax
        besti1 = -1
        besti2 = -1
        best_k = -1
        # Prefix sums per half of the group (each half has its own shift); a split's sums then
        # collapse to T*v[2] - px[i1] - px[i2], as in the C.
        px[0, 0] = F0
        px[1, 0] = F0
        pw[0, 0] = F0
        pw[1, 0] = F0
        for j in range(block_size):
            i = idx[j]
            h = 0 if i < block_size // 2 else 1
            px[h, j + 1] = px[h, j] + weight[i] * x[xb + i]
            px[1 - h, j + 1] = px[1 - h, j]
            pw[h, j + 1] = pw[h, j] + weight[i]
            pw[1 - h, j + 1] = pw[1 - h, j]
        txs0 = px[0, block_size]
        txs1 = px[1, block_size]
        tws0 = pw[0, block_size]
        tws1 = pw[1, block_size]
        tp0 = txs0 * p2
        tp1 = txs1 * p2
        tm0 = txs0 * m2
        tm1 = txs1 * m2
        wp0 = tws0 * p2 * p2
        wp1 = tws1 * p2 * p2
        wm0 = tws0 * m2 * m2
        wm1 = tws1 * m2 * m2
        for i1 in range(block_size + 1):
            for i2 in range(i1, block_size + 1):
                sx0 = px[0, i1] + px[0, i2]
                sx1 = px[1, i1] + px[1, i2]
                qx_p0 = tp0 - sx0
                qx_m0 = tm0 - sx0
                qx_p1 = tp1 - sx1
                qx_m1 = tm1 - sx1
                q2_p0 = wp0 + pw[0, i1] * cp1 + pw[0, i2] * cp2
                q2_m0 = wm0 + pw[0, i1] * cm1 + pw[0, i2] * cm2
                q2_p1 = wp1 + pw[1, i1] * cp1 + pw[1, i2] * cp2
                q2_m1 = wm1 + pw[1, i1] * cm1 + pw[1, i2] * cm2
                # k = 0..3 in order: (+,+), (+,-), (-,+), (-,-)
                sqx = qx_p0 + qx_p1
                sq2 = q2_p0 + q2_p1
                if sq2 > F0 and sqx * sqx > best_score * sq2:
                    scale = sqx / sq2
                    best_score = scale * sqx
                    besti1 = i1
                    besti2 = i2
                    best_k = 0
                sqx = qx_p0 + qx_m1
                sq2 = q2_p0 + q2_m1
                if sq2 > F0 and sqx * sqx > best_score * sq2:
                    scale = sqx / sq2
                    best_score = scale * sqx
                    besti1 = i1
                    besti2 = i2
                    best_k = 1
                sqx = qx_m0 + qx_p1
                sq2 = q2_m0 + q2_p1
                if sq2 > F0 and sqx * sqx > best_score * sq2:
                    scale = sqx / sq2
                    best_score = scale * sqx
                    besti1 = i1
                    besti2 = i2
                    best_k = 2
                sqx = qx_m0 + qx_m1
                sq2 = q2_m0 + q2_m1
                if sq2 > F0 and sqx * sqx > best_score * sq2:
                    scale = sqx / sq2
                    best_score = scale * sqx
                    besti1 = i1
                    besti2 = i2
                    best_k = 3
        if besti1 < 0 or besti2 < 0 or best_k < 0:
            scales[ib] = F0
            shifts[ib] = 0
            continue
        for j in range(besti1):
            L[idx[j]] = 0
        for j in range(besti1, besti2):
            L[idx[j]] = 1
        for j in range(besti2, block_size):
            L[idx[j]] = 2
        if scale < F0:
            for j in range(block_size):
                L[j] = 2 - L[j]
            scale = -scale
            best_k = 3 - best_k  # 0 <-> 3, 1 <-> 2
        all_on_grid = True
        for k in range(block_size // 8):
            if k == 0:
                xx = x_p if best_k < 2 else x_m
            else:
                xx = x_p if best_k % 2 == 0 else x_m
            u = 0
            for j in range(8):
                u |= np.int64(L[8 * k + j]) << (2 * j)
            grid_index = np.int64(kmap[u])
            if grid_index < 0:
                all_on_grid = False
                grid_index = _find_best_neighbour2(neighbours, -grid_index - 1, grid_l, x, xb + 8 * k,
                                                   weight, 8 * k, scale, xx, L, 8 * k, cost)
            index[k] = grid_index
        if not all_on_grid:
            sumqx_f = F0
            sumq2_f = F0
            for k in range(block_size // 8):
                if k == 0:
                    xx = x_p if best_k < 2 else x_m
                else:
                    xx = x_p if best_k % 2 == 0 else x_m
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[grid_l[index[k], j]]
                    sumqx_f += w * q * x[xb + 8 * k + j]
                    sumq2_f += w * q * q
            if sumqx_f > F0 and sumq2_f > F0:
                scale = sumqx_f / sumq2_f
        y[yo + 2 * ib] = index[0] & 255
        y[yo + 2 * ib + 1] = index[1] & 255
        y[yo + 32 + ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
        scales[ib] = scale
        shifts[ib] = best_k
        max_scale = max_scale if max_scale > scale else scale

    if max_scale == F0:
        return
    sc0 = 0
    sc1 = 0
    sc2 = 0
    sc3 = 0
    d = max_scale / F15
    id = F1 / d
    sumqx_f = F0
    sumq2_f = F0
    for ib in range(QK_K // block_size):
        l = nearest_int(HALF * (id * scales[ib] - F1))
        l = max(0, min(7, l))
        v = l << (3 * (ib % 4))
        if ib // 4 == 0:
            sc0 |= v
        elif ib // 4 == 1:
            sc1 |= v
        elif ib // 4 == 2:
            sc2 |= v
        else:
            sc3 |= v
        s = shifts[ib]
        qh = np.int64(y[yo + 32 + ib]) | (0x80 if s == 1 else 0x08 if s == 2 else 0x88 if s == 3 else 0)
        y[yo + 32 + ib] = qh
        xb = xo + block_size * ib
        if has_qw:
            for i in range(block_size):
                weight[i] = qw[block_size * ib + i] * np.sqrt(sigma2 + x[xb + i] * x[xb + i])
        else:
            for i in range(block_size):
                weight[i] = x[xb + i] * x[xb + i]
        ql = f32(2 * l + 1)
        for k in range(block_size // 8):
            if k == 0:
                xx = x_p if s < 2 else x_m
            else:
                xx = x_p if s % 2 == 0 else x_m
            g = np.int64(y[yo + 2 * ib + k]) + ((qh << (8 - 4 * k)) & 0x700)
            for j in range(8):
                w = weight[8 * k + j]
                q = xx[grid_l[g, j]] * ql
                sumqx_f += w * q * x[xb + 8 * k + j]
                sumq2_f += w * q * q
    if sumq2_f > F0:
        d = sumqx_f / sumq2_f
    s16 = np.int64(fp32_to_fp16(d * IQ1M_FUDGE))
    sc0 |= (s16 & 0x000F) << 12
    sc1 |= (s16 & 0x00F0) << 8
    sc2 |= (s16 & 0x0F00) << 4
    sc3 |= s16 & 0xF000
    so = yo + 48
    y[so + 0] = sc0 & 255
    y[so + 1] = sc0 >> 8
    y[so + 2] = sc1 & 255
    y[so + 3] = sc1 >> 8
    y[so + 4] = sc2 & 255
    y[so + 5] = sc2 >> 8
    y[so + 6] = sc3 & 255
    y[so + 7] = sc3 >> 8


@njit(cache=True, nogil=True, parallel=True)
def _quantize_iq1_m_rows(x2, qw, has_qw, grid_l, kmap, neighbours):
    nrows, n = x2.shape
    nb = n // QK_K
    x = x2.reshape(-1)
    out = np.zeros((nrows, nb * IQ1M_BLOCK_BYTES), np.uint8)
    x_p = np.array([-F1 + IQ1S_DELTA, IQ1S_DELTA, F1 + IQ1S_DELTA], np.float32)  # IQ1M_DELTA == IQ1S_DELTA
    x_m = np.array([-F1 - IQ1S_DELTA, -IQ1S_DELTA, F1 - IQ1S_DELTA], np.float32)
    # cp1, cp2, cm1, cm2 of the C: x_p[0]^2 - x_p[1]^2, x_p[1]^2 - x_p[2]^2, same for x_m
    cq = np.array([x_p[0] * x_p[0] - x_p[1] * x_p[1], x_p[1] * x_p[1] - x_p[2] * x_p[2],
                   x_m[0] * x_m[0] - x_m[1] * x_m[1], x_m[1] * x_m[1] - x_m[2] * x_m[2]], np.float32)
    for r in prange(nrows):
        scales = np.empty(QK_K // IQ1M_BLOCK_SIZE, np.float32)
        weight = np.empty(IQ1M_BLOCK_SIZE, np.float32)
        xs = np.empty(IQ1M_BLOCK_SIZE, np.float32)
        idx = np.empty(IQ1M_BLOCK_SIZE, np.int64)
        L = np.empty(IQ1M_BLOCK_SIZE, np.int8)
        index = np.empty(IQ1M_BLOCK_SIZE // 8, np.int64)
        shifts = np.empty(QK_K // IQ1M_BLOCK_SIZE, np.int64)
        px = np.empty((2, IQ1M_BLOCK_SIZE + 1), np.float32)
        pw = np.empty((2, IQ1M_BLOCK_SIZE + 1), np.float32)
        cost = np.empty((8, 3), np.float32)
        row = out[r]
        for ibl in range(nb):
            _quantize_iq1_m_block(x, r * n + ibl * QK_K, qw[ibl * QK_K:(ibl + 1) * QK_K], has_qw, row,
                                  ibl * IQ1M_BLOCK_BYTES, grid_l, kmap, neighbours, x_p, x_m,
                                  scales, weight, xs, idx, L, index, shifts, px, pw, cost, cq)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _dequantize_iq1_m_rows(blob, n, grid_l):
    # dequantize_row_iq1_m: the fp16 super-scale is reassembled from the top nibbles of the scales
    nrows = blob.shape[0]
    nb = n // QK_K
    y = np.empty((nrows, n), np.float32)
    for r in prange(nrows):
        for i in range(nb):
            bo = i * IQ1M_BLOCK_BYTES
            sc = np.empty(4, np.int64)
            for t in range(4):
                sc[t] = np.int64(blob[r, bo + 48 + 2 * t]) | (np.int64(blob[r, bo + 49 + 2 * t]) << 8)
            s16 = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000)
            d = fp16_to_fp32(np.uint16(s16))
            for ib in range(QK_K // 32):
                dl1 = d * f32(2 * ((sc[ib // 2] >> (6 * (ib % 2) + 0)) & 7) + 1)
                dl2 = d * f32(2 * ((sc[ib // 2] >> (6 * (ib % 2) + 3)) & 7) + 1)
                qh0 = np.int64(blob[r, bo + 32 + 2 * ib])
                qh1 = np.int64(blob[r, bo + 33 + 2 * ib])
                for l in range(4):
                    qh = qh0 if l < 2 else qh1
                    shift = 8 if l % 2 == 0 else 4
                    g = np.int64(blob[r, bo + 4 * ib + l]) | ((qh << shift) & 0x700)
                    delta = -IQ1S_DELTA if qh & (0x08 if l % 2 == 0 else 0x80) else IQ1S_DELTA
                    dl = dl1 if l < 2 else dl2
                    for j in range(8):
                        y[r, i * QK_K + 32 * ib + 8 * l + j] = dl * (f32(np.int64(grid_l[g, j]) - 1) + delta)
    return y


def quantize_iq1_m(rows, imatrix=None):
    grid_l, kmap, neighbours = iq1_tables()
    has_qw = imatrix is not None
    qw = imatrix if has_qw else np.ones(rows.shape[1], np.float32)  # unused without an imatrix
    with np.errstate(over="ignore"):  # -FLT_MAX * sumq2 may overflow to -inf, as in the C (no-JIT runs warn)
        return _quantize_iq1_m_rows(rows, qw, has_qw, grid_l, kmap, neighbours)


def dequantize_iq1_m(blob, n_per_row):
    return _dequantize_iq1_m_rows(blob, n_per_row, iq1_tables()[0])


KERNELS = [
    Kernel(T.IQ1_M, quantize_iq1_m, dequantize_iq1_m),
]
