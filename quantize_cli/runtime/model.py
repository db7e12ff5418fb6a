"""A small NumPy llama forward pass, read straight from a GGUF file (nanoGPT style: one file).

It computes what llama.cpp's graph for `llama` (src/models/llama.cpp) and `qwen2` computes, in
float32, one chunk of tokens at a time, and hands every matrix multiplication's input to an
observer: that is what the importance matrix is made of (see imatrix/collector.py).

    token_embd -> n_layer x [RMSNorm -> Q,K,V -> RoPE -> causal GQA attention -> wo -> +residual
                             RMSNorm -> SwiGLU FFN (gate, up, down) -> +residual]
               -> RMSNorm -> output (or the tied token_embd)

Weights of any type we can dequantize (F32/F16/BF16 and the quantized types) are turned into
float32 the first time a layer needs them and kept while they fit in `weight_budget` bytes; beyond
that they are dequantized again at each use, so memory stays bounded for big models.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import SourceError


class ModelError(SourceError):
    """The model cannot be run: unsupported architecture, missing tensors, NaN activations."""


# Observer of matmul inputs: (weight name, activations (n_tokens, n_in) float32).
Observer = Callable[[str, np.ndarray], None]

# Architectures llama.cpp builds with the llama graph and the same tensors (Mistral, SmolLM,
# TinyLlama, ... are `llama` GGUFs), and qwen2 (same graph plus Q/K/V biases, NEOX RoPE).
ROPE_NORM, ROPE_NEOX = 0, 2
ARCHITECTURES = {"llama": ROPE_NORM, "qwen2": ROPE_NEOX}


@dataclass
class Config:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    rms_eps: float
    n_rot: int
    rope_type: int
    rope_base: float
    rope_freq_scale: float
    n_ctx_train: int


def read_config(meta: dict, tensor_shapes: dict[str, tuple[int, ...]]) -> Config:
    arch = meta.get("general.architecture")
    if arch is None:
        raise ModelError("the model has no general.architecture metadata; it is not a llama.cpp model GGUF")
    if arch not in ARCHITECTURES:
        raise ModelError(f"architecture {arch!r} is not supported by the imatrix forward pass "
                         f"(supported: {', '.join(sorted(ARCHITECTURES))})")

    def key(name: str, default=None, required: bool = True):
        v = meta.get(f"{arch}.{name}", default)
        if v is None and required:
            raise ModelError(f"the model's metadata lacks {arch}.{name}")
        return v

    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    if isinstance(meta.get(f"{arch}.attention.head_count_kv"), list) or isinstance(n_head, list):
        raise ModelError("per-layer head counts are not supported")
    n_head_kv = int(key("attention.head_count_kv", n_head))
    head_dim = int(key("attention.key_length", n_embd // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise ModelError("models whose value head size differs from the key head size are not supported")
    if "blk.0.ffn_gate_inp.weight" in tensor_shapes:
        raise ModelError("mixture-of-experts models are not supported by the imatrix forward pass")
    scaling = key("rope.scaling.type", "none", required=False)
    freq_scale = 1.0
    if scaling == "linear":
        factor = float(key("rope.scaling.factor", 1.0, required=False) or 1.0)
        freq_scale = 1.0 / factor
    elif scaling not in ("none", None):
        raise ModelError(f"RoPE scaling {scaling!r} is not supported (only none and linear)")
    if "token_embd.weight" not in tensor_shapes:
        raise ModelError("the model has no token_embd.weight tensor")
    n_vocab = int(tensor_shapes["token_embd.weight"][1])
    n_ff = int(key("feed_forward_length"))
    return Config(
        arch=arch, n_vocab=n_vocab, n_embd=n_embd, n_layer=int(key("block_count")), n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, n_ff=n_ff,
        rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5, required=False)),
        n_rot=int(key("rope.dimension_count", head_dim, required=False)), rope_type=ARCHITECTURES[arch],
        rope_base=float(key("rope.freq_base", 10000.0, required=False)), rope_freq_scale=freq_scale,
        n_ctx_train=int(key("context_length", 0, required=False) or 0),
    )


def _open_gguf(path: Path):
    """Metadata and lazy tensor references of a GGUF model, memory-mapped.

    Through the tokenizer's one-pass metadata reader rather than the gguf package's reader,
    which takes seconds on a large vocabulary; here nothing else is needed."""
    from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType

    from ..sources.base import TensorRef
    from ..sources.gguf import split_paths
    from .tokenizer import TokenizerError, read_gguf

    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a directory; the imatrix needs a GGUF model file")
    shards = split_paths(path)
    if shards and len(shards) > 1:
        raise ModelError(f"{path}: split GGUF models are not supported by the imatrix forward pass; "
                         "merge the shards first (llama-gguf-split --merge)")
    try:
        meta, infos, data_offset = read_gguf(path)
    except TokenizerError as exc:
        raise ModelError(str(exc)) from None
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, ne, ttype, offset in infos:
        try:
            qtype = GGMLQuantizationType(ttype)
        except ValueError:
            raise ModelError(f"{path}: tensor {name} has unknown ggml type {ttype}") from None
        block, size = GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(ne, dtype=np.int64)) // block * size
        start = data_offset + offset
        if start + nbytes > mm.size:
            raise ModelError(f"{path}: tensor {name} runs past the end of the file; the file is truncated")
        tensors[name] = TensorRef(name=name, ne=ne, type=qtype,
                                  load=lambda start=start, nbytes=nbytes: mm[start:start + nbytes])
    return meta, tensors, mm


def _dequantize(ref) -> np.ndarray:
    """A tensor as float32 (ne1, ne0) (or its own shape for 1-D), from any stored type."""
    from kernels.gguf_compat import GGMLQuantizationType as T

    blob = ref.load()
    n_per_row = int(ref.ne[0])
    ne = [int(d) for d in ref.ne]
    while len(ne) > 1 and ne[-1] == 1:  # trailing 1s are not dimensions to ggml (n_dims = 2 for [64, 64, 1, 1])
        ne.pop()
    shape = tuple(reversed(ne))
    if ref.type == T.F32:
        out = np.frombuffer(blob, dtype=np.float32, count=ref.n_elements)
    elif ref.type == T.F16:
        out = np.frombuffer(blob, dtype=np.float16, count=ref.n_elements).astype(np.float32)
    elif ref.type == T.BF16:
        out = (np.frombuffer(blob, dtype=np.uint16, count=ref.n_elements).astype(np.uint32) << 16).view(np.float32)
    else:
        try:
            import kernels

            out = kernels.dequantize(np.asarray(blob), ref.type, n_per_row)
        except (ImportError, LookupError):
            from gguf.quants import dequantize

            out = dequantize(np.asarray(blob, dtype=np.uint8), ref.type)
    return np.asarray(out, dtype=np.float32).reshape(shape)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    # ggml_rms_norm: the mean of squares is summed in double, the scale is float
    mean = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    scale = (1.0 / np.sqrt(mean + eps)).astype(np.float32)
    return (x * scale) * weight


def rope_cache(n_tokens: int, n_rot: int, base: float, freq_scale: float,
               freq_factors: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (n_tokens, n_rot/2) as ggml_rope_cache_init makes them: theta_i = pos * base^(-2i/n_rot),
    multiplied up step by step in float32."""
    theta_scale = np.float32(base ** (-2.0 / n_rot))
    theta = np.empty((n_tokens, n_rot // 2), dtype=np.float32)
    theta[:, 0] = np.arange(n_tokens, dtype=np.float32)
    for i in range(1, n_rot // 2):
        theta[:, i] = theta[:, i - 1] * theta_scale
    if freq_factors is not None:
        theta = theta / freq_factors[: n_rot // 2].astype(np.float32)
    theta = theta * np.float32(freq_scale)
    return np.cos(theta), np.sin(theta)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_rot: int, rope_type: int) -> np.ndarray:
    """x (T, n_heads, head_dim); rotates the first n_rot dims of each head."""
    out = x.copy()
    c, s = cos[:, None, :], sin[:, None, :]  # (T, 1, n_rot/2)
    if rope_type == ROPE_NEOX:  # pairs (i, i + n_rot/2)
        x0, x1 = x[..., : n_rot // 2], x[..., n_rot // 2: n_rot]
        out[..., : n_rot // 2] = x0 * c - x1 * s
        out[..., n_rot // 2: n_rot] = x0 * s + x1 * c
    else:  # NORM: adjacent pairs (2i, 2i+1)
        x0, x1 = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = x0 * c - x1 * s
        out[..., 1:n_rot:2] = x0 * s + x1 * c
    return out


class _Blas:
    """NumPy's BLAS thread count, switched per product: products under SMALL_FLOPS run on one
    thread, where waking and syncing more costs more than it saves (and much more on a busy
    machine). Best effort: OpenBLAS as bundled with numpy; elsewhere a no-op."""

    SMALL_FLOPS = 1 << 27

    def __init__(self) -> None:
        self.threads = 1
        self.current = None
        self._set = self._find()

    @staticmethod
    def _find():
        import ctypes
        import glob
        import os

        for lib in glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas*.so*")):
            try:
                so = ctypes.CDLL(lib)
            except OSError:
                continue
            for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                        "openblas_set_num_threads"):
                fn = getattr(so, sym, None)
                if fn is not None:
                    fn.argtypes = [ctypes.c_int]
                    return fn
        return None

    def configure(self, threads: int) -> bool:
        self.threads = max(1, threads)
        self.current = None
        return self._set is not None

    def for_flops(self, flops: float) -> None:
        want = 1 if flops < self.SMALL_FLOPS else self.threads
        if want != self.current and self._set is not None:
            self._set(want)
            self.current = want


BLAS = _Blas()


def set_threads(n: Optional[int]) -> int:
    """Threads for the matrix products (default: all cores)."""
    import os

    n = n if n and n > 0 else (os.cpu_count() or 1)
    BLAS.configure(n)
    return n


@lru_cache(maxsize=8)
def _causal_mask(n: int) -> np.ndarray:
    return np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)


def _f16_round(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


class Model:
    """A llama-family model, ready to run chunks of token ids."""

    def __init__(self, path: str | Path, weight_budget: int = 8 << 30):
        self.path = Path(path)
        self.meta, self.tensors, self._mm = _open_gguf(self.path)
        self.cfg = read_config(self.meta, {n: t.ne for n, t in self.tensors.items()})
        cfg = self.cfg
        for name in ("token_embd.weight", "output_norm.weight"):
            self._require(name)
        for il in range(cfg.n_layer):
            for part in ("attn_norm", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
                self._require(f"blk.{il}.{part}.weight")
            if f"blk.{il}.attn_qkv.weight" not in self.tensors:
                for part in ("attn_q", "attn_k", "attn_v"):
                    self._require(f"blk.{il}.{part}.weight")
        self.output_name = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        check_shapes(cfg, self.tensors)
        self.weight_budget = weight_budget
        self._cache: dict[str, np.ndarray] = {}
        self._cached_bytes = 0
        self.kv_f16 = False  # mimic llama.cpp's default F16 KV cache + flash attention (imatrix --kv-f16)

    def _require(self, name: str) -> None:
        if name not in self.tensors:
            raise ModelError(f"the model has no {name} tensor; is it a complete {self.cfg.arch} model?")

    def close(self) -> None:
        self._cache.clear()
        self._mm = None

    def weight(self, name: str) -> np.ndarray:
        w = self._cache.get(name)
        if w is not None:
            return w
        w = _dequantize(self.tensors[name])
        if self._cached_bytes + w.nbytes <= self.weight_budget:
            self._cache[name] = w
            self._cached_bytes += w.nbytes
        return w

    def optional(self, name: str) -> Optional[np.ndarray]:
        return self.weight(name) if name in self.tensors else None

    def _matmul(self, x: np.ndarray, name: str, observe: Optional[Observer]) -> np.ndarray:
        """x (T, n_in) @ W^T, W stored (n_out, n_in) as ggml does; the observer sees x."""
        if observe is not None:
            observe(name, x)
        w = self.weight(name + ".weight")
        BLAS.for_flops(2.0 * x.shape[0] * w.shape[0] * w.shape[1])
        y = x @ w.T
        bias = self.optional(name + ".bias")
        return y + bias if bias is not None else y

    def forward(self, tokens: np.ndarray, observe: Optional[Observer] = None,
                process_output: bool = False, logits: bool = True, logits_from: int = 0) -> Optional[np.ndarray]:
        """Run one sequence of token ids from position 0; returns the logits of positions
        logits_from.. (T - logits_from, n_vocab) float32, or None when `logits` is False.

        `observe(name, x)` is called with the input of every blk.* matmul (and of output.weight
        when `process_output`), as llama-imatrix's collect_imatrix callback sees them."""
        cfg = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.min(initial=0) < 0 or tokens.max(initial=0) >= cfg.n_vocab:
            raise ModelError(f"token id out of range for a vocabulary of {cfg.n_vocab}")
        T = len(tokens)
        hd, n_head, n_kv = cfg.head_dim, cfg.n_head, cfg.n_head_kv
        group = n_head // n_kv
        freq_factors = self.optional("rope_freqs.weight")
        cos, sin = rope_cache(T, cfg.n_rot, cfg.rope_base, cfg.rope_freq_scale, freq_factors)
        kq_scale = np.float32(1.0 / np.sqrt(np.float32(hd)))

        x = self.weight("token_embd.weight")[tokens]  # (T, n_embd)
        for il in range(cfg.n_layer):
            p = f"blk.{il}."
            h = rms_norm(x, self.weight(p + "attn_norm.weight"), cfg.rms_eps)
            if p + "attn_qkv.weight" in self.tensors:
                qkv = self._matmul(h, p + "attn_qkv", observe)
                q, k, v = np.split(qkv, [n_head * hd, n_head * hd + n_kv * hd], axis=1)
            else:
                q = self._matmul(h, p + "attn_q", observe)
                k = self._matmul(h, p + "attn_k", observe)
                v = self._matmul(h, p + "attn_v", observe)
            q = apply_rope(q.reshape(T, n_head, hd), cos, sin, cfg.n_rot, cfg.rope_type)  # (T, n_head, hd)
            k = apply_rope(k.reshape(T, n_kv, hd), cos, sin, cfg.n_rot, cfg.rope_type)    # (T, n_kv, hd)
            v = v.reshape(T, n_kv, hd)
            if self.kv_f16:
                # llama.cpp's default: F16 K/V cache read by its tiled flash attention, which
                # widens K and V back to f32 and keeps Q and all sums in f32 (ops.cpp
                # ggml_compute_forward_flash_attn_ext_tiled): only K and V lose precision.
                k, v = _f16_round(k), _f16_round(v)
            attn = self._attention(q, k, v, kq_scale, group)  # (T, n_head*hd)
            x = x + self._matmul(attn, p + "attn_output", observe)

            h = rms_norm(x, self.weight(p + "ffn_norm.weight"), cfg.rms_eps)
            gate = self._matmul(h, p + "ffn_gate", observe)
            up = self._matmul(h, p + "ffn_up", observe)
            act = gate / (np.float32(1.0) + np.exp(-gate)) * up  # SwiGLU: silu(gate) * up
            x = x + self._matmul(act, p + "ffn_down", observe)
            if not np.isfinite(x).all():
                raise ModelError(f"non-finite activations (NaN or Inf) after layer {il} (blk.{il}); "
                                 "the model weights are probably damaged")

        if not logits and not process_output:
            return None
        h = rms_norm(x, self.weight("output_norm.weight"), cfg.rms_eps)
        if process_output and observe is not None:
            observe(self.output_name, h)  # a tied output is token_embd.weight, which llama-imatrix skips
        if not logits:
            return None
        w = self.weight(self.output_name)
        BLAS.for_flops(2.0 * (T - logits_from) * w.shape[0] * w.shape[1])
        return h[logits_from:] @ w.T

    def _attention(self, q, k, v, kq_scale, group, block: int = 128) -> np.ndarray:
        """Causal grouped-query attention; q (T, n_head, hd), k and v (T, n_kv, hd).

        Queries go in blocks of `block` rows, each against only the keys it can see, so the
        causal half of the score matrix is never computed."""
        T, n_head, hd = q.shape
        n_kv = k.shape[1]
        # contiguous (heads, T, hd) operands: numpy's stacked matmul only reaches BLAS for those
        # the scale goes on q (T*hd values) rather than on the scores (T*T): same up to rounding
        q = (np.ascontiguousarray(q.transpose(1, 0, 2)) * kq_scale).reshape(n_kv, group, T, hd)
        kt = np.ascontiguousarray(k.transpose(1, 2, 0))  # (n_kv, hd, T)
        v = np.ascontiguousarray(v.transpose(1, 0, 2))   # (n_kv, T, hd)
        out = np.empty((n_kv, group, T, hd), dtype=np.float32)
        BLAS.for_flops(4.0 * group * block * T * hd)
        for r0 in range(0, T, block):
            r1 = min(T, r0 + block)
            mask = _causal_mask(r1 - r0)
            for j in range(n_kv):  # one KV head and the `group` query heads that share it
                scores = q[j, :, r0:r1] @ kt[j, :, :r1]  # (group, B, r1)
                scores[:, :, r0:r1] += mask
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                total = scores.sum(axis=-1, keepdims=True)  # (group, B, 1)
                out[j, :, r0:r1] = (scores @ v[j, :r1]) / total
        # head h = j * group + g, as ggml broadcasts K/V over query heads
        return np.ascontiguousarray(out.reshape(n_head, T, hd).transpose(1, 0, 2)).reshape(T, n_head * hd)


def check_shapes(cfg: Config, tensors: dict) -> None:
    """llama.cpp's create_tensor check: every weight the forward pass uses has the shape the
    hyper-parameters give it ("tensor '...' has wrong shape"), so a lying file is one error line,
    not a NumPy broadcasting error halfway through a chunk."""
    e, v, ff = cfg.n_embd, cfg.n_vocab, cfg.n_ff
    q, kv = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    want = {"token_embd.weight": (e, v), "output_norm.weight": (e,), "output.weight": (e, v)}
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        want.update({p + "attn_norm.weight": (e,), p + "ffn_norm.weight": (e,), p + "attn_q.weight": (e, q),
                     p + "attn_k.weight": (e, kv), p + "attn_v.weight": (e, kv), p + "attn_output.weight": (q, e),
                     p + "attn_qkv.weight": (e, q + 2 * kv), p + "ffn_gate.weight": (e, ff),
                     p + "ffn_up.weight": (e, ff), p + "ffn_down.weight": (ff, e)})

    def strip(ne) -> tuple[int, ...]:
        ne = tuple(int(d) for d in ne)
        while len(ne) > 1 and ne[-1] == 1:
            ne = ne[:-1]
        return ne

    for name, shape in want.items():
        ref = tensors.get(name)
        if ref is not None and strip(ref.ne) != shape:
            raise ModelError(f"tensor '{name}' has wrong shape; expected {', '.join(map(str, shape))}, got "
                             f"{', '.join(map(str, strip(ref.ne)))} (the file contradicts its own hyper-parameters)")


def load_model(path: str | Path, weight_budget: int = 8 << 30) -> Model:
    return Model(path, weight_budget)
