"""The NumPy forward pass, read straight from a GGUF file, for every family in the architecture table.

It computes what llama.cpp's graph for the model's architecture (src/models/<arch>.cpp, listed in
arch.py) computes, in float32, one chunk of tokens at a time, and hands every matrix
multiplication's input to an observer: that is what the importance matrix is made of (see
imatrix/collector.py). `_matmul` is the one place weights meet activations.

    token_embd [* scale] -> n_layer x [attention block, FFN or MoE block] -> RMSNorm -> output
               [/ logit scale, soft-cap]

Weights of any type we can dequantize (F32/F16/BF16 and the quantized types) are turned into
float32 the first time a layer needs them and kept while they fit in `weight_budget` bytes; beyond
that they are dequantized again at each use, so memory stays bounded for big models. Expert
tensors (ne = [n_in, n_out, n_expert]) are dequantized one expert at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .arch import ARCHITECTURES, Config, ModelError, read_config, supported  # noqa: F401  (re-exported)
from .blocks import (ACTIVATIONS, ROPE_NEOX, ROPE_NORM, apply_rope, attention, causal_conv,  # noqa: F401
                     gated_delta_net, rms_norm, rope_cache, route)

# Observer of matmul inputs: (weight name, activations (n_tokens, n_in) float32[, expert]).
# For an expert tensor the third argument is (expert index, n_expert) and the rows are the inputs
# routed to that expert, in llama-imatrix's order (by slot of the top-k, then by token).
Observer = Callable[..., None]


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


def _dequantize(ref, expert: Optional[int] = None) -> np.ndarray:
    """A tensor as float32 (ne1, ne0) (or its own shape for 1-D), from any stored type; with
    `expert`, only that slice of a 3-D expert tensor (ne1, ne0)."""
    from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType as T

    blob = ref.load()
    n_per_row = int(ref.ne[0])
    ne = [int(d) for d in ref.ne]
    while len(ne) > 1 and ne[-1] == 1:  # trailing 1s are not dimensions to ggml (n_dims = 2 for [64, 64, 1, 1])
        ne.pop()
    shape = tuple(reversed(ne))
    count = ref.n_elements
    if expert is not None:
        shape = tuple(reversed([int(d) for d in ref.ne]))[1:]
        count = int(np.prod(shape))
        block, size = GGML_QUANT_SIZES[ref.type]
        per = count // block * size
        blob = blob[expert * per:(expert + 1) * per]
    if ref.type == T.F32:
        out = np.frombuffer(blob, dtype=np.float32, count=count)
    elif ref.type == T.F16:
        out = np.frombuffer(blob, dtype=np.float16, count=count).astype(np.float32)
    elif ref.type == T.BF16:
        out = (np.frombuffer(blob, dtype=np.uint16, count=count).astype(np.uint32) << 16).view(np.float32)
    else:
        try:
            import kernels

            out = kernels.dequantize(np.asarray(blob), ref.type, n_per_row)
        except (ImportError, LookupError):
            from gguf.quants import dequantize

            out = dequantize(np.asarray(blob, dtype=np.uint8), ref.type)
    return np.asarray(out, dtype=np.float32).reshape(shape)


def _rows(ref, rows: np.ndarray) -> np.ndarray:
    """Rows of a 2-D tensor as float32 (len(rows), ne0), dequantizing only those rows (get_rows)."""
    from kernels.gguf_compat import GGML_QUANT_SIZES
    from ..sources.base import TensorRef

    block, size = GGML_QUANT_SIZES[ref.type]
    row_bytes = int(ref.ne[0]) // block * size
    blob = np.asarray(ref.load()).reshape(-1, row_bytes)[np.asarray(rows, dtype=np.int64)]
    sub = TensorRef(name=ref.name, ne=(int(ref.ne[0]), len(rows)), type=ref.type, load=lambda: blob.reshape(-1))
    return _dequantize(sub)


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


F32 = np.float32


def _f16_round(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


class Model:
    """A model of one of the families in arch.ARCHITECTURES, ready to run chunks of token ids."""

    def __init__(self, path: str | Path, weight_budget: int = 8 << 30):
        self.path = Path(path)
        self.meta, self.tensors, self._mm = _open_gguf(self.path)
        self.cfg = read_config(self.meta, {n: t.ne for n, t in self.tensors.items()})
        self.arch = ARCHITECTURES[self.cfg.arch]
        self._check_tensors()
        tied = self.arch.tied_always or "output.weight" not in self.tensors
        self.output_name = "token_embd.weight" if tied else "output.weight"
        if self.cfg.moe is None and self.arch.ffn != "fused" and self.arch.attn == "gqa":
            check_shapes(self.cfg, self.tensors)
        self.weight_budget = weight_budget
        self._cache: dict = {}
        self._cached_bytes = 0
        self.kv_f16 = False  # mimic llama.cpp's default F16 KV cache + flash attention (imatrix --kv-f16)
        # round each matmul's input to the weight type's dot-product type, as llama.cpp's CPU
        # backend does (kernels/activations.py); off for the imatrix, which records float inputs
        self.act_rounding = False
        self.n_ctx: Optional[int] = None  # the context size llama.cpp would run with (LongRoPE's choice); None: T

    def _check_tensors(self) -> None:
        cfg, arch = self.cfg, self.arch
        self._require("token_embd.weight")
        self._require("output_norm.weight")
        if cfg.n_embd_per_layer:
            for name in ("per_layer_token_embd", "per_layer_model_proj", "per_layer_proj_norm"):
                self._require(name + ".weight")
        for il in range(cfg.n_layer):
            p = f"blk.{il}."
            need = ["attn_norm", arch.ffn_norm] if arch.norm_in else []
            need += ["attn_output"]
            if arch.norm_post:
                need += ["post_attention_norm", "post_ffw_norm"]
            own_kv = cfg.kv_source(il) == il
            if arch.qk_norm in ("head", "full") and not arch.qk_norm_optional:
                need += ["attn_q_norm"] + (["attn_k_norm"] if own_kv else [])
            if arch.attn == "hybrid" and cfg.recurrent_layers[il]:
                need = [n for n in need if n != "attn_output"]
                need += ["attn_qkv", "attn_gate", "ssm_beta", "ssm_alpha", "ssm_norm", "ssm_out", "ssm_conv1d"]
                self._require(p + "ssm_dt.bias")
                self._require(p + "ssm_a")
                need = [n for n in need if n not in ("attn_q_norm", "attn_k_norm")]
            elif arch.attn == "mla":
                need += (["attn_q_a", "attn_q_a_norm", "attn_q_b"] if cfg.n_lora_q else ["attn_q"])
                need += ["attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b"]
            elif p + "attn_qkv.weight" not in self.tensors:
                # gemma4: layers sharing an earlier layer's KV have no K/V; a missing attn_v means V = K
                need += ["attn_q"] + (["attn_k"] if own_kv else []) + (["attn_v"] if own_kv and not arch.v_norm else [])
            if cfg.n_embd_per_layer:
                need += ["inp_gate", "proj", "post_norm"]
            if cfg.is_moe(il):
                need += ["ffn_gate_inp", "ffn_down_exps"]
                if p + "ffn_gate_up_exps.weight" not in self.tensors:
                    need += ["ffn_up_exps", "ffn_gate_exps"]
                if cfg.moe.shared == "gated":
                    need += ["ffn_gate_inp_shexp", "ffn_up_shexp", "ffn_gate_shexp", "ffn_down_shexp"]
                if cfg.moe.shared == "plain" and cfg.n_expert_shared:
                    need += ["ffn_up_shexp", "ffn_gate_shexp", "ffn_down_shexp"]
                if cfg.moe.shared == "sigmoid" and p + "ffn_up_shexp.weight" in self.tensors:
                    need += ["ffn_gate_inp_shexp", "ffn_gate_shexp", "ffn_down_shexp"]
                if cfg.moe.shared == "gemma4":
                    need += ["ffn_gate", "ffn_up", "ffn_down", "pre_ffw_norm_2", "post_ffw_norm_1", "post_ffw_norm_2"]
                    self._require(p + "ffn_gate_inp.scale")
            else:
                need += ["ffn_up", "ffn_down"] + ([] if arch.ffn == "fused" else ["ffn_gate"])
            if arch.sinks:
                need += ["attn_sinks"]
            for part in need:
                self._require(p + part + ".weight")

    def _require(self, name: str) -> None:
        if name not in self.tensors:
            raise ModelError(f"the model has no {name} tensor; is it a complete {self.cfg.arch} model?")

    def close(self) -> None:
        self._cache.clear()
        self._mm = None

    def weight(self, name: str, expert: Optional[int] = None) -> np.ndarray:
        key = name if expert is None else (name, expert)
        w = self._cache.get(key)
        if w is not None:
            return w
        w = _dequantize(self.tensors[name], expert)
        if self._cached_bytes + w.nbytes <= self.weight_budget:
            self._cache[key] = w
            self._cached_bytes += w.nbytes
        return w

    def optional(self, name: str) -> Optional[np.ndarray]:
        return self.weight(name) if name in self.tensors else None

    def _matmul(self, x: np.ndarray, name: str, observe: Optional[Observer],
                expert: Optional[tuple[int, int]] = None) -> np.ndarray:
        """x (T, n_in) @ W^T, W stored (n_out, n_in) as ggml does; the observer sees x. With
        `expert` = (e, n_expert), W is expert e's slice of a 3-D expert tensor (MUL_MAT_ID)."""
        if observe is not None:
            if expert is None:
                observe(name, x)
            else:
                observe(name, x, expert)
        w = self.weight(name + ".weight", None if expert is None else expert[0])
        if w.ndim == 1:  # a one-row matrix stored as a vector (qwen2moe's ffn_gate_inp_shexp)
            w = w[None, :]
        x = self._rounded(x, name + ".weight")
        BLAS.for_flops(2.0 * x.shape[0] * w.shape[0] * w.shape[1])
        y = x @ w.T
        bias = self.optional(name + ".bias")
        if bias is not None and expert is not None:
            bias = bias[expert[0]]
        return y + bias if bias is not None else y

    # --- the graph ----------------------------------------------------------------------------------

    def forward(self, tokens: np.ndarray, observe: Optional[Observer] = None,
                process_output: bool = False, logits: bool = True, logits_from: int = 0) -> Optional[np.ndarray]:
        """Run one sequence of token ids from position 0; returns the logits of positions
        logits_from.. (T - logits_from, n_vocab) float32, or None when `logits` is False.

        `observe(name, x)` is called with the input of every blk.* matmul (and of output.weight
        when `process_output`), as llama-imatrix's collect_imatrix callback sees them; expert
        matmuls call `observe(name, x, (e, n_expert))` once per expert that tokens were routed to."""
        cfg = self.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.min(initial=0) < 0 or tokens.max(initial=0) >= cfg.n_vocab:
            raise ModelError(f"token id out of range for a vocabulary of {cfg.n_vocab}")
        T = len(tokens)
        ropes = self._rope_tables(T)
        ropes["kv"] = {}  # layer -> its (K, V) after norms and RoPE, for layers that share them

        x = self.weight("token_embd.weight")[tokens]  # (T, n_embd)
        if self.arch.embd_scale_sqrt:
            x = x * np.float32(np.sqrt(np.float32(cfg.n_embd)))
        elif cfg.embd_scale:
            x = x * np.float32(cfg.embd_scale)
        per_layer = self._per_layer_inputs(x, tokens) if cfg.n_embd_per_layer else None
        for il in range(cfg.n_layer):
            x = x + self._attention_block(x, il, ropes, observe)
            x = x + self._ffn_block(x, il, observe)
            if per_layer is not None:
                x = x + self._per_layer_embedding(x, il, per_layer[:, il], observe)
            scale = self.optional(f"blk.{il}.layer_output_scale.weight")
            if scale is not None:
                x = x * scale
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
        out = self._rounded(h[logits_from:], self.output_name) @ w.T
        bias = self.optional("output.bias")
        if bias is not None:
            out = out + bias
        if cfg.logit_scale:
            out = out * np.float32(1.0 / cfg.logit_scale)
        if cfg.final_softcap:
            out = np.tanh(out * np.float32(1.0 / cfg.final_softcap)) * np.float32(cfg.final_softcap)
        return out

    def _per_layer_inputs(self, x: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """gemma4's project_per_layer_inputs: (T, n_layer, n_embd_per_layer), from the scaled
        embeddings projected per layer and the per-layer token embeddings."""
        cfg = self.cfg
        T, n_pl = len(tokens), cfg.n_embd_per_layer
        proj = self._matmul(x, "per_layer_model_proj", None) * np.float32(1.0 / np.sqrt(np.float32(cfg.n_embd)))
        proj = rms_norm(proj.reshape(T, cfg.n_layer, n_pl), self.weight("per_layer_proj_norm.weight"), cfg.rms_eps)
        # per_layer_token_embd is (n_vocab, n_layer * n_pl), 2.3 G values in E2B: only the chunk's rows
        emb = _rows(self.tensors["per_layer_token_embd.weight"], tokens).reshape(T, cfg.n_layer, n_pl)
        emb = emb * np.float32(np.sqrt(np.float32(n_pl)))
        return (proj + emb) * np.float32(1.0 / np.sqrt(np.float32(2.0)))

    def _per_layer_embedding(self, x: np.ndarray, il: int, inp: np.ndarray, observe) -> np.ndarray:
        """gemma4: gelu(x W_gate) * this layer's input -> proj -> RMSNorm, added to the residual."""
        p = f"blk.{il}."
        g = self._matmul(x, p + "inp_gate", observe)  # (T, n_embd_per_layer)
        g = ACTIVATIONS["gelu"](g, np.ones_like(g)) * inp  # ggml_gelu: the same fp16 table as GeGLU
        out = self._matmul(g, p + "proj", observe)
        return rms_norm(out, self.weight(p + "post_norm.weight"), self.cfg.rms_eps)

    def _rounded(self, x: np.ndarray, weight_name: str) -> np.ndarray:
        """x as llama.cpp's CPU backend feeds it to a product with this weight (act_rounding on)."""
        if not self.act_rounding:
            return x
        from kernels.activations import round_activations

        return round_activations(x, self.tensors[weight_name].type)

    def _rope_tables(self, T: int) -> dict:
        """cos/sin per distinct RoPE setting of the layers: {"full": ..., "swa": ...}."""
        cfg = self.cfg
        n_ctx = self.n_ctx or T
        factors = self.optional("rope_freqs.weight")
        if factors is None and cfg.rope_scaling == "longrope":
            name = "rope_factors_long.weight" if n_ctx > cfg.n_ctx_orig_yarn else "rope_factors_short.weight"
            factors = self.optional(name)
        common = dict(n_ctx_orig=cfg.n_ctx_orig_yarn, beta_fast=cfg.beta_fast, beta_slow=cfg.beta_slow)
        tables = {"full": rope_cache(T, cfg.n_rot, cfg.rope_base, cfg.rope_freq_scale, factors,
                                     cfg.ext_factor, cfg.attn_factor, **common)}
        if any(cfg.swa_layers):
            if self.arch.swa_rope == "same":  # llama4: rope_freq_base/scale_train_swa = the full ones
                tables["swa"] = tables["full"]
            elif self.arch.swa_rope == "plain":  # olmo3: SWA layers without YaRN
                tables["swa"] = rope_cache(T, cfg.n_rot_swa, cfg.rope_base, 1.0, None, 0.0, 1.0, **common)
            else:  # get_rope_freq_base / _scale of an SWA layer
                tables["swa"] = rope_cache(T, cfg.n_rot_swa, cfg.rope_base_swa, cfg.rope_scale_swa, None,
                                           cfg.ext_factor, cfg.attn_factor, **common)
        if cfg.attn_temp_scale:  # llama4-style attention temperature (mistral3)
            pos = np.arange(T, dtype=np.float64)
            scale = np.log(np.floor((pos + cfg.attn_temp_offset) / cfg.attn_temp_floor) + 1.0) * cfg.attn_temp_scale + 1.0
            tables["temp"] = scale.astype(np.float32)[:, None, None]
        return tables

    def _mla_attention(self, x: np.ndarray, il: int, ropes: dict, observe) -> np.ndarray:
        """deepseek2's MLA as llama.cpp runs it (absorbed): Q's no-RoPE part goes through each head's
        wk_b into the latent space, attention is MQA over the normed latent KV (plus the shared RoPE
        key), each head's output is decompressed by its wv_b. wk_b / wv_b are 3-D (one matrix per
        head): llama-imatrix sums their inputs per head under one count."""
        cfg = self.cfg
        p = f"blk.{il}."
        T, n_head, n_rot, r = x.shape[0], cfg.n_head, cfg.n_rot, cfg.n_lora_kv
        nope = cfg.head_dim_k_mla - n_rot
        h = rms_norm(x, self.weight(p + "attn_norm.weight"), cfg.rms_eps)
        if cfg.n_lora_q:
            q = rms_norm(self._matmul(h, p + "attn_q_a", observe), self.weight(p + "attn_q_a_norm.weight"), cfg.rms_eps)
            q = self._matmul(q, p + "attn_q_b", observe)
        else:
            q = self._matmul(h, p + "attn_q", observe)
        q = q.reshape(T, n_head, cfg.head_dim_k_mla)
        kv = self._matmul(h, p + "attn_kv_a_mqa", observe)  # (T, r + n_rot)
        cos, sin = ropes["full"]
        k_pe = apply_rope(kv[:, None, r:], cos, sin, n_rot, cfg.rope_type)  # (T, 1, n_rot)
        kv_cmpr = rms_norm(kv[:, :r], self.weight(p + "attn_kv_a_norm.weight"), cfg.rms_eps)  # (T, r)
        q_pe = apply_rope(np.ascontiguousarray(q[:, :, nope:]), cos, sin, n_rot, cfg.rope_type)
        q_nope = np.ascontiguousarray(q[:, :, :nope].transpose(1, 0, 2))  # (n_head, T, nope)
        if observe is not None:  # one wide row per token: head h's input at columns h*nope..
            observe(p + "attn_k_b", np.ascontiguousarray(q_nope.transpose(1, 0, 2)).reshape(T, n_head * nope))
        q_abs = np.stack([q_nope[hh] @ self.weight(p + "attn_k_b.weight", hh).T for hh in range(n_head)], axis=1)
        qc = np.concatenate([q_abs, q_pe], axis=2)  # (T, n_head, r + n_rot)
        kc = np.concatenate([kv_cmpr[:, None, :], k_pe], axis=2)  # (T, 1, r + n_rot)
        if "temp" in ropes:
            qc = qc * ropes["temp"]
        qc = qc * np.float32(cfg.kq_scale)
        lat = attention(qc, kc, kv_cmpr[:, None, :], BLAS).reshape(T, n_head, r)
        lat = np.ascontiguousarray(lat.transpose(1, 0, 2))  # (n_head, T, r)
        if observe is not None:
            observe(p + "attn_v_b", np.ascontiguousarray(lat.transpose(1, 0, 2)).reshape(T, n_head * r))
        out = np.stack([lat[hh] @ self.weight(p + "attn_v_b.weight", hh).T for hh in range(n_head)], axis=1)
        return self._matmul(out.reshape(T, n_head * cfg.head_dim_v_mla), p + "attn_output", observe)

    def _delta_net(self, x: np.ndarray, il: int, observe) -> np.ndarray:
        """qwen35's gated delta-net layer (build_layer_attn_linear, ggml_gated_delta_net on the CPU):
        conv over time of [Q K V], SiLU, L2-normed Q/K; per value head h (Q/K head h % n_k_heads) a
        state S (d_k, d_v): S *= exp(g); S += k (beta (v - k S)); out = q S / sqrt(d_v); then
        RMSNorm(out) * silu(z) per head and ssm_out."""
        cfg = self.cfg
        p = f"blk.{il}."
        T = x.shape[0]
        dk, n_k, n_v = cfg.ssm_d_state, cfg.ssm_n_group, cfg.ssm_dt_rank
        dv = cfg.ssm_d_inner // n_v
        h = rms_norm(x, self.weight(p + "attn_norm.weight"), cfg.rms_eps)
        qkv = self._matmul(h, p + "attn_qkv", observe)  # (T, 2 n_k dk + n_v dv)
        z = self._matmul(h, p + "attn_gate", observe)  # (T, n_v dv)
        beta = self._matmul(h, p + "ssm_beta", observe)
        beta = F32(1.0) / (F32(1.0) + np.exp(-beta))  # (T, n_v)
        alpha = self._matmul(h, p + "ssm_alpha", observe) + self.weight(p + "ssm_dt.bias")
        softplus = np.where(alpha > F32(20.0), alpha, np.log(F32(1.0) + np.exp(np.minimum(alpha, F32(20.0)))))
        g = softplus.astype(np.float32) * self.weight(p + "ssm_a")  # (T, n_v): -exp(A_log) * softplus
        conv = causal_conv(qkv, self.weight(p + "ssm_conv1d.weight"))
        conv = conv / (F32(1.0) + np.exp(-conv))  # SiLU
        q = conv[:, :n_k * dk].reshape(T, n_k, dk)
        k = conv[:, n_k * dk:2 * n_k * dk].reshape(T, n_k, dk)
        v = conv[:, 2 * n_k * dk:].reshape(T, n_v, dv)

        def l2(a):  # build_gdn_l2_norm: rms_norm(a, eps/n) / sqrt(n)
            return rms_norm(a, None, cfg.rms_eps / a.shape[-1]) * F32(1.0 / np.sqrt(np.float32(a.shape[-1])))

        heads = np.arange(n_v) % n_k
        out = gated_delta_net(l2(q)[:, heads], l2(k)[:, heads], v, g, beta)  # (T, n_v, dv)
        zz = z.reshape(T, n_v, dv)
        out = rms_norm(out, self.weight(p + "ssm_norm.weight"), cfg.rms_eps) * (zz / (F32(1.0) + np.exp(-zz)))
        return self._matmul(out.reshape(T, n_v * dv), p + "ssm_out", observe)

    def _gated_attention(self, x: np.ndarray, il: int, ropes: dict, observe) -> np.ndarray:
        """qwen35's full-attention layer: Q projection of [q, gate] per head, Q/K norms, RoPE,
        attention, times sigmoid(gate), wo."""
        cfg = self.cfg
        p = f"blk.{il}."
        T = x.shape[0]
        n_head, n_kv, hd, n_rot = cfg.layer_heads(il)
        h = rms_norm(x, self.weight(p + "attn_norm.weight"), cfg.rms_eps)
        qg = self._matmul(h, p + "attn_q", observe).reshape(T, n_head, 2 * hd)
        q, gate = qg[:, :, :hd], qg[:, :, hd:].reshape(T, n_head * hd)
        k = self._matmul(h, p + "attn_k", observe).reshape(T, n_kv, hd)
        v = self._matmul(h, p + "attn_v", observe).reshape(T, n_kv, hd)
        q = rms_norm(q, self.weight(p + "attn_q_norm.weight"), cfg.rms_eps)
        k = rms_norm(k, self.weight(p + "attn_k_norm.weight"), cfg.rms_eps)
        cos, sin = ropes["full"]
        q = apply_rope(q, cos, sin, n_rot, cfg.rope_type) * np.float32(cfg.kq_scale)
        k = apply_rope(k, cos, sin, n_rot, cfg.rope_type)
        attn = attention(q, k, v, BLAS) * (F32(1.0) / (F32(1.0) + np.exp(-gate)))
        return self._matmul(attn, p + "attn_output", observe)

    def _attention_block(self, x: np.ndarray, il: int, ropes: dict, observe) -> np.ndarray:
        cfg, arch = self.cfg, self.arch
        if arch.attn == "mla":
            return self._mla_attention(x, il, ropes, observe)
        if arch.attn == "hybrid":
            return self._delta_net(x, il, observe) if cfg.recurrent_layers[il] else self._gated_attention(x, il, ropes, observe)
        p = f"blk.{il}."
        T = x.shape[0]
        n_head, n_kv, hd, n_rot = cfg.layer_heads(il)
        own_kv = cfg.kv_source(il) == il
        h = rms_norm(x, self.weight(p + "attn_norm.weight"), cfg.rms_eps) if arch.norm_in else x
        k = v = None
        if p + "attn_qkv.weight" in self.tensors:
            qkv = self._matmul(h, p + "attn_qkv", observe)
            q, k, v = np.split(qkv, [n_head * hd, n_head * hd + n_kv * hd], axis=1)
        else:
            q = self._matmul(h, p + "attn_q", observe)
            if own_kv:
                k = self._matmul(h, p + "attn_k", observe)
                v = self._matmul(h, p + "attn_v", observe) if p + "attn_v.weight" in self.tensors else k
        if arch.qk_norm == "full":  # olmo2: one norm over all heads
            q = rms_norm(q, self.weight(p + "attn_q_norm.weight"), cfg.rms_eps)
            k = rms_norm(k, self.weight(p + "attn_k_norm.weight"), cfg.rms_eps)
        q = q.reshape(T, n_head, hd)
        qk_norm = arch.qk_norm == "head" and (not arch.qk_norm_optional or p + "attn_q_norm.weight" in self.tensors)
        if qk_norm:
            q = rms_norm(q, self.weight(p + "attn_q_norm.weight"), cfg.rms_eps)
        swa = cfg.swa_layers[il]
        rope = not (cfg.no_rope_step and (il + 1) % cfg.no_rope_step == 0)
        if rope:
            cos, sin = ropes["swa" if swa else "full"]
            q = apply_rope(q, cos, sin, n_rot, cfg.rope_type)  # (T, n_head, hd)
        if own_kv:
            k, v = k.reshape(T, n_kv, hd), v.reshape(T, n_kv, hd)
            if qk_norm:
                k = rms_norm(k, self.weight(p + "attn_k_norm.weight"), cfg.rms_eps)
            if arch.v_norm:
                v = rms_norm(v, None, cfg.rms_eps)
            if rope:
                k = apply_rope(k, cos, sin, n_rot, cfg.rope_type)  # (T, n_kv, hd)
            if arch.qk_norm == "l2" and rope and cfg.use_kq_norm:  # llama4's Llama4TextL2Norm
                q, k = rms_norm(q, None, cfg.rms_eps), rms_norm(k, None, cfg.rms_eps)
            if cfg.n_kv_shared:
                ropes["kv"][il] = (k, v)
        else:  # the KV cache of an earlier layer of the same kind (gemma4)
            k, v = ropes["kv"][cfg.kv_source(il)]
        if "temp" in ropes and not (arch.temp_nope_only and rope):
            q = q * ropes["temp"]
        if self.kv_f16:
            # llama.cpp's default: F16 K/V cache read by its tiled flash attention, which
            # widens K and V back to f32 and keeps Q and all sums in f32 (ops.cpp
            # ggml_compute_forward_flash_attn_ext_tiled): only K and V lose precision.
            k, v = _f16_round(k), _f16_round(v)
        # the scale goes on q (T*hd values) rather than on the scores (T*T): same up to rounding
        # (gemma and phi3 scale Q in the graph itself)
        q = q * np.float32(cfg.kq_scale)
        sinks = self.weight(p + "attn_sinks.weight") if p + "attn_sinks.weight" in self.tensors else None
        window = cfg.n_swa if swa and not arch.swa_chunked else 0
        chunk = cfg.n_swa if swa and arch.swa_chunked else 0
        attn = attention(q, k, v, BLAS, window=window, softcap=cfg.attn_softcap, sinks=sinks,
                         chunk=chunk)  # (T, n_head*hd)
        out = self._matmul(attn, p + "attn_output", observe)
        if arch.norm_post:
            out = rms_norm(out, self.weight(p + "post_attention_norm.weight"), cfg.rms_eps)
        if cfg.residual_scale:
            out = out * np.float32(cfg.residual_scale)
        return out

    def _ffn_block(self, x: np.ndarray, il: int, observe) -> np.ndarray:
        cfg, arch = self.cfg, self.arch
        p = f"blk.{il}."
        h = rms_norm(x, self.weight(p + arch.ffn_norm + ".weight"), cfg.rms_eps) if arch.norm_in else x
        if cfg.is_moe(il) and cfg.moe.shared == "gemma4":
            out = self._gemma4_moe(x, h, p, observe)
        elif cfg.is_moe(il):
            out = self._moe(h, p, observe)
        elif arch.ffn == "fused":  # phi3: ffn_up gives gate and up halves (ggml_swiglu)
            gate, up = np.split(self._matmul(h, p + "ffn_up", observe), 2, axis=1)
            out = self._matmul(ACTIVATIONS["silu"](gate, up), p + "ffn_down", observe)
        else:
            out = self._dense_ffn(h, p, "", arch.ffn, observe)
        if arch.norm_post:
            out = rms_norm(out, self.weight(p + "post_ffw_norm.weight"), cfg.rms_eps)
        if cfg.residual_scale:
            out = out * np.float32(cfg.residual_scale)
        return out

    def _dense_ffn(self, h: np.ndarray, p: str, suffix: str, act: str, observe) -> np.ndarray:
        gate = self._matmul(h, p + "ffn_gate" + suffix, observe)
        up = self._matmul(h, p + "ffn_up" + suffix, observe)
        return self._matmul(ACTIVATIONS[act](gate, up), p + "ffn_down" + suffix, observe)

    def _gemma4_moe(self, x: np.ndarray, h: np.ndarray, p: str, observe) -> np.ndarray:
        """gemma4's MoE layer: a dense GeGLU FFN on ffn_norm(x) and the experts on pre_ffw_norm_2(x),
        each through its own post norm, added; the router reads rms_norm(x) / sqrt(n_embd) * scale."""
        cfg = self.cfg
        mlp = rms_norm(self._dense_ffn(h, p, "", "gelu", observe), self.weight(p + "post_ffw_norm_1.weight"), cfg.rms_eps)
        h2 = rms_norm(x, self.weight(p + "pre_ffw_norm_2.weight"), cfg.rms_eps)
        r = rms_norm(x, None, cfg.rms_eps) * np.float32(1.0 / np.sqrt(np.float32(cfg.n_embd)))
        logits = self._matmul(r * self.weight(p + "ffn_gate_inp.scale"), p + "ffn_gate_inp", observe)
        moe = self._moe(h2, p, observe, logits)
        return mlp + rms_norm(moe, self.weight(p + "post_ffw_norm_2.weight"), cfg.rms_eps)

    def _moe(self, h: np.ndarray, p: str, observe, logits: Optional[np.ndarray] = None) -> np.ndarray:
        """build_moe_ffn: route each token to n_expert_used experts, run each expert on its rows
        (one expert's weights in float32 at a time), add the weighted outputs in slot order.
        `logits`: the router's output when the family computes it itself (gemma4)."""
        cfg, moe = self.cfg, self.cfg.moe
        T, n_embd = h.shape
        n_exp, n_used = cfg.n_expert, cfg.n_expert_used
        if logits is None:
            logits = self._matmul(h, p + "ffn_gate_inp", observe)  # (T, n_expert), + bias (gpt-oss)
        down_scale = self.optional(p + "ffn_down_exps.scale")  # (n_expert,): per-expert output scale (gemma4)
        sel, w = route(logits, n_used, moe.gating, moe.norm_w, cfg.expert_weights_scale,
                       self.optional(p + "exp_probs_b.bias"), moe.select_logits)  # (T, n_used)
        outs = np.zeros((n_used, T, n_embd), dtype=np.float32)
        merged = p + "ffn_gate_up_exps.weight" in self.tensors
        act = ACTIVATIONS[moe.act]
        # rows grouped by expert, each group slot-major then by token, as llama-imatrix walks the ids
        order = np.argsort(sel.T.reshape(-1), kind="stable")
        bounds = np.searchsorted(sel.T.reshape(-1)[order], np.arange(n_exp + 1))
        for e in range(n_exp):
            rows = order[bounds[e]:bounds[e + 1]]
            if len(rows) == 0:
                continue
            slot, tok = np.divmod(rows, T)
            xe = h[tok]  # (n_e, n_embd)
            if moe.weight_before:  # llama4: the experts see their inputs already weighted
                xe = xe * w[tok, slot][:, None]
            if merged:
                gate, up = np.split(self._matmul(xe, p + "ffn_gate_up_exps", observe, (e, n_exp)), 2, axis=1)
            else:
                up = self._matmul(xe, p + "ffn_up_exps", observe, (e, n_exp))
                gate = self._matmul(xe, p + "ffn_gate_exps", observe, (e, n_exp))
            down = self._matmul(act(gate, up), p + "ffn_down_exps", observe, (e, n_exp))  # (n_e, n_embd)
            if down_scale is not None:
                down = down * down_scale[e]
            outs[slot, tok] = down if moe.weight_before else down * w[tok, slot][:, None]
        out = outs[0]
        for s in range(1, n_used):  # ggml adds the experts' views one slot at a time
            out = out + outs[s]
        if moe.shared == "gated":  # qwen2moe: a shared expert, gated by sigmoid(x . w) (as silu(g)/g)
            g = self._matmul(h, p + "ffn_gate_inp_shexp", observe)  # (T, 1)
            gate = (g / (np.float32(1.0) + np.exp(-g))) / g
            out = out + self._dense_ffn(h, p, "_shexp", "silu", observe) * gate
        elif moe.shared == "plain" and cfg.n_expert_shared:
            out = out + self._dense_ffn(h, p, "_shexp", "silu", observe)
        elif moe.shared == "sigmoid" and p + "ffn_up_shexp.weight" in self.tensors:
            shexp = self._dense_ffn(h, p, "_shexp", "silu", observe)
            g = self._matmul(h, p + "ffn_gate_inp_shexp", observe)  # (T, 1)
            out = out + shexp * (np.float32(1.0) / (np.float32(1.0) + np.exp(-g)))
        return out


def check_shapes(cfg: Config, tensors: dict) -> None:
    """llama.cpp's create_tensor check: every weight the forward pass uses has the shape the
    hyper-parameters give it ("tensor '...' has wrong shape"), so a lying file is one error line,
    not a NumPy broadcasting error halfway through a chunk."""
    e, v = cfg.n_embd, cfg.n_vocab
    want = {"token_embd.weight": (e, v), "output_norm.weight": (e,), "output.weight": (e, v)}
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        n_head, n_kv, hd, _ = cfg.layer_heads(il)
        q, kv, ff = n_head * hd, n_kv * hd, cfg.n_ff_arr[il]
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
