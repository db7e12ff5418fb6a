"""IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: the grid quants (ggml-quants.c).

Each 256-weight super-block is cut into groups of 8 (IQ2) or 4 (IQ3) magnitudes that must land on
a grid point; signs are stored apart (IQ2_XXS, IQ2_XS, IQ3_XXS keep an even number of minus signs
per 8, flipping the least important weight). The scale search tries a fan of scales, rounds each
group to levels, and when the rounded point is not on the grid picks the nearest of its listed
neighbours (kmap/kneighbors, built in iq_tables as llama.cpp builds them).

ggml_quantize_chunk always runs quantize_iq*: IQ2_XXS and IQ2_XS assert an imatrix, the others
take NULL and then weigh by x^2 (IQ3_*) or sigma2/4 + x^2 (IQ2_S).

Faster than the C, same bytes: the neighbour search stops summing a candidate's weighted distance
as soon as the partial sum reaches the best so far. Every term w*diff*diff is >= 0 (w is a
sqrtf), so float partial sums never decrease and such a candidate could not have won (C keeps
the first strict minimum).
"""

import numpy as np
from gguf import GGMLQuantizationType as T
from numba import njit, prange

from . import Kernel
from .common import fp16_to_fp32, fp32_to_fp16
from .iq_tables import ksigns as _ksigns_table
from .iq_tables import tables
from .solvers import nearest_int_fast as nearest_int

f32 = np.float32

QK_K = 256
_ZERO = f32(0.0)
_ONE = f32(1.0)
_HALF = f32(0.5)
_QUARTER = f32(0.25)
_TENTH = f32(0.1)
_FIFTH = f32(0.2)
_FLT_MAX = f32(3.4028234663852886e38)
GROUP_MAX_EPS = f32(1e-15)
GROUP_MAX_EPS_IQ3_XXS = f32(1e-8)
GROUP_MAX_EPS_IQ2_S = f32(1e-8)
_D_IQ2_S = f32(0.9875)   # fudge factors on the stored super-block scale
_D_IQ3_XXS = f32(1.0125)
_D_IQ3_S = f32(1.033)

_NO_WEIGHTS = np.zeros(0, dtype=np.float32)


# ---------------------------------------------------------------- shared pieces


@njit(cache=True, nogil=True, error_model="numpy")
def _put_fp16(y, o, f):
    h = fp32_to_fp16(f)
    y[o] = h & 0xFF
    y[o + 1] = h >> 8


@njit(cache=True, nogil=True, error_model="numpy")
def _get_fp16(y, o):
    return fp16_to_fp32(np.uint16(y[o]) | (np.uint16(y[o + 1]) << np.uint16(8)))


@njit(cache=True, nogil=True, error_model="numpy")
def _put_u32(y, o, v):
    y[o] = v & 0xFF
    y[o + 1] = (v >> 8) & 0xFF
    y[o + 2] = (v >> 16) & 0xFF
    y[o + 3] = (v >> 24) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _sum_x2(x, o):
    # sum of squares of one super-block, in float, in index order
    sumx2 = _ZERO
    for i in range(QK_K):
        sumx2 += x[o + i] * x[o + i]
    return sumx2


@njit(cache=True, nogil=True, error_model="numpy")
def _signs_even(x, o, weight, xval, k):
    """Magnitudes of the 8 weights x[o + 8k ...] into xval[8k ...]; if an odd number is negative,
    the least important one (smallest weight*x^2) keeps its sign. Returns the 7 stored sign bits."""
    nflip = 0
    s = 0
    for i in range(8):
        v = x[o + 8 * k + i]
        if v >= 0:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            nflip += 1
            s |= 1 << i
    if nflip % 2:
        imin = 0
        v = x[o + 8 * k]
        vmin = weight[8 * k] * v * v
        for i in range(1, 8):
            v = x[o + 8 * k + i]
            ax = weight[8 * k + i] * v * v
            if ax < vmin:
                vmin = ax
                imin = i
        xval[8 * k + imin] = -xval[8 * k + imin]
        s ^= 1 << imin
    return s & 127


