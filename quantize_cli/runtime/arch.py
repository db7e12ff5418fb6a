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
from dataclasses import dataclass, field
from typing import Callable, Optional

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
    shared: str = ""          # "": none; "gated": qwen2moe's sigmoid-gated shared expert


@dataclass(frozen=True)
class Arch:
    rope: int                         # llama_model_rope_type: ROPE_NORM (adjacent pairs) or ROPE_NEOX (halves)
    examples: str                     # example models (README, refusal message)
    norm_in: bool = True              # RMSNorm before attention and FFN (olmo2: none)
    norm_post: bool = False           # RMSNorm of each block's output before the residual (gemma2/3, olmo2)
    ffn_norm: str = "ffn_norm"        # the FFN's input norm (gpt-oss: post_attention_norm)
    qk_norm: str = ""                 # "head": RMSNorm per head (qwen3, gemma3); "full": over all heads (olmo2)
    ffn: str = "silu"                 # silu: SwiGLU; gelu: GeGLU; fused: phi3's ffn_up of 2 n_ff rows
    embd_scale_sqrt: bool = False     # gemma: embeddings times sqrt(n_embd)
    tied_always: bool = False         # gemma, gemma2: the output is token_embd even when output.weight exists
    swa: Optional[int] = None         # sliding-window pattern default (load_swa_pattern); None: no SWA
    swa_needs_key: bool = True        # SWA only when attention.sliding_window is present and > 0
    swa_rope: str = "swa"             # SWA layers' RoPE: "swa" (rope.freq_base_swa), "plain" (olmo3: no scaling)
    no_rope_step: int = 0             # smollm3: every 4th layer has no RoPE
    moe: Optional[Moe] = None         # always MoE (qwen2moe, qwen3moe, gpt-oss)
    moe_if_router: Optional[Moe] = None  # MoE when blk.N.ffn_gate_inp exists (llama: Mixtral)
    sinks: bool = False               # attention sinks (blk.N.attn_sinks), gpt-oss
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
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    moe: Optional[Moe] = None

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
    n_layer = int(key("block_count"))
    for name in ("attention.head_count", "attention.head_count_kv", "feed_forward_length"):
        if isinstance(meta.get(f"{arch_name}.{name}"), (list, tuple)):
            raise ModelError(f"per-layer {name} ({arch_name}.{name} is an array) is not supported")
    n_head = int(key("attention.head_count"))
    n_head_kv = int(key("attention.head_count_kv", n_head))
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
        n_ff=int(key("feed_forward_length", 0, required=arch.moe is None)),
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
    if head_dim_v != head_dim:
        raise ModelError("models whose value head size differs from the key head size are not supported")

    for fname, suffix, default in arch.keys:
        if isinstance(default, str):  # the default is another hyperparameter's value
            default = getattr(cfg, default)
        value = key(suffix, default, required=default is None) if suffix else default
        setattr(cfg, fname, type(getattr(cfg, fname))(value))

    # sliding-window layers (load_swa_pattern): an explicit per-layer array, else every n-th layer is global
    if arch.swa is not None and (cfg.n_swa > 0 or not arch.swa_needs_key):
        pattern = meta.get(f"{arch_name}.attention.sliding_window_pattern", arch.swa)
        if isinstance(pattern, (list, tuple)):
            cfg.swa_layers = [bool(p) for p in pattern][:n_layer]
        else:
            n = int(pattern)
            cfg.swa_layers = [n == 0 or il % n < n - 1 for il in range(n_layer)]
    else:
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
