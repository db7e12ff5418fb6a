"""Scale searches shared by the legacy and K-quant families (ggml-quants.c helper functions).

Each mirrors its C namesake line for line, in float32 wherever the C declares `float`: a
product of a float and an int is written `w * f32(l)` because Numba would otherwise promote
it to float64 where C stays in float. Arrays stand in for C pointers (pass views: `x[16*j:]`);
an optional C pointer that may be NULL is an argument that may be None. Outputs the C writes
through pointers (`L`, `Laux`) are filled in place; `*the_min` is returned alongside the scale.
Stores into uint8/int8 arrays are masked to mirror C's truncating conversion explicitly (it
also keeps NUMBA_DISABLE_JIT=1 runs, where NumPy rejects out-of-range stores, identical).

error_model="numpy": float division by zero gives inf/nan as in C instead of raising.
"""

import numpy as np
from numba import njit

# The names the families import from here; one implementation each, in common.py.
from .common import fp16_to_fp32 as fp16_to_fp32_fast  # noqa: F401
from .common import fp32_to_fp16 as fp32_to_fp16_fast  # noqa: F401
from .common import nearest_int as nearest_int_fast  # noqa: F401

f32 = np.float32

GROUP_MAX_EPS = f32(1e-15)
_MAGIC = f32(12582912.0)  # 1.5 * 2**23
_ZERO = f32(0.0)
_ONE = f32(1.0)
_HALF = f32(0.5)
_TENTH = f32(0.1)


@njit(cache=True, nogil=True, error_model="numpy")
def _u8(v):
    # C's conversion of an int to uint8_t: keep the low 8 bits.
    return v & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _i8(v):
    # C's conversion of an int to int8_t (two's complement wrap).
    return ((v + 128) & 0xFF) - 128


@njit(cache=True, nogil=True, error_model="numpy")
def _qx_weight(x, i, rmse_type, qw):
    if qw is not None:
        return qw[i]
    if rmse_type == 1:
        return x[i] * x[i]
    if rmse_type == 2:
        return _ONE
    if rmse_type == 3:
        return abs(x[i])
    return f32(np.sqrt(abs(x[i])))


# Scratch of the batched scale searches: one flat float32 array, lanes at fixed offsets (a flat
# array with constant offsets lets LLVM see that the lanes do not alias, and vectorize).
_P = 48  # lanes of scratch per quantity (make_qx_quants uses 24)
_ROUND = 16  # trials per round of _qkx_search: fewer redone after a winner moves min, still wide
_ISC, _SL, _SL2, _SXL, _TS, _TM, _ERR, _DD, _W = (k * _P for k in range(9))
SCRATCH_SIZE = 9 * _P + 256


@njit(cache=True, nogil=True)
def solver_scratch():
    """Scratch for make_qx_quants / make_qkx2_quants / make_qkx3_quants: allocate once per row
    (or thread) and pass it; without it each call allocates its own."""
    return np.zeros(SCRATCH_SIZE, dtype=np.float32)


