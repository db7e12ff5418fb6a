"""The NumPy blocks the architecture table composes: norms, RoPE, attention, FFN activations, MoE routing.

Each mirrors one ggml CPU op (ggml/src/ggml-cpu/ops.cpp, vec.h) in float32: where ggml rounds
(the GELU table in fp16, YaRN's ramp, the softmax sinks) the comment says so. Shapes are noted as
(T, ...) with T the tokens of the chunk.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import numpy as np

ROPE_NORM, ROPE_NEOX = 0, 2
F32 = np.float32


# --- norms ------------------------------------------------------------------------------------------

def rms_norm(x: np.ndarray, weight: Optional[np.ndarray], eps: float) -> np.ndarray:
    """ggml_rms_norm over the last axis, then the weight: the mean of squares is summed in double,
    the scale is float."""
    mean = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    scale = (1.0 / np.sqrt(mean + eps)).astype(np.float32)
    y = x * scale
    return y * weight if weight is not None else y


# --- RoPE -------------------------------------------------------------------------------------------

def yarn_corr_dims(n_dims: int, n_ctx_orig: int, base: float, beta_fast: float,
                   beta_slow: float) -> tuple[float, float]:
    """ggml_rope_yarn_corr_dims: the first and last dimension YaRN blends between."""
    def corr_dim(n_rot: float) -> float:
        return n_dims * math.log(n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    start = math.floor(F32(corr_dim(beta_fast)))
    end = math.ceil(F32(corr_dim(beta_slow)))
    return float(max(0, start)), float(min(n_dims - 1, end))


def rope_cache(positions, n_rot: int, base: float, freq_scale: float,
               freq_factors: Optional[np.ndarray] = None, ext_factor: float = 0.0, attn_factor: float = 1.0,
               n_ctx_orig: int = 0, beta_fast: float = 32.0, beta_slow: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (T, n_rot/2) as ggml_rope_cache_init makes them: theta_i = pos * base^(-2i/n_rot),
    multiplied up step by step in float32, divided by the frequency factors (llama3 rope_freqs,
    LongRoPE), scaled (linear) or blended (YaRN), times attn_factor. `positions` is a count
    (0..T-1) or an array of positions."""
    pos = np.arange(positions, dtype=np.float32) if np.isscalar(positions) else np.asarray(positions, np.float32)
    half = n_rot // 2
    theta_scale = np.float32(base ** (-2.0 / n_rot))
    theta = np.empty((len(pos), half), dtype=np.float32)
    theta[:, 0] = pos
    for i in range(1, half):
        theta[:, i] = theta[:, i - 1] * theta_scale
    if freq_factors is not None:
        theta = theta / freq_factors[:half].astype(np.float32)
    mscale = np.float32(attn_factor)
    interp = np.float32(freq_scale) * theta
    if ext_factor != 0.0:
        low, high = yarn_corr_dims(n_rot, n_ctx_orig, base, beta_fast, beta_slow)
        y = (np.arange(half, dtype=np.float32) - np.float32(low)) / np.float32(max(0.001, high - low))
        ramp_mix = (np.float32(1) - np.minimum(np.float32(1), np.maximum(np.float32(0), y))) * np.float32(ext_factor)
        theta = interp * (np.float32(1) - ramp_mix) + theta * ramp_mix
        mscale = np.float32(mscale * np.float32(1.0 + 0.1 * math.log(1.0 / freq_scale)))
    else:
        theta = interp
    return np.cos(theta) * mscale, np.sin(theta) * mscale


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


# --- attention --------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _causal_mask(n: int) -> np.ndarray:
    return np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)


def _window_mask(r0: int, r1: int, c0: int, window: int) -> np.ndarray:
    """-inf where query i (r0 <= i < r1) may not see key j (c0 <= j < r1): j > i or i - j >= window
    (llama_hparams::is_masked_swa, LLAMA_SWA_TYPE_STANDARD)."""
    i = np.arange(r0, r1)[:, None]
    j = np.arange(c0, r1)[None, :]
    return np.where((j > i) | (i - j >= window), np.float32(-np.inf), np.float32(0))


