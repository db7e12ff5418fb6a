"""F32, F16 and BF16: the unquantized types, as ggml converts them (ggml_fp32_to_fp16_row,
ggml_fp32_to_bf16_row, and back)."""

import numpy as np
from numba import njit, prange

from . import Kernel
from .gguf_compat import GGMLQuantizationType as T
from .common import fp16_to_fp32, fp32_to_bf16, fp32_to_fp16


def quantize_f32(x, imatrix=None):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)


def dequantize_f32(blob, n_per_row):
    return np.ascontiguousarray(blob).view(np.float32).reshape(-1, n_per_row)


@njit(cache=True, nogil=True, parallel=True)
def _f32_to_f16_rows(x):
    nrows, n = x.shape
    y = np.empty((nrows, n), dtype=np.uint16)
    for r in prange(nrows):
        for j in range(n):
            y[r, j] = fp32_to_fp16(x[r, j])
    return y


@njit(cache=True, nogil=True, parallel=True)
def _f16_to_f32_rows(h):
    nrows, n = h.shape
    y = np.empty((nrows, n), dtype=np.float32)
    for r in prange(nrows):
        for j in range(n):
            y[r, j] = fp16_to_fp32(h[r, j])
    return y


@njit(cache=True, nogil=True, parallel=True)
def _f32_to_bf16_rows(x):
    nrows, n = x.shape
    y = np.empty((nrows, n), dtype=np.uint16)
    for r in prange(nrows):
        for j in range(n):
            y[r, j] = fp32_to_bf16(x[r, j])
    return y


def quantize_f16(x, imatrix=None):
    return _f32_to_f16_rows(x).view(np.uint8)


def dequantize_f16(blob, n_per_row):
    return _f16_to_f32_rows(np.ascontiguousarray(blob).view(np.uint16).reshape(-1, n_per_row))


def quantize_bf16(x, imatrix=None):
    return _f32_to_bf16_rows(x).view(np.uint8)


def dequantize_bf16(blob, n_per_row):
    # ggml_compute_bf16_to_fp32: the 16 bits become the top half of a float32, exactly.
    h = np.ascontiguousarray(blob).view(np.uint16).reshape(-1, n_per_row)
    return (h.astype(np.uint32) << 16).view(np.float32)


KERNELS = [
    Kernel(T.F32, quantize_f32, dequantize_f32),
    Kernel(T.F16, quantize_f16, dequantize_f16),
    Kernel(T.BF16, quantize_bf16, dequantize_bf16),
]