@njit(cache=True, nogil=True, error_model="numpy")
def make_qx_quants(n, nmax, x, L, rmse_type, qw, scratch=None):
    """make_qx_quants: symmetric scale search. L (int8) gets nmax + l, l in [-nmax, nmax-1].

    The C tries 18 scales one after another; each trial's sums depend only on its own scale, so
    here all of them (and the first guess, lane 0) are summed in one pass over x, one lane per
    trial, each lane adding in the C's order. The choice between them is then made in the C's
    order, and L recomputed for the scale chosen: the same floats, in a fraction of the time."""
    max_ = _ZERO
    amax = _ZERO
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            max_ = x[i]
    if amax < GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return _ZERO
    fnmax = f32(nmax)
    iscale = -fnmax / max_
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int_fast(iscale * x[i])
            L[i] = _i8(nmax + max(-nmax, min(nmax - 1, l)))
        return _ONE / iscale
    if rmse_type < 0:  # return_early
        rmse_type = -rmse_type
        sumlx = _ZERO
        suml2 = _ZERO
        for i in range(n):
            l = nearest_int_fast(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            L[i] = _i8(l + nmax)
            w = _qx_weight(x, i, rmse_type, qw)
            fl = f32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        scale = sumlx / suml2 if suml2 != _ZERO else _ZERO
        return _HALF * (scale + _ONE / iscale) if suml2 > _ZERO else _ONE / iscale
    if scratch is None:
        s = solver_scratch()
    else:
        s = scratch
    # lane 0: the first guess; lanes 1..18: is = -9..-1, 1..9, the C's order; 19..23 idle
    s[_ISC] = iscale
    for k in range(1, 24):
        is_ = k - 10 if k < 10 else k - 9
        s[_ISC + k] = -(fnmax + _TENTH * f32(is_)) / max_ if k < 19 else _ZERO
        s[_SXL + k] = _ZERO
        s[_SL2 + k] = _ZERO
    s[_SXL] = _ZERO
    s[_SL2] = _ZERO
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    for i in range(n):
        xi = x[i]
        w = _qx_weight(x, i, rmse_type, qw)
        wx = w * xi
        for k in range(24):
            l = max(lo, min(hi, np.int32(nearest_int_fast(s[_ISC + k] * xi))))
            fl = f32(l)
            s[_SXL + k] += wx * fl  # sumlx += w*x[i]*l
            s[_SL2 + k] += w * fl * fl  # suml2 += w*l*l
    sumlx = s[_SXL]
    suml2 = s[_SL2]
    scale = sumlx / suml2 if suml2 != _ZERO else _ZERO
    best = scale * sumlx
    chosen = 0
    for k in range(1, 19):
        sumlx = s[_SXL + k]
        suml2 = s[_SL2 + k]
        if suml2 > _ZERO and sumlx * sumlx > best * suml2:
            scale = sumlx / suml2
            best = scale * sumlx
            chosen = k
    iscale = s[_ISC + chosen]
    for i in range(n):
        l = nearest_int_fast(iscale * x[i])
        L[i] = _i8(nmax + max(-nmax, min(nmax - 1, l)))
    return scale


@njit(cache=True, nogil=True, error_model="numpy")
def _q3_refine_pass(xt, fl, sumlx, suml2, nch, lo, hi):
    """One pass of make_q3_quants' refinement loop over every group at once: column g of xt/fl
    is group g's 16 weights / current quants (as floats), lane g of sumlx/suml2 its sums. Each
    lane follows the C's order over i, a change as a select instead of a branch; nch[g] counts
    the group's changes (the C's n_changed)."""
    for g in range(nch.size):
        nch[g] = 0
    for i in range(16):
        xi = xt[i]
        fli = fl[i]
        for g in range(nch.size):
            v = xi[g]
            fLi = fli[g]
            w = v * v
            sx = sumlx[g]
            s2 = suml2[g]
            slx = sx - w * v * fLi
            sl2 = s2 - w * fLi * fLi
            fq = f32(max(lo, min(hi, nearest_int_fast(v * sl2 / slx))))
            slx2 = slx + w * v * fq
            sl22 = sl2 + w * fq * fq
            ok = (slx > _ZERO) & (fq != fLi) & (sl22 > _ZERO) & (slx2 * slx2 * s2 > sx * sx * sl22)
            fli[g] = fq if ok else fLi
            sumlx[g] = slx2 if ok else sx
            suml2[g] = sl22 if ok else s2
            nch[g] += ok


@njit(cache=True, nogil=True, error_model="numpy")
def make_q3_quants_row(x, nmax, scales, L):
    """make_q3_quants(16, nmax, x + 16*g, L + 16*g, do_rmse=true) for every 16-weight group g
    of a row: scales[g] is its return value; L (int8) gets the quants.

    The C runs group after group, each a chain of float sums. Here the groups are lanes: the
    row is transposed so that weight i of every group sits in one contiguous row, and the
    amax scan, the first quantization and the first refinement pass run across all groups in
    the C's order within each (a pass over a group the previous pass left unchanged changes
    nothing, so one shared pass is exact). The groups the first pass changed (about a quarter)
    finish the C's remaining passes one at a time. Same arithmetic, about 2x the speed."""
    G = x.shape[0] // 16
    xt = np.empty((16, G), dtype=np.float32)
    fl = np.empty((16, G), dtype=np.float32)
    amax = np.zeros(G, dtype=np.float32)
    iscale = np.zeros(G, dtype=np.float32)  # holds the C's `max` until the division below
    sumlx = np.zeros(G, dtype=np.float32)
    suml2 = np.zeros(G, dtype=np.float32)
    nch = np.zeros(G, dtype=np.int32)
    for i in range(16):
        xi = xt[i]
        for g in range(G):
            xi[g] = x[16 * g + i]
    for i in range(16):  # if (ax > amax) { amax = ax; max = x[i]; }
        xi = xt[i]
        for g in range(G):
            v = xi[g]
            ax = abs(v)
            gt = ax > amax[g]
            amax[g] = ax if gt else amax[g]
            iscale[g] = v if gt else iscale[g]
    fnmax = f32(nmax)
    lo = -nmax
    hi = nmax - 1
    for g in range(G):
        iscale[g] = -fnmax / iscale[g]
    for i in range(16):
        xi = xt[i]
        fli = fl[i]
        for g in range(G):
            v = xi[g]
            fq = f32(max(lo, min(hi, nearest_int_fast(iscale[g] * v))))
            fli[g] = fq
            w = v * v
            sumlx[g] += w * v * fq
            suml2[g] += w * fq * fq
    _q3_refine_pass(xt, fl, sumlx, suml2, nch, lo, hi)
    # The same pass, written as the C's branches for one group at a time: calling _q3_refine_pass
    # on one column (selects, a strided view) measured half the speed of the whole kernel.
    for g in range(G):
        if nch[g] == 0:
            continue
        sx = sumlx[g]
        s2 = suml2[g]
        for itry in range(1, 5):
            n_changed = 0
            for i in range(16):
                v = xt[i, g]
                fLi = fl[i, g]
                w = v * v
                slx = sx - w * v * fLi
                if slx > _ZERO:
                    sl2 = s2 - w * fLi * fLi
                    fq = f32(max(lo, min(hi, nearest_int_fast(v * sl2 / slx))))
                    if fq != fLi:
                        slx += w * v * fq
                        sl2 += w * fq * fq
                        if sl2 > _ZERO and slx * slx * s2 > sx * sx * sl2:
                            fl[i, g] = fq
                            sx = slx
                            s2 = sl2
                            n_changed += 1
            if n_changed == 0:
                break
        sumlx[g] = sx
        suml2[g] = s2
    for g in range(G):
        Lg = L[16 * g:16 * g + 16]
        if amax[g] < GROUP_MAX_EPS:  # all zero
            scales[g] = _ZERO
            for i in range(16):
                Lg[i] = 0
            continue
        scales[g] = sumlx[g] / suml2[g] if suml2[g] > _ZERO else _ZERO
        for i in range(16):
            Lg[i] = np.int64(fl[i, g]) + nmax


@njit(cache=True, nogil=True, error_model="numpy")
def _qkx_search(n, nmax, x, weights, L, min_, max_, sum_w, sum_x, rmin, rdelta, nstep, use_mad, s):
    """The search shared by make_qkx2_quants and make_qkx3_quants, after their first loop.

    The C tries nstep + 1 scales in turn, and a trial that wins moves `min`, which every later
    trial starts from. Here a round sums the next 16 trials at once, one lane each (each lane
    adding in the C's order, from the current min), then walks them in the C's order; when a
    winner moves min, the trials after it are redone in a new round from the new min. Winners
    are few, so this is the C's arithmetic in a fraction of the time. Returns (scale, the_min)."""
    fnmax = f32(nmax)
    hi = np.int32(nmax)
    zero = np.int32(0)
    iscale = fnmax / (max_ - min_)
    scale = _ONE / iscale
    best_error = _ZERO
    for i in range(n):
        l = nearest_int_fast(iscale * (x[i] - min_))
        L[i] = max(0, min(nmax, l))
        diff = scale * f32(L[i]) + min_ - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -min_
    chosen = False
    chosen_iscale = _ZERO
    chosen_min = _ZERO
    start = 0
    while start <= nstep:
        cnt = min(nstep + 1 - start, _ROUND)
        lanes = (cnt + 7) // 8 * 8
        for k in range(lanes):
            s[_ISC + k] = (rmin + rdelta * f32(start + k) + fnmax) / (max_ - min_) if k < cnt else _ZERO
            s[_SL + k] = _ZERO
            s[_SL2 + k] = _ZERO
            s[_SXL + k] = _ZERO
            s[_ERR + k] = _ZERO
        for i in range(n):
            xi = x[i]
            xm = xi - min_
            w = weights[i]
            for k in range(lanes):
                fl = f32(max(zero, min(hi, np.int32(nearest_int_fast(s[_ISC + k] * xm)))))
                wl = w * fl
                s[_SL + k] += wl  # sum_l += w*l
                s[_SL2 + k] += wl * fl  # sum_l2 += w*l*l
                s[_SXL + k] += wl * xi  # sum_xl += w*l*x[i]
        for k in range(lanes):
            sum_l = s[_SL + k]
            sum_l2 = s[_SL2 + k]
            sum_xl = s[_SXL + k]
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = _ZERO
            this_min = _ZERO
            if D > _ZERO:
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
                if this_min > _ZERO:
                    this_min = _ZERO
                    this_scale = sum_xl / sum_l2
            s[_DD + k] = D
            s[_TS + k] = this_scale
            s[_TM + k] = this_min
        for i in range(n):
            xi = x[i]
            xm = xi - min_
            w = weights[i]
            for k in range(lanes):
                fl = f32(max(zero, min(hi, np.int32(nearest_int_fast(s[_ISC + k] * xm)))))
                diff = s[_TS + k] * fl + s[_TM + k] - xi
                diff = abs(diff) if use_mad else diff * diff
                s[_ERR + k] += w * diff
        moved = False
        for k in range(cnt):
            if s[_DD + k] > _ZERO and s[_ERR + k] < best_error:
                best_error = s[_ERR + k]
                scale = s[_TS + k]
                chosen = True
                chosen_iscale = s[_ISC + k]
                chosen_min = min_
                this_min = s[_TM + k]
                # a min of equal value (even 0 vs -0) leaves every later trial's arithmetic unchanged
                moved = this_min != min_
                min_ = this_min
                if moved:
                    start += k + 1
                    break
        if not moved:
            start += cnt
    if chosen:  # L = Laux of the last winner
        for i in range(n):
            l = nearest_int_fast(chosen_iscale * (x[i] - chosen_min))
            L[i] = max(0, min(nmax, l))
    return scale, -min_


# make_qkx2_quants_lanes: one flat float32 scratch. Three planes (group weight i, lane g) at
# i * QKX_LANES + g: the weights x, their importance weights, the current trial's levels; then one
# vector of QKX_LANES per per-group quantity. Lane counts and offsets are compile-time constants,
# so LLVM sees that no two of them alias and vectorizes every lane loop (8 lanes a ymm register);
# with a run-time lane count it does not (measured 2-4x slower).
QKX_LANES = 64  # groups per call (8 super-blocks of Q4_K/Q5_K); 32 ran 10 % slower, 16 and 128 2x
QKX_N = 32  # largest group
QKX_X, QKX_W, _QL = (k * QKX_N * QKX_LANES for k in range(3))
(_QMN, _QMX, _QSW, _QSX, _QBE, _QSC, _QIS, _QSL, _QSL2, _QSXL, _QD, _QTS, _QTM, _QER, _QCI, _QCM, _QMN0,
 QKX_TMP) = (3 * QKX_N * QKX_LANES + k * QKX_LANES for k in range(18))
QKX_SCRATCH_SIZE = QKX_TMP + QKX_LANES  # QKX_TMP: a free vector for the caller's own lane sums


@njit(cache=True, nogil=True)
def qkx_lanes_scratch():
    """Scratch of make_qkx2_quants_lanes (allocate once per row)."""
    return np.zeros(QKX_SCRATCH_SIZE, dtype=np.float32)


@njit(cache=True, nogil=True, error_model="numpy")
def make_qkx2_quants_lanes(s, nl, n, nmax, rmin, rdelta, nstep, use_mad, scales, the_mins, iscales, lmins):
    """make_qkx2_quants(n, nmax, x_g, w_g, L_g, &the_min, Laux, rmin, rdelta, nstep, use_mad) for
    the nl groups g whose weights the caller put in planes QKX_X and QKX_W of s. Returns nothing:
    scales[g] and the_mins[g] get the C's return value and *the_min; the quants L_g follow from
    iscales[g] and lmins[g] (qkx_lanes_levels), so a caller computes them only where it needs them.

    The C tries nstep + 1 scales one after another per group, and a trial that wins moves the
    group's min, which later trials start from. Here every group is a lane: trial `is` runs for
    all lanes at once, each lane with its own min, sums in the C's order, its winner taken with a
    select instead of a branch. So each group does exactly the C's trials, where the per-group
    search (_qkx_search) redoes the trials after every min move (about 2.7 of 21 trials win on
    Gaussian weights). nl (64 or 32, a literal) is the lane count; unused lanes compute garbage
    that nobody reads."""
    fnmax = f32(nmax)
    hi = np.int32(nmax)
    zero = np.int32(0)
    L_ = QKX_LANES
    for g in range(nl):
        x0 = s[QKX_X + g]
        w0 = s[QKX_W + g]
        s[_QMN + g] = x0
        s[_QMX + g] = x0
        s[_QSW + g] = w0
        s[_QSX + g] = w0 * x0
    for i in range(1, n):
        for g in range(nl):
            xi = s[QKX_X + i * L_ + g]
            w = s[QKX_W + i * L_ + g]
            mn = s[_QMN + g]
            mx = s[_QMX + g]
            s[_QMN + g] = xi if xi < mn else mn  # if (x[i] < min) min = x[i];
            s[_QMX + g] = xi if xi > mx else mx
            s[_QSW + g] += w
            s[_QSX + g] += w * xi
    for g in range(nl):
        mn = s[_QMN + g]
        mn = _ZERO if mn > _ZERO else mn
        isc = fnmax / (s[_QMX + g] - mn)
        s[_QMN + g] = mn
        s[_QMN0 + g] = mn
        s[_QIS + g] = isc
        s[_QSC + g] = _ONE / isc
        s[_QBE + g] = _ZERO
        s[_QCI + g] = isc
        s[_QCM + g] = mn
    for i in range(n):
        for g in range(nl):
            xi = s[QKX_X + i * L_ + g]
            fl = f32(max(zero, min(hi, np.int32(nearest_int_fast(s[_QIS + g] * (xi - s[_QMN + g]))))))
            diff = s[_QSC + g] * fl + s[_QMN + g] - xi
            diff = abs(diff) if use_mad else diff * diff
            s[_QBE + g] += s[QKX_W + i * L_ + g] * diff
    for is_ in range(nstep + 1 if nstep >= 1 else 0):
        num = rmin + rdelta * f32(is_) + fnmax
        for g in range(nl):
            s[_QIS + g] = num / (s[_QMX + g] - s[_QMN + g])
            s[_QSL + g] = _ZERO
            s[_QSL2 + g] = _ZERO
            s[_QSXL + g] = _ZERO
            s[_QER + g] = _ZERO
        for i in range(n):
            for g in range(nl):
                xi = s[QKX_X + i * L_ + g]
                fl = f32(max(zero, min(hi, np.int32(nearest_int_fast(s[_QIS + g] * (xi - s[_QMN + g]))))))
                s[_QL + i * L_ + g] = fl  # Laux[i]
                wl = s[QKX_W + i * L_ + g] * fl
                s[_QSL + g] += wl  # sum_l += w*l
                s[_QSL2 + g] += wl * fl  # sum_l2 += w*l*l
                s[_QSXL + g] += wl * xi  # sum_xl += w*l*x[i]
        for g in range(nl):
            sum_l = s[_QSL + g]
            sum_l2 = s[_QSL2 + g]
            sum_xl = s[_QSXL + g]
            sum_w = s[_QSW + g]
            sum_x = s[_QSX + g]
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D  # used only where D > 0
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > _ZERO
            s[_QD + g] = D
            s[_QTS + g] = sum_xl / sum_l2 if pos else this_scale
            s[_QTM + g] = _ZERO if pos else this_min
        for i in range(n):
            for g in range(nl):
                diff = s[_QTS + g] * s[_QL + i * L_ + g] + s[_QTM + g] - s[QKX_X + i * L_ + g]
                diff = abs(diff) if use_mad else diff * diff
                s[_QER + g] += s[QKX_W + i * L_ + g] * diff
        for g in range(nl):
            err = s[_QER + g]
            win = (s[_QD + g] > _ZERO) & (err < s[_QBE + g])
            s[_QBE + g] = err if win else s[_QBE + g]
            s[_QSC + g] = s[_QTS + g] if win else s[_QSC + g]
            s[_QCI + g] = s[_QIS + g] if win else s[_QCI + g]
            s[_QCM + g] = s[_QMN + g] if win else s[_QCM + g]
            s[_QMN + g] = s[_QTM + g] if win else s[_QMN + g]
    for g in range(nl):
        flat = s[_QMX + g] == s[_QMN0 + g]  # max == min: L = 0, scale 0
        scales[g] = _ZERO if flat else s[_QSC + g]
        the_mins[g] = -(s[_QMN0 + g] if flat else s[_QMN + g])
        iscales[g] = _ZERO if flat else s[_QCI + g]
        lmins[g] = _ZERO if flat else s[_QCM + g]


@njit(cache=True, nogil=True, error_model="numpy")
def qkx_lanes_levels(x, n, nmax, iscale, lmin, L):
    """The quants make_qkx2_quants leaves in L for one group, from make_qkx2_quants_lanes'
    iscales[g], lmins[g]: the first guess's or the last winner's Laux (its iscale and the min
    it started from). A flat group has iscale 0: every level is 0, as the C's."""
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int_fast(iscale * (x[i] - lmin))))


