"""kernels/checks.py: the NaN/Inf refusal, on the float32 bit patterns that decide it."""

import numpy as np
import pytest

import kernels

F32_MAX = np.finfo(np.float32).max
SPECIAL_BITS = {
    "nan": 0x7FC00000, "negative nan": 0xFFC00000, "signalling nan": 0x7F800001, "nan, all mantissa": 0x7FFFFFFF,
    "+inf": 0x7F800000, "-inf": 0xFF800000,
}


@pytest.mark.parametrize("what", list(SPECIAL_BITS))
@pytest.mark.parametrize("shape", [(1, 32), (7, 96), (300, 256)])
def test_first_bad_row_is_found(what, shape):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    bits = x.view(np.uint32)
    last = shape[0] - 1
    bits[last, shape[1] - 1] = SPECIAL_BITS[what]
    assert kernels.first_nonfinite_row(x) == last
    if shape[0] > 2:
        bits[1, 0] = SPECIAL_BITS[what]
        assert kernels.first_nonfinite_row(x) == 1


def test_extreme_finite_values_pass():
    x = np.array([[F32_MAX, -F32_MAX, np.float32(1e-45), -np.float32(1e-45), 0.0, -0.0,
                   np.finfo(np.float32).tiny, 1.0]], dtype=np.float32)
    assert kernels.first_nonfinite_row(x) == -1
    # a float32 sum of these overflows; the check must not mistake that for a bad weight
    assert kernels.first_nonfinite_row(np.full((4, 64), F32_MAX, dtype=np.float32)) == -1


def test_empty_and_one_dimensional():
    assert kernels.first_nonfinite_row(np.zeros((0, 32), dtype=np.float32)) == -1
    assert kernels.first_nonfinite_row(np.array([1.0, np.inf], dtype=np.float32)) == 0
