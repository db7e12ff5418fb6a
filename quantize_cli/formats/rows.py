"""What llama.cpp checks of tensor data before it uses it: ggml_validate_row_data
(ggml/src/ggml-quants.c). llama-quantize runs it on every slab it copies or quantizes and
stops with "quantized data validation failed" (or "tensor '...' has invalid data"); the model
loader runs it with check_tensors. We run the same check on what we write, so that we refuse
exactly where llama-quantize refuses and never write a file llama.cpp would reject.

The check reads only the block scales: Inf or NaN fp16 ``d`` (and ``dmin``/``m`` where the
block has one), an fp32 ``d`` for Q8_K, the E8M0 exponent 0xFF for MXFP4, and every value of
F32/F16/BF16/F64 data. Quant bits are never invalid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType as T

# byte offsets of the fp16 scales inside one block (ggml-common.h)
_FP16_SCALES = {
    "Q1_0": (0,), "Q2_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "TQ1_0": (52,), "TQ2_0": (64,), "IQ1_S": (0,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,),
    "IQ3_XXS": (0,), "IQ3_S": (0,), "IQ4_XS": (0,), "IQ4_NL": (0,),
}
_NOTHING = {"NVFP4", "I8", "I16", "I32", "I64"}  # every bit pattern is valid


@dataclass
class BadBlock:
    row: int    # row index within the rows checked
    block: int  # block index within that row (element index for float types)
    what: str   # "inf", "nan" or "invalid e value 255"


def _fp16_bad(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(isinf, isnan) of fp16 bit patterns, as isinf_fp16 / isnan_fp16."""
    exp_all = (h & 0x7C00) == 0x7C00
    return exp_all & ((h & 0x03FF) == 0), exp_all & ((h & 0x03FF) != 0)


def _all_finite(bits: np.ndarray, magnitude: int, exp_all: int) -> bool:
    """True when no value is inf or nan: with the sign bit masked off, every inf/nan bit pattern
    is >= the all-ones exponent. Two passes over the data instead of the detailed path's ten
    (F16 output checks were a third of a 308 M-weight F16 run); the detailed path runs only on a hit."""
    return int((bits & bits.dtype.type(magnitude)).max()) < exp_all


def _first(mask: np.ndarray, what: str) -> BadBlock | None:
    """The first flagged (row, block) of a (rows, blocks) mask."""
    if not mask.any():
        return None
    flat = int(np.argmax(mask.reshape(-1)))
    return BadBlock(flat // mask.shape[1], flat % mask.shape[1], what)


def _first_of(inf: np.ndarray, nan: np.ndarray) -> BadBlock | None:
    bad = inf | nan
    hit = _first(bad, "")
    if hit is not None:
        hit.what = "inf" if inf[hit.row, hit.block] else "nan"
    return hit


def first_invalid_block(qtype: T, rows: np.ndarray) -> BadBlock | None:
    """ggml_validate_row_data over rows of `qtype` data: uint8 (nrows, row_bytes). Returns the
    first bad block in row order (llama.cpp stops at its first too), or None."""
    name = T(qtype).name
    rows = np.ascontiguousarray(rows).view(np.uint8)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    nrows = rows.shape[0]
    if nrows == 0 or rows.shape[1] == 0:
        return None
    if name in _NOTHING:
        return None
    if name == "F32":
        bits = rows.view(np.uint32)
        if _all_finite(bits, 0x7FFFFFFF, 0x7F800000):
            return None
        exp_all = (bits & 0x7F800000) == 0x7F800000
        return _first_of(exp_all & ((bits & 0x007FFFFF) == 0), exp_all & ((bits & 0x007FFFFF) != 0))
    if name == "F64":
        v = rows.view(np.float64)
        return _first_of(np.isinf(v), np.isnan(v))
    if name == "F16":
        if _all_finite(rows.view(np.uint16), 0x7FFF, 0x7C00):
            return None
        return _first_of(*_fp16_bad(rows.view(np.uint16)))
    if name == "BF16":
        if _all_finite(rows.view(np.uint16), 0x7FFF, 0x7F80):
            return None
        b = rows.view(np.uint16) & 0x7FFF
        return _first_of(b == 0x7F80, b > 0x7F80)
    block_size, type_size = GGML_QUANT_SIZES[T(qtype)]
    blocks = rows.reshape(nrows, -1, type_size)  # (rows, blocks per row, bytes per block)
    if name == "Q8_K":
        d = np.ascontiguousarray(blocks[:, :, 0:4]).view(np.float32)[:, :, 0]
        return _first_of(np.isinf(d), np.isnan(d))
    if name == "MXFP4":
        return _first(blocks[:, :, 0] == 0xFF, "invalid e value 255")
    if name == "IQ1_M":
        # the block scale is spread over the top nibbles of four uint16 at bytes 48..55
        sc = np.ascontiguousarray(blocks[:, :, 48:56]).view(np.uint16)  # (rows, blocks, 4)
        h = ((sc[..., 0] >> 12) | ((sc[..., 1] >> 8) & 0x00F0) | ((sc[..., 2] >> 4) & 0x0F00)
             | (sc[..., 3] & 0xF000))
        return _first_of(*_fp16_bad(h))
    offsets = _FP16_SCALES.get(name)
    if offsets is None:
        raise ValueError(f"no row validation for {name}")
    scales = [np.ascontiguousarray(blocks[:, :, off:off + 2]).view(np.uint16)[:, :, 0] for off in offsets]
    if all(_all_finite(h, 0x7FFF, 0x7C00) for h in scales):
        return None
    inf = np.zeros(blocks.shape[:2], dtype=bool)
    nan = np.zeros(blocks.shape[:2], dtype=bool)
    for h in scales:
        i, n = _fp16_bad(h)
        inf |= i
        nan |= n
    return _first_of(inf, nan)


def describe(bad: BadBlock, qtype: T, first_row: int) -> str:
    name = T(qtype).name
    unit = "value" if name in ("F32", "F16", "BF16", "F64") else "block"
    return f"row {first_row + bad.row} {unit} {bad.block}: {bad.what}"