@njit(cache=True, nogil=True, error_model="numpy")
def make_qx_quants_lanes(s, nl, n, nmax, scales, iscales):
    """make_qx_quants(n, nmax, x_g, L_g, rmse_type=1, qw_g) for the nl groups g whose weights
    (plane QKX_X) and importance weights (plane QKX_W: qw, or x*x where the C has qw NULL) the
    caller put in s, as make_qkx2_quants_lanes. scales[g] gets the C's return value; the quants
    follow from iscales[g] (qx_lanes_levels; 0 for an all-zero group).

    The 19 scales the C tries (its first guess, then is = -9..9 without 0) run as 19 passes over
    all lanes, each lane summing in the C's order; the C's choice, made in trial order, is a
    select per lane. The per-group make_qx_quants sums its 19 trials as lanes of one pass; here
    no lane idles (it used 24 for 19) and the amax scan and L vectorize too."""
    fnmax = f32(nmax)
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    L_ = QKX_LANES
    for g in range(nl):
        s[_QMX + g] = _ZERO  # max
        s[_QMN + g] = _ZERO  # amax
    for i in range(n):
        for g in range(nl):
            xi = s[QKX_X + i * L_ + g]
            ax = abs(xi)
            gt = ax > s[_QMN + g]  # if (ax > amax) { amax = ax; max = x[i]; }
            s[_QMN + g] = ax if gt else s[_QMN + g]
            s[_QMX + g] = xi if gt else s[_QMX + g]
    for t in range(19):
        # t = 0: the first guess -nmax/max; then is = -9..-1, 1..9
        is_ = t - 10 if t < 10 else t - 9
        num = -fnmax if t == 0 else -(fnmax + _TENTH * f32(is_))
        for g in range(nl):
            s[_QIS + g] = num / s[_QMX + g]
            s[_QSXL + g] = _ZERO
            s[_QSL2 + g] = _ZERO
        for i in range(n):
            for g in range(nl):
                xi = s[QKX_X + i * L_ + g]
                fl = f32(max(lo, min(hi, np.int32(nearest_int_fast(s[_QIS + g] * xi)))))
                w = s[QKX_W + i * L_ + g]
                s[_QSXL + g] += w * xi * fl  # sumlx += w*x[i]*l
                s[_QSL2 + g] += w * fl * fl  # suml2 += w*l*l
        if t == 0:
            for g in range(nl):
                sumlx = s[_QSXL + g]
                suml2 = s[_QSL2 + g]
                scale = sumlx / suml2 if suml2 != _ZERO else _ZERO
                s[_QSC + g] = scale
                s[_QBE + g] = scale * sumlx
                s[_QCI + g] = s[_QIS + g]
        else:
            for g in range(nl):
                sumlx = s[_QSXL + g]
                suml2 = s[_QSL2 + g]
                win = (suml2 > _ZERO) & (sumlx * sumlx > s[_QBE + g] * suml2)
                scale = sumlx / suml2
                s[_QSC + g] = scale if win else s[_QSC + g]
                s[_QBE + g] = scale * sumlx if win else s[_QBE + g]
                s[_QCI + g] = s[_QIS + g] if win else s[_QCI + g]
    for g in range(nl):
        flat = s[_QMN + g] < GROUP_MAX_EPS  # all zero: L = 0, scale 0
        scales[g] = _ZERO if flat else s[_QSC + g]
        iscales[g] = _ZERO if flat else s[_QCI + g]


