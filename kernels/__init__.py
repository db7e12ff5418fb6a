"""The type registry: every ggml tensor type we can write or read, mapped to its kernel pair.

A kernel module (one family each: floats, legacy, kquants_q2q3, iq2, ...) exposes
``KERNELS: list[Kernel]``; what several families share sits in modules that register nothing
(common, solvers, kquants_common, iquants_common, iq1_common, iq_tables). A family is imported
on the first use of one of its types (FAMILY_OF), so that ``pyquantize --help`` and ``inspect``
never pay for Numba and a conversion only for the families it calls.

Contract of a kernel pair (no file I/O, no globals read inside the JIT code):
- ``quantize(rows, imatrix)``: ``rows`` is C-contiguous float32 (nrows, n_per_row),
  ``imatrix`` is None or C-contiguous float32 (n_per_row,). Returns C-contiguous uint8
  (nrows, row_bytes): exactly the bytes of ggml_quantize_chunk(type, rows, dst, 0, nrows,
  n_per_row, imatrix). Rows are independent, so any thread count gives the same bytes.
- ``dequantize(blob, n_per_row)``: uint8 (nrows, row_bytes) -> float32 (nrows, n_per_row),
  as ggml's dequantize_row_*.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from .gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType

QuantizeFn = Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]
DequantizeFn = Callable[[np.ndarray, int], np.ndarray]

# Kernel families, in the order they register. A family not written yet is simply absent.
FAMILIES = ("floats", "legacy", "kquants_q2q3", "kquants_q4q8", "iq2", "iq3", "iq1_s", "iq1_m", "iq4", "ternary",
            "mxfp4", "q1q2")

# The family of each type, so that a run imports only the families it calls: importing all twelve
# (their Numba dispatchers, the IQ grids with the whole gguf package) costs ~40 ms, a tenth of a
# small conversion. tests/test_registry.py checks this table against every family's KERNELS.
FAMILY_OF = {
    "F32": "floats", "F16": "floats", "BF16": "floats",
    "Q4_0": "legacy", "Q4_1": "legacy", "Q5_0": "legacy", "Q5_1": "legacy", "Q8_0": "legacy",
    "Q2_K": "kquants_q2q3", "Q3_K": "kquants_q2q3",
    "Q4_K": "kquants_q4q8", "Q5_K": "kquants_q4q8", "Q6_K": "kquants_q4q8", "Q8_K": "kquants_q4q8",
    "IQ2_XXS": "iq2", "IQ2_XS": "iq2", "IQ2_S": "iq2", "IQ3_XXS": "iq3", "IQ3_S": "iq3",
    "IQ1_S": "iq1_s", "IQ1_M": "iq1_m",
    "IQ4_NL": "iq4", "IQ4_XS": "iq4",
    "TQ1_0": "ternary", "TQ2_0": "ternary",
    "MXFP4": "mxfp4", "NVFP4": "mxfp4",
    "Q1_0": "q1q2", "Q2_0": "q1q2",
}


@dataclass(frozen=True)
class Kernel:
    type: GGMLQuantizationType
    quantize: Optional[QuantizeFn]
    dequantize: Optional[DequantizeFn]
    needs_imatrix: bool = False

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.type][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.type][1]

    def row_bytes(self, n_per_row: int) -> int:
        return n_per_row // self.block_size * self.type_size


class KernelMissing(LookupError):
    """No quantizer (or dequantizer) exists for this type yet."""


_families: dict[str, dict[GGMLQuantizationType, Kernel]] = {}


def family_kernels(family: str) -> dict[GGMLQuantizationType, Kernel]:
    """The kernels one family module registers (imported on first use; empty if it is absent)."""
    found = _families.get(family)
    if found is None:
        module_name = f"{__name__}.{family}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            found = {}
        else:
            found = {kernel.type: kernel for kernel in module.KERNELS}
        _families[family] = found
    return found


def registry() -> dict[GGMLQuantizationType, Kernel]:
    """Every kernel of every family (imports them all)."""
    found: dict[GGMLQuantizationType, Kernel] = {}
    for family in FAMILIES:
        found.update(family_kernels(family))
    return found


def _lookup(qtype: GGMLQuantizationType) -> Kernel | None:
    qtype = GGMLQuantizationType(qtype)
    family = FAMILY_OF.get(qtype.name)
    return family_kernels(family).get(qtype) if family is not None else None


def row_bytes(qtype: GGMLQuantizationType, n_per_row: int) -> int:
    """Bytes of one row of n_per_row weights (ggml_row_size); needs no kernel."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return n_per_row // block_size * type_size


