"""The attention layers of the forward pass, one method per kind, mixed into runtime/model.py's Model.

`_attention_block` picks the layer's kind and runs the standard one itself: multi-head / grouped-query
attention with fused or separate Q/K/V, per-head or full Q/K norms, sliding-window or chunked layers,
layers reading an earlier layer's KV (gemma4), sinks and soft-capping. The others:
`_mla_attention` (deepseek2's multi-head latent attention), `_delta_net` (qwen35's gated delta-net
layer) and `_gated_attention` (qwen35's full-attention layer). Each mirrors its graph in llama.cpp's
src/models/<arch>.cpp over the ops of blocks.py; none of them holds state.

The methods use the Model's `cfg`, `arch`, `tensors`, `kv_f16`, `weight(name[, expert])` and
`_matmul(x, name, observe)` (the one place weights meet activations), and read the RoPE tables
that `Model._rope_tables` built for the chunk (`ropes`).
"""

from __future__ import annotations

import numpy as np

from .blas import BLAS
from .blocks import apply_rope, attention, causal_conv, gated_delta_net, rms_norm

F32 = np.float32


def _f16_round(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


class AttentionLayers:
    """The attention half of a layer (mixed into Model; see the module docstring)."""

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
