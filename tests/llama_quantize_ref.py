"""The whole-file reference: llama.cpp's llama_model_quantize through ctypes, from the libllama.so
that llama-cpp-python ships. Nothing here is needed by the default test tier.

The params struct is declared here from include/llama.h of the same sdist (0.3.36), not taken
from llama_cpp's Python bindings: in this version imatrix, kv_overrides, tt_overrides and
prune_layers are pointers. ``quantize`` returns llama.cpp's return code and everything it logged;
``dry_run_types`` parses the per-tensor lines of a --dry-run; ``read_gguf_layout`` reads the
metadata keys and tensor types of an output file without the gguf package (which may not know
every ggml type id).
"""

from __future__ import annotations

import ctypes
import re
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

import ggml_ref

LLAMA_KV_OVERRIDE_TYPE_INT, LLAMA_KV_OVERRIDE_TYPE_FLOAT, LLAMA_KV_OVERRIDE_TYPE_BOOL, LLAMA_KV_OVERRIDE_TYPE_STR = range(4)
GGML_TYPE_COUNT = 43


class _ImatrixData(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.POINTER(ctypes.c_float)), ("size", ctypes.c_size_t)]


class _KVOverrideValue(ctypes.Union):
    _fields_ = [("val_i64", ctypes.c_int64), ("val_f64", ctypes.c_double), ("val_bool", ctypes.c_bool),
                ("val_str", ctypes.c_char * 128)]


class _KVOverride(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("tag", ctypes.c_int), ("key", ctypes.c_char * 128), ("u", _KVOverrideValue)]


class _TensorOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("type", ctypes.c_int)]


class QuantizeParams(ctypes.Structure):
    _fields_ = [
        ("nthread", ctypes.c_int32),
        ("ftype", ctypes.c_int),
        ("output_tensor_type", ctypes.c_int),
        ("token_embedding_type", ctypes.c_int),
        ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool),
        ("only_copy", ctypes.c_bool),
        ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool),
        ("dry_run", ctypes.c_bool),
        ("imatrix", ctypes.POINTER(_ImatrixData)),
        ("kv_overrides", ctypes.POINTER(_KVOverride)),
        ("tt_overrides", ctypes.POINTER(_TensorOverride)),
        ("prune_layers", ctypes.POINTER(ctypes.c_int32)),
        ("max_buf_size", ctypes.c_size_t),
    ]


_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log: list[str] = []


@_LOG_CB
def _collect(level, text, user_data):  # pragma: no cover - called from C
    _log.append(text.decode("utf-8", errors="replace"))


@lru_cache(maxsize=1)
def lib():
    path = ggml_ref.library_path("libllama.so")
    if path is None or ggml_ref.lib() is None:
        return None
    so = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    so.llama_model_quantize_default_params.restype = QuantizeParams
    so.llama_model_quantize.restype = ctypes.c_uint32
    so.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    so.llama_log_set.argtypes = [_LOG_CB, ctypes.c_void_p]
    so.llama_backend_init.argtypes = []
    so.llama_backend_init()
    so.llama_log_set(_collect, None)
    return so


