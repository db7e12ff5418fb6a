"""What the K-quants share (Q2_K..Q6_K, Q8_K in kquants_q2q3 and kquants_q4q8): 256-weight
super-blocks, fp16 field access and the last requantization pass (ggml-quants.c).

Without an imatrix ggml_quantize_chunk runs quantize_row_q*_K_ref; with one it runs
quantize_row_q*_K_impl row by row (the imatrix covers one row). Each row function mirrors
one of those C functions over one row; block i occupies bytes y[i*bs:(i+1)*bs] of the row,
fields little-endian in the order of ggml-common.h. Scratch arrays are allocated once per row.

The fp16 super-block scales are rounded before the quants are computed from them, as in the C
(GGML_FP16_TO_FP32(y[i].d) is read back); that value is computed once per block here.

Numba's cache checks only a kernel's own file: after editing this module, clear
kernels/__pycache__/*.nb[ic] (the family modules' cached kernels inline these helpers).
"""

import numpy as np
from numba import njit

from .solvers import fp16_to_fp32_fast, nearest_int_fast

f32 = np.float32

QK_K = 256

_ZERO = f32(0.0)
_ONE = f32(1.0)
_F256 = f32(256.0)
_F2 = f32(2.0)
# (rmin, rdelta) of the make_qkx3_quants calls of the imatrix paths
_IMPL_RMIN, _IMPL_RDELTA = f32(-0.9), f32(0.05)


@njit(cache=True, nogil=True)
def _put_fp16(y, o, h):
    y[o] = h & 0xFF
    y[o + 1] = h >> 8


@njit(cache=True, nogil=True)
def _get_fp16(y, o):
    return fp16_to_fp32_fast(np.uint16(y[o]) | (np.uint16(y[o + 1]) << np.uint16(8)))


@njit(cache=True, nogil=True, error_model="numpy")
def _requantize(xb, mins, ds, L, lo, hi, off):
    """The K-quants' last pass over a super-block, `l = nearest_int((x + m) / d); L = clamp(l) + off`
    for every weight whose sub-block scale d is not zero (the C's `if (!d) continue;` keeps the
    search's L there). ds/mins hold each weight's sub-block d and m; mins is None for the
    symmetric types (`nearest_int(x / d)`). One 256-long loop rather than 16 short ones, so the
    divisions vectorize: a short constant loop is unrolled first and then cannot be, as L may
    alias xb."""
    if mins is None:
        for k in range(QK_K):
            d = ds[k]
            l = max(lo, min(hi, nearest_int_fast(xb[k] / d))) + off
            L[k] = l if d != _ZERO else L[k]
    else:
        for k in range(QK_K):
            d = ds[k]
            l = max(lo, min(hi, nearest_int_fast((xb[k] + mins[k]) / d))) + off
            L[k] = l if d != _ZERO else L[k]


def _dequantize_with(rows_fn):
    def dequantize(blob, n_per_row):
        y = np.empty((blob.shape[0], n_per_row), dtype=np.float32)
        rows_fn(blob, y)
        return y
    return dequantize
