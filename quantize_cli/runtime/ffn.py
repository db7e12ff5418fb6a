"""The feed-forward half of each layer, mixed into runtime/model.py's Model: the dense gated FFN
(SwiGLU / GeGLU, or phi3's fused gate-up), the mixture of experts (build_moe_ffn: routing, experts
one at a time, the shared expert of each kind) and gemma4's dense-plus-experts layer.

The methods use the Model's `cfg`, `arch`, `tensors`, `weight`, `optional` and
`_matmul(x, name, observe[, (expert, n_expert)])`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .blocks import ACTIVATIONS, rms_norm, route


class FeedForward:
    """The FFN / MoE half of a layer (mixed into Model; see the module docstring)."""

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
