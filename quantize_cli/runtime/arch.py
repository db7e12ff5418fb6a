"""The architecture table: each family llama.cpp builds (src/models/<arch>.cpp) as data.

An entry says which blocks a layer uses and which hyperparameters it reads beyond the common ones
(llama_model_base::load_hparams); `read_config` turns a GGUF's metadata into a Config the forward
pass (model.py) runs. Adding a dense family is an entry here plus its tests.

    layer: [norm_in] -> Q,K,V (+bias) -> [qk_norm] -> RoPE -> attention (GQA, SWA, softcap, sinks)
           -> wo -> [norm_post] -> [*residual_scale] -> +residual
           [norm_in] -> FFN (SwiGLU / GeGLU / fused SwiGLU) or MoE -> [norm_post] -> [*residual_scale] -> +residual
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from ..errors import SourceError
from .blocks import ROPE_NEOX, ROPE_NORM


class ModelError(SourceError):
    """The model cannot be run: unsupported architecture, missing tensors, NaN activations."""


@dataclass(frozen=True)
class Moe:
    """build_moe_ffn's arguments as the family's graph passes them."""
    gating: str = "softmax"   # softmax | softmax_weight (gpt-oss) | sigmoid
    norm_w: bool = True       # weights divided by their sum
    act: str = "silu"         # silu | swiglu_oai
    weight_before: bool = False  # llama4: the routing weights scale the experts' input, not their output
    select_logits: bool = False  # llama4: top-k of the raw logits (sigmoid only for the weights)
    shared: str = ""          # "": none; "gated": qwen2moe's sigmoid-gated shared expert;
                              # "gemma4": a dense GeGLU FFN beside the experts, each with its own norms,
                              # the router on the unweighted-normed input times ffn_gate_inp.scale;
                              # "plain": shared experts (ffn_*_shexp) added ungated (glm4moe);
                              # "sigmoid": a shared expert, where present, times sigmoid(x . w) (qwen35moe)


@dataclass(frozen=True)
class Arch:
    rope: int                         # llama_model_rope_type: ROPE_NORM (adjacent pairs) or ROPE_NEOX (halves)
    examples: str                     # example models (README, refusal message)
    norm_in: bool = True              # RMSNorm before attention and FFN (olmo2: none)
    norm_post: bool = False           # RMSNorm of each block's output before the residual (gemma2/3, olmo2)
    ffn_norm: str = "ffn_norm"        # the FFN's input norm (gpt-oss: post_attention_norm)
    qk_norm: str = ""                 # "head": RMSNorm per head (qwen3, gemma3); "full": over all heads (olmo2);
                                      # "l2": unweighted, after RoPE, on RoPE layers (llama4)
    ffn: str = "silu"                 # silu: SwiGLU; gelu: GeGLU; fused: phi3's ffn_up of 2 n_ff rows
    embd_scale_sqrt: bool = False     # gemma: embeddings times sqrt(n_embd)
    tied_always: bool = False         # gemma, gemma2: the output is token_embd even when output.weight exists
    swa: Optional[int] = None         # sliding-window pattern default (load_swa_pattern); None: no SWA
    swa_needs_key: bool = True        # SWA only when attention.sliding_window is present and > 0
    swa_rope: str = "swa"             # SWA layers' RoPE: "swa" (rope.freq_base_swa), "plain" (olmo3: no scaling),
                                      # "same" (llama4: the full layers' base, scale and rope_freqs)
    swa_chunked: bool = False         # llama4: the window is a chunk (LLAMA_SWA_TYPE_CHUNKED), not a sliding window
    temp_nope_only: bool = False      # llama4: the attention temperature only on layers without RoPE
    no_rope_step: int = 0             # smollm3: every 4th layer has no RoPE
    moe: Optional[Moe] = None         # always MoE (qwen2moe, qwen3moe, gpt-oss)
    moe_if_router: Optional[Moe] = None  # MoE when blk.N.ffn_gate_inp exists (llama: Mixtral)
    sinks: bool = False               # attention sinks (blk.N.attn_sinks), gpt-oss
    qk_norm_optional: bool = False    # Q/K norms used where the tensors exist (glm4moe: GLM-4.5 355B has them)
    v_norm: bool = False              # V normed per head without a weight (gemma4)
    attn: str = "gqa"                 # gqa | mla (deepseek2: latent KV, absorbed per-head wk_b / wv_b) |
                                      # hybrid (qwen35: gated delta-net layers and gated full attention)
    keys: tuple = ()                  # (Config field, key suffix, default): hyperparameters beyond the common ones
    setup: Optional[Callable] = None  # hparam rules that are code in llama.cpp (gemma2/3 attention scale)


def _gemma_scale(cfg: "Config", n_layer_27b: int) -> None:
    # gemma_pytorch: the 27B model scales queries by 1/sqrt(n_embd/n_head), the others by 1/sqrt(head_dim)
    cfg.attn_scale = 1.0 / math.sqrt(cfg.n_embd // cfg.n_head if cfg.n_layer == n_layer_27b else cfg.head_dim)


def _gemma3_setup(cfg: "Config") -> None:
    _gemma_scale(cfg, 62)


def _gemma2_setup(cfg: "Config") -> None:
    _gemma_scale(cfg, 46)


def _mistral3_setup(cfg: "Config") -> None:
    if cfg.attn_temp_scale:
        cfg.attn_temp_floor = cfg.n_ctx_orig_yarn
        if not cfg.attn_temp_floor:
            raise ModelError("attention temperature scaling needs rope.scaling.original_context_length")


def _gemma4_setup(cfg: "Config") -> None:
    cfg.attn_scale = 1.0  # Gemma4: self.scaling = 1.0 (the Q/K norms take its place)
    if cfg.n_kv_shared:  # the last n layers reuse the KV of the last full and SWA layers before them
        if cfg.n_layer - cfg.n_kv_shared < 2:
            raise ModelError("gemma4.attention.shared_kv_layers leaves fewer than 2 layers with their own KV")
    if cfg.head_dim_swa != cfg.head_dim_v_swa:
        raise ModelError("Gemma 4 requires gemma4.attention.key_length_swa == value_length_swa")


_GATING = {1: "softmax", 2: "sigmoid", 3: "softmax_weight"}  # llama_expert_gating_func_type


def _moe_keys_setup(cfg: "Config") -> None:
    """expert_gating_func and expert_weights_norm as the file gives them (deepseek2-style MoE)."""
    if cfg.gating_func not in _GATING:
        raise ModelError(f"{cfg.arch}.expert_gating_func {cfg.gating_func} is not supported (1 softmax, 2 sigmoid, "
                         "3 softmax_weight)")
    cfg.moe = replace(cfg.moe, gating=_GATING[cfg.gating_func], norm_w=cfg.expert_weights_norm)


def _glm4moe_setup(cfg: "Config") -> None:
    if cfg.gating_func == 0:  # LLAMA_EXPERT_GATING_FUNC_TYPE_NONE: GLM4_MOE's default is sigmoid
        cfg.gating_func = 2
    _moe_keys_setup(cfg)


def _llama4_setup(cfg: "Config") -> None:
    # load_arch_hparams: sliding_window 0 means plain attention and RoPE everywhere but the last layer;
    # otherwise chunks of 8192 on 3 of 4 layers, NoPE and temperature on the 4th
    if cfg.n_swa == 0:
        cfg.swa_layers = [False] * cfg.n_layer
        cfg.no_rope_step = cfg.n_layer
    else:
        cfg.n_swa, cfg.attn_temp_floor, cfg.attn_temp_scale, cfg.attn_temp_offset = 8192, 8192, 0.1, 1.0
        pattern = cfg.swa_pattern if cfg.swa_pattern is not None else 4
        if isinstance(pattern, list):
            cfg.swa_layers = (pattern + [False] * cfg.n_layer)[:cfg.n_layer]
        else:
            cfg.swa_layers = [pattern == 0 or il % pattern < pattern - 1 for il in range(cfg.n_layer)]
        cfg.no_rope_step = 4
    cfg.use_kq_norm = cfg.n_expert != 128  # llama.cpp: all but the 17B-128E (Maverick)
    cfg.n_expert_shared = 1  # every MoE layer has ffn_*_shexp of n_ff_exp


def _deepseek2_setup(cfg: "Config") -> None:
    if cfg.head_dim_k_mla == 0 or cfg.head_dim_v_mla == 0:
        raise ModelError("deepseek2 models without MLA (key_length_mla / value_length_mla, an old wkv_b file) "
                         "are not supported; reconvert with a current convert_hf_to_gguf.py")
    if cfg.attn_temp_scale:
        raise ModelError("deepseek2 with attention temperature scaling (attention.temperature_scale, Mistral "
                         "Large 3) is not supported by the forward pass")
    if cfg.gating_func == 0:  # NONE: DeepSeek V2/V2.5 files; GLM 4.7 Lite's are sigmoid
        cfg.gating_func = 2 if cfg.n_layer in (47, 48) and cfg.n_vocab == 154880 else 1
    _moe_keys_setup(cfg)
    n_rot, nope = cfg.n_rot, cfg.head_dim_k_mla - cfg.n_rot
    if nope < 1 or cfg.head_dim != cfg.n_lora_kv + n_rot or cfg.head_dim_v != cfg.n_lora_kv:
        raise ModelError("deepseek2: key_length must be kv_lora_rank + rope dims and value_length kv_lora_rank "
                         "(MLA as convert_hf_to_gguf.py writes it)")
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    if cfg.yarn_log_mul:  # [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]: the converter wrote 0.1 * mscale_all_dim
        cfg.yarn_log_mul = f32(np.float32(cfg.yarn_log_mul) / np.float32(0.1))
        if cfg.rope_scaling == "yarn":  # llama_context: mscale = mscale_all_dim, so the factor is 1
            cfg.attn_factor = f32(1.0 / (1.0 + 0.1 * math.log(1.0 / cfg.rope_freq_scale))) * cfg.rope_attn_factor
    # deepseek2.cpp: the original attn_factor, then mscale^2 / sqrt(head size) as the KQ scale
    ln = math.log(1.0 / cfg.rope_freq_scale)
    attn_org = f32(cfg.attn_factor * f32(1.0 + 0.1 * ln))
    mscale = f32(attn_org * f32(1.0 + 0.1 * cfg.yarn_log_mul * ln))
    cfg.attn_scale = f32(mscale * mscale / math.sqrt(cfg.head_dim_k_mla))


def _qwen35_setup(cfg: "Config") -> None:
    # recurrent (delta-net) layers: an explicit array, else all but every full_attention_interval-th
    if cfg.recurrent_pattern is not None:
        cfg.recurrent_layers = (list(cfg.recurrent_pattern) + [False] * cfg.n_layer)[:cfg.n_layer]
    else:
        n = cfg.full_attention_interval
        cfg.recurrent_layers = [(il + 1) % n != 0 for il in range(cfg.n_layer)]
    if cfg.ssm_d_inner % cfg.ssm_dt_rank or cfg.ssm_d_inner // cfg.ssm_dt_rank != cfg.ssm_d_state:
        raise ModelError(f"{cfg.arch}: the delta-net needs equal key and value head sizes "
                         "(ssm.inner_size / ssm.time_step_rank == ssm.state_size)")
    if cfg.ssm_dt_rank % cfg.ssm_n_group:
        raise ModelError(f"{cfg.arch}: ssm.time_step_rank must be a multiple of ssm.group_count")
    # IMROPE: text positions are the same in every section, which is NEOX RoPE over n_rot
    sections = cfg.rope_sections
    if sum(sections[:3]) != cfg.n_rot // 2 or sections[3]:
        raise ModelError(f"{cfg.arch}.rope.dimension_sections {sections} must cover n_rot / 2 in its first three "
                         "sections (text-only M-RoPE)")


_SOFTCAPS = (("attn_softcap", "attn_logit_softcapping", 50.0), ("final_softcap", "final_logit_softcapping", 30.0))
_SWA_BASE = (("n_swa", "attention.sliding_window", 0), ("rope_base_swa", "rope.freq_base_swa", "rope_base"))

ARCHITECTURES: dict[str, Arch] = {
    "llama": Arch(ROPE_NORM, "Llama 2/3, Mistral 7B, TinyLlama, SmolLM2; Mixtral (experts)",
                  moe_if_router=Moe("softmax", norm_w=True)),
    "qwen2": Arch(ROPE_NEOX, "Qwen2, Qwen2.5"),
    "qwen3": Arch(ROPE_NEOX, "Qwen3 0.6B-32B", qk_norm="head"),
    "qwen2moe": Arch(ROPE_NEOX, "Qwen1.5-MoE, Qwen2-57B-A14B", moe=Moe("softmax", norm_w=False, shared="gated"),
                     keys=(("n_ff_exp", "expert_feed_forward_length", 0),
                           ("n_ff_shexp", "expert_shared_feed_forward_length", 0))),
    "qwen3moe": Arch(ROPE_NEOX, "Qwen3-30B-A3B, Qwen3-235B-A22B", qk_norm="head", moe=Moe("softmax", norm_w=True),
                     keys=(("n_ff_exp", "expert_feed_forward_length", 0),)),
    "gemma": Arch(ROPE_NEOX, "Gemma 2B/7B", ffn="gelu", embd_scale_sqrt=True, tied_always=True),
    "gemma2": Arch(ROPE_NEOX, "Gemma 2 2B/9B/27B", ffn="gelu", embd_scale_sqrt=True, tied_always=True, norm_post=True,
                   swa=2, swa_needs_key=False, setup=_gemma2_setup,
                   keys=(("n_swa", "attention.sliding_window", 4096),
                         ("rope_base_swa", "rope.freq_base_swa", "rope_base"),
                         ("rope_scale_swa", "", "rope_freq_scale")) + _SOFTCAPS),
    "gemma3": Arch(ROPE_NEOX, "Gemma 3 270M-27B (text)", ffn="gelu", embd_scale_sqrt=True, norm_post=True,
                   qk_norm="head", swa=6, setup=_gemma3_setup,
                   keys=(("n_swa", "attention.sliding_window", 0), ("rope_base_swa", "rope.freq_base_swa", 10000.0),
                         ("final_softcap", "final_logit_softcapping", 0.0))),
    "phi3": Arch(ROPE_NEOX, "Phi-3, Phi-3.5, Phi-4 (dense)", ffn="fused"),
    "granite": Arch(ROPE_NORM, "Granite 3.x dense",
                    keys=(("logit_scale", "logit_scale", None), ("residual_scale", "residual_scale", 0.0),
                          ("embd_scale", "embedding_scale", 0.0), ("attn_scale", "attention.scale", 0.0))),
    "olmo2": Arch(ROPE_NEOX, "OLMo 2, OLMo 3", norm_in=False, norm_post=True, qk_norm="full", swa=4,
                  swa_rope="plain", keys=(("n_swa", "attention.sliding_window", 0),)),
    "smollm3": Arch(ROPE_NORM, "SmolLM3 3B", no_rope_step=4),
    "mistral3": Arch(ROPE_NORM, "Mistral Small 3.x, Ministral 3 (text)", setup=_mistral3_setup,
                     keys=(("attn_temp_scale", "attention.temperature_scale", 0.0),
                           ("beta_fast", "rope.scaling.yarn_beta_fast", 32.0),
                           ("beta_slow", "rope.scaling.yarn_beta_slow", 1.0),
                           ("yarn_log_mul", "rope.scaling.yarn_log_multiplier", 0.0))),
    # Gemma 4 (E2B/E4B/31B layouts): per-layer KV heads and head sizes (SWA vs full), V norm,
    # "proportional" RoPE through rope_freqs on full layers, shared-KV tail layers, per-layer
    # embeddings (embedding_length_per_layer_input), layer_output_scale; 26B-A4B's MoE layers
    "gemma4": Arch(ROPE_NEOX, "Gemma 4 E2B/E4B/31B/26B-A4B (text)", ffn="gelu", embd_scale_sqrt=True,
                   norm_post=True, qk_norm="head", v_norm=True, swa=0, setup=_gemma4_setup,
                   moe_if_router=Moe("softmax", norm_w=True, act="gelu", shared="gemma4"),
                   keys=(("n_swa", "attention.sliding_window", None),
                         ("n_ff_exp", "expert_feed_forward_length", 0),
                         ("rope_base_swa", "rope.freq_base_swa", 10000.0),
                         ("n_kv_shared", "attention.shared_kv_layers", 0),
                         ("n_embd_per_layer", "embedding_length_per_layer_input", None),
                         ("final_softcap", "final_logit_softcapping", 30.0))),  # hparams' default
    # GLM-4.5/4.6 (src/models/glm4-moe.cpp): attention biases, partial NEOX RoPE, optional Q/K norms,
    # post_attention_norm before the FFN, leading dense layers, sigmoid router with a selection bias
    # (exp_probs_b), scaled weights and shared experts; the MTP (nextn) layers are not run
    "glm4moe": Arch(ROPE_NEOX, "GLM-4.5, GLM-4.5-Air, GLM-4.6", ffn_norm="post_attention_norm", qk_norm="head",
                    qk_norm_optional=True, moe=Moe("sigmoid", norm_w=False, shared="plain"), setup=_glm4moe_setup,
                    keys=(("n_ff_exp", "expert_feed_forward_length", None),
                          ("n_expert_shared", "expert_shared_count", None),
                          ("n_dense_lead", "leading_dense_block_count", 0),
                          ("expert_weights_scale", "expert_weights_scale", 0.0),
                          ("expert_weights_norm", "expert_weights_norm", False),
                          ("gating_func", "expert_gating_func", 0))),
    # Llama 4 (src/models/llama4.cpp): chunked attention (8192) on 3 of 4 layers, the 4th without
    # RoPE and with attention temperature; unweighted Q/K norms after RoPE; llama3 rope_freqs on
    # every layer; MoE every interleave_moe_layer_step-th layer: sigmoid of the top-1 logit scaling
    # the expert's input, plus a shared expert
    "llama4": Arch(ROPE_NORM, "Llama 4 Scout 17B-16E, Maverick 17B-128E (text)", qk_norm="l2", swa=None,
                   swa_rope="same", swa_chunked=True, temp_nope_only=True, setup=_llama4_setup,
                   moe=Moe("sigmoid", norm_w=False, weight_before=True, select_logits=True, shared="plain"),
                   keys=(("n_ff_exp", "expert_feed_forward_length", None),
                         ("moe_step", "interleave_moe_layer_step", None),
                         ("n_swa", "attention.sliding_window", -1),
                         ("expert_weights_scale", "expert_weights_scale", 0.0))),
    # DeepSeek V2/V3 (src/models/deepseek2.cpp), MLA files: Q through a low-rank norm (q_lora_rank),
    # one latent KV head of kv_lora_rank + RoPE dims, per-head wk_b absorbed into Q and wv_b
    # decompressing the attention output; leading dense layers, routed + shared experts
    "deepseek2": Arch(ROPE_NORM, "DeepSeek V2/V2.5/V3/R1, Kimi K2 (MLA)", attn="mla", setup=_deepseek2_setup,
                      moe=Moe("softmax", norm_w=False, shared="plain"),
                      keys=(("n_ff_exp", "expert_feed_forward_length", None),
                            ("n_expert_shared", "expert_shared_count", None),
                            ("n_dense_lead", "leading_dense_block_count", 0),
                            ("expert_weights_scale", "expert_weights_scale", 0.0),
                            ("expert_weights_norm", "expert_weights_norm", False),
                            ("gating_func", "expert_gating_func", 0),
                            ("n_lora_q", "attention.q_lora_rank", 0),
                            ("n_lora_kv", "attention.kv_lora_rank", None),
                            ("head_dim_k_mla", "attention.key_length_mla", 0),
                            ("head_dim_v_mla", "attention.value_length_mla", 0),
                            ("yarn_log_mul", "rope.scaling.yarn_log_multiplier", 0.0),
                            ("beta_fast", "rope.scaling.yarn_beta_fast", 32.0),
                            ("beta_slow", "rope.scaling.yarn_beta_slow", 1.0),
                            ("attn_temp_scale", "attention.temperature_scale", 0.0))),
    # Qwen 3.5 (src/models/qwen35.cpp, delta-net-base.cpp): 3 of 4 layers a gated delta-net
    # (causal conv, L2-normed Q/K, decay and beta per value head, gated RMSNorm), the 4th full
    # attention with a sigmoid output gate from a doubled Q projection and Q/K norms; text M-RoPE
    "qwen35": Arch(ROPE_NEOX, "Qwen3.5 0.8B-27B (text)", attn="hybrid", ffn_norm="post_attention_norm",
                   qk_norm="head", setup=_qwen35_setup,
                   keys=(("ssm_d_conv", "ssm.conv_kernel", None), ("ssm_d_inner", "ssm.inner_size", None),
                         ("ssm_d_state", "ssm.state_size", None), ("ssm_dt_rank", "ssm.time_step_rank", None),
                         ("ssm_n_group", "ssm.group_count", None),
                         ("full_attention_interval", "full_attention_interval", 4))),
    "qwen35moe": Arch(ROPE_NEOX, "Qwen3.5-35B-A3B, Qwen3.5-122B-A10B, Qwen3.5-397B-A17B (text)", attn="hybrid",
                      ffn_norm="post_attention_norm", qk_norm="head", setup=_qwen35_setup,
                      moe=Moe("softmax", norm_w=True, shared="sigmoid"),
                      keys=(("ssm_d_conv", "ssm.conv_kernel", None), ("ssm_d_inner", "ssm.inner_size", None),
                            ("ssm_d_state", "ssm.state_size", None), ("ssm_dt_rank", "ssm.time_step_rank", None),
                            ("ssm_n_group", "ssm.group_count", None),
                            ("full_attention_interval", "full_attention_interval", 4),
                            ("n_ff_exp", "expert_feed_forward_length", 0),
                            ("n_ff_shexp", "expert_shared_feed_forward_length", 0),
                            ("expert_weights_scale", "expert_weights_scale", 0.0))),
    # llama.cpp's LLM_ARCH_OPENAI_MOE (src/models/openai-moe.cpp), "gpt-oss" in GGUF files
    "gpt-oss": Arch(ROPE_NEOX, "gpt-oss 20B/120B", ffn_norm="post_attention_norm", swa=2, swa_needs_key=False,
                    sinks=True, moe=Moe("softmax_weight", norm_w=False, act="swiglu_oai"),
                    keys=(("n_ff_exp", "expert_feed_forward_length", None),
                          ("n_swa", "attention.sliding_window", None),
                          ("rope_base_swa", "rope.freq_base_swa", "rope_base"),
                          ("rope_scale_swa", "", "rope_freq_scale"))),
}


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
    head_dim_v: int = 0
    n_ctx_orig_yarn: int = 0
    rope_scaling: str = "linear"     # none | linear | yarn | longrope
    ext_factor: float = 0.0          # YaRN blend (1 with yarn scaling)
    attn_factor: float = 1.0         # RoPE magnitude (cparams.yarn_attn_factor)
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    yarn_log_mul: float = 0.0
    rope_attn_factor: float = 1.0    # rope.scaling.attn_factor (LongRoPE)
    rope_base_swa: float = 10000.0
    rope_scale_swa: float = 1.0
    n_swa: int = 0
    swa_layers: list = field(default_factory=list)  # per layer: True for sliding-window layers
    attn_scale: float = 0.0          # 0: 1/sqrt(head_dim)
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    embd_scale: float = 0.0
    residual_scale: float = 0.0
    logit_scale: float = 0.0
    attn_temp_scale: float = 0.0
    attn_temp_floor: int = 0
    attn_temp_offset: float = 0.0
    no_rope_step: int = 0            # layers il with (il + 1) % no_rope_step == 0 have no RoPE (0: arch's)
    use_kq_norm: bool = True
    swa_pattern: object = None       # attention.sliding_window_pattern as the file gives it
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    moe: Optional[Moe] = None
    # per-layer values (llama.cpp's n_head_arr etc.: a scalar key or an array of n_layer)
    n_head_arr: list = field(default_factory=list)
    n_head_kv_arr: list = field(default_factory=list)
    n_ff_arr: list = field(default_factory=list)
    head_dim_swa: int = 0            # attention.key_length_swa (default head_dim)
    head_dim_v_swa: int = 0
    n_rot_swa: int = 0               # rope.dimension_count_swa (default n_rot)
    n_kv_shared: int = 0             # gemma4: the last n layers reuse earlier layers' KV
    n_embd_per_layer: int = 0        # gemma4: per-layer embeddings' width
    n_layer_nextn: int = 0           # MTP layers at the end of block_count, not run (nextn_predict_layers)
    n_dense_lead: int = 0            # leading dense layers before the MoE ones (leading_dense_block_count)
    moe_step: int = 1                # every n-th layer is MoE (interleave_moe_layer_step)
    n_expert_shared: int = 0
    expert_weights_scale: float = 0.0
    expert_weights_norm: bool = False
    gating_func: int = 0
    ssm_d_conv: int = 0              # qwen35 delta-net: conv kernel, inner size (value dims), state size
    ssm_d_inner: int = 0             # (key head size), value heads (time_step_rank), key heads (group_count)
    ssm_d_state: int = 0
    ssm_dt_rank: int = 0
    ssm_n_group: int = 0
    full_attention_interval: int = 4
    recurrent_pattern: object = None
    recurrent_layers: list = field(default_factory=list)
    rope_sections: list = field(default_factory=list)
    n_lora_q: int = 0                # deepseek2 MLA: Q's low rank (0: a plain wq)
    n_lora_kv: int = 0               # the latent KV width
    head_dim_k_mla: int = 0          # per-head Q/K size (nope + rope) and V size after decompression
    head_dim_v_mla: int = 0

    def is_moe(self, il: int) -> bool:
        return (self.moe is not None and il >= self.n_dense_lead and self.moe_step > 0
                and (il + 1) % self.moe_step == 0)

    def layer_heads(self, il: int) -> tuple[int, int, int, int]:
        """(n_head, n_head_kv, head_dim, n_rot) of layer il (SWA layers may have their own sizes)."""
        swa = bool(self.swa_layers) and self.swa_layers[il]
        return (self.n_head_arr[il], self.n_head_kv_arr[il], self.head_dim_swa if swa else self.head_dim,
                self.n_rot_swa if swa else self.n_rot)

    def kv_source(self, il: int) -> int:
        """The layer whose K/V layer il attends to (llama.cpp's KV-cache reuse for gemma3n/gemma4)."""
        start = self.n_layer - self.n_kv_shared if self.n_kv_shared else self.n_layer
        if il < start:
            return il
        return start - (2 if self.swa_layers[il] else 1)

    @property
    def kq_scale(self) -> float:
        return self.attn_scale if self.attn_scale else 1.0 / math.sqrt(self.head_dim)


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def read_config(meta: dict, tensor_shapes: dict[str, tuple[int, ...]]) -> Config:
    arch_name = meta.get("general.architecture")
    if arch_name is None:
        raise ModelError("the model has no general.architecture metadata; it is not a llama.cpp model GGUF")
    arch = ARCHITECTURES.get(arch_name)
    if arch is None:
        raise ModelError(f"architecture {arch_name!r} is not supported by the forward pass (supported: {supported()})")

    def key(name: str, default=None, required: bool = True):
        v = meta.get(f"{arch_name}.{name}", default)
        if v is None and required:
            raise ModelError(f"the model's metadata lacks {arch_name}.{name}")
        return v

    n_embd = int(key("embedding_length"))
    n_layer_all = int(key("block_count"))
    n_layer_nextn = int(key("nextn_predict_layers", 0, required=False))
    n_layer = n_layer_all - n_layer_nextn  # llama_hparams::n_layer(): the MTP layers are not in the graph
    if n_layer <= 0:
        raise ModelError(f"{arch_name}.nextn_predict_layers ({n_layer_nextn}) leaves no layers to run")

    def per_layer(name: str, default) -> list:
        """get_key_or_arr: one value for all layers or an array of n_layer values."""
        v = key(name, default)
        if isinstance(v, (list, tuple)):
            if len(v) != n_layer_all:
                raise ModelError(f"{arch_name}.{name} has {len(v)} values for {n_layer_all} layers")
            return [int(x) for x in v][:n_layer]
        return [int(v)] * n_layer

    n_head_arr = per_layer("attention.head_count", None)
    n_head_kv_arr = per_layer("attention.head_count_kv", n_head_arr)
    n_ff_arr = per_layer("feed_forward_length", None if arch.moe is None else 0)
    n_head, n_head_kv = n_head_arr[0], n_head_kv_arr[0]
    if min(n_head_arr) <= 0 or min(n_head_kv_arr) <= 0 or any(h % kv for h, kv in zip(n_head_arr, n_head_kv_arr)):
        raise ModelError(f"{arch_name}: every layer needs n_head a positive multiple of n_head_kv "
                         "(layers without attention are not supported)")
    head_dim = int(key("attention.key_length", n_embd // n_head))
    head_dim_v = int(key("attention.value_length", n_embd // n_head))
    if "token_embd.weight" not in tensor_shapes:
        raise ModelError("the model has no token_embd.weight tensor")

    # llama_model_base::load_hparams: RoPE scaling defaults to linear, the factor to none
    scaling = str(key("rope.scaling.type", "linear", required=False))
    if scaling not in ("none", "linear", "yarn", "longrope"):
        raise ModelError(f"RoPE scaling {scaling!r} is not supported (none, linear, yarn, longrope)")
    factor = float(key("rope.scaling.factor", 0.0, required=False)
                   or key("rope.scale_linear", 0.0, required=False) or 0.0)  # the old key name
    freq_scale = 1.0 if factor == 0.0 or scaling == "none" else 1.0 / factor
    n_ctx_train = int(key("context_length", 0, required=False) or 0)
    cfg = Config(
        arch=arch_name, n_vocab=int(tensor_shapes["token_embd.weight"][1]), n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, head_dim_v=head_dim_v,
        n_ff=n_ff_arr[0], n_head_arr=n_head_arr, n_head_kv_arr=n_head_kv_arr, n_ff_arr=n_ff_arr,
        n_layer_nextn=n_layer_nextn,
        rms_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5, required=False)),
        n_rot=int(key("rope.dimension_count", head_dim, required=False)), rope_type=arch.rope,
        rope_base=float(key("rope.freq_base", 10000.0, required=False)), rope_freq_scale=freq_scale,
        n_ctx_train=n_ctx_train, rope_scaling=scaling,
        n_ctx_orig_yarn=int(key("rope.scaling.original_context_length", n_ctx_train, required=False) or n_ctx_train),
        rope_attn_factor=float(key("rope.scaling.attn_factor", 1.0, required=False)),
        n_expert=int(key("expert_count", 0, required=False)),
        n_expert_used=int(key("expert_used_count", 0, required=False)),
    )
    if arch_name == "llama" and cfg.n_rot != head_dim:
        raise ModelError(f"invalid n_rot: {cfg.n_rot}, expected {head_dim}")
    if head_dim_v != head_dim and arch.attn != "mla":
        raise ModelError("models whose value head size differs from the key head size are not supported")
    # head size and n_rot of SWA layers (llama_model_base::load_hparams, every architecture)
    cfg.head_dim_swa = int(key("attention.key_length_swa", head_dim, required=False))
    cfg.head_dim_v_swa = int(key("attention.value_length_swa", head_dim_v, required=False))
    cfg.n_rot_swa = int(key("rope.dimension_count_swa", cfg.n_rot, required=False))

    for fname, suffix, default in arch.keys:
        if isinstance(default, str):  # the default is another hyperparameter's value
            default = getattr(cfg, default)
        value = key(suffix, default, required=default is None) if suffix else default
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ModelError(f"per-layer {arch_name}.{suffix} (an array of different values) is not supported")
            value = value[0]
        setattr(cfg, fname, type(getattr(cfg, fname))(value))

    cfg.recurrent_pattern = meta.get(f"{arch_name}.attention.recurrent_layers")
    if isinstance(cfg.recurrent_pattern, (list, tuple)):
        cfg.recurrent_pattern = [bool(x) for x in cfg.recurrent_pattern]
    sections = meta.get(f"{arch_name}.rope.dimension_sections")
    cfg.rope_sections = ([int(x) for x in sections] + [0] * 4)[:4] if isinstance(sections, (list, tuple)) else []
    cfg.swa_pattern = meta.get(f"{arch_name}.attention.sliding_window_pattern")
    if isinstance(cfg.swa_pattern, (list, tuple)):
        cfg.swa_pattern = [bool(p) for p in cfg.swa_pattern]
    cfg.no_rope_step = arch.no_rope_step
    # sliding-window layers (load_swa_pattern): an explicit per-layer array, else every n-th layer is global
    if arch.swa is not None and (cfg.n_swa > 0 or not arch.swa_needs_key):
        pattern = meta.get(f"{arch_name}.attention.sliding_window_pattern", arch.swa)
        if isinstance(pattern, (list, tuple)):
            cfg.swa_layers = [bool(p) for p in pattern][:n_layer]
        else:
            n = int(pattern)
            cfg.swa_layers = [n == 0 or il % n < n - 1 for il in range(n_layer)]
    elif arch.swa is not None:
        cfg.n_swa = 0
    if len(cfg.swa_layers) < n_layer:
        cfg.swa_layers += [False] * (n_layer - len(cfg.swa_layers))

    cfg.moe = arch.moe
    if arch.moe_if_router is not None and "blk.0.ffn_gate_inp.weight" in tensor_shapes:
        cfg.moe = arch.moe_if_router
    if cfg.moe is not None:
        if cfg.n_expert <= 0 or not 0 < cfg.n_expert_used <= cfg.n_expert:
            raise ModelError(f"a mixture-of-experts model needs {arch_name}.expert_count > 0 and "
                             f"0 < {arch_name}.expert_used_count <= expert_count")
        if not cfg.n_ff_exp:
            cfg.n_ff_exp = cfg.n_ff // cfg.n_expert_used if arch.moe is not None else cfg.n_ff
    elif "blk.0.ffn_gate_inp.weight" in tensor_shapes:
        raise ModelError(f"{arch_name} models with experts (ffn_gate_inp) are not supported")

    # cparams (llama_context): YaRN's blend and magnitude
    if cfg.rope_scaling == "yarn":
        cfg.ext_factor = 1.0
        f = 1.0 / cfg.rope_freq_scale

        def mscale(scale: float, m: float) -> float:
            return 1.0 if scale <= 1.0 else 0.1 * m * math.log(scale) + 1.0

        attn = mscale(f, 1.0) / mscale(f, cfg.yarn_log_mul) if cfg.yarn_log_mul else mscale(f, 1.0)
        cfg.attn_factor = attn / (1.0 + 0.1 * math.log(f))  # rope_yarn multiplies it back
    cfg.attn_factor *= cfg.rope_attn_factor
    if arch.setup is not None:
        arch.setup(cfg)
    return cfg
