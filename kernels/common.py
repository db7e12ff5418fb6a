"""Scalar helpers shared by every kernel family: fp16/bf16 conversion and ggml's rounding.

Each mirrors a function of ggml (ggml-impl.h, ggml-quants.c) bit for bit. Numba has no
float16 arithmetic, so the half-precision conversions work on integer bit patterns, and
every float constant is typed float32 where the C writes an `f` suffix.
"""

import numpy as np
from numba import njit

f32 = np.float32

# ggml_compute_fp32_to_fp16 / fp16_to_fp32 constants (0x1.0p+112f, 0x1.0p-110f, 0x1.0p-112f)
_SCALE_TO_INF = f32(2.0**112)
_SCALE_TO_ZERO = f32(2.0**-110)
_EXP_SCALE = f32(2.0**-112)
_HALF = f32(0.5)
_MAGIC = f32(12582912.0)


@njit(cache=True, nogil=True)
def fp32_to_fp16(f):
    """ggml_compute_fp32_to_fp16: round to nearest even, NaN -> 0x7E00. Returns uint16.
    Bit casts are scalar views (`np.float32(x).view(np.uint32)`): no allocation per call."""
    f = np.float32(f)
    base = (abs(f) * _SCALE_TO_INF) * _SCALE_TO_ZERO
    w = np.int64(np.float32(f).view(np.uint32))
    shl1_w = (w << 1) & 0xFFFFFFFF
    sign = w & 0x80000000
    bias = shl1_w & 0xFF000000
    if bias < 0x71000000:
        bias = 0x71000000
    base = np.uint32((bias >> 1) + 0x07800000).view(np.float32) + base
    bits = np.int64(np.float32(base).view(np.uint32))
    exp_bits = (bits >> 13) & 0x00007C00
    mantissa_bits = bits & 0x00000FFF
    nonsign = exp_bits + mantissa_bits
    if shl1_w > 0xFF000000:
        nonsign = 0x7E00
    return np.uint16((sign >> 16) | nonsign)


@njit(cache=True, nogil=True)
def fp16_to_fp32(h):
    """ggml_compute_fp16_to_fp32 (exact: every fp16 value is a float32 value)."""
    w = np.int64(h) << 16
    sign = w & 0x80000000
    two_w = (w << 1) & 0xFFFFFFFF
    if two_w < (1 << 27):
        denormalized_value = np.uint32((two_w >> 17) | (126 << 23)).view(np.float32) - _HALF
        result = sign | np.int64(np.float32(denormalized_value).view(np.uint32))
    else:
        normalized_value = np.uint32((two_w >> 4) + (0xE0 << 23)).view(np.float32) * _EXP_SCALE
        result = sign | np.int64(np.float32(normalized_value).view(np.uint32))
    return np.uint32(result).view(np.float32)


@njit(cache=True, nogil=True)
def fp16_round(f):
    """The float32 value a float32 takes after a trip through fp16 (GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x)))."""
    return fp16_to_fp32(fp32_to_fp16(f))


@njit(cache=True, nogil=True)
def fp32_to_bf16(f):
    """ggml_compute_fp32_to_bf16: round to nearest even; NaN forced quiet. Returns uint16."""
    u = np.float32(f).view(np.uint32)
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(64))
    return np.uint16((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))


@njit(cache=True, nogil=True)
def nearest_int(fval):
    """ggml's nearest_int: adds 1.5 * 2**23 in float32, so ties round to even (valid for |x| <= 4194303)."""
    val = np.float32(fval) + _MAGIC
    return (np.float32(val).view(np.int32) & np.int32(0x007FFFFF)) - np.int32(0x00400000)


@njit(cache=True, nogil=True)
def roundf(x):
    """C roundf: half away from zero (used where ggml calls roundf rather than nearest_int)."""
    a = abs(np.float32(x))
    t = np.float32(np.floor(a))
    if a - t >= _HALF:  # exact in float32: a - floor(a) needs no rounding
        t = t + np.float32(1.0)
    return t if x >= 0 else -t


# float32 bit patterns: |bits| is bits & ABS_MASK; at or above NOT_FINITE the value is Inf or NaN
ABS_MASK = np.uint32(0x7FFFFFFF)
NOT_FINITE = np.uint32(0x7F800000)


@njit(cache=True, nogil=True)
def absmax_scan(xs):
    """amax = MAX(amax, fabsf(x)) over a block in C order: the slow path of the kernels' unsigned-max
    amax, for blocks holding Inf or NaN (where the C's result depends on the order)."""
    amax = f32(0.0)
    for j in range(xs.size):
        v = abs(xs[j])
        amax = amax if amax > v else v
    return amax
