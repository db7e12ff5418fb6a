"""IQ2_XXS, IQ2_XS, IQ2_S: the 2-bit grid quants (ggml-quants.c), on the grid search and the
dequantizers of kernels/iquants_common.py (its docstring says how the search works).

IQ2_XXS: 256 weights per 66-byte block (d: fp16; qs: 8 x (4 grid bytes, uint32 of 4x7 sign bits + 4-bit scale))
IQ2_XS: 256 weights per 74-byte block (d: fp16; qs: 32 x uint16 = 9-bit grid index | 7 sign bits << 9; scales: 8)
IQ2_S: 256 weights per 82-byte block (d: fp16; qs: 32 grid low bytes + 32 sign bytes; qh: 8; scales: 8)

ggml_quantize_chunk always runs quantize_iq2_*: IQ2_XXS and IQ2_XS assert an imatrix; IQ2_S takes
NULL and then weighs by sigma2/4 + x^2.
"""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .iquants_common import (
    QK_K,
    _NO_WEIGHTS,
    _ONE,
    _QUARTER,
    _ZERO,
    _dequantizer,
    _fan,
    _grid_index,
    _group,
    _group_max,
    _needs,
    _put_fp16,
    _put_u32,
    _scale_nibble,
    _search_scratch,
    _signs_all,
    _signs_even,
    _sum_tables,
    _sum_x2,
    _sums,
    _tables,
)
from .solvers import make_qp_quants

f32 = np.float32

_TENTH = f32(0.1)
GROUP_MAX_EPS = f32(1e-15)
GROUP_MAX_EPS_IQ2_S = f32(1e-8)
_D_IQ2_S = f32(0.9875)   # fudge factor on the stored super-block scale


# ---------------------------------------------------------------- IQ2_XXS