def get(qtype: GGMLQuantizationType) -> Kernel:
    kernel = _lookup(qtype)
    if kernel is None:
        raise KernelMissing(f"no kernel for {GGMLQuantizationType(qtype).name} yet")
    return kernel


def can_quantize(qtype: GGMLQuantizationType) -> bool:
    kernel = _lookup(qtype)
    return kernel is not None and kernel.quantize is not None


def can_dequantize(qtype: GGMLQuantizationType) -> bool:
    kernel = _lookup(qtype)
    return kernel is not None and kernel.dequantize is not None


def quantize(rows: np.ndarray, qtype: GGMLQuantizationType, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float rows (nrows, n_per_row) to uint8 (nrows, row_bytes)."""
    kernel = get(qtype)
    if kernel.quantize is None:
        raise KernelMissing(f"no quantizer for {kernel.name} yet")
    if imatrix is None and kernel.needs_imatrix:
        raise ValueError(f"{kernel.name} needs an importance matrix (llama.cpp refuses to quantize it without one)")
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.shape[1] % kernel.block_size:
        raise ValueError(f"row length {rows.shape[1]} is not a multiple of {kernel.block_size} ({kernel.name})")
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (rows.shape[1],):
            raise ValueError(f"imatrix has {imatrix.size} entries, rows have {rows.shape[1]}")
    return kernel.quantize(rows, imatrix)


def dequantize(blob: np.ndarray, qtype: GGMLQuantizationType, n_per_row: int) -> np.ndarray:
    """Dequantize uint8 (nrows, row_bytes) (or flat bytes) to float32 (nrows, n_per_row)."""
    kernel = get(qtype)
    if kernel.dequantize is None:
        raise KernelMissing(f"no dequantizer for {kernel.name} yet")
    blob = np.ascontiguousarray(blob).view(np.uint8).reshape(-1, kernel.row_bytes(n_per_row))
    return kernel.dequantize(blob, n_per_row)


def warmup(qtypes, with_imatrix: bool = False, dequantize_types=(), check_inputs: bool = False) -> None:
    """Compile (or load from cache) the kernels a run will call, before timed work starts: the
    quantizers of `qtypes` (with and/or without an imatrix), the dequantizers of
    `dequantize_types`, and the NaN/Inf input check. Each cached kernel costs about 25 ms to load,
    so only what is named is touched."""
    for qtype in qtypes:
        kernel = get(qtype)
        n = max(256, kernel.block_size)
        x = np.linspace(-1, 1, n, dtype=np.float32).reshape(1, n)
        if kernel.quantize is not None:
            if not kernel.needs_imatrix:
                kernel.quantize(x, None)
            if with_imatrix or kernel.needs_imatrix:
                kernel.quantize(x, np.ones(n, dtype=np.float32))
    for qtype in dequantize_types:
        kernel = get(qtype)
        n = max(256, kernel.block_size)
        if kernel.dequantize is not None:
            kernel.dequantize(np.zeros((1, kernel.row_bytes(n)), dtype=np.uint8), n)
    if check_inputs:
        first_nonfinite_row(np.zeros((1, 256), dtype=np.float32))


def first_nonfinite_row(x: np.ndarray) -> int:
    """Index of the first row of float32 (nrows, n) holding NaN or +-Inf, or -1 if none."""
    from .checks import first_nonfinite_row as check

    return check(x)


def set_threads(n: int | None) -> int:
    """Set the Numba thread count (None or <= 0: all cores). Returns the count in use."""
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    n = limit if not n or n <= 0 else min(n, limit)
    numba.set_num_threads(n)
    return n
