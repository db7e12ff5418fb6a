"""Activation rounding before a quantized matrix product, as ggml's CPU backend does it.

ggml-cpu converts each activation row to the weight type's vec_dot_type (type_traits_cpu in
ggml-cpu.c) before the dot products: Q8_K for K-quants, IQ2/IQ3/IQ1, IQ4_XS and TQ types; Q8_0
for Q4_0/Q5_0/Q8_0/IQ4_NL/MXFP4/Q1_0/Q2_0; Q8_1 for Q4_1/Q5_1; F16 for F16 weights and BF16 for
BF16. Integer block dot products scaled by both blocks' scales equal, up to float summation order,
a float32 product of the dequantized weights with the activations quantized and dequantized
again. That "fake quantization" is what this module computes, so that a NumPy forward pass on a
quantized model sees the same rounding as llama.cpp (on Q8_0 models it is most of the KL
divergence llama-perplexity reports).

Q8_1's values are Q8_0's; the block sum s = fp16(d * sum(q)) that Q4_1/Q5_1 multiply by their
minimum is not mirrored (it differs from d * sum(q) by one fp16 rounding).
"""

import numpy as np
from numba import njit, prange

from .common import fp16_round, fp32_to_bf16, nearest_int
from .gguf_compat import GGMLQuantizationType as T

f32 = np.float32
_127 = f32(127.0)
_M127 = f32(-127.0)
_ONE = f32(1.0)
_ZERO = f32(0.0)


# Q8_0 (and Q8_1's values): 32 activations per block, d = fp16(amax / 127). Mirrors the AVX2
# quantize_row_q8_0 / quantize_row_q8_1 of ggml-cpu/arch/x86/quants.c, which x86 builds run
# (not quantize_row_q8_0_ref): it multiplies by 127/amax and rounds half to even (_mm256_round_ps).
@njit(cache=True, nogil=True)
def _q8_0_row(x, y):
    for i in range(x.shape[0] // 32):
        xs = x[i * 32:(i + 1) * 32]
        amax = _ZERO
        for j in range(32):
            v = abs(xs[j])
            amax = amax if amax > v else v
        d = fp16_round(amax / _127)
        iscale = _127 / amax if amax != _ZERO else _ZERO
        for j in range(32):
            y[i * 32 + j] = f32(nearest_int(xs[j] * iscale)) * d


# Q8_K: 256 activations per block, d = 1/iscale in float32, iscale = -127/max where max is the
# signed value of largest magnitude (first one in index order). Mirrors quantize_row_q8_K_ref
# (x86's quantize_row_q8_K calls it; the AVX2 4-row repack variant computes the same values).
@njit(cache=True, nogil=True)
def _q8_k_row(x, y):
    for i in range(x.shape[0] // 256):
        xs = x[i * 256:(i + 1) * 256]
        amax = _ZERO
        mx = _ZERO
        for j in range(256):
            ax = abs(xs[j])
            if ax > amax:
                amax = ax
                mx = xs[j]
        if amax == _ZERO:
            for j in range(256):
                y[i * 256 + j] = _ZERO
            continue
        iscale = _M127 / mx
        d = _ONE / iscale
        for j in range(256):
            y[i * 256 + j] = f32(min(127, nearest_int(iscale * xs[j]))) * d


@njit(cache=True, nogil=True)
def _bf16_row(x, y):
    for j in range(x.shape[0]):
        y[j] = np.uint32(np.uint32(fp32_to_bf16(x[j])) << np.uint32(16)).view(np.float32)


# Row drivers. Activations are small (one chunk: T x n_in); Numba's thread pool costs more than
# it saves below PARALLEL_MIN values (measured 20 ms a call for 128 x 64 on a busy machine).
PARALLEL_MIN = 1 << 18


@njit(cache=True, nogil=True)
def _rows_serial(x, kind):
    y = np.empty_like(x)
    for r in range(x.shape[0]):
        if kind == 0:
            _q8_0_row(x[r], y[r])
        elif kind == 1:
            _q8_k_row(x[r], y[r])
        else:
            _bf16_row(x[r], y[r])
    return y


@njit(cache=True, nogil=True, parallel=True)
def _rows_parallel(x, kind):
    y = np.empty_like(x)
    for r in prange(x.shape[0]):
        if kind == 0:
            _q8_0_row(x[r], y[r])
        elif kind == 1:
            _q8_k_row(x[r], y[r])
        else:
            _bf16_row(x[r], y[r])
    return y


def _rows(kind: int):
    def run(x):
        return (_rows_parallel if x.size >= PARALLEL_MIN else _rows_serial)(x, kind)
    return run


round_q8_0_rows = _rows(0)
round_q8_k_rows = _rows(1)
round_bf16_rows = _rows(2)


def _round_f16(x):
    # ggml's fp32 -> fp16 rounds to nearest even, as NumPy's cast does
    return x.astype(np.float16).astype(np.float32)


def _names(*names):
    return [getattr(T, n) for n in names if hasattr(T, n)]


# weight type -> the activation rounding ggml-cpu applies before its dot products (vec_dot_type)
VEC_DOT = {}
for _t in _names("Q4_0", "Q5_0", "Q8_0", "IQ4_NL", "MXFP4", "NVFP4", "Q1_0", "Q2_0"):
    VEC_DOT[_t] = "Q8_0"
for _t in _names("Q4_1", "Q5_1"):
    VEC_DOT[_t] = "Q8_1"
for _t in _names("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
                 "IQ1_S", "IQ1_M", "IQ4_XS", "TQ1_0", "TQ2_0"):
    VEC_DOT[_t] = "Q8_K"
VEC_DOT[T.F16] = "F16"
VEC_DOT[T.BF16] = "BF16"

_ROUND = {"Q8_0": round_q8_0_rows, "Q8_1": round_q8_0_rows, "Q8_K": round_q8_k_rows,
          "F16": _round_f16, "BF16": round_bf16_rows}


def vec_dot_type(weight_type) -> str:
    """The name of the type ggml-cpu converts activations to for a weight of this type ("F32": none)."""
    return VEC_DOT.get(weight_type, "F32")


def round_activations(x: np.ndarray, weight_type) -> np.ndarray:
    """x (rows, n_in) float32 as a product with a `weight_type` weight sees it in llama.cpp's CPU
    backend. F32 weights (and types not listed) take x unchanged."""
    fn = _ROUND.get(VEC_DOT.get(weight_type, "F32"))
    if fn is None:
        return x
    return fn(np.ascontiguousarray(x, dtype=np.float32))