# IQ2_XXS: 256 weights per 66-byte block (d: fp16; qs: 8 x (4 grid bytes, uint32 of 4x7 sign bits + 4-bit scale));
# mirrors quantize_row_iq2_xxs_impl.
@njit(cache=True, nogil=True, error_model="numpy")
def _iq2_xxs_row(x, qw, y, levels, kmap, kneighbors):
    kMaxQ = 3
    nbl = x.size // QK_K
    scales = np.empty(QK_K // 32, dtype=np.float32)
    weight = np.empty(32, dtype=np.float32)
    xval = np.empty(32, dtype=np.float32)
    L = np.zeros(32, dtype=np.int64)
    Lqp = np.zeros(32, dtype=np.int64)
    on_grid = np.empty(4, dtype=np.bool_)
    block_signs = np.empty(4, dtype=np.int64)
    q2 = np.empty(2 * (QK_K // 32), dtype=np.int64)
    s = _search_scratch(levels, kmap, kneighbors)
    for ibl in range(nbl):
        yo = 66 * ibl
        xo = QK_K * ibl
        q2[:] = 0
        max_scale = _ZERO
        sigma2 = _sum_x2(x, xo) / f32(QK_K)
        for ib in range(QK_K // 32):
            o = xo + 32 * ib
            for i in range(32):
                weight[i] = qw[o + i] * np.sqrt(sigma2 + x[o + i] * x[o + i])
            for i in range(32):
                s.waux[i] = np.sqrt(weight[i])
            for k in range(4):
                block_signs[k] = _signs_even(x, o, weight, xval, k)
            if _group_max(xval, 32) < GROUP_MAX_EPS:
                scales[ib] = _ZERO
                continue
            scale = make_qp_quants(32, kMaxQ + 1, xval, Lqp, weight)
            for i in range(32):
                L[i] = ((Lqp[i] + 128) & 0xFF) - 128  # the C reuses L (int8_t) as make_qp_quants' uint8_t output
            eff_max = scale * f32(kMaxQ)
            if eff_max <= _ZERO:
                scales[ib] = _ZERO
                continue
            _sum_tables(weight, xval, 32, s)
            scale = _fan(-6, 6, _TENTH, kMaxQ, eff_max, scale, xval, 32, L, on_grid, s)
            if scale > _ZERO:
                # every group again at the chosen scale (an on-grid group keeps its levels)
                id_ = _ONE / scale
                for k in range(4):
                    _group(k, xval, id_, scale, L, s)
                sumqx, sumq2 = _sums(L, 32, s)
                if sumq2 > _ZERO:
                    scale = sumqx / sumq2
            if scale < _ZERO:
                scale = -scale
                for k in range(4):
                    block_signs[k] = (~block_signs[k]) & 127
            for k in range(4):
                gi = _grid_index(L, 8 * k, 8, 2, kmap)
                q2[2 * ib] |= gi << (8 * k)
                q2[2 * ib + 1] |= block_signs[k] << (7 * k)
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == _ZERO:
            for j in range(66):
                y[yo + j] = 0
            continue
        d = max_scale / f32(31)
        _put_fp16(y, yo, d)
        id_ = _ONE / d
        for ib in range(QK_K // 32):
            q2[2 * ib + 1] |= _scale_nibble(id_, scales[ib]) << 28
        for j in range(2 * (QK_K // 32)):
            _put_u32(y, yo + 2 + 4 * j, q2[j])


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _iq2_xxs_rows(x, qw, levels, kmap, kneighbors):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * 66), dtype=np.uint8)
    for r in prange(nrows):
        _iq2_xxs_row(x[r], qw, y[r], levels, kmap, kneighbors)
    return y


# ---------------------------------------------------------------- IQ2_XS and IQ2_S (16-weight sub-blocks)

# IQ2_XS: 256 weights per 74-byte block (d: fp16; qs: 32 x uint16 = 9-bit grid index | 7 sign bits << 9;
# scales: 8 bytes, two 4-bit scales each); mirrors quantize_row_iq2_xs_impl.
# IQ2_S: 256 weights per 82-byte block (d: fp16; qs: 32 grid low bytes + 32 sign bytes; qh: 8 bytes of
# 2-bit grid high parts; scales: 8); mirrors quantize_row_iq2_s_impl. The two share the search.
@njit(cache=True, nogil=True, error_model="numpy")
def _iq2_xs_s_row(x, qw, has_qw, is_s, y, levels, kmap, kneighbors):
    kMaxQ = 3
    bs = 82 if is_s else 74
    nbl = x.size // QK_K
    scales = np.empty(QK_K // 16, dtype=np.float32)
    weight = np.empty(16, dtype=np.float32)
    xval = np.empty(16, dtype=np.float32)
    L = np.zeros(16, dtype=np.int64)
    on_grid = np.empty(2, dtype=np.bool_)
    block_signs = np.empty(2, dtype=np.int64)
    s = _search_scratch(levels, kmap, kneighbors)
    eps = GROUP_MAX_EPS_IQ2_S if is_s else GROUP_MAX_EPS
    for ibl in range(nbl):
        yo = bs * ibl
        xo = QK_K * ibl
        for j in range(bs):
            y[yo + j] = 0
        max_scale = _ZERO
        sumx2 = _sum_x2(x, xo)
        sigma2 = (f32(2) * sumx2 if is_s else sumx2) / f32(QK_K)
        for ib in range(QK_K // 16):
            o = xo + 16 * ib
            if has_qw:
                for i in range(16):
                    weight[i] = qw[o + i] * np.sqrt(sigma2 + x[o + i] * x[o + i])
            else:
                for i in range(16):
                    weight[i] = _QUARTER * sigma2 + x[o + i] * x[o + i]
            for i in range(16):
                s.waux[i] = np.sqrt(weight[i])
            for k in range(2):
                block_signs[k] = _signs_all(x, o, xval, k) if is_s else _signs_even(x, o, weight, xval, k)
            max_ = _group_max(xval, 16)
            L[:] = 0
            if max_ < eps:
                scales[ib] = _ZERO
                continue
            _sum_tables(weight, xval, 16, s)
            on_grid[:] = True
            scale = _fan(-9, 9, _TENTH, kMaxQ, max_, max_ / f32(2 * kMaxQ - 1), xval, 16, L, on_grid, s)
            if not (on_grid[0] and on_grid[1]) and scale > _ZERO:
                id_ = _ONE / scale
                for k in range(2):
                    if not on_grid[k]:
                        _group(k, xval, id_, scale, L, s)
                sumqx, sumq2 = _sums(L, 16, s)
                if sumq2 > _ZERO:
                    scale = sumqx / sumq2
            if scale < _ZERO:
                scale = -scale
                for k in range(2):
                    block_signs[k] = (~block_signs[k]) & (0xFF if is_s else 127)
            for k in range(2):
                gi = _grid_index(L, 8 * k, 8, 2, kmap)
                if is_s:
                    i8 = 2 * ib + k
                    y[yo + 2 + i8] = gi & 255
                    y[yo + 66 + i8 // 4] |= (gi >> 8) << (2 * (i8 % 4))
                    y[yo + 2 + QK_K // 8 + i8] = block_signs[k]
                else:
                    q = gi | (block_signs[k] << 9)
                    y[yo + 2 + 2 * (2 * ib + k)] = q & 0xFF
                    y[yo + 3 + 2 * (2 * ib + k)] = q >> 8
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == _ZERO:
            if not is_s:  # IQ2_XS copies qs from scratch only now; IQ2_S wrote them in place and keeps them
                for j in range(bs):
                    y[yo + j] = 0
            continue
        d = max_scale / f32(31)
        _put_fp16(y, yo, d * _D_IQ2_S if is_s else d)
        id_ = _ONE / d
        so = yo + (74 if is_s else 66)
        for ib in range(QK_K // 16):
            l = _scale_nibble(id_, scales[ib])
            if ib % 2 == 0:
                y[so + ib // 2] = l
            else:
                y[so + ib // 2] |= l << 4


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _iq2_xs_s_rows(x, qw, has_qw, is_s, levels, kmap, kneighbors):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * (82 if is_s else 74)), dtype=np.uint8)
    for r in prange(nrows):
        _iq2_xs_s_row(x[r], qw, has_qw, is_s, y[r], levels, kmap, kneighbors)
    return y


# ---------------------------------------------------------------- public pairs


def quantize_iq2_xxs(x, imatrix=None):
    return _iq2_xxs_rows(x, _needs(T.IQ2_XXS, imatrix), *_tables(T.IQ2_XXS))


def quantize_iq2_xs(x, imatrix=None):
    return _iq2_xs_s_rows(x, _needs(T.IQ2_XS, imatrix), True, False, *_tables(T.IQ2_XS))


def quantize_iq2_s(x, imatrix=None):
    has = imatrix is not None
    return _iq2_xs_s_rows(x, imatrix if has else _NO_WEIGHTS, has, True, *_tables(T.IQ2_S))


KERNELS = [
    Kernel(T.IQ2_XXS, quantize_iq2_xxs, _dequantizer(T.IQ2_XXS, 0), needs_imatrix=True),
    Kernel(T.IQ2_XS, quantize_iq2_xs, _dequantizer(T.IQ2_XS, 1), needs_imatrix=True),
    Kernel(T.IQ2_S, quantize_iq2_s, _dequantizer(T.IQ2_S, 2)),
]
