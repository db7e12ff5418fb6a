"""The scalar helpers every kernel uses, against NumPy over their whole domain."""

import numpy as np
from numba import njit

from kernels.common import fp16_to_fp32, fp32_to_bf16, fp32_to_fp16, nearest_int, roundf


@njit(cache=True)
def _to_fp16(x):
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = fp32_to_fp16(x[i])
    return out


@njit(cache=True)
def _from_fp16(h):
    out = np.empty(h.size, np.float32)
    for i in range(h.size):
        out[i] = fp16_to_fp32(h[i])
    return out


@njit(cache=True)
def _to_bf16(x):
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = fp32_to_bf16(x[i])
    return out


def test_fp16_to_fp32_every_value():
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    expect = h.view(np.float16).astype(np.float32)
    got = _from_fp16(h)
    finite = ~np.isnan(expect)
    np.testing.assert_array_equal(got[finite].view(np.uint32), expect[finite].view(np.uint32))
    assert np.isnan(got[~finite]).all()


def test_fp32_to_fp16_values_midpoints_and_neighbours():
    h = np.arange(0, 0x7BFF, dtype=np.uint16)
    lo = h.view(np.float16).astype(np.float64)
    hi = (h + 1).astype(np.uint16).view(np.float16).astype(np.float64)
    mid = ((lo + hi) / 2).astype(np.float32)  # ties: round to even
    values = np.concatenate([lo.astype(np.float32), mid, np.nextafter(mid, np.float32(0)),
                             np.nextafter(mid, np.float32(np.inf)), np.float32([65520.0, 1e10, np.inf, 1e-8, 0.0])])
    x = np.concatenate([values, -values])
    with np.errstate(over="ignore"):
        expect = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(_to_fp16(x), expect)
    assert _to_fp16(np.float32([np.nan]))[0] == 0x7E00  # ggml's canonical NaN


def test_fp32_to_bf16_rounds_to_nearest_even():
    x = np.float32([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38, np.inf])
    bits = x.view(np.uint32).astype(np.uint64)
    expect = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(_to_bf16(x), expect)
    assert _to_bf16(np.float32([np.nan]))[0] & 0x7FC0 == 0x7FC0  # quiet NaN


def test_nearest_int_ties_to_even_and_roundf_away_from_zero():
    assert [nearest_int(v) for v in (0.5, 1.5, 2.5, -0.5, -1.5, 3.49)] == [0, 2, 2, 0, -2, 3]
    assert [roundf(np.float32(v)) for v in (0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997)] == [1, 2, 3, -1, -3, 0]