@njit(cache=True, nogil=True, error_model="numpy")
def _signs_all(x, o, xval, k):
    """Magnitudes of x[o + 8k ...] into xval; returns all 8 sign bits (IQ2_S, IQ3_S)."""
    s = 0
    for i in range(8):
        v = x[o + 8 * k + i]
        if v >= 0:
            xval[8 * k + i] = v
        else:
            xval[8 * k + i] = -v
            s |= 1 << i
    return s


@njit(cache=True, nogil=True, error_model="numpy")
def _group_max(xval, n):
    m = xval[0]
    for i in range(1, n):
        m = m if m > xval[i] else xval[i]  # C's MAX macro
    return m


@njit(cache=True, nogil=True, error_model="numpy")
def _round_group(xval, o, n, id_, kmaxq, bits, L, lo):
    """Levels nearest_int(0.5*(id*x - 1)) clamped to [0, kMaxQ-1] into L[lo ...]; returns the packed word u."""
    u = 0
    for i in range(n):
        l = nearest_int(_HALF * (id_ * xval[o + i] - _ONE))
        l = max(0, min(kmaxq - 1, l))
        L[lo + i] = l
        u |= l << (bits * i)
    return u


@njit(cache=True, nogil=True, error_model="numpy")
def _best_neighbour(kneighbors, off, grid, levels, n, xval, xo, waux, scale, L, lo):
    """iq2_find_best_neighbour / iq3_find_best_neighbour over the list at kneighbors[off]:
    the first neighbour with the smallest sum of waux*(scale*q - x)^2; its levels go to L[lo ...]."""
    num = kneighbors[off]
    best_d2 = _FLT_MAX
    grid_index = -1
    for j in range(1, num + 1):
        idx = kneighbors[off + j]
        d2 = _ZERO
        for i in range(n):
            diff = scale * f32(grid[idx, i]) - xval[xo + i]
            d2 += waux[xo + i] * diff * diff
            if d2 >= best_d2:  # partial sums never decrease: cannot win (see module doc)
                break
        if d2 < best_d2:
            best_d2 = d2
            grid_index = idx
    if grid_index < 0:  # only with NaN or overflowing weights; the C aborts here
        grid_index = kneighbors[off + 1]
    for i in range(n):
        L[lo + i] = levels[grid_index, i]
    return grid_index


@njit(cache=True, nogil=True, error_model="numpy")
def _to_grid(xval, n_groups, n, id_, scale, kmaxq, bits, L, grid, levels, kmap, kneighbors, waux, on_grid):
    """Round every group at 1/id and move each off-grid one to its best neighbour (at `scale`),
    levels into L; on_grid[k] tells which groups were on the grid. The loop body of the scale fans."""
    for k in range(n_groups):
        u = _round_group(xval, n * k, n, id_, kmaxq, bits, L, n * k)
        gi = kmap[u]
        on_grid[k] = gi >= 0
        if gi < 0:
            _best_neighbour(kneighbors, -gi - 1, grid, levels, n, xval, n * k, waux, scale, L, n * k)


@njit(cache=True, nogil=True, error_model="numpy")
def _sums(weight, xval, L, m):
    # sumqx, sumq2 with q = 2*l + 1, in float, in index order
    sumqx = _ZERO
    sumq2 = _ZERO
    for i in range(m):
        w = weight[i]
        q = f32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(cache=True, nogil=True, error_model="numpy")
def _grid_index(L, lo, n, bits, kmap):
    u = 0
    for i in range(n):
        u |= np.int64(L[lo + i]) << (bits * i)
    gi = np.int64(kmap[u])
    return gi if gi >= 0 else np.int64(0)  # off the grid the C aborts ("Oops: found point ... not on grid")


