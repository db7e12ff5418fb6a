"""llama.cpp's llama_model_quantize (the library behind llama-quantize) through ctypes.

The parameter struct is declared here from include/llama.h of the llama.cpp that
llama-cpp-python 0.3.36 bundles (its own Python declaration may lag). `llama_quantize` adds
what the llama-quantize tool adds around the library call (imatrix filtering and the
quantize.imatrix.* metadata), so whole files can be compared with ours."""

from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

import ggml_ref


class ImatrixData(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("data", ctypes.POINTER(ctypes.c_float)), ("size", ctypes.c_size_t)]


class _KVValue(ctypes.Union):
    _fields_ = [("val_i64", ctypes.c_int64), ("val_f64", ctypes.c_double), ("val_bool", ctypes.c_bool),
                ("val_str", ctypes.c_char * 128)]


class KVOverride(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [("tag", ctypes.c_int), ("key", ctypes.c_char * 128), ("u", _KVValue)]


class TensorOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("type", ctypes.c_int)]


class QuantizeParams(ctypes.Structure):
    _fields_ = [
        ("nthread", ctypes.c_int32), ("ftype", ctypes.c_int), ("output_tensor_type", ctypes.c_int),
        ("token_embedding_type", ctypes.c_int), ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool), ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool),
        ("imatrix", ctypes.POINTER(ImatrixData)), ("kv_overrides", ctypes.POINTER(KVOverride)),
        ("tt_overrides", ctypes.POINTER(TensorOverride)), ("prune_layers", ctypes.POINTER(ctypes.c_int32)),
        ("max_buf_size", ctypes.c_size_t),
    ]


GGML_TYPE_COUNT = 43
KV_INT, KV_FLOAT, KV_BOOL, KV_STR = 0, 1, 2, 3


@lru_cache(maxsize=1)
def lib():
    path = ggml_ref.library_path("libllama.so")
    if path is None:
        return None
    ggml_ref.lib()  # load ggml first, globally
    so = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    so.llama_model_quantize_default_params.restype = QuantizeParams
    so.llama_model_quantize.restype = ctypes.c_uint32
    so.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(QuantizeParams)]
    so.llama_backend_init()
    log_cb = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    so._quiet = log_cb(lambda level, text, user: None)  # keep a reference
    so.llama_log_set(so._quiet, None)
    return so


def llama_quantize(src, dst, ftype: int, *, only_copy=False, nthread=1, allow_requantize=False,
                   leave_output_tensor=False, pure=False, keep_split=False, output_tensor_type=None,
                   token_embedding_type=None, tensor_types=(), prune_layers=(), kv_overrides=(),
                   imatrix=None, imatrix_file=None, imatrix_datasets=(), imatrix_chunks=0) -> None:
    """Run llama_model_quantize as the llama-quantize tool would call it.

    kv_overrides: (key, "int"|"float"|"bool"|"str", value) as --override-kv gives them.
    imatrix: {name: float32 values} already filtered; with imatrix_file the tool's
    quantize.imatrix.* overrides are appended in its order."""
    so = lib()
    params = so.llama_model_quantize_default_params()
    params.nthread = nthread
    params.ftype = ftype
    params.only_copy = only_copy
    params.allow_requantize = allow_requantize
    params.quantize_output_tensor = not leave_output_tensor
    params.pure = pure
    params.keep_split = keep_split
    params.output_tensor_type = GGML_TYPE_COUNT if output_tensor_type is None else int(output_tensor_type)
    params.token_embedding_type = GGML_TYPE_COUNT if token_embedding_type is None else int(token_embedding_type)
    keep = []  # ctypes buffers that must outlive the call
    kvs = list(kv_overrides)
    if imatrix:
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in imatrix.items()}
        entries = (ImatrixData * (len(arrays) + 1))()
        for i, (name, values) in enumerate(arrays.items()):
            entries[i].name = name.encode()
            entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = values.size
        keep += [arrays, entries]
        params.imatrix = entries
        if imatrix_file is not None:
            kvs.append(("quantize.imatrix.file", "str", imatrix_file))
            if imatrix_datasets:
                kvs.append(("quantize.imatrix.dataset", "str", imatrix_datasets[0]))
            kvs.append(("quantize.imatrix.entries_count", "int", len(arrays)))
            if imatrix_chunks > 0:
                kvs.append(("quantize.imatrix.chunks_count", "int", imatrix_chunks))
    if kvs:
        arr = (KVOverride * (len(kvs) + 1))()
        for i, (key, kind, value) in enumerate(kvs):
            arr[i].key = key.encode()
            if kind == "int":
                arr[i].tag, arr[i].val_i64 = KV_INT, int(value)
            elif kind == "float":
                arr[i].tag, arr[i].val_f64 = KV_FLOAT, float(value)
            elif kind == "bool":
                arr[i].tag, arr[i].val_bool = KV_BOOL, bool(value)
            else:
                arr[i].tag, arr[i].val_str = KV_STR, str(value).encode()[:127]
        keep.append(arr)
        params.kv_overrides = arr
    if tensor_types:
        tts = (TensorOverride * (len(tensor_types) + 1))()
        for i, (pattern, qtype) in enumerate(tensor_types):
            tts[i].pattern = pattern.encode()
            tts[i].type = int(qtype)
        keep.append(tts)
        params.tt_overrides = tts
    if prune_layers:
        arr = (ctypes.c_int32 * (len(prune_layers) + 1))(*prune_layers, -1)
        keep.append(arr)
        params.prune_layers = arr
    rc = so.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {src} -> {dst}")