def _chunk_mask(r0: int, r1: int, c0: int, chunk: int) -> np.ndarray:
    """-inf where query i may not see key j: j > i or j before i's chunk (LLAMA_SWA_TYPE_CHUNKED)."""
    i = np.arange(r0, r1)[:, None]
    j = np.arange(c0, r1)[None, :]
    return np.where((j > i) | (j < (i // chunk) * chunk), np.float32(-np.inf), np.float32(0))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, blas=None, window: int = 0, softcap: float = 0.0,
              sinks: Optional[np.ndarray] = None, block: int = 128, chunk: int = 0) -> np.ndarray:
    """Causal grouped-query attention; q (T, n_head, hd) already scaled, k (T, n_kv, hd), v (T, n_kv, hd_v).

    `window` > 0: sliding-window layer. `softcap` > 0: scores -> cap * tanh(scores / cap) (gemma2).
    `sinks` (n_head,): a per-head logit that joins the softmax's denominator only (gpt-oss; ggml
    soft_max's src2). `chunk` > 0: chunked layer (llama4), keys from the query's chunk only.
    Queries go in blocks of `block` rows, each against only the keys it can see,
    so the masked part of the score matrix is never computed."""
    T, n_head, hd = q.shape
    n_kv, hd_v = k.shape[1], v.shape[2]
    group = n_head // n_kv
    # contiguous (heads, T, hd) operands: numpy's stacked matmul only reaches BLAS for those
    q = np.ascontiguousarray(q.transpose(1, 0, 2)).reshape(n_kv, group, T, hd)
    kt = np.ascontiguousarray(k.transpose(1, 2, 0))  # (n_kv, hd, T)
    v = np.ascontiguousarray(v.transpose(1, 0, 2))   # (n_kv, T, hd_v)
    out = np.empty((n_kv, group, T, hd_v), dtype=np.float32)
    sink = None if sinks is None else sinks.astype(np.float32).reshape(n_kv, group, 1, 1)
    if blas is not None:
        blas.for_flops(4.0 * group * block * min(T, window or T) * hd)
    for r0 in range(0, T, block):
        r1 = min(T, r0 + block)
        c0 = max(0, r0 - window + 1) if window > 0 else (r0 // chunk) * chunk if chunk > 0 else 0
        if chunk > 0:
            mask = _chunk_mask(r0, r1, c0, chunk)
        else:
            mask = _window_mask(r0, r1, c0, window) if window > 0 else _causal_mask(r1 - r0)
        for j in range(n_kv):  # one KV head and the `group` query heads that share it
            scores = q[j, :, r0:r1] @ kt[j, :, c0:r1]  # (group, B, r1 - c0)
            if softcap > 0:
                scores = np.tanh(scores * np.float32(1.0 / softcap)) * np.float32(softcap)
            if window > 0 or chunk > 0:
                scores += mask
            else:  # only the diagonal block has keys in the future
                scores[:, :, r0:] += mask
            mx = scores.max(axis=-1, keepdims=True)
            if sink is not None:
                mx = np.maximum(mx, sink[j])
            scores -= mx
            np.exp(scores, out=scores)
            total = scores.sum(axis=-1, keepdims=True)  # (group, B, 1)
            if sink is not None:
                total += np.exp(sink[j] - mx)
            out[j, :, r0:r1] = (scores @ v[j, c0:r1]) / total
    # head h = j * group + g, as ggml broadcasts K/V over query heads
    return np.ascontiguousarray(out.reshape(n_head, T, hd_v).transpose(1, 0, 2)).reshape(T, n_head * hd_v)


# --- linear attention (qwen35) ----------------------------------------------------------------------

def causal_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ggml_ssm_conv from a zero state: x (T, channels), w (channels, d_conv);
    out[t] = sum_k x[t + k - (d_conv - 1)] * w[:, k], the taps added in order."""
    T, d_conv = x.shape[0], w.shape[1]
    padded = np.concatenate([np.zeros((d_conv - 1, x.shape[1]), np.float32), x])
    out = padded[0:T] * w[:, 0]
    for k in range(1, d_conv):
        out = out + padded[k:k + T] * w[:, k]
    return out


def gated_delta_net(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """ggml_gated_delta_net on the CPU, from a zero state: q, k (T, H, d_k), v (T, H, d_v), g and
    beta (T, H). Per head a state S (d_k, d_v), token by token: S *= exp(g); delta = beta (v - k S);
    S += k outer delta; out = (q S) / sqrt(d_v). Returns (T, H, d_v)."""
    T, H, d_k = q.shape
    d_v = v.shape[2]
    decay = np.exp(g)
    S = np.zeros((H, d_k, d_v), np.float32)
    out = np.empty((T, H, d_v), np.float32)
    scale = F32(1.0 / np.sqrt(np.float32(d_v)))
    for t in range(T):
        S *= decay[t][:, None, None]
        delta = (v[t] - np.einsum("hi,hij->hj", k[t], S)) * beta[t][:, None]
        S += k[t][:, :, None] * delta[:, None, :]
        out[t] = np.einsum("hi,hij->hj", q[t], S) * scale
    return out


# --- FFN activations --------------------------------------------------------------------------------

def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_swiglu_split: silu(gate) * up."""
    return gate / (np.float32(1.0) + np.exp(-gate)) * up


@lru_cache(maxsize=1)
def _gelu_table() -> np.ndarray:
    """ggml_table_gelu_f16: GELU (tanh form, float32) of every fp16 value, rounded to fp16."""
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        inner = F32(0.79788456080286535587989211986876) * x * (F32(1.0) + F32(0.044715) * x * x)
        y = F32(0.5) * x * (F32(1.0) + np.tanh(inner))
    return y.astype(np.float16).astype(np.float32)


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_geglu_split on the CPU (GGML_GELU_FP16): gate rounded to fp16, GELU read from the fp16
    table, 0 below -10 and the identity above 10; times up."""
    idx = gate.astype(np.float16).view(np.uint16)
    g = _gelu_table()[idx]
    g = np.where(gate <= F32(-10.0), F32(0.0), np.where(gate >= F32(10.0), gate, g))
    return g * up


def swiglu_oai(gate: np.ndarray, up: np.ndarray, alpha: float = 1.702, limit: float = 7.0) -> np.ndarray:
    """ggml_swiglu_oai (gpt-oss): x = min(gate, limit), y = clamp(up, -limit, limit),
    x * sigmoid(alpha x) * (y + 1)."""
    x = np.minimum(gate, F32(limit))
    y = np.clip(up, F32(-limit), F32(limit))
    return x / (F32(1.0) + np.exp(F32(alpha) * -x)) * (y + F32(1.0))


ACTIVATIONS = {"silu": swiglu, "gelu": geglu, "swiglu_oai": swiglu_oai}


# --- MoE routing ------------------------------------------------------------------------------------

def softmax(x: np.ndarray) -> np.ndarray:
    """ggml_soft_max over the last axis: exp(x - max), summed in double, scaled by 1/sum."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e * (1.0 / e.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)


def route(logits: np.ndarray, n_used: int, gating: str, norm_w: bool, w_scale: float,
          sel_bias: Optional[np.ndarray] = None, select_logits: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """build_moe_ffn's router: (selected experts (T, n_used) int, weights (T, n_used) float32).

    gating "softmax": top-k of softmax(logits), weights their probabilities; "softmax_weight"
    (gpt-oss): top-k of the logits, weights the softmax over the chosen k; "sigmoid": top-k of
    sigmoid(logits). norm_w: weights divided by their sum (at least 2^-14). `sel_bias`
    (n_expert,): added to the probabilities for the choice only (DeepSeek V3, GLM-4.5's exp_probs_b).
    `select_logits`: the choice from the raw logits (llama4)."""
    if gating == "softmax":
        probs = softmax(logits)
    elif gating == "sigmoid":
        probs = F32(1.0) / (F32(1.0) + np.exp(-logits))
    else:
        probs = logits
    # ggml_argsort_top_k: descending; a stable sort keeps the lower index first on ties
    choice = logits if select_logits else probs if sel_bias is None else probs + sel_bias
    sel = np.argsort(-choice, axis=-1, kind="stable")[:, :n_used]
    w = np.take_along_axis(probs, sel, axis=-1)
    if gating == "softmax_weight":
        w = softmax(w)
    if norm_w:
        w = w / np.maximum(w.sum(axis=-1, keepdims=True, dtype=np.float32), F32(6.103515625e-5))
    if w_scale not in (0.0, 1.0):
        w = w * F32(w_scale)
    return sel, w.astype(np.float32)
