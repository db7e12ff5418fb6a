"""IQ3_XXS and IQ3_S: the 3-bit grid quants (ggml-quants.c), on the grid search and the
dequantizers of kernels/iquants_common.py (its docstring says how the search works).

IQ3_XXS: 256 weights per 98-byte block (d: fp16; qs: 64 grid bytes, then 8 x uint32 of 4x7 sign bits + 4-bit scale)
IQ3_S: 256 weights per 110-byte block (d: fp16; qs: 64 grid low bytes; qh: 8; signs: 32; scales: 4)

ggml_quantize_chunk always runs quantize_iq3_*: both take NULL for no imatrix and then weigh by x^2.
"""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .iquants_common import (
    QK_K,
    _NO_WEIGHTS,
    _ONE,
    _ZERO,
    _dequantizer,
    _fan,
    _grid_index,
    _group,
    _group_max,
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

f32 = np.float32

_FIFTH = f32(0.2)
GROUP_MAX_EPS_IQ3_XXS = f32(1e-8)
_D_IQ3_XXS = f32(1.0125)  # fudge factors on the stored super-block scale
_D_IQ3_S = f32(1.033)


# ---------------------------------------------------------------- IQ3_XXS and IQ3_S (32-weight sub-blocks)

# IQ3_XXS: 256 weights per 98-byte block (d: fp16; qs: 64 grid bytes, then 8 x uint32 of 4x7 sign bits
# + 4-bit scale); mirrors quantize_row_iq3_xxs_impl (grid_size 256).
# IQ3_S: 256 weights per 110-byte block (d: fp16; qs: 64 grid low bytes; qh: 8 bytes of grid high bits;
# signs: 32; scales: 4 bytes, two 4-bit scales each); mirrors quantize_row_iq3_s_impl (block_size 32).
@njit(cache=True, nogil=True, error_model="numpy")
def _iq3_row(x, qw, has_qw, is_s, y, levels, kmap, kneighbors):
    kMaxQ = 8
    bs = 110 if is_s else 98
    nbl = x.size // QK_K
    scales = np.empty(QK_K // 32, dtype=np.float32)
    weight = np.empty(32, dtype=np.float32)
    xval = np.empty(32, dtype=np.float32)
    L = np.zeros(32, dtype=np.int64)
    on_grid = np.empty(8, dtype=np.bool_)
    block_signs = np.empty(4, dtype=np.int64)
    sas = np.empty(QK_K // 32, dtype=np.int64)  # IQ3_XXS scales_and_signs
    s = _search_scratch(levels, kmap, kneighbors)
    for ibl in range(nbl):
        yo = bs * ibl
        xo = QK_K * ibl
        for j in range(bs):
            y[yo + j] = 0
        sas[:] = 0
        qs = yo + 2   # IQ3_S: the C advances its qs and signs pointers only past sub-blocks it
        sg = yo + 74  # quantizes, so a sub-block skipped as all zero leaves its slot to the next one
        max_scale = _ZERO
        sigma2 = f32(2) * _sum_x2(x, xo) / f32(QK_K)
        for ib in range(QK_K // 32):
            o = xo + 32 * ib
            if has_qw:
                for i in range(32):
                    weight[i] = qw[o + i] * np.sqrt(sigma2 + x[o + i] * x[o + i])
            else:
                for i in range(32):
                    weight[i] = x[o + i] * x[o + i]
            for i in range(32):
                s.waux[i] = np.sqrt(weight[i])
            for k in range(4):
                block_signs[k] = _signs_all(x, o, xval, k) if is_s else _signs_even(x, o, weight, xval, k)
            max_ = _group_max(xval, 32)
            L[:] = 0
            if (max_ == _ZERO) if is_s else (max_ < GROUP_MAX_EPS_IQ3_XXS):
                scales[ib] = _ZERO
                continue
            _sum_tables(weight, xval, 32, s)
            on_grid[:] = not is_s  # IQ3_S starts from "off the grid": its final pass runs unless a trial won
            scale = _fan(-9 if is_s else -15, 9 if is_s else 15, _FIFTH, kMaxQ, max_,
                         max_ / f32(2 * kMaxQ - 1), xval, 32, L, on_grid, s)
            n_not_ongrid = 0
            for k in range(8):
                if not on_grid[k]:
                    n_not_ongrid += 1
            if n_not_ongrid > 0 and scale > _ZERO:
                id_ = _ONE / scale
                for k in range(8):
                    if is_s or not on_grid[k]:  # IQ3_S redoes every group (the C's `continue` is commented out)
                        _group(k, xval, id_, scale, L, s)
                sumqx, sumq2 = _sums(L, 32, s)
                if sumq2 > _ZERO:
                    scale = sumqx / sumq2
            if scale < _ZERO:
                scale = -scale
                for k in range(4):
                    block_signs[k] = (~block_signs[k]) & (0xFF if is_s else 127)
            if is_s:
                for k in range(8):
                    gi = _grid_index(L, 4 * k, 4, 3, kmap)
                    y[qs + k] = gi & 255
                    y[yo + 66 + ib] |= (gi >> 8) << k
                qs += 8
                for k in range(4):
                    y[sg + k] = block_signs[k]
                sg += 4
            else:
                for k in range(8):
                    y[yo + 2 + 8 * ib + k] = _grid_index(L, 4 * k, 4, 3, kmap)
                sas[ib] = block_signs[0] | (block_signs[1] << 7) | (block_signs[2] << 14) | (block_signs[3] << 21)
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == _ZERO:
            if not is_s:  # IQ3_XXS clears its quants; IQ3_S keeps what it wrote in place
                for j in range(bs):
                    y[yo + j] = 0
            continue
        d = max_scale / f32(31)
        id_ = _ONE / d
        if is_s:
            _put_fp16(y, yo, d * _D_IQ3_S)
            for ib in range(0, QK_K // 32, 2):
                y[yo + 106 + ib // 2] = _scale_nibble(id_, scales[ib]) | (_scale_nibble(id_, scales[ib + 1]) << 4)
        else:
            _put_fp16(y, yo, d * _D_IQ3_XXS)
            for ib in range(QK_K // 32):
                _put_u32(y, yo + 2 + QK_K // 4 + 4 * ib, sas[ib] | (_scale_nibble(id_, scales[ib]) << 28))


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _iq3_rows(x, qw, has_qw, is_s, levels, kmap, kneighbors):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * (110 if is_s else 98)), dtype=np.uint8)
    for r in prange(nrows):
        _iq3_row(x[r], qw, has_qw, is_s, y[r], levels, kmap, kneighbors)
    return y


# ---------------------------------------------------------------- public pairs


def quantize_iq3_xxs(x, imatrix=None):
    has = imatrix is not None
    return _iq3_rows(x, imatrix if has else _NO_WEIGHTS, has, False, *_tables(T.IQ3_XXS))


def quantize_iq3_s(x, imatrix=None):
    has = imatrix is not None
    return _iq3_rows(x, imatrix if has else _NO_WEIGHTS, has, True, *_tables(T.IQ3_S))


KERNELS = [
    Kernel(T.IQ3_XXS, quantize_iq3_xxs, _dequantizer(T.IQ3_XXS, 3)),
    Kernel(T.IQ3_S, quantize_iq3_s, _dequantizer(T.IQ3_S, 4)),
]