@njit(cache=True, nogil=True, error_model="numpy")
def _make_qp_quants(n, nmax, x, L, quant_weights):
    """make_qp_quants, as IQ2_XXS calls it: x may hold one negative value per 8, so levels can be
    negative; L is the C's uint8_t array (a negative level wraps) while the sums use the int level."""
    max_ = _ZERO
    for i in range(n):
        max_ = max_ if max_ > x[i] else x[i]
    if max_ < GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return _ZERO
    fnmax = f32(nmax)
    iscale = fnmax / max_
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = _ONE / iscale
    best_mse = _ZERO
    for i in range(n):
        diff = x[i] - scale * f32(L[i])
        best_mse += quant_weights[i] * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (_TENTH * f32(is_) + fnmax) / max_
        scale_is = _ONE / iscale_is
        mse = _ZERO
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * f32(l)
            mse += quant_weights[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        w = quant_weights[i]
        sumlx += w * x[i] * f32(l)
        suml2 += w * f32(l) * f32(l)
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            fl = f32(L[i])
            slx = sumlx - w * x[i] * fl
            sl2 = suml2 - w * fl * fl
            if slx > _ZERO and sl2 > _ZERO:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != L[i]:
                    slx += w * x[i] * f32(new_l)
                    sl2 += w * f32(new_l) * f32(new_l)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > _ZERO else _ZERO


@njit(cache=True, nogil=True, error_model="numpy")
def _scale_nibble(id_, scale):
    l = np.int64(nearest_int(_HALF * (id_ * scale - _ONE)))
    return max(np.int64(0), min(np.int64(15), l))


# ---------------------------------------------------------------- IQ2_XXS

# IQ2_XXS: 256 weights per 66-byte block (d: fp16; qs: 8 x (4 grid bytes, uint32 of 4x7 sign bits + 4-bit scale));
# mirrors quantize_row_iq2_xxs_impl.
@njit(cache=True, nogil=True, error_model="numpy")
def _iq2_xxs_row(x, qw, y, grid, levels, kmap, kneighbors):
    kMaxQ = 3
    nbl = x.size // QK_K
    scales = np.empty(QK_K // 32, dtype=np.float32)
    weight = np.empty(32, dtype=np.float32)
    xval = np.empty(32, dtype=np.float32)
    waux = np.empty(32, dtype=np.float32)
    L = np.zeros(32, dtype=np.int64)
    Laux = np.zeros(32, dtype=np.int64)
    Lqp = np.zeros(32, dtype=np.int64)
    on_grid = np.empty(4, dtype=np.bool_)
    block_signs = np.empty(4, dtype=np.int64)
    q2 = np.empty(2 * (QK_K // 32), dtype=np.int64)
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
                waux[i] = np.sqrt(weight[i])
            for k in range(4):
                block_signs[k] = _signs_even(x, o, weight, xval, k)
            if _group_max(xval, 32) < GROUP_MAX_EPS:
                scales[ib] = _ZERO
                continue
            scale = _make_qp_quants(32, kMaxQ + 1, xval, Lqp, weight)
            for i in range(32):
                L[i] = ((Lqp[i] + 128) & 0xFF) - 128  # the C reuses L (int8_t) as make_qp_quants' uint8_t output
            eff_max = scale * f32(kMaxQ)
            if eff_max <= _ZERO:
                scales[ib] = _ZERO
                continue
            best = _ZERO
            for is_ in range(-6, 7):
                id_ = (f32(2 * kMaxQ - 1) + f32(is_) * _TENTH) / eff_max
                this_scale = _ONE / id_
                _to_grid(xval, 4, 8, id_, this_scale, kMaxQ, 2, Laux, grid, levels, kmap, kneighbors, waux, on_grid)
                sumqx, sumq2 = _sums(weight, xval, Laux, 32)
                if sumq2 > _ZERO and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
            if scale > _ZERO:
                # every group again, at the chosen scale (on-grid ones simply keep their levels)
                _to_grid(xval, 4, 8, _ONE / scale, scale, kMaxQ, 2, L, grid, levels, kmap, kneighbors, waux, on_grid)
                sumqx, sumq2 = _sums(weight, xval, L, 32)
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
def _iq2_xxs_rows(x, qw, grid, levels, kmap, kneighbors):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * 66), dtype=np.uint8)
    for r in prange(nrows):
        _iq2_xxs_row(x[r], qw, y[r], grid, levels, kmap, kneighbors)
    return y


# ---------------------------------------------------------------- IQ2_XS and IQ2_S (16-weight sub-blocks)

# IQ2_XS: 256 weights per 74-byte block (d: fp16; qs: 32 x uint16 = 9-bit grid index | 7 sign bits << 9;
# scales: 8 bytes, two 4-bit scales each); mirrors quantize_row_iq2_xs_impl.
# IQ2_S: 256 weights per 82-byte block (d: fp16; qs: 32 grid low bytes + 32 sign bytes; qh: 8 bytes of
# 2-bit grid high parts; scales: 8); mirrors quantize_row_iq2_s_impl. The two share the search.
@njit(cache=True, nogil=True, error_model="numpy")
def _iq2_xs_s_row(x, qw, has_qw, is_s, y, grid, levels, kmap, kneighbors):
    kMaxQ = 3
    bs = 82 if is_s else 74
    nbl = x.size // QK_K
    scales = np.empty(QK_K // 16, dtype=np.float32)
    weight = np.empty(16, dtype=np.float32)
    xval = np.empty(16, dtype=np.float32)
    waux = np.empty(16, dtype=np.float32)
    L = np.zeros(16, dtype=np.int64)
    Laux = np.zeros(16, dtype=np.int64)
    on_grid = np.empty(2, dtype=np.bool_)
    on_grid_aux = np.empty(2, dtype=np.bool_)
    block_signs = np.empty(2, dtype=np.int64)
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
                waux[i] = np.sqrt(weight[i])
            for k in range(2):
                block_signs[k] = _signs_all(x, o, xval, k) if is_s else _signs_even(x, o, weight, xval, k)
            max_ = _group_max(xval, 16)
            L[:] = 0
            if max_ < eps:
                scales[ib] = _ZERO
                continue
            best = _ZERO
            scale = max_ / f32(2 * kMaxQ - 1)
            on_grid[0] = True
            on_grid[1] = True
            for is_ in range(-9, 10):
                id_ = (f32(2 * kMaxQ - 1) + f32(is_) * _TENTH) / max_
                this_scale = _ONE / id_
                _to_grid(xval, 2, 8, id_, this_scale, kMaxQ, 2, Laux, grid, levels, kmap, kneighbors, waux, on_grid_aux)
                sumqx, sumq2 = _sums(weight, xval, Laux, 16)
                if sumq2 > _ZERO and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
                    on_grid[:] = on_grid_aux
            if not (on_grid[0] and on_grid[1]) and scale > _ZERO:
                id_ = _ONE / scale
                for k in range(2):
                    if on_grid[k]:
                        continue
                    u = _round_group(xval, 8 * k, 8, id_, kMaxQ, 2, L, 8 * k)
                    gi = kmap[u]
                    if gi < 0:
                        _best_neighbour(kneighbors, -gi - 1, grid, levels, 8, xval, 8 * k, waux, scale, L, 8 * k)
                sumqx, sumq2 = _sums(weight, xval, L, 16)
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
def _iq2_xs_s_rows(x, qw, has_qw, is_s, grid, levels, kmap, kneighbors):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * (82 if is_s else 74)), dtype=np.uint8)
    for r in prange(nrows):
        _iq2_xs_s_row(x[r], qw, has_qw, is_s, y[r], grid, levels, kmap, kneighbors)
    return y


# ---------------------------------------------------------------- IQ3_XXS

# IQ3_XXS: 256 weights per 98-byte block (d: fp16; qs: 64 grid bytes, then 8 x uint32 of 4x7 sign bits
# + 4-bit scale); mirrors quantize_row_iq3_xxs_impl (grid_size 256).
@njit(cache=True, nogil=True, error_model="numpy")
def _iq3_xxs_row(x, qw, has_qw, y, grid, levels, kmap, kneighbors):
    kMaxQ = 8
    nbl = x.size // QK_K
    scales = np.empty(QK_K // 32, dtype=np.float32)
    weight = np.empty(32, dtype=np.float32)
    xval = np.empty(32, dtype=np.float32)
    waux = np.empty(32, dtype=np.float32)
    L = np.zeros(32, dtype=np.int64)
    Laux = np.zeros(32, dtype=np.int64)
    on_grid = np.empty(8, dtype=np.bool_)
    on_grid_aux = np.empty(8, dtype=np.bool_)
    block_signs = np.empty(4, dtype=np.int64)
    sas = np.empty(QK_K // 32, dtype=np.int64)  # scales_and_signs
    for ibl in range(nbl):
        yo = 98 * ibl
        xo = QK_K * ibl
        for j in range(98):
            y[yo + j] = 0
        sas[:] = 0
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
                waux[i] = np.sqrt(weight[i])
            for k in range(4):
                block_signs[k] = _signs_even(x, o, weight, xval, k)
            max_ = _group_max(xval, 32)
            L[:] = 0
            if max_ < GROUP_MAX_EPS_IQ3_XXS:
                scales[ib] = _ZERO
                continue
            best = _ZERO
            scale = max_ / f32(2 * kMaxQ - 1)
            on_grid[:] = True
            for is_ in range(-15, 16):
                id_ = (f32(2 * kMaxQ - 1) + f32(is_) * _FIFTH) / max_
                this_scale = _ONE / id_
                _to_grid(xval, 8, 4, id_, this_scale, kMaxQ, 3, Laux, grid, levels, kmap, kneighbors, waux, on_grid_aux)
                sumqx, sumq2 = _sums(weight, xval, Laux, 32)
                if sumq2 > _ZERO and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
                    on_grid[:] = on_grid_aux
            n_not_ongrid = 0
            for k in range(8):
                if not on_grid[k]:
                    n_not_ongrid += 1
            if n_not_ongrid > 0 and scale > _ZERO:
                id_ = _ONE / scale
                for k in range(8):
                    if on_grid[k]:
                        continue
                    u = _round_group(xval, 4 * k, 4, id_, kMaxQ, 3, L, 4 * k)
                    gi = kmap[u]
                    if gi < 0:
                        _best_neighbour(kneighbors, -gi - 1, grid, levels, 4, xval, 4 * k, waux, scale, L, 4 * k)
                sumqx, sumq2 = _sums(weight, xval, L, 32)
                if sumq2 > _ZERO:
                    scale = sumqx / sumq2
            if scale < _ZERO:
                scale = -scale
                for k in range(4):
                    block_signs[k] = (~block_signs[k]) & 127
            for k in range(8):
                y[yo + 2 + 8 * ib + k] = _grid_index(L, 4 * k, 4, 3, kmap)
            sas[ib] = block_signs[0] | (block_signs[1] << 7) | (block_signs[2] << 14) | (block_signs[3] << 21)
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == _ZERO:
            for j in range(98):
                y[yo + j] = 0
            continue
        d = max_scale / f32(31)
        _put_fp16(y, yo, d * _D_IQ3_XXS)
        id_ = _ONE / d
        for ib in range(QK_K // 32):
            _put_u32(y, yo + 2 + QK_K // 4 + 4 * ib, sas[ib] | (_scale_nibble(id_, scales[ib]) << 28))


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _iq3_xxs_rows(x, qw, has_qw, grid, levels, kmap, kneighbors):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * 98), dtype=np.uint8)
    for r in prange(nrows):
        _iq3_xxs_row(x[r], qw, has_qw, y[r], grid, levels, kmap, kneighbors)
    return y


# ---------------------------------------------------------------- IQ3_S

# IQ3_S: 256 weights per 110-byte block (d: fp16; qs: 64 grid low bytes; qh: 8 bytes of grid high bits;
# signs: 32; scales: 4 bytes, two 4-bit scales each); mirrors quantize_row_iq3_s_impl (block_size 32).
@njit(cache=True, nogil=True, error_model="numpy")
def _iq3_s_row(x, qw, has_qw, y, grid, levels, kmap, kneighbors):
    kMaxQ = 8
    nbl = x.size // QK_K
    scales = np.empty(QK_K // 32, dtype=np.float32)
    weight = np.empty(32, dtype=np.float32)
    xval = np.empty(32, dtype=np.float32)
    waux = np.empty(32, dtype=np.float32)
    L = np.zeros(32, dtype=np.int64)
    Laux = np.zeros(32, dtype=np.int64)
    on_grid = np.empty(8, dtype=np.bool_)
    on_grid_aux = np.empty(8, dtype=np.bool_)
    block_signs = np.empty(4, dtype=np.int64)
    for ibl in range(nbl):
        yo = 110 * ibl
        xo = QK_K * ibl
        for j in range(110):
            y[yo + j] = 0
        qs = yo + 2   # the C advances its qs and signs pointers only past sub-blocks it quantizes,
        sg = yo + 74  # so a sub-block skipped as all zero leaves its slot to the next one
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
                waux[i] = np.sqrt(weight[i])
            for k in range(4):
                block_signs[k] = _signs_all(x, o, xval, k)
            max_ = _group_max(xval, 32)
            L[:] = 0
            if max_ == _ZERO:
                scales[ib] = _ZERO
                continue
            best = _ZERO
            scale = max_ / f32(2 * kMaxQ - 1)
            on_grid[:] = False
            for is_ in range(-9, 10):
                id_ = (f32(2 * kMaxQ - 1) + f32(is_) * _FIFTH) / max_
                this_scale = _ONE / id_
                _to_grid(xval, 8, 4, id_, this_scale, kMaxQ, 3, Laux, grid, levels, kmap, kneighbors, waux, on_grid_aux)
                sumqx, sumq2 = _sums(weight, xval, Laux, 32)
                if sumq2 > _ZERO and sumqx * sumqx > best * sumq2:
                    scale = sumqx / sumq2
                    best = scale * sumqx
                    L[:] = Laux
                    on_grid[:] = on_grid_aux
            n_not_ongrid = 0
            for k in range(8):
                if not on_grid[k]:
                    n_not_ongrid += 1
            if n_not_ongrid > 0 and scale > _ZERO:
                # unlike IQ3_XXS, every group is redone (the C's `continue` is commented out)
                _to_grid(xval, 8, 4, _ONE / scale, scale, kMaxQ, 3, L, grid, levels, kmap, kneighbors, waux, on_grid_aux)
                sumqx, sumq2 = _sums(weight, xval, L, 32)
                if sumq2 > _ZERO:
                    scale = sumqx / sumq2
            if scale < _ZERO:
                scale = -scale
                for k in range(4):
                    block_signs[k] = (~block_signs[k]) & 0xFF
            for k in range(8):
                gi = _grid_index(L, 4 * k, 4, 3, kmap)
                y[qs + k] = gi & 255
                y[yo + 66 + ib] |= (gi >> 8) << k
            qs += 8
            for k in range(4):
                y[sg + k] = block_signs[k]
            sg += 4
            scales[ib] = scale
            max_scale = max_scale if max_scale > scale else scale
        if max_scale == _ZERO:
            continue
        d = max_scale / f32(31)
        _put_fp16(y, yo, d * _D_IQ3_S)
        id_ = _ONE / d
        for ib in range(0, QK_K // 32, 2):
            y[yo + 106 + ib // 2] = _scale_nibble(id_, scales[ib]) | (_scale_nibble(id_, scales[ib + 1]) << 4)


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _iq3_s_rows(x, qw, has_qw, grid, levels, kmap, kneighbors):
    nrows, n = x.shape
    y = np.empty((nrows, n // QK_K * 110), dtype=np.uint8)
    for r in prange(nrows):
        _iq3_s_row(x[r], qw, has_qw, y[r], grid, levels, kmap, kneighbors)
    return y


# ---------------------------------------------------------------- dequantizers


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _dequantize_rows(blob, n_per_row, kind, values, ksigns):
    """dequantize_row_iq2_xxs / iq2_xs / iq2_s / iq3_xxs / iq3_s (kind 0..4), row by row."""
    nrows = blob.shape[0]
    out = np.empty((nrows, n_per_row), dtype=np.float32)
    nb = n_per_row // QK_K
    for r in prange(nrows):
        q = blob[r]
        y = out[r]
        for i in range(nb):
            if kind == 0:
                _dq_iq2_xxs(q, 66 * i, y, QK_K * i, values, ksigns)
            elif kind == 1:
                _dq_iq2_xs(q, 74 * i, y, QK_K * i, values, ksigns)
            elif kind == 2:
                _dq_iq2_s(q, 82 * i, y, QK_K * i, values)
            elif kind == 3:
                _dq_iq3_xxs(q, 98 * i, y, QK_K * i, values, ksigns)
            else:
                _dq_iq3_s(q, 110 * i, y, QK_K * i, values)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _signed(v, signs, j):
    return -v if signs & (1 << j) else v


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq2_xxs(q, b, y, yo, values, ksigns):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        o = b + 2 + 8 * ib32
        aux1 = np.int64(q[o + 4]) | (np.int64(q[o + 5]) << 8) | (np.int64(q[o + 6]) << 16) | (np.int64(q[o + 7]) << 24)
        db = d * (_HALF + f32(aux1 >> 28)) * _QUARTER
        for l in range(4):
            g = q[o + l]
            signs = ksigns[(aux1 >> (7 * l)) & 127]
            for j in range(8):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(db * values[g, j], signs, j)


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq2_xs(q, b, y, yo, values, ksigns):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        sc = q[b + 66 + ib32]
        db0 = d * (_HALF + f32(sc & 0xF)) * _QUARTER
        db1 = d * (_HALF + f32(sc >> 4)) * _QUARTER
        for l in range(4):
            o = b + 2 + 2 * (4 * ib32 + l)
            v = np.int64(q[o]) | (np.int64(q[o + 1]) << 8)
            dl = db0 if l < 2 else db1
            signs = ksigns[v >> 9]
            for j in range(8):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(dl * values[v & 511, j], signs, j)


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq2_s(q, b, y, yo, values):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        sc = q[b + 74 + ib32]
        db0 = d * (_HALF + f32(sc & 0xF)) * _QUARTER
        db1 = d * (_HALF + f32(sc >> 4)) * _QUARTER
        qh = np.int64(q[b + 66 + ib32])
        for l in range(4):
            dl = db0 if l < 2 else db1
            g = np.int64(q[b + 2 + 4 * ib32 + l]) | ((qh << (8 - 2 * l)) & 0x300)
            signs = q[b + 2 + QK_K // 8 + 4 * ib32 + l]
            for j in range(8):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(dl * values[g, j], signs, j)


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq3_xxs(q, b, y, yo, values, ksigns):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        o = b + 2 + QK_K // 4 + 4 * ib32
        aux = np.int64(q[o]) | (np.int64(q[o + 1]) << 8) | (np.int64(q[o + 2]) << 16) | (np.int64(q[o + 3]) << 24)
        db = d * (_HALF + f32(aux >> 28)) * _HALF
        for l in range(4):
            signs = ksigns[(aux >> (7 * l)) & 127]
            g1 = q[b + 2 + 8 * ib32 + 2 * l]
            g2 = q[b + 2 + 8 * ib32 + 2 * l + 1]
            for j in range(4):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(db * values[g1, j], signs, j)
                y[yo + 32 * ib32 + 8 * l + j + 4] = _signed(db * values[g2, j], signs, j + 4)


@njit(cache=True, nogil=True, error_model="numpy")
def _dq_iq3_s(q, b, y, yo, values):
    d = _get_fp16(q, b)
    for ib32 in range(QK_K // 32):
        sc = q[b + 106 + ib32 // 2]
        db = d * f32(1 + 2 * ((sc >> 4) if ib32 % 2 else (sc & 0xF)))
        qh = np.int64(q[b + 66 + ib32])
        for l in range(4):
            g1 = np.int64(q[b + 2 + 8 * ib32 + 2 * l]) | ((qh << (8 - 2 * l)) & 256)
            g2 = np.int64(q[b + 2 + 8 * ib32 + 2 * l + 1]) | ((qh << (7 - 2 * l)) & 256)
            signs = q[b + 74 + 4 * ib32 + l]
            for j in range(4):
                y[yo + 32 * ib32 + 8 * l + j] = _signed(db * values[g1, j], signs, j)
                y[yo + 32 * ib32 + 8 * l + j + 4] = _signed(db * values[g2, j], signs, j + 4)


# ---------------------------------------------------------------- public pairs

_KSIGNS = _ksigns_table()


def _tables(qtype):
    t = tables(qtype)
    return t.grid, t.levels, t.kmap, t.kneighbors


def _needs(qtype, imatrix):
    if imatrix is None:
        raise ValueError(f"{qtype.name} needs an importance matrix (llama.cpp refuses to quantize it without one)")
    return imatrix


def quantize_iq2_xxs(x, imatrix=None):
    return _iq2_xxs_rows(x, _needs(T.IQ2_XXS, imatrix), *_tables(T.IQ2_XXS))


def quantize_iq2_xs(x, imatrix=None):
    return _iq2_xs_s_rows(x, _needs(T.IQ2_XS, imatrix), True, False, *_tables(T.IQ2_XS))


def quantize_iq2_s(x, imatrix=None):
    has = imatrix is not None
    return _iq2_xs_s_rows(x, imatrix if has else _NO_WEIGHTS, has, True, *_tables(T.IQ2_S))


def quantize_iq3_xxs(x, imatrix=None):
    has = imatrix is not None
    return _iq3_xxs_rows(x, imatrix if has else _NO_WEIGHTS, has, *_tables(T.IQ3_XXS))


def quantize_iq3_s(x, imatrix=None):
    has = imatrix is not None
    return _iq3_s_rows(x, imatrix if has else _NO_WEIGHTS, has, *_tables(T.IQ3_S))


def _dequantizer(qtype, kind):
    def dequantize(blob, n_per_row):
        return _dequantize_rows(np.ascontiguousarray(blob), n_per_row, kind, tables(qtype).values, _KSIGNS)
    dequantize.__name__ = f"dequantize_{qtype.name.lower()}"
    return dequantize


KERNELS = [
    Kernel(T.IQ2_XXS, quantize_iq2_xxs, _dequantizer(T.IQ2_XXS, 0), needs_imatrix=True),
    Kernel(T.IQ2_XS, quantize_iq2_xs, _dequantizer(T.IQ2_XS, 1), needs_imatrix=True),
    Kernel(T.IQ2_S, quantize_iq2_s, _dequantizer(T.IQ2_S, 2)),
    Kernel(T.IQ3_XXS, quantize_iq3_xxs, _dequantizer(T.IQ3_XXS, 3)),
    Kernel(T.IQ3_S, quantize_iq3_s, _dequantizer(T.IQ3_S, 4)),
]
