"""The lane searches (many groups at once) against the per-group solvers they replace, group by
group, bit for bit: scale, min and quants. The per-group solvers mirror ggml-quants.c line for
line and stay checked against libggml through the types that still use them (Q2_K, Q3_K, the
legacy imatrix paths); here the lanes meet the groups the K-quant kernels rarely produce:
flat groups (all zero, all one negative value), a positive constant (min raised to 0), tiny and
huge magnitudes, outliers, unused lanes."""

import numpy as np
import pytest

from kernels.solvers import (
    QKX_LANES,
    QKX_W,
    QKX_X,
    make_qkx2_quants,
    make_qkx2_quants_lanes,
    make_qx_quants,
    make_qx_quants_lanes,
    qkx_lanes_levels,
    qkx_lanes_scratch,
    qx_lanes_levels,
)

f32 = np.float32


def _groups(n, ngroups, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ngroups, n)).astype(f32)
    x[0] = 0.0
    x[1] = -0.75
    x[2] = 0.5
    x[3] *= f32(1e-30)
    x[4] *= f32(1e4)
    x[5, ::5] *= 40.0
    x[6] = np.abs(x[6])
    x[7] = -np.abs(x[7])
    x[8, : n // 2] = 0.0
    x[9] = rng.choice(np.array([0.0, -0.0, 0.5, -0.5, 1.0], dtype=f32), size=n)
    return x


def _fill(s, x, w):
    for g in range(x.shape[0]):
        s[QKX_X + np.arange(x.shape[1]) * QKX_LANES + g] = x[g]
        s[QKX_W + np.arange(x.shape[1]) * QKX_LANES + g] = w[g]


@pytest.mark.parametrize("nl,n,nmax,rmin,rdelta,nstep,use_mad", [
    (64, 32, 15, -1.0, 0.1, 20, False),   # Q4_K ref
    (32, 32, 31, -0.5, 0.1, 15, False),   # Q5_K ref
    (64, 32, 15, -0.9, 0.05, 36, False),  # Q4_K/Q5_K imatrix (make_qkx3_quants)
    (32, 16, 3, -0.5, 0.1, 15, True),     # Q2_K's parameters, with the mean absolute error
])
def test_make_qkx2_quants_lanes_matches_per_group(nl, n, nmax, rmin, rdelta, nstep, use_mad):
    ngroups = nl - 3  # the last lanes unused
    x = _groups(n, ngroups, seed=nl + n + nmax)
    w = (np.sqrt(np.mean(x.astype(f32) ** 2, axis=1, keepdims=True)) + np.abs(x)).astype(f32)
    w[10] = 0.0  # zero weights: D is 0 for every trial
    s = qkx_lanes_scratch()
    _fill(s, x, w)
    scales, the_mins, iscales, lmins = (np.zeros(QKX_LANES, f32) for _ in range(4))
    make_qkx2_quants_lanes(s, nl, n, nmax, f32(rmin), f32(rdelta), nstep, use_mad, scales, the_mins, iscales, lmins)
    for g in range(ngroups):
        L = np.zeros(n, np.uint8)
        scale, the_min = make_qkx2_quants(n, nmax, x[g], w[g], L, np.zeros(n, np.uint8), f32(rmin), f32(rdelta),
                                          nstep, use_mad)
        L_lanes = np.zeros(n, np.uint8)
        qkx_lanes_levels(x[g], n, nmax, iscales[g], lmins[g], L_lanes)
        assert f32(scale).view(np.uint32) == scales[g].view(np.uint32), f"group {g}: scale"
        assert f32(the_min).view(np.uint32) == the_mins[g].view(np.uint32), f"group {g}: min"
        np.testing.assert_array_equal(L_lanes, L, err_msg=f"group {g}: L")


@pytest.mark.parametrize("nl,weighted", [(64, False), (32, True)])
def test_make_qx_quants_lanes_matches_per_group(nl, weighted):
    n, nmax = 16, 32  # Q6_K
    ngroups = nl - 5
    x = _groups(n, ngroups, seed=nl)
    x[11] = 1e-16  # below GROUP_MAX_EPS: all zero to the C
    rng = np.random.default_rng(1)
    qw = (rng.random(x.shape) * 3).astype(f32) if weighted else None
    s = qkx_lanes_scratch()
    _fill(s, x, qw if weighted else x * x)
    scales, iscales = np.zeros(QKX_LANES, f32), np.zeros(QKX_LANES, f32)
    make_qx_quants_lanes(s, nl, n, nmax, scales, iscales)
    for g in range(ngroups):
        L = np.zeros(n, np.int8)
        scale = make_qx_quants(n, nmax, x[g], L, 1, qw[g] if weighted else None)
        L_lanes = np.zeros(n, np.int8)
        qx_lanes_levels(x[g], n, nmax, iscales[g], L_lanes)
        assert f32(scale).view(np.uint32) == scales[g].view(np.uint32), f"group {g}: scale"
        np.testing.assert_array_equal(L_lanes, L, err_msg=f"group {g}: L")
