"""IQ1_S: 256 weights per 50-byte block (d: fp16; qs: 32; qh: 8 x uint16), quantize_row_iq1_s_impl
and dequantize_row_iq1_s, on the grid tables and neighbour search of kernels/iq1_common.py.
"""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .common import fp16_to_fp32, fp32_to_fp16, nearest_int
from .iq1_common import (F0, F1, F2, F15, FLT_MAX, FQK_K, HALF, IQ1S_DELTA, QK_K, _find_best_neighbour2,
                         _stable_sort, iq1_tables)

f32 = np.float32

IQ1S_BLOCK_SIZE = 32
IQ1S_BLOCK_BYTES = 2 + QK_K // 8 + QK_K // 16  # 50
GROUP_MAX_EPS_IQ1_S = f32(1e-12)
IQ1S_FUDGE = f32(1.125)


# ---------------------------------------------------------------- IQ1_S

# IQ1_S: 256 weights per 50-byte block (d: fp16; qs: 32 low grid-index bytes; qh: 8 x uint16 with
# 3 index bits per group of 8, 3-bit scale, delta sign bit); mirrors quantize_row_iq1_s_impl.
@njit(cache=True, nogil=True)
def _quantize_iq1_s_block(x, xo, qw, y, yo, grid_l, kmap, neighbours, x_p, x_m,
                          scales, weight, sumx, sumw, xs, idx, L, index, shifts, qh, cost):
    block_size = IQ1S_BLOCK_SIZE
    max_scale = F0
    sumx2 = F0
    for i in range(QK_K):
        sumx2 += x[xo + i] * x[xo + i]
    sigma2 = F2 * sumx2 / FQK_K
    for ib in range(QK_K // block_size):
        xb = xo + block_size * ib
        qh[ib] = 0
        for i in range(block_size):
            weight[i] = qw[block_size * ib + i] * np.sqrt(sigma2 + x[xb + i] * x[xb + i])
        amax = abs(x[xb])
        for i in range(1, block_size):
            a = abs(x[xb + i])
            amax = amax if amax > a else a
        if amax < GROUP_MAX_EPS_IQ1_S:
            scales[ib] = F0
            shifts[ib] = 1
            continue
        # Exhaustive search of the two split points over the values sorted ascending.
        for j in range(block_size):
            xs[j] = x[xb + j]
            idx[j] = j
        _stable_sort(xs, idx, block_size)
        sumx[0] = F0
        sumw[0] = F0
        for j in range(block_size):
            i = idx[j]
            sumx[j + 1] = sumx[j] + weight[i] * x[xb + i]
            sumw[j + 1] = sumw[j] + weight[i]
        best_score = -FLT_MAX
        scale = amax
        besti1 = -1
        besti2 = -1
        best_shift = 0
        # the C's expressions, with the terms that do not depend on i2 hoisted (same operations, same order)
        xp0, xp1, xp2 = x_p[0], x_p[1], x_p[2]
        xm0, xm1, xm2 = x_m[0], x_m[1], x_m[2]
        sx_end = sumx[block_size]
        sw_end = sumw[block_size]
        for i1 in range(block_size + 1):
            dx1 = sumx[i1] - sumx[0]
            dw1 = sumw[i1] - sumw[0]
            ax_p = dx1 * xp0
            aw_p = dw1 * xp0 * xp0
            ax_m = dx1 * xm0
            aw_m = dw1 * xm0 * xm0
            for i2 in range(i1, block_size + 1):
                dx2 = sumx[i2] - sumx[i1]
                dw2 = sumw[i2] - sumw[i1]
                dx3 = sx_end - sumx[i2]
                dw3 = sw_end - sumw[i2]
                sumqx = ax_p + dx2 * xp1 + dx3 * xp2
                sumq2 = aw_p + dw2 * xp1 * xp1 + dw3 * xp2 * xp2
                if sumq2 > F0 and sumqx * sumqx > best_score * sumq2:
                    scale = sumqx / sumq2
                    best_score = scale * sumqx
                    besti1 = i1
                    besti2 = i2
                    best_shift = 1
                sumqx = ax_m + dx2 * xm1 + dx3 * xm2
                sumq2 = aw_m + dw2 * xm1 * xm1 + dw3 * xm2 * xm2
                if sumq2 > F0 and sumqx * sumqx > best_score * sumq2:
                    scale = sumqx / sumq2
                    best_score = scale * sumqx
                    besti1 = i1
                    besti2 = i2
                    best_shift = -1
        if besti1 < 0 or besti2 < 0 or best_shift == 0:
            scales[ib] = F0
            shifts[ib] = 1
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
            best_shift = -best_shift
        all_on_grid = True
        xx = x_p if best_shift == 1 else x_m
        for k in range(block_size // 8):
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
            sumqx = F0
            sumq2 = F0
            for k in range(block_size // 8):
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[grid_l[index[k], j]]
                    sumqx += w * q * x[xb + 8 * k + j]
                    sumq2 += w * q * q
            if sumqx > F0 and sumq2 > F0:
                scale = sumqx / sumq2
        h = 0
        for k in range(block_size // 8):
            y[yo + 2 + (block_size // 8) * ib + k] = index[k] & 255
            h |= (index[k] >> 8) << (3 * k)
        qh[ib] = h
        scales[ib] = scale
        shifts[ib] = best_shift
        max_scale = max_scale if max_scale > scale else scale

    if max_scale != F0:
        d = max_scale / F15
        dh = fp32_to_fp16(d * IQ1S_FUDGE)
        y[yo] = dh & 255
        y[yo + 1] = dh >> 8
        id = F1 / d
        for ib in range(QK_K // block_size):
            l = nearest_int(HALF * (id * scales[ib] - F1))
            l = max(0, min(7, l))
            if shifts[ib] == -1:
                l |= 8
            qh[ib] |= l << 12
    for ib in range(QK_K // block_size):
        y[yo + 34 + 2 * ib] = qh[ib] & 255
        y[yo + 35 + 2 * ib] = (qh[ib] >> 8) & 255


@njit(cache=True, nogil=True, parallel=True)
def _quantize_iq1_s_rows(x2, qw, grid_l, kmap, neighbours):
    nrows, n = x2.shape
    nb = n // QK_K
    x = x2.reshape(-1)
    out = np.zeros((nrows, nb * IQ1S_BLOCK_BYTES), np.uint8)
    x_p = np.array([-F1 + IQ1S_DELTA, IQ1S_DELTA, F1 + IQ1S_DELTA], np.float32)
    x_m = np.array([-F1 - IQ1S_DELTA, -IQ1S_DELTA, F1 - IQ1S_DELTA], np.float32)
    for r in prange(nrows):
        scales = np.empty(QK_K // IQ1S_BLOCK_SIZE, np.float32)
        weight = np.empty(IQ1S_BLOCK_SIZE, np.float32)
        sumx = np.empty(IQ1S_BLOCK_SIZE + 1, np.float32)
        sumw = np.empty(IQ1S_BLOCK_SIZE + 1, np.float32)
        xs = np.empty(IQ1S_BLOCK_SIZE, np.float32)
        idx = np.empty(IQ1S_BLOCK_SIZE, np.int64)
        L = np.empty(IQ1S_BLOCK_SIZE, np.int8)
        index = np.empty(IQ1S_BLOCK_SIZE // 8, np.int64)
        shifts = np.empty(QK_K // IQ1S_BLOCK_SIZE, np.int64)
        qh = np.empty(QK_K // IQ1S_BLOCK_SIZE, np.int64)
        cost = np.empty((8, 3), np.float32)
        row = out[r]
        for ibl in range(nb):
            _quantize_iq1_s_block(x, r * n + ibl * QK_K, qw[ibl * QK_K:(ibl + 1) * QK_K], row, ibl * IQ1S_BLOCK_BYTES,
                                  grid_l, kmap, neighbours, x_p, x_m,
                                  scales, weight, sumx, sumw, xs, idx, L, index, shifts, qh, cost)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _dequantize_iq1_s_rows(blob, n, grid_l):
    # dequantize_row_iq1_s: y = d*(2*scale+1) * (grid + delta)
    nrows = blob.shape[0]
    nb = n // QK_K
    y = np.empty((nrows, n), np.float32)
    for r in prange(nrows):
        for i in range(nb):
            bo = i * IQ1S_BLOCK_BYTES
            d = fp16_to_fp32(np.uint16(blob[r, bo]) | (np.uint16(blob[r, bo + 1]) << np.uint16(8)))
            for ib in range(QK_K // 32):
                qh = np.int64(blob[r, bo + 34 + 2 * ib]) | (np.int64(blob[r, bo + 35 + 2 * ib]) << 8)
                dl = d * f32(2 * ((qh >> 12) & 7) + 1)
                delta = -IQ1S_DELTA if qh & 0x8000 else IQ1S_DELTA
                for l in range(4):
                    g = np.int64(blob[r, bo + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                    for j in range(8):
                        y[r, i * QK_K + 32 * ib + 8 * l + j] = dl * (f32(np.int64(grid_l[g, j]) - 1) + delta)
    return y


def quantize_iq1_s(rows, imatrix=None):
    if imatrix is None:
        raise ValueError("IQ1_S needs an importance matrix (ggml_quantize_chunk asserts imatrix != NULL)")
    grid_l, kmap, neighbours = iq1_tables()
    with np.errstate(over="ignore"):  # -FLT_MAX * sumq2 may overflow to -inf, as in the C (no-JIT runs warn)
        return _quantize_iq1_s_rows(rows, imatrix, grid_l, kmap, neighbours)


def dequantize_iq1_s(blob, n_per_row):
    return _dequantize_iq1_s_rows(blob, n_per_row, iq1_tables()[0])


KERNELS = [
    Kernel(T.IQ1_S, quantize_iq1_s, dequantize_iq1_s, needs_imatrix=True),
]
