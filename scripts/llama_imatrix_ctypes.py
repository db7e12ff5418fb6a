#!/usr/bin/env python3
"""llama-imatrix's collection, driven through llama-cpp-python's libllama (ctypes), no binary.

The same graph evaluation callback llama-imatrix installs (cb_eval): for each MUL_MAT whose weight
is a blk.* tensor (or output.weight with process_output) and whose input has >= 16 rows of F32, the
squared inputs are added per column, row by row in float32, and the rows counted; for each
MUL_MAT_ID (expert tensors) every routed row is added to its expert's sums and counts. The driver is
llama-imatrix's compute_imatrix: chunks of n_ctx tokens, the first replaced by BOS, the KV cache
cleared between chunks, all logits requested; perplexity over the second half of each chunk.
The KV cache is F32 and flash attention off (as the parity tests ask) unless `defaults` is set.

    python scripts/llama_imatrix_ctypes.py MODEL TEXT OUT.gguf [--chunks N] [--process-output]
"""

from __future__ import annotations

import argparse
import ctypes
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class GGMLTensor(ctypes.Structure):  # struct ggml_tensor (ggml.h)
    _fields_ = [
        ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _filter_name(name: str) -> str:
    """filter_tensor_name: CUDA0#blk.0.attn_k.weight#0 -> blk.0.attn_k.weight"""
    if "#" in name:
        return name.split("#")[1]
    return name


def _mul_mat_op(name: bytes = b"MUL_MAT") -> int:
    import os

    import llama_cpp

    lib_dir = os.environ.get("LLAMA_CPP_LIB_PATH") or str(Path(llama_cpp.__file__).parent / "lib")
    lib = ctypes.CDLL(str(Path(lib_dir) / "libggml-base.so"))
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    for op in range(200):
        if lib.ggml_op_name(op) == name:
            return op
    raise RuntimeError(f"GGML_OP_{name.decode()} not found")


def _tensor_view(t: GGMLTensor, dtype) -> np.ndarray:
    """A host tensor's data as a strided (ne3, ne2, ne1, ne0) array."""
    ne0, ne1, ne2, ne3 = t.ne
    nb = t.nb
    n_bytes = (ne3 - 1) * nb[3] + (ne2 - 1) * nb[2] + (ne1 - 1) * nb[1] + ne0 * nb[0]
    raw = np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_uint8)), shape=(n_bytes,))
    return np.lib.stride_tricks.as_strided(raw.view(dtype), shape=(ne3, ne2, ne1, ne0),
                                           strides=(nb[3], nb[2], nb[1], nb[0]))


