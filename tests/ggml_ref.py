"""The reference: llama.cpp's own ggml, through ctypes, from the llama-cpp-python package.

Nothing here is needed by the default test tier. ``lib()`` returns None when llama-cpp-python
is not installed, and the reference tests skip with that reason. Set PYQUANTIZE_GGML_LIB to
point at another libggml-base.so (for instance one built by scripts/build_llama_cpp.sh).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

WHY_ABSENT = "llama-cpp-python is not installed (pip install llama-cpp-python), so the llama.cpp reference is absent"


def _lib_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return d if d.is_dir() else None


def library_path(name: str) -> Path | None:
    env = os.environ.get("PYQUANTIZE_GGML_LIB")
    if env and name == "libggml-base.so":
        return Path(env)
    d = _lib_dir()
    if d is None:
        return None
    p = d / name
    return p if p.exists() else None


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@lru_cache(maxsize=1)
def lib():
    path = library_path("libggml-base.so")
    if path is None:
        return None
    so = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    so.ggml_quantize_chunk.restype = ctypes.c_size_t
    so.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    so.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    so.ggml_get_type_traits.argtypes = [ctypes.c_int]
    so.ggml_row_size.restype = ctypes.c_size_t
    so.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    so.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    so.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return so


def quantize(rows: np.ndarray, qtype: int, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk over all rows: uint8 (nrows, row_bytes)."""
    so = lib()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n_per_row = rows.shape
    row_bytes = so.ggml_row_size(int(qtype), n_per_row)
    out = np.zeros((nrows, row_bytes), dtype=np.uint8)
    im = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        im = imatrix.ctypes.data
    written = so.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, nrows, n_per_row, im)
    assert written == out.nbytes, (written, out.nbytes)
    return out


def dequantize(blob: np.ndarray, qtype: int, n_per_row: int) -> np.ndarray:
    """ggml's to_float (dequantize_row_*) row by row: float32 (nrows, n_per_row)."""
    so = lib()
    traits = so.ggml_get_type_traits(int(qtype)).contents
    to_float = _TO_FLOAT(traits.to_float)
    blob = np.ascontiguousarray(blob, dtype=np.uint8)
    nrows = blob.shape[0]
    out = np.empty((nrows, n_per_row), dtype=np.float32)
    for r in range(nrows):
        to_float(blob[r].ctypes.data, out[r].ctypes.data, n_per_row)
    return out


def first_difference(ours: np.ndarray, ref: np.ndarray, block_bytes: int) -> str | None:
    """None when identical; else names the first differing row and block and shows both."""
    if ours.shape != ref.shape:
        return f"shape {ours.shape} != reference {ref.shape}"
    diff = np.nonzero((ours != ref).reshape(ours.shape[0], -1).any(axis=1))[0]
    if diff.size == 0:
        return None
    r = int(diff[0])
    row_diff = np.nonzero(ours[r] != ref[r])[0]
    b = int(row_diff[0]) // block_bytes
    sl = slice(b * block_bytes, (b + 1) * block_bytes)
    n_bad_rows = diff.size
    return (f"{n_bad_rows} of {ours.shape[0]} rows differ; first: row {r} block {b}\n"
            f"  ours: {ours[r, sl].tobytes().hex()}\n  ggml: {ref[r, sl].tobytes().hex()}")