@njit(cache=True, nogil=True, error_model="numpy")
def qx_lanes_levels(x, n, nmax, iscale, L):
    """The quants make_qx_quants leaves in L (int8: nmax + l) for one group, from
    make_qx_quants_lanes' iscales[g]; 0 marks an all-zero group (L = 0)."""
    for i in range(n):
        l = nearest_int_fast(iscale * x[i])
        L[i] = 0 if iscale == _ZERO else _i8(nmax + max(-nmax, min(nmax - 1, l)))


@njit(cache=True, nogil=True, error_model="numpy")
def make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, scratch=None):
    """make_qkx2_quants: asymmetric (scale, min) search. L is uint8; Laux is unused (the C's
    scratch; kept for the C's signature). Returns (scale, the_min)."""
    min_ = x[0]
    max_ = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < min_:
            min_ = x[i]
        if x[i] > max_:
            max_ = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if min_ > _ZERO:
        min_ = _ZERO
    if max_ == min_:
        for i in range(n):
            L[i] = 0
        return _ZERO, -min_
    if scratch is None:
        s = solver_scratch()
    else:
        s = scratch
    return _qkx_search(n, nmax, x, weights, L, min_, max_, sum_w, sum_x, rmin, rdelta, nstep, use_mad, s)


@njit(cache=True, nogil=True, error_model="numpy")
def make_qkx3_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, scratch=None):
    """make_qkx3_quants: as make_qkx2_quants, but weights may be None (then x^2), and the
    `max <= min` test. L is uint8; Laux is unused. Returns (scale, the_min)."""
    if scratch is None:
        s = solver_scratch()
    else:
        s = scratch
    if weights is None:
        for i in range(n):
            s[_W + i] = x[i] * x[i]
        w = s[_W:_W + n]
    else:
        w = weights
    min_ = x[0]
    max_ = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < min_:
            min_ = x[i]
        if x[i] > max_:
            max_ = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    if min_ > _ZERO:
        min_ = _ZERO
    if max_ <= min_:
        for i in range(n):
            L[i] = 0
        return _ZERO, -min_
    return _qkx_search(n, nmax, x, w, L, min_, max_, sum_w, sum_x, rmin, rdelta, nstep, use_mad, s)


