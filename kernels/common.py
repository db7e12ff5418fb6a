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


@njit(cache=True, nogil=True, inline="always")
def bits_to_f32(w):
    return np.array([np.uint32(w)], dtype=np.uint32).view(np.float32)[0]


@njit(cache=True, nogil=True, inline="always")
def f32_to_bits(f):
    return np.array([np.float32(f)], dtype=np.float32).view(np.uint32)[0]


@njit(cache=True, nogil=True)
def fp32_to_fp16(f):
    """ggml_compute_fp32_to_fp16: round to nearest even, NaN -> 0x7E00. Returns uint16."""
    f = np.float32(f)
    base = (abs(f) * _SCALE_TO_INF) * _SCALE_TO_ZERO
    w = np.uint32(f32_to_bits(f))
    shl1_w = np.uint32(w + w)
    sign = w & np.uint32(0x80000000)
    bias = shl1_w & np.uint32(0xFF000000)
    if bias < np.uint32(0x71000000):
        bias = np.uint32(0x71000000)
    base = bits_to_f32((bias >> np.uint32(1)) + np.uint32(0x07800000)) + base
    bits = np.uint32(f32_to_bits(base))
    exp_bits = (bits >> np.uint32(13)) & np.uint32(0x00007C00)
    mantissa_bits = bits & np.uint32(0x00000FFF)
    nonsign = exp_bits + mantissa_bits
    if shl1_w > np.uint32(0xFF000000):
        nonsign = np.uint32(0x7E00)
    return np.uint16((sign >> np.uint32(16)) | nonsign)


@njit(cache=True, nogil=True)
def fp16_to_fp32(h):
    """ggml_compute_fp16_to_fp32 (exact: every fp16 value is a float32 value)."""
    w = np.uint32(h) << np.uint32(16)
    sign = w & np.uint32(0x80000000)
    two_w = np.uint32(w + w)
    exp_offset = np.uint32(0xE0) << np.uint32(23)
    normalized_value = bits_to_f32((two_w >> np.uint32(4)) + exp_offset) * _EXP_SCALE
    magic_mask = np.uint32(126) << np.uint32(23)
    denormalized_value = bits_to_f32((two_w >> np.uint32(17)) | magic_mask) - _HALF
    if two_w < (np.uint32(1) << np.uint32(27)):
        result = sign | f32_to_bits(denormalized_value)
    else:
        result = sign | f32_to_bits(normalized_value)
    return bits_to_f32(result)


@njit(cache=True, nogil=True)
def fp16_round(f):
    """The float32 value a float32 takes after a trip through fp16 (GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x)))."""
    return fp16_to_fp32(fp32_to_fp16(f))


@njit(cache=True, nogil=True)
def fp32_to_bf16(f):
    """ggml_compute_fp32_to_bf16: round to nearest even; NaN forced quiet. Returns uint16."""
    u = np.uint32(f32_to_bits(f))
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(64))
    return np.uint16((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))


@njit(cache=True, nogil=True)
def nearest_int(fval):
    """ggml's nearest_int: adds 1.5 * 2**23 in float32, so ties round to even (valid for |x| <= 4194303)."""
    val = np.float32(fval) + _MAGIC
    i = np.int32(f32_to_bits(val))
    return (i & np.int32(0x007FFFFF)) - np.int32(0x00400000)


@njit(cache=True, nogil=True)
def roundf(x):
    """C roundf: half away from zero (used where ggml calls roundf rather than nearest_int)."""
    a = abs(np.float32(x))
    t = np.float32(np.floor(a))
    if a - t >= _HALF:  # exact in float32: a - floor(a) needs no rounding
        t = t + np.float32(1.0)
    return t if x >= 0 else -t