def collect(model_path: Path, text: str, n_ctx: int = 512, chunks: int = -1, process_output: bool = False,
            defaults: bool = False, parse_special: bool = False, from_chunk: int = 0):
    """Returns (stats {name: (values float32, count)}, per-chunk running perplexities)."""
    import llama_cpp as L

    mul_mat, mul_mat_id = _mul_mat_op(), _mul_mat_op(b"MUL_MAT_ID")
    stats: dict[str, list] = {}

    def callback(t_ptr, ask, _user):
        t = ctypes.cast(t_ptr, ctypes.POINTER(GGMLTensor)).contents
        if t.op == mul_mat_id:  # expert matmuls: all of them, per-expert sums and counts
            if ask:
                return True
            src0 = ctypes.cast(t.src[0], ctypes.POINTER(GGMLTensor)).contents
            src1 = ctypes.cast(t.src[1], ctypes.POINTER(GGMLTensor)).contents
            ids = _tensor_view(ctypes.cast(t.src[2], ctypes.POINTER(GGMLTensor)).contents, np.int32)[0, 0]
            x = _tensor_view(src1, np.float32)[0]  # (n_tokens, 1 or n_used, ne0)
            n_as, ne0 = src0.ne[2], src1.ne[0]
            e = stats.setdefault(_filter_name(src0.name.decode()),
                                 [np.zeros(ne0 * n_as, np.float32), np.zeros(n_as, np.int64)])
            for idx in range(ids.shape[1]):  # slot, then token, as collect_imatrix walks the ids
                for row in range(ids.shape[0]):
                    ex = int(ids[row, idx])
                    v = x[row, idx % x.shape[1]]
                    e[0][ex * ne0:(ex + 1) * ne0] += v * v
                    e[1][ex] += 1
            return True
        if t.op != mul_mat:
            return False
        src0 = ctypes.cast(t.src[0], ctypes.POINTER(GGMLTensor)).contents
        src1 = ctypes.cast(t.src[1], ctypes.POINTER(GGMLTensor)).contents
        wname = _filter_name(src0.name.decode())
        if ask:
            if src1.ne[1] < 16 or src1.type != 0:  # GGML_TYPE_F32
                return False
            return wname.startswith("blk.") or (process_output and wname == "output.weight")
        ne0, ne1, ne2, ne3 = src1.ne
        nb = src1.nb
        n_bytes = (ne3 - 1) * nb[3] + (ne2 - 1) * nb[2] + (ne1 - 1) * nb[1] + ne0 * 4
        raw = np.ctypeslib.as_array(ctypes.cast(src1.data, ctypes.POINTER(ctypes.c_uint8)), shape=(n_bytes,))
        x = np.lib.stride_tricks.as_strided(raw.view(np.float32) if nb[0] == 4 else raw, shape=(ne3, ne2, ne1, ne0),
                                            strides=(nb[3], nb[2], nb[1], 4))
        n_mat = src0.ne[2] * src0.ne[3]
        e = stats.setdefault(wname, [np.zeros(ne0 * n_mat, np.float32), 0])
        for i3 in range(ne3):
            for i2 in range(ne2):
                mat_id = (i3 % src0.ne[3]) * src0.ne[2] + (i2 % src0.ne[2])
                acc = e[0][mat_id * ne0:(mat_id + 1) * ne0]
                for row in x[i3, i2]:
                    acc += row * row  # float32, row by row, as the C loop
        e[1] += (ne1 * ne2 * ne3) // n_mat
        return True

    cb = L.ggml_backend_sched_eval_callback(callback)
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(model_path).encode(), mparams)
    cparams = L.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_ctx
    cparams.n_ubatch = n_ctx
    cparams.n_seq_max = 1
    cparams.n_threads = 1
    cparams.n_threads_batch = 1
    if not defaults:
        cparams.type_k = 0
        cparams.type_v = 0
        cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cparams.cb_eval = cb
    cparams.cb_eval_user_data = None
    ctx = L.llama_init_from_model(model, cparams)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    data = text.encode()
    buf = (L.llama_token * (len(data) + 16))()
    n = L.llama_tokenize(vocab, data, len(data), buf, len(buf), True, parse_special)
    tokens = np.array(buf[:n], dtype=np.int32)
    tokens = tokens[from_chunk * n_ctx:]
    add_bos = L.llama_vocab_get_add_bos(vocab)
    bos = L.llama_vocab_bos(vocab)
    n_chunk = len(tokens) // n_ctx if chunks < 0 else min(chunks, len(tokens) // n_ctx)
    batch = L.llama_batch_init(n_ctx, 0, 1)
    first = n_ctx // 2
    nll, count, ppls = 0.0, 0, []
    for i in range(n_chunk):
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
        if add_bos:
            chunk[0] = bos
        batch.n_tokens = n_ctx
        for k in range(n_ctx):
            batch.token[k] = int(chunk[k])
            batch.pos[k] = k
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = 0
            batch.logits[k] = True
        if L.llama_decode(ctx, batch):
            raise RuntimeError("llama_decode failed")
        logits = np.ctypeslib.as_array(L.llama_get_logits(ctx), shape=(n_ctx * n_vocab,)).reshape(n_ctx, n_vocab)
        lg = logits[first:n_ctx - 1].astype(np.float64)
        mx = lg.max(axis=1, keepdims=True)
        lse = np.log(np.exp(lg - mx).sum(axis=1))
        targets = tokens[i * n_ctx + first + 1:(i + 1) * n_ctx]
        nll += float(-(lg[np.arange(len(targets)), targets] - mx[:, 0] - lse).sum())
        count += len(targets)
        ppls.append(math.exp(nll / count))
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {k: (v[0], v[1]) for k, v in stats.items()}, ppls


def save(stats, out: Path, dataset: str, n_ctx: int) -> None:
    from quantize_cli.formats.imatrix_file import save_imatrix
    from quantize_cli.imatrix.collector import Collector, Stats

    c = Collector(chunk_size=n_ctx, prompt_file=dataset)
    for name, (values, count) in stats.items():
        c.stats[name] = Stats(values.copy(), np.array(count, np.int64).reshape(-1))  # one count, or one per expert
    c.chunk_done()
    save_imatrix(out, c)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("text", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--chunks", type=int, default=-1)
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("--process-output", action="store_true")
    ap.add_argument("--defaults", action="store_true", help="llama.cpp's default F16 KV cache and flash attention")
    args = ap.parse_args()
    text = args.text.read_text(encoding="utf-8")
    text = text[:-1] if text.endswith("\n") else text
    stats, ppls = collect(args.model, text, args.ctx_size, args.chunks, args.process_output, args.defaults)
    save(stats, args.out, str(args.text), args.ctx_size)
    print(",".join(f"[{i + 1}]{p:.4f}" for i, p in enumerate(ppls)))


if __name__ == "__main__":
    main()