@njit(cache=True, nogil=True, error_model="numpy")
def make_qp_quants(n, nmax, x, L, quant_weights):
    """make_qp_quants: scale search for K-quant sub-block scales/mins and IQ2_XXS group scales.
    L is the C's uint8_t array (a negative level wraps) while the first sums use the int level,
    as the C does; the two differ only for negative inputs (IQ2_XXS has one per 8)."""
    max_ = _ZERO
    for i in range(n):
        max_ = max_ if max_ > x[i] else x[i]  # C's MAX macro
    if max_ < GROUP_MAX_EPS:  # all zero
        for i in range(n):
            L[i] = 0
        return _ZERO
    fnmax = f32(nmax)
    iscale = fnmax / max_
    for i in range(n):
        L[i] = _u8(nearest_int_fast(iscale * x[i]))
    scale = _ONE / iscale
    best_mse = _ZERO
    for i in range(n):
        diff = x[i] - scale * f32(L[i])
        w = quant_weights[i]
        best_mse += w * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (_TENTH * f32(is_) + fnmax) / max_
        scale_is = _ONE / iscale_is
        mse = _ZERO
        for i in range(n):
            l = nearest_int_fast(iscale_is * x[i])
            l = min(nmax, l)
            diff = x[i] - scale_is * f32(l)
            w = quant_weights[i]
            mse += w * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        l = nearest_int_fast(iscale * x[i])
        l = min(nmax, l)
        L[i] = _u8(l)
        w = quant_weights[i]
        fl = f32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            fLi = f32(L[i])
            slx = sumlx - w * x[i] * fLi
            sl2 = suml2 - w * fLi * fLi
            if slx > _ZERO and sl2 > _ZERO:
                new_l = nearest_int_fast(x[i] * sl2 / slx)
                new_l = min(nmax, new_l)
                if new_l != L[i]:
                    fnew = f32(new_l)
                    slx += w * x[i] * fnew
                    sl2 += w * fnew * fnew
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = _u8(new_l)
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > _ZERO else _ZERO


@njit(cache=True, nogil=True, error_model="numpy")
def get_scale_min_k4(j, q, off):
    """get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 packed bytes q[off:off+12]."""
    if j < 4:
        d = np.int64(q[off + j]) & 63
        m = np.int64(q[off + j + 4]) & 63
    else:
        d = (np.int64(q[off + j + 4]) & 0xF) | ((np.int64(q[off + j - 4]) >> 6) << 4)
        m = (np.int64(q[off + j + 4]) >> 4) | ((np.int64(q[off + j - 0]) >> 6) << 4)
    return d, m