def quantize(inp: str | Path, out: str | Path, ftype: int, *, nthread: int = 1,
             output_tensor_type: int | None = None, token_embedding_type: int | None = None,
             allow_requantize: bool = False, leave_output_tensor: bool = False, only_copy: bool = False,
             pure: bool = False, keep_split: bool = False, dry_run: bool = False,
             imatrix: dict[str, np.ndarray] | None = None,
             kv_overrides: list[tuple[str, str, object]] | None = None,
             tensor_types: list[tuple[str, int]] | None = None,
             prune_layers: list[int] | None = None, max_buf_size: int = 0) -> tuple[int, str]:
    """llama_model_quantize with llama-quantize's options; returns (return code, log text).
    kv_overrides: (key, "int"|"float"|"bool"|"str", value), in order."""
    so = lib()
    p = so.llama_model_quantize_default_params()
    p.nthread = nthread
    p.ftype = int(ftype)
    p.output_tensor_type = GGML_TYPE_COUNT if output_tensor_type is None else int(output_tensor_type)
    p.token_embedding_type = GGML_TYPE_COUNT if token_embedding_type is None else int(token_embedding_type)
    p.allow_requantize = allow_requantize
    p.quantize_output_tensor = not leave_output_tensor
    p.only_copy = only_copy
    p.pure = pure
    p.keep_split = keep_split
    p.dry_run = dry_run
    p.max_buf_size = max_buf_size
    keep = []  # keep every buffer alive until the call returns
    if imatrix:
        arr = (_ImatrixData * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep += [values, name.encode()]
            arr[i].name = keep[-1]
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = values.size
        p.imatrix = arr
        keep.append(arr)
    if kv_overrides:
        arr = (_KVOverride * (len(kv_overrides) + 1))()
        for i, (key, kind, value) in enumerate(kv_overrides):
            arr[i].key = key.encode()
            arr[i].tag = {"int": 0, "float": 1, "bool": 2, "str": 3}[kind]
            if kind == "int":
                arr[i].val_i64 = int(value)
            elif kind == "float":
                arr[i].val_f64 = float(value)
            elif kind == "bool":
                arr[i].val_bool = bool(value)
            else:
                arr[i].val_str = str(value).encode()[:127]
        arr[len(kv_overrides)].key = b""
        p.kv_overrides = arr
        keep.append(arr)
    if tensor_types:
        arr = (_TensorOverride * (len(tensor_types) + 1))()
        for i, (pattern, qtype) in enumerate(tensor_types):
            keep.append(pattern.encode())
            arr[i].pattern = keep[-1]
            arr[i].type = int(qtype)
        arr[len(tensor_types)].pattern = None
        arr[len(tensor_types)].type = GGML_TYPE_COUNT
        p.tt_overrides = arr
        keep.append(arr)
    if prune_layers:
        arr = (ctypes.c_int32 * (len(prune_layers) + 1))(*prune_layers, -1)
        p.prune_layers = arr
        keep.append(arr)
    _log.clear()
    # take the log back every call: importing llama_cpp (other tests do) installs its own callback
    so.llama_log_set(_collect, None)
    rc = so.llama_model_quantize(str(inp).encode(), str(out).encode(), ctypes.byref(p))
    return int(rc), "".join(_log)


_TENSOR_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[(?P<shape>[^\]]*)\], type =\s*(?P<src>\S+), "
    r"size =\s*[\d.]+ MiB(?: ->\s*[\d.]+ MiB \((?P<dst>\S+)\))?")


def dry_run_types(log: str) -> list[tuple[str, str]]:
    """(tensor name, target ggml type name upper-cased) per tensor, in llama.cpp's order."""
    out = []
    for m in _TENSOR_LINE.finditer(log):
        out.append((m.group("name"), (m.group("dst") or m.group("src")).upper()))
    return out


_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_layout(path: str | Path) -> dict:
    """{'kv': [(key, type id, raw bytes of the value)], 'tensors': [(name, ne, type id, offset)],
    'data_offset': int, 'size': int} of a GGUF file, for comparing files key by key."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals[0]

    def string():
        nonlocal pos
        n = take("<Q")
        s = data[pos:pos + n].decode("utf-8", errors="surrogateescape")
        pos += n
        return s

    def skip_value(vtype):
        nonlocal pos
        if vtype == 8:
            string()
        elif vtype == 9:
            itype, n = take("<I"), take("<Q")
            for _ in range(n):
                skip_value(itype)
        else:
            pos += struct.calcsize(_GGUF_SCALAR[vtype])

    assert data[:4] == b"GGUF", path
    pos = 4
    take("<I")
    n_tensors, n_kv = take("<Q"), take("<Q")
    kv = []
    alignment = 32
    for _ in range(n_kv):
        key = string()
        vtype = take("<I")
        start = pos
        skip_value(vtype)
        kv.append((key, vtype, data[start:pos]))
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", data, start)[0]
    tensors = []
    for _ in range(n_tensors):
        name = string()
        nd = take("<I")
        ne = tuple(take("<Q") for _ in range(nd))
        qtype = take("<I")
        offset = take("<Q")
        tensors.append((name, ne, qtype, offset))
    data_offset = (pos + alignment - 1) // alignment * alignment
    return {"kv": kv, "tensors": tensors, "data_offset": data_offset, "size": len(data)}
