"""The NumPy forward pass, read straight from a GGUF file, for every family in the architecture table.

It computes what llama.cpp's graph for the model's architecture (src/models/<arch>.cpp, listed in
arch.py) computes, in float32, one chunk of tokens at a time, and hands every matrix
multiplication's input to an observer: that is what the importance matrix is made of (see
imatrix/collector.py). `_matmul` is the one place weights meet activations.

This module holds the loading (the GGUF file, dequantizing, the tensor checks) and the per-layer loop;
the attention layers are in attention.py, the FFN / MoE layers in ffn.py, the BLAS thread switch in
blas.py and the ops they compose in blocks.py.

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

from .arch import ARCHITECTURES, Config, ModelError, read_config
from .attention import AttentionLayers
from .blas import BLAS
from .blocks import ACTIVATIONS, rms_norm, rope_cache
from .ffn import FeedForward

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


class Model(AttentionLayers, FeedForward):
    """A model of one of the families in arch.ARCHITECTURES, ready to run chunks of token ids.

    This class holds the weights and the per-layer loop; the layers' halves are its mixins:
    attention.py (standard / sliding-window, MLA, gated delta-net) and ffn.py (FFN, MoE)."""

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
