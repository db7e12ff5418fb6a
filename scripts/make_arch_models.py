#!/usr/bin/env python3
"""Write small random GGUF models, one per architecture of the forward pass's table, with that
architecture's real hyperparameter keys and tensor layout (as convert_hf_to_gguf.py writes them)
and a real vocabulary from llama.cpp's models/ggml-vocab-*.gguf.

The weights are random (float32; gpt-oss's experts MXFP4 in the `gpt-oss-mxfp4` variant), the
sizes tiny (n_embd 64, 2-6 layers), and the quirk each family has is made to matter: sliding
windows shorter than a test chunk, soft-caps near the scores' range, YaRN and LongRoPE factors,
attention temperature from position 64, per-expert routing over 4-8 experts.

    python scripts/make_arch_models.py OUT_DIR [NAME ...] [--vocab-dir DIR | --vocab FILE] [--seed 0]
    python scripts/make_arch_models.py --list
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB_DIR = Path(os.environ.get("LLAMA_CPP_VOCABS", "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp/models"))

# name: (architecture, vocabulary file under VOCAB_DIR (tests/data's GPT-2 vocabulary when absent))
MODELS = {
    "llama": ("llama", "ggml-vocab-llama-spm.gguf"),
    "llama3": ("llama", "ggml-vocab-llama-bpe.gguf"),
    "mixtral": ("llama", "ggml-vocab-llama-spm.gguf"),
    "qwen2": ("qwen2", "ggml-vocab-qwen2.gguf"),
    "qwen3": ("qwen3", "ggml-vocab-qwen2.gguf"),
    "qwen2moe": ("qwen2moe", "ggml-vocab-qwen2.gguf"),
    "qwen3moe": ("qwen3moe", "ggml-vocab-qwen2.gguf"),
    "gemma": ("gemma", "ggml-vocab-llama-spm.gguf"),
    "gemma2": ("gemma2", "ggml-vocab-llama-spm.gguf"),
    "gemma3": ("gemma3", "ggml-vocab-llama-spm.gguf"),
    "phi3": ("phi3", "ggml-vocab-phi-3.gguf"),
    "granite": ("granite", "ggml-vocab-gpt-2.gguf"),
    "olmo2": ("olmo2", "ggml-vocab-gpt-2.gguf"),
    "olmo3": ("olmo2", "ggml-vocab-gpt-2.gguf"),
    "smollm3": ("smollm3", "ggml-vocab-llama-bpe.gguf"),
    "mistral3": ("mistral3", "ggml-vocab-llama-spm.gguf"),
    "gpt-oss": ("gpt-oss", "ggml-vocab-gpt-2.gguf"),
    "gemma4": ("gemma4", "ggml-vocab-llama-spm.gguf"),
    "gemma4-moe": ("gemma4", "ggml-vocab-llama-spm.gguf"),
    "glm4moe": ("glm4moe", "ggml-vocab-qwen2.gguf"),
    "llama4": ("llama4", "ggml-vocab-llama-bpe.gguf"),
    "deepseek2": ("deepseek2", "ggml-vocab-deepseek-coder.gguf"),
    "qwen35": ("qwen35", "ggml-vocab-qwen2.gguf"),
    "qwen35moe": ("qwen35moe", "ggml-vocab-qwen2.gguf"),
    "gpt-oss-mxfp4": ("gpt-oss", "ggml-vocab-gpt-2.gguf"),
    # for scripts/bench_imatrix.py, not the tests: Mixtral-style, n_embd 512, 8 layers of 8 experts
    # (top 2) of n_ff 1024: 101 M expert weights
    "mixtral-bench": ("llama", "ggml-vocab-llama-spm.gguf"),
}
BENCH_ONLY = ("mixtral-bench",)

N_EMBD, N_HEAD, N_KV, N_FF = 64, 4, 2, 128

# The default test tier rebuilds the models with stories260K's 512-token vocabulary (seconds);
# llama.cpp's phi3 vocabulary loader looks up Phi-3's own special tokens, so phi3 keeps its own.
SMALL_VOCAB = ROOT / "tests" / "data" / "stories260K.gguf"
OWN_VOCAB = ("phi3",)


def small_vocab(name: str) -> Optional[Path]:
    return None if name in OWN_VOCAB else SMALL_VOCAB


class Builder:
    """A GGUF being written: metadata keys under the architecture's prefix, tensors in ggml order."""

    def __init__(self, path: Path, arch: str, vocab: Path, seed: int):
        import gguf

        self.gguf = gguf
        self.arch = arch
        self.rng = np.random.default_rng(seed)
        self.w = gguf.GGUFWriter(str(path), arch)
        self.w.add_name(f"pyquantize-test-{arch}")
        self.w.add_file_type(0)
        self.n_vocab = self._copy_vocab(vocab)

    def _copy_vocab(self, vocab: Path) -> int:
        """The vocabulary's tokenizer.* keys, typed as llama.cpp's converter writes them (our one-pass
        reader: the gguf package's reader takes seconds per 100k tokens)."""
        from quantize_cli.runtime.tokenizer import read_gguf_metadata

        for name, value in read_gguf_metadata(vocab).items():
            if not name.startswith("tokenizer."):
                continue
            if isinstance(value, bool):
                self.w.add_bool(name, value)
            elif isinstance(value, int):
                self.w.add_uint32(name, value)
            elif isinstance(value, str):
                self.w.add_string(name, value)
            elif isinstance(value, (list, tuple)):
                self.w.add_array(name, list(value))  # str -> STRING, float -> FLOAT32, int -> INT32
            else:
                raise TypeError(f"{vocab}: {name} has an unexpected type {type(value).__name__}")
        return len(read_gguf_metadata(vocab)["tokenizer.ggml.tokens"])

    def kv(self, **keys) -> None:
        """arch-prefixed keys: kv(context_length=4096, **{"rope.freq_base": 1e4})."""
        for key, value in keys.items():
            full = f"{self.arch}.{key}"
            if isinstance(value, bool):
                self.w.add_bool(full, value)
            elif isinstance(value, int):
                self.w.add_uint32(full, value)
            elif isinstance(value, float):
                self.w.add_float32(full, value)
            elif isinstance(value, str):
                self.w.add_string(full, value)
            else:
                raise TypeError(key)

    def common(self, n_layer: int, n_ff: int = N_FF, head_dim: int = N_EMBD // N_HEAD, n_kv: int = N_KV,
               key_length: bool = False, rope_dims: bool = True, ctx: int = 4096) -> None:
        self.n_layer, self.head_dim, self.n_kv = n_layer, head_dim, n_kv
        self.kv(context_length=ctx, embedding_length=N_EMBD, block_count=n_layer, feed_forward_length=n_ff,
                **{"attention.head_count": N_HEAD, "attention.head_count_kv": n_kv,
                   "attention.layer_norm_rms_epsilon": 1e-6})
        if key_length:
            self.kv(**{"attention.key_length": head_dim, "attention.value_length": head_dim})
        if rope_dims:
            self.kv(**{"rope.dimension_count": head_dim})

    def t(self, name: str, data: np.ndarray, raw_dtype=None) -> None:
        self.w.add_tensor(name, data, raw_dtype=raw_dtype)

    def mat(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        """Random weights (ggml's ne reversed), variance 1/n_in times scale^2."""
        return (self.rng.standard_normal(shape) * scale / np.sqrt(shape[-1])).astype(np.float32)

    def vec(self, n: int, around: float = 1.0, spread: float = 0.1) -> np.ndarray:
        return (around + spread * self.rng.standard_normal(n)).astype(np.float32)

    def embeddings(self, tied: bool, scale: float = 0.5) -> None:
        self.t("token_embd.weight", (self.rng.standard_normal((self.n_vocab, N_EMBD)) * scale).astype(np.float32))
        self.t("output_norm.weight", self.vec(N_EMBD))
        if not tied:
            self.t("output.weight", self.mat(self.n_vocab, N_EMBD))

    def attention(self, il: int, bias: bool = False, fused: bool = False, out_bias: bool = False) -> None:
        p = f"blk.{il}."
        nq, nk = N_HEAD * self.head_dim, self.n_kv * self.head_dim
        if fused:
            self.t(p + "attn_qkv.weight", np.concatenate([self.mat(nq, N_EMBD, scale=2.0),
                                                          self.mat(nk, N_EMBD, scale=2.0), self.mat(nk, N_EMBD)]))
        else:
            self.t(p + "attn_q.weight", self.mat(nq, N_EMBD, scale=2.0))
            self.t(p + "attn_k.weight", self.mat(nk, N_EMBD, scale=2.0))
            self.t(p + "attn_v.weight", self.mat(nk, N_EMBD))
        if bias:
            for part, n in (("attn_q", nq), ("attn_k", nk), ("attn_v", nk)):
                self.t(p + part + ".bias", self.vec(n, 0.0, 0.5))
        self.t(p + "attn_output.weight", self.mat(N_EMBD, nq))
        if out_bias:
            self.t(p + "attn_output.bias", self.vec(N_EMBD, 0.0, 0.1))

    def qk_norm(self, il: int, full: bool = False) -> None:
        p = f"blk.{il}."
        self.t(p + "attn_q_norm.weight", self.vec(N_HEAD * self.head_dim if full else self.head_dim))
        self.t(p + "attn_k_norm.weight", self.vec(self.n_kv * self.head_dim if full else self.head_dim))

    def norm(self, name: str) -> None:
        self.t(name, self.vec(N_EMBD))

    def ffn(self, il: int, n_ff: int = N_FF, suffix: str = "") -> None:
        p = f"blk.{il}."
        self.t(p + f"ffn_gate{suffix}.weight", self.mat(n_ff, N_EMBD))
        self.t(p + f"ffn_up{suffix}.weight", self.mat(n_ff, N_EMBD))
        self.t(p + f"ffn_down{suffix}.weight", self.mat(N_EMBD, n_ff))

    def experts(self, il: int, n_expert: int, n_ff: int, bias: bool = False, mxfp4: bool = False) -> None:
        p = f"blk.{il}."
        self.t(p + "ffn_gate_inp.weight", self.mat(n_expert, N_EMBD, scale=3.0))
        if bias:
            self.t(p + "ffn_gate_inp.bias", self.vec(n_expert, 0.0, 0.5))
        for part, (n_out, n_in) in (("gate", (n_ff, N_EMBD)), ("up", (n_ff, N_EMBD)), ("down", (N_EMBD, n_ff))):
            w = self.mat(n_expert, n_out, n_in, scale=1.5)
            name = p + f"ffn_{part}_exps.weight"
            if mxfp4:
                import kernels
                from kernels.gguf_compat import GGMLQuantizationType as T

                q = kernels.quantize(w.reshape(-1, n_in), T.MXFP4).reshape(n_expert, n_out, -1)
                self.t(name, q, raw_dtype=T.MXFP4)
            else:
                self.t(name, w)
            if bias:
                self.t(p + f"ffn_{part}_exps.bias", self.vec(n_out, 0.0, 0.2)[None, :].repeat(n_expert, 0)
                       + self.mat(n_expert, n_out, scale=0.2))

    def close(self) -> None:
        self.w.write_header_to_file()
        self.w.write_kv_data_to_file()
        self.w.write_tensors_to_file()
        self.w.close()


def _dense_layers(b: Builder, n_layer: int, **attn) -> None:
    for il in range(n_layer):
        b.norm(f"blk.{il}.attn_norm.weight")
        b.attention(il, **attn)
        b.norm(f"blk.{il}.ffn_norm.weight")
        b.ffn(il)


def build(name: str, out: Path, vocab_dir: Path = VOCAB_DIR, seed: int = 0, vocab: Optional[Path] = None) -> Path:
    """Write model `name` to `out`, with its family's vocabulary or `vocab` (any GGUF with tokenizer keys)."""
    arch, vocab_file = MODELS[name]
    vocab = vocab or vocab_dir / vocab_file
    if not vocab.exists():
        vocab = ROOT / "tests" / "data" / "ggml-vocab-gpt-2.gguf"
    if name == "mixtral-bench":
        return _build_moe_bench(out, vocab, seed)
    b = Builder(out, arch, vocab, seed)
    if name in ("llama", "llama3"):
        b.common(2)
        b.kv(vocab_size=b.n_vocab, **{"rope.freq_base": 500000.0 if name == "llama3" else 10000.0})
        b.embeddings(tied=name == "llama3")
        if name == "llama3":  # llama 3.1's rope_freqs: factors 1 (high frequencies) .. 8 (low)
            b.t("rope_freqs.weight", np.geomspace(1.0, 8.0, b.head_dim // 2).astype(np.float32))
        _dense_layers(b, 2)
    elif name == "mixtral":
        b.common(2, n_ff=64)
        b.kv(expert_count=4, expert_used_count=2, **{"rope.freq_base": 1e6})
        b.embeddings(tied=False)
        for il in range(2):
            b.norm(f"blk.{il}.attn_norm.weight")
            b.attention(il)
            b.norm(f"blk.{il}.ffn_norm.weight")
            b.experts(il, 4, 64)
    elif name == "qwen2":
        b.common(2)
        b.kv(**{"rope.freq_base": 1e6})
        b.embeddings(tied=False)
        _dense_layers(b, 2, bias=True)
    elif name == "qwen3":  # head_dim 32: 4 heads make 128 > n_embd, as Qwen3's 128-wide heads do
        b.common(2, head_dim=32, key_length=True, rope_dims=False)
        b.kv(**{"rope.freq_base": 1e6})
        b.embeddings(tied=True)
        for il in range(2):
            b.norm(f"blk.{il}.attn_norm.weight")
            b.attention(il)
            b.qk_norm(il)
            b.norm(f"blk.{il}.ffn_norm.weight")
            b.ffn(il)
    elif name == "qwen2moe":
        b.common(2, n_ff=128)
        b.kv(expert_count=4, expert_used_count=2, expert_feed_forward_length=32,
             expert_shared_feed_forward_length=96, **{"rope.freq_base": 1e6})
        b.embeddings(tied=False)
        for il in range(2):
            p = f"blk.{il}."
            b.norm(p + "attn_norm.weight")
            b.attention(il, bias=True)
            b.norm(p + "ffn_norm.weight")
            b.experts(il, 4, 32)
            b.t(p + "ffn_gate_inp_shexp.weight", b.mat(N_EMBD, scale=2.0))
            b.ffn(il, 96, "_shexp")
    elif name == "qwen3moe":
        b.common(2, n_ff=192, head_dim=32, key_length=True, rope_dims=False)
        b.kv(expert_count=8, expert_used_count=2, expert_feed_forward_length=48, **{"rope.freq_base": 1e6})
        b.embeddings(tied=False)
        for il in range(2):
            p = f"blk.{il}."
            b.norm(p + "attn_norm.weight")
            b.attention(il)
            b.qk_norm(il)
            b.norm(p + "ffn_norm.weight")
            b.experts(il, 8, 48)
    elif name == "gemma":  # Gemma 2B: one KV head, head_dim 256 = n_embd/n_head in the original; here 32
        b.common(2, head_dim=32, n_kv=1, key_length=True, rope_dims=False, ctx=8192)
        b.embeddings(tied=True, scale=0.1)
        _dense_layers(b, 2)
    elif name in ("gemma2", "gemma3"):
        n_layer = 2 if name == "gemma2" else 6  # gemma2: SWA every other layer; gemma3: 5 SWA, 1 global
        b.common(n_layer, key_length=True, rope_dims=False, ctx=8192)
        b.kv(**{"attention.sliding_window": 40})
        if name == "gemma2":
            b.kv(attn_logit_softcapping=3.0, final_logit_softcapping=4.0)
        else:
            b.kv(**{"rope.freq_base": 1e6, "rope.scaling.type": "linear", "rope.scaling.factor": 8.0})
        b.embeddings(tied=True, scale=0.1)
        for il in range(n_layer):
            p = f"blk.{il}."
            b.norm(p + "attn_norm.weight")
            b.attention(il)
            if name == "gemma3":
                b.qk_norm(il)
            b.norm(p + "post_attention_norm.weight")
            b.norm(p + "ffn_norm.weight")
            b.ffn(il)
            b.norm(p + "post_ffw_norm.weight")
    elif name == "phi3":  # fused QKV and gate/up, LongRoPE with short/long factors
        b.common(2, ctx=131072)
        b.kv(**{"rope.scaling.type": "longrope", "rope.scaling.attn_factor": 1.1902380714238083,
                "rope.scaling.original_context_length": 4096})
        b.embeddings(tied=False)
        half = b.head_dim // 2
        b.t("rope_factors_long.weight", np.linspace(1.0, 40.0, half).astype(np.float32))
        b.t("rope_factors_short.weight", np.linspace(1.0, 2.5, half).astype(np.float32))
        for il in range(2):
            p = f"blk.{il}."
            b.norm(p + "attn_norm.weight")
            b.attention(il, fused=True)
            b.norm(p + "ffn_norm.weight")
            b.t(p + "ffn_up.weight", np.concatenate([b.mat(N_FF, N_EMBD), b.mat(N_FF, N_EMBD)]))
            b.t(p + "ffn_down.weight", b.mat(N_EMBD, N_FF))
    elif name == "granite":
        b.common(2)
        b.kv(logit_scale=8.0, residual_scale=0.22, embedding_scale=12.0,
             **{"attention.scale": 0.0078125 * 16, "rope.freq_base": 1e7})
        b.embeddings(tied=True, scale=0.05)
        _dense_layers(b, 2)
    elif name in ("olmo2", "olmo3"):  # no input norms; Q/K norms over all heads; post norms
        n_layer = 2 if name == "olmo2" else 4
        b.common(n_layer, n_kv=N_HEAD, rope_dims=False)
        b.kv(**{"rope.freq_base": 500000.0})
        if name == "olmo3":  # 3 sliding-window layers (RoPE unscaled), 1 global with YaRN
            b.kv(**{"attention.sliding_window": 40, "rope.scaling.type": "yarn", "rope.scaling.factor": 8.0,
                    "rope.scaling.original_context_length": 64})
        b.embeddings(tied=False)
        for il in range(n_layer):
            p = f"blk.{il}."
            b.attention(il)
            b.qk_norm(il, full=True)
            b.norm(p + "post_attention_norm.weight")
            b.ffn(il)
            b.norm(p + "post_ffw_norm.weight")
    elif name == "smollm3":  # every 4th layer without RoPE
        b.common(4)
        b.kv(**{"rope.freq_base": 2000000.0})
        b.embeddings(tied=True)
        _dense_layers(b, 4)
    elif name == "mistral3":  # YaRN and llama4-style attention temperature (from position 64 on)
        b.common(2, ctx=262144)
        b.kv(**{"rope.freq_base": 1e6, "rope.scaling.type": "yarn", "rope.scaling.factor": 16.0,
                "rope.scaling.original_context_length": 64, "rope.scaling.yarn_beta_fast": 32.0,
                "rope.scaling.yarn_beta_slow": 1.0, "rope.scaling.yarn_log_multiplier": 1.0,
                "attention.temperature_scale": 0.5})
        b.embeddings(tied=False)
        _dense_layers(b, 2)
    elif name.startswith("gpt-oss"):  # gpt-oss: sinks, SWA every other layer, YaRN, biased router/experts
        b.common(2, n_ff=32, key_length=True)
        b.kv(expert_count=4, expert_used_count=2, expert_feed_forward_length=32,
             **{"attention.sliding_window": 40, "rope.freq_base": 150000.0, "rope.scaling.type": "yarn",
                "rope.scaling.factor": 32.0, "rope.scaling.original_context_length": 4096})
        b.embeddings(tied=False)
        for il in range(2):
            p = f"blk.{il}."
            b.norm(p + "attn_norm.weight")
            b.attention(il, bias=True, out_bias=True)
            b.t(p + "attn_sinks.weight", b.vec(N_HEAD, 0.0, 2.0))
            b.norm(p + "post_attention_norm.weight")
            b.experts(il, 4, 32, bias=True, mxfp4=name.endswith("mxfp4"))
    elif name == "gemma4":
        _gemma4(b)
    elif name == "gemma4-moe":
        _gemma4_moe(b)
    elif name == "glm4moe":
        _glm4moe(b)
    elif name == "llama4":
        _llama4(b)
    elif name == "deepseek2":
        _deepseek2(b)
    elif name in ("qwen35", "qwen35moe"):
        _qwen35(b, moe=name == "qwen35moe")
    else:
        raise KeyError(name)
    b.close()
    return out


def _gemma4(b: Builder) -> None:
    """Gemma 4 E2B's layout, scaled down: 5 layers, SWA (window 40) but for layers 2 and 4; SWA heads
    of 16 with 2 KV heads, global heads of 32 with 1 (per-layer head_count_kv); global layers'
    "proportional" RoPE through rope_freqs (a quarter of the pairs rotate, the rest have factor
    1e30); layers 3 and 4 reuse the KV of layers 1 (SWA) and 2 (global) and have double-wide FFNs;
    per-layer embeddings of 16; layer_output_scale; no attn_v on global layers (V = K); final
    soft-cap. Attention is unscaled after the Q/K norms (Gemma 4's scale 1): Q norm weights near
    0.2 and post-norm weights near 0.3 keep the random model from amplifying float noise (with
    weights near 1, a 1e-7 change of the embeddings moved its logits by 5e-4 of their range, and
    MoE routing flipped on near-ties)."""
    n_layer, n_shared, n_pl = 5, 2, 16
    hd_swa, hd_full, kv_swa, kv_full = 16, 32, 2, 1
    swa = [True, True, False, True, False]
    n_ff = [N_FF if il < n_layer - n_shared else 2 * N_FF for il in range(n_layer)]
    b.kv(context_length=131072, embedding_length=N_EMBD, block_count=n_layer, embedding_length_per_layer_input=n_pl,
         final_logit_softcapping=10.0,
         **{"attention.head_count": N_HEAD, "attention.layer_norm_rms_epsilon": 1e-6,
            "attention.key_length": hd_full, "attention.value_length": hd_full,
            "attention.key_length_swa": hd_swa, "attention.value_length_swa": hd_swa,
            "attention.sliding_window": 40, "attention.shared_kv_layers": n_shared,
            "rope.freq_base": 1e6, "rope.freq_base_swa": 10000.0,
            "rope.dimension_count": hd_full, "rope.dimension_count_swa": hd_swa})
    b.w.add_array("gemma4.attention.sliding_window_pattern", swa)
    b.w.add_array("gemma4.attention.head_count_kv", [kv_swa if s else kv_full for s in swa])
    b.w.add_array("gemma4.feed_forward_length", n_ff)
    b.embeddings(tied=True, scale=0.1)
    n_rot = hd_full // 2 // 4  # partial_rotary_factor 0.25
    b.t("rope_freqs.weight", np.array([1.0] * n_rot + [1e30] * (hd_full // 2 - n_rot), np.float32))
    b.t("per_layer_token_embd.weight", (b.rng.standard_normal((b.n_vocab, n_pl * n_layer)) * 0.5).astype(np.float32))
    b.t("per_layer_model_proj.weight", b.mat(n_pl * n_layer, N_EMBD))
    b.t("per_layer_proj_norm.weight", b.vec(n_pl))
    for il in range(n_layer):
        p = f"blk.{il}."
        hd, n_kv = (hd_swa, kv_swa) if swa[il] else (hd_full, kv_full)
        b.norm(p + "attn_norm.weight")
        b.t(p + "attn_q.weight", b.mat(N_HEAD * hd, N_EMBD, scale=2.0))
        if il < n_layer - n_shared:
            b.t(p + "attn_k.weight", b.mat(n_kv * hd, N_EMBD, scale=2.0))
            if swa[il]:
                b.t(p + "attn_v.weight", b.mat(n_kv * hd, N_EMBD))
            b.t(p + "attn_k_norm.weight", b.vec(hd))
        b.t(p + "attn_q_norm.weight", b.vec(hd, 0.2, 0.02))
        b.t(p + "attn_output.weight", b.mat(N_EMBD, N_HEAD * hd))
        b.t(p + "post_attention_norm.weight", b.vec(N_EMBD, 0.3, 0.03))
        b.norm(p + "ffn_norm.weight")
        b.ffn(il, n_ff[il])
        b.t(p + "post_ffw_norm.weight", b.vec(N_EMBD, 0.3, 0.03))
        b.t(p + "inp_gate.weight", b.mat(n_pl, N_EMBD, scale=2.0))
        b.t(p + "proj.weight", b.mat(N_EMBD, n_pl))
        b.norm(p + "post_norm.weight")
        b.t(p + "layer_output_scale.weight", np.array([1.0 - 0.05 * il], np.float32))


def _gemma4_moe(b: Builder) -> None:
    """Gemma 4 26B-A4B's layout, scaled down: 6 layers, every 3rd global; no per-layer embeddings;
    every layer a dense GeGLU FFN beside 8 experts (top 2) with the router's own scale and
    per-expert output scales (ffn_down_exps.scale); global layers without attn_v."""
    n_layer, n_expert, n_ff_exp = 6, 8, 32
    hd_swa, hd_full, kv_swa, kv_full = 16, 32, 2, 1
    swa = [il % 3 < 2 for il in range(n_layer)]
    b.kv(context_length=262144, embedding_length=N_EMBD, block_count=n_layer, embedding_length_per_layer_input=0,
         feed_forward_length=N_FF, expert_count=n_expert, expert_used_count=2, expert_feed_forward_length=n_ff_exp,
         final_logit_softcapping=10.0,
         **{"attention.head_count": N_HEAD, "attention.layer_norm_rms_epsilon": 1e-6,
            "attention.key_length": hd_full, "attention.value_length": hd_full,
            "attention.key_length_swa": hd_swa, "attention.value_length_swa": hd_swa,
            "attention.sliding_window": 40, "attention.shared_kv_layers": 0,
            "rope.freq_base": 1e6, "rope.freq_base_swa": 10000.0,
            "rope.dimension_count": hd_full, "rope.dimension_count_swa": hd_swa})
    b.w.add_array("gemma4.attention.sliding_window_pattern", swa)
    b.w.add_array("gemma4.attention.head_count_kv", [kv_swa if s else kv_full for s in swa])
    b.embeddings(tied=True, scale=0.1)
    n_rot = hd_full // 2 // 4
    b.t("rope_freqs.weight", np.array([1.0] * n_rot + [1e30] * (hd_full // 2 - n_rot), np.float32))
    for il in range(n_layer):
        p = f"blk.{il}."
        hd, n_kv = (hd_swa, kv_swa) if swa[il] else (hd_full, kv_full)
        b.norm(p + "attn_norm.weight")
        b.t(p + "attn_q.weight", b.mat(N_HEAD * hd, N_EMBD, scale=2.0))
        b.t(p + "attn_k.weight", b.mat(n_kv * hd, N_EMBD, scale=2.0))
        if swa[il]:
            b.t(p + "attn_v.weight", b.mat(n_kv * hd, N_EMBD))
        b.t(p + "attn_q_norm.weight", b.vec(hd, 0.2, 0.02))  # small: see _gemma4
        b.t(p + "attn_k_norm.weight", b.vec(hd))
        b.t(p + "attn_output.weight", b.mat(N_EMBD, N_HEAD * hd))
        b.t(p + "post_attention_norm.weight", b.vec(N_EMBD, 0.3, 0.03))
        b.norm(p + "ffn_norm.weight")
        b.ffn(il)
        b.t(p + "post_ffw_norm_1.weight", b.vec(N_EMBD, 0.3, 0.03))
        b.norm(p + "pre_ffw_norm_2.weight")
        b.experts(il, n_expert, n_ff_exp)
        b.t(p + "ffn_gate_inp.scale", b.vec(N_EMBD, 8.0, 2.0))  # the router reads rms_norm(x) / sqrt(n_embd)
        b.t(p + "ffn_down_exps.scale", b.vec(n_expert, 1.0, 0.3))
        b.t(p + "post_ffw_norm_2.weight", b.vec(N_EMBD, 0.3, 0.03))
        b.t(p + "post_ffw_norm.weight", b.vec(N_EMBD, 0.3, 0.03))
        b.t(p + "layer_output_scale.weight", np.array([1.0 - 0.05 * il], np.float32))


def _glm4moe(b: Builder) -> None:
    """GLM-4.5's layout, scaled down: 3 layers (the first dense, leading_dense_block_count 1) and one
    MTP layer counted in block_count (nextn_predict_layers 1, not run); Q/K/V biases, per-head Q/K
    norms (GLM-4.5 355B), half the head dims rotated (NEOX); 8 experts (top 2) under a sigmoid
    router with a selection bias (exp_probs_b), normalised and scaled weights, one shared expert."""
    n_layer, n_expert, n_ff_exp = 3, 8, 32
    b.common(n_layer + 1, head_dim=32, key_length=True, rope_dims=False, ctx=131072)
    b.kv(expert_count=n_expert, expert_used_count=2, expert_feed_forward_length=n_ff_exp, expert_shared_count=1,
         leading_dense_block_count=1, expert_gating_func=2, expert_weights_scale=2.5, expert_weights_norm=True,
         nextn_predict_layers=1, vocab_size=b.n_vocab, **{"rope.dimension_count": 16, "rope.freq_base": 1e6})
    b.embeddings(tied=False)
    for il in range(n_layer + 1):
        p = f"blk.{il}."
        b.norm(p + "attn_norm.weight")
        b.attention(il, bias=True)
        b.qk_norm(il)
        b.norm(p + "post_attention_norm.weight")
        if il == 0:
            b.ffn(il)
            continue
        b.experts(il, n_expert, n_ff_exp)
        b.t(p + "exp_probs_b.bias", b.vec(n_expert, 0.0, 0.5))
        b.ffn(il, n_ff_exp, "_shexp")
        if il == n_layer:  # the MTP block's own tensors (llama.cpp skips them unless it runs MTP)
            b.t(p + "nextn.eh_proj.weight", b.mat(N_EMBD, 2 * N_EMBD))
            b.norm(p + "nextn.enorm.weight")
            b.norm(p + "nextn.hnorm.weight")
            b.norm(p + "nextn.shared_head_norm.weight")


def _llama4(b: Builder) -> None:
    """Llama 4's layout, scaled down: 4 layers (3 chunked, the 4th global without RoPE), llama3
    rope_freqs, MoE every 2nd layer (interleave_moe_layer_step 2, as Maverick) of 4 experts, top 1,
    with a shared expert; dense layers of n_ff 128. (llama.cpp fixes the chunk and the temperature
    floor at 8192 tokens, beyond these tests' contexts.)"""
    n_layer, n_expert, n_ff_exp = 4, 4, 64
    b.common(n_layer, ctx=10485760)
    b.kv(expert_count=n_expert, expert_used_count=1, expert_feed_forward_length=n_ff_exp,
         interleave_moe_layer_step=2, vocab_size=b.n_vocab, **{"rope.freq_base": 500000.0})
    b.embeddings(tied=False)
    b.t("rope_freqs.weight", np.geomspace(1.0, 8.0, b.head_dim // 2).astype(np.float32))
    for il in range(n_layer):
        p = f"blk.{il}."
        b.norm(p + "attn_norm.weight")
        b.attention(il)
        b.norm(p + "ffn_norm.weight")
        if (il + 1) % 2 == 0:
            b.experts(il, n_expert, n_ff_exp)
            b.ffn(il, n_ff_exp, "_shexp")
        else:
            b.ffn(il)


def _deepseek2(b: Builder) -> None:
    """DeepSeek V3's layout (MLA as convert_hf_to_gguf.py writes it), scaled down: 3 layers, the first
    dense; Q through q_lora_rank 48, one latent KV head of kv_lora_rank 32 + 16 RoPE dims (key_length
    48, value_length 32; per head 24 + 16 for Q/K and 24 for V: key/value_length_mla); per-head
    attn_k_b / attn_v_b; YaRN (factor 40 over 64 positions, mscale_all_dim 1); 8 experts (top 2),
    sigmoid router with exp_probs_b, normalised weights scaled by 2.5, one shared expert."""
    n_layer, n_expert, n_ff_exp, q_lora, kv_lora, rope, nope, v_dim = 3, 8, 32, 48, 32, 16, 24, 24
    b.kv(context_length=163840, embedding_length=N_EMBD, block_count=n_layer, feed_forward_length=N_FF,
         vocab_size=b.n_vocab, leading_dense_block_count=1, expert_count=n_expert, expert_used_count=2,
         expert_feed_forward_length=n_ff_exp, expert_shared_count=1, expert_weights_scale=2.5,
         expert_weights_norm=True, expert_gating_func=2,
         **{"attention.head_count": N_HEAD, "attention.head_count_kv": 1, "attention.layer_norm_rms_epsilon": 1e-6,
            "attention.key_length": kv_lora + rope, "attention.value_length": kv_lora,
            "attention.key_length_mla": nope + rope, "attention.value_length_mla": v_dim,
            "attention.q_lora_rank": q_lora, "attention.kv_lora_rank": kv_lora,
            "rope.dimension_count": rope, "rope.freq_base": 10000.0, "rope.scaling.type": "yarn",
            "rope.scaling.factor": 40.0, "rope.scaling.original_context_length": 64,
            "rope.scaling.yarn_log_multiplier": 0.1})
    b.embeddings(tied=False)
    for il in range(n_layer):
        p = f"blk.{il}."
        b.norm(p + "attn_norm.weight")
        b.t(p + "attn_q_a.weight", b.mat(q_lora, N_EMBD))
        b.t(p + "attn_q_a_norm.weight", b.vec(q_lora))
        b.t(p + "attn_q_b.weight", b.mat(N_HEAD * (nope + rope), q_lora, scale=2.0))
        b.t(p + "attn_kv_a_mqa.weight", b.mat(kv_lora + rope, N_EMBD, scale=2.0))
        b.t(p + "attn_kv_a_norm.weight", b.vec(kv_lora))
        b.t(p + "attn_k_b.weight", b.mat(N_HEAD, kv_lora, nope))
        b.t(p + "attn_v_b.weight", b.mat(N_HEAD, v_dim, kv_lora))
        b.t(p + "attn_output.weight", b.mat(N_EMBD, N_HEAD * v_dim))
        b.norm(p + "ffn_norm.weight")
        if il == 0:
            b.ffn(il)
            continue
        b.experts(il, n_expert, n_ff_exp)
        b.t(p + "exp_probs_b.bias", b.vec(n_expert, 0.0, 0.5))
        b.ffn(il, n_ff_exp, "_shexp")


def _qwen35(b: Builder, moe: bool = False) -> None:
    """Qwen 3.5's layout, scaled down: 4 layers, 3 gated delta-net and the 4th full attention
    (full_attention_interval 4); full attention: 4 heads of 32 (Q projection doubled for the
    output gate), 2 KV heads, Q/K norms, half the head dims rotated with text M-RoPE sections
    [3, 3, 2, 0]; delta-net: 2 key heads and 4 value heads of 16 (value heads share key heads
    modulo 2), conv kernel 4. qwen35moe: every FFN 8 experts (top 2) of 32 and a shared expert of
    64 gated by sigmoid(x . ffn_gate_inp_shexp)."""
    n_layer, hd, dk, n_k, n_v, d_conv = 4, 32, 16, 2, 4, 4
    d_inner = n_v * dk
    b.common(n_layer, head_dim=hd, key_length=True, rope_dims=False, ctx=262144)
    b.kv(full_attention_interval=4, **{"rope.dimension_count": 16, "rope.freq_base": 1e7,
                                       "ssm.conv_kernel": d_conv, "ssm.inner_size": d_inner, "ssm.state_size": dk,
                                       "ssm.time_step_rank": n_v, "ssm.group_count": n_k})
    b.w.add_array(f"{b.arch}.rope.dimension_sections", [3, 3, 2, 0])
    if moe:
        b.kv(expert_count=8, expert_used_count=2, expert_feed_forward_length=32, expert_shared_feed_forward_length=64)
    b.embeddings(tied=True)
    for il in range(n_layer):
        p = f"blk.{il}."
        b.norm(p + "attn_norm.weight")
        if (il + 1) % 4:
            conv_dim = 2 * n_k * dk + d_inner
            b.t(p + "attn_qkv.weight", b.mat(conv_dim, N_EMBD, scale=2.0))
            b.t(p + "attn_gate.weight", b.mat(d_inner, N_EMBD))
            b.t(p + "ssm_conv1d.weight", b.mat(conv_dim, d_conv, scale=1.5))
            b.t(p + "ssm_dt.bias", b.vec(n_v, 0.0, 1.0))
            b.t(p + "ssm_a", -np.exp(b.rng.uniform(0.0, 2.5, n_v)).astype(np.float32))
            b.t(p + "ssm_beta.weight", b.mat(n_v, N_EMBD, scale=2.0))
            b.t(p + "ssm_alpha.weight", b.mat(n_v, N_EMBD, scale=2.0))
            b.t(p + "ssm_norm.weight", b.vec(dk))
            b.t(p + "ssm_out.weight", b.mat(N_EMBD, d_inner))
        else:
            b.t(p + "attn_q.weight", b.mat(2 * N_HEAD * hd, N_EMBD, scale=2.0))
            b.t(p + "attn_k.weight", b.mat(N_KV * hd, N_EMBD, scale=2.0))
            b.t(p + "attn_v.weight", b.mat(N_KV * hd, N_EMBD))
            b.qk_norm(il)
            b.t(p + "attn_output.weight", b.mat(N_EMBD, N_HEAD * hd))
        b.norm(p + "post_attention_norm.weight")
        if moe:
            b.experts(il, 8, 32)
            b.t(p + "ffn_gate_inp_shexp.weight", b.mat(N_EMBD, scale=2.0))
            b.ffn(il, 64, "_shexp")
        else:
            b.ffn(il)


def _build_moe_bench(out: Path, vocab: Path, seed: int, n_embd: int = 512, n_layer: int = 8, n_expert: int = 8,
                     n_ff: int = 1024) -> Path:
    global N_EMBD, N_HEAD, N_KV, N_FF
    saved = N_EMBD, N_HEAD, N_KV, N_FF
    N_EMBD, N_HEAD, N_KV, N_FF = n_embd, 8, 2, n_ff  # the Builder's sizes, for this model only
    try:
        b = Builder(out, "llama", vocab, seed)
        b.common(n_layer, n_ff=n_ff, head_dim=n_embd // N_HEAD)
        b.kv(expert_count=n_expert, expert_used_count=2, **{"rope.freq_base": 1e6})
        b.embeddings(tied=False)
        for il in range(n_layer):
            b.norm(f"blk.{il}.attn_norm.weight")
            b.attention(il)
            b.norm(f"blk.{il}.ffn_norm.weight")
            b.experts(il, n_expert, n_ff)
        b.close()
    finally:
        N_EMBD, N_HEAD, N_KV, N_FF = saved
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("names", nargs="*", help=f"models to write (default all): {', '.join(MODELS)}")
    ap.add_argument("--vocab-dir", type=Path, default=VOCAB_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=Path, help="one vocabulary for all (e.g. tests/data/stories260K.gguf's 512 tokens)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list or not args.out_dir:
        print("\n".join(f"{n}: {a} ({v})" for n, (a, v) in MODELS.items()))
        return
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.names or [n for n in MODELS if n not in BENCH_ONLY]:
        path = build(name, out_dir / f"{name}.gguf", args.vocab_dir, args.seed, args.vocab)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
