"""What llama.cpp's convert_hf_to_gguf.py does for each Hugging Face architecture we read, as one
table: which GGUF architecture, which metadata steps in which order (config.json keys -> GGUF keys),
which vocabulary routine, and which tensor transforms. The tensor names themselves come from the
gguf package's TensorNameMap for the architecture, as they do in the converter.

Each metadata step below names the converter method it mirrors (conversion/*.py in the llama.cpp
sources). A step writes to a path-less gguf.GGUFWriter, so key names, value types and the order of
the pairs come from the same gguf code the converter drives; a key written twice keeps its first
position and its last value, as in the converter.

Tensor transforms (all applied lazily, when the tensor's turn comes):
- permute_qk: q_proj/k_proj rows (weights and biases) interleaved per head for llama.cpp's rope
  (LlamaModel.permute), with num_attention_heads for Q and num_key_value_heads for K;
- norm_plus_one: Gemma stores RMSNorm weights as w - 1; every HF tensor whose name ends in
  "norm.weight" gets 1 added (in float16 for F16 checkpoints, else float32, as torch does there);
- experts: per-expert matrices stacked into one (n_expert, rows, cols) tensor per projection,
  emitted when the layer's last expert tensor arrives, in the converter's projection order;
- gpt_oss: MXFP4 expert blocks repacked (bits moved, nothing requantized) into ggml's MXFP4, the
  interleaved gate/up rows split; unquantized gpt-oss experts transposed and split the same way;
- trim_vocab_rows: Gemma 3's token_embd rows beyond the vocabulary dropped;
- extra tensors: llama3 rope_freqs, Phi-3 long/short rope factors.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import gguf

from ..errors import SourceError

A = gguf.MODEL_ARCH


@dataclass
class Meta:
    """What a metadata step reads and where it writes."""

    hp: dict[str, Any]           # config.json (text_config merged in, defaults filled)
    rope: dict[str, Any]         # TextModel.rope_parameters
    w: gguf.GGUFWriter
    n_layer: int
    file_type: int
    path: Any                    # the checkpoint folder

    def find(self, keys: list[str], default: Any = None) -> Any:
        return next((self.hp[k] for k in keys if k in self.hp), default)

    def need(self, keys: list[str]) -> Any:
        for k in keys:
            if k in self.hp:
                return self.hp[k]
        raise SourceError(f"{self.path / 'config.json'}: missing {keys[0]}, which convert_hf_to_gguf.py requires")

    @property
    def full_rope(self) -> dict[str, Any]:
        return self.rope.get("full_attention", self.rope)


# -------------------------------------------------------------------- metadata steps


def text_model(m: Meta) -> None:
    """TextModel.set_gguf_parameters: the keys every text model gets from its config."""
    w, find = m.w, m.find
    w.add_block_count(m.n_layer)
    if (v := find(["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"])) is not None:
        w.add_context_length(v)
    if (v := find(["hidden_size", "n_embd", "dim"])) is not None:
        w.add_embedding_length(v)
    if (v := find(["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"])) is not None:
        w.add_feed_forward_length(v)
    if (v := find(["num_attention_heads", "n_head", "n_heads"])) is not None:
        w.add_head_count(v)
    if (v := find(["num_key_value_heads", "n_kv_heads"])) is not None:
        w.add_head_count_kv(v)
    if m.hp.get("is_causal") is False:
        w.add_causal_attention(False)
    rope = m.full_rope
    if (rope_type := rope.get("rope_type")) is not None:
        factor = rope.get("factor")
        if rope_type == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(factor)
        elif rope_type == "yarn" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(factor)
            if "original_max_position_embeddings" not in rope:
                raise SourceError(f"{m.path / 'config.json'}: yarn rope scaling needs original_max_position_embeddings")
            w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
            if (v := rope.get("extrapolation_factor")) is not None:
                w.add_rope_scaling_yarn_ext_factor(v)
            if (v := rope.get("attention_factor", rope.get("attn_factor"))) is not None:
                w.add_rope_scaling_yarn_attn_factor(v)
            if (v := rope.get("beta_fast")) is not None:
                w.add_rope_scaling_yarn_beta_fast(v)
            if (v := rope.get("beta_slow")) is not None:
                w.add_rope_scaling_yarn_beta_slow(v)
        elif rope_type in ("su", "longrope"):
            w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
        # dynamic, llama3 (a rope_freqs tensor) and anything else: no key, as in the converter
    if "mrope_section" in m.rope:
        sections = list(m.rope["mrope_section"])
        w.add_rope_dimension_sections((sections + [0, 0, 0, 0])[:4])
    if (v := rope.get("rope_theta")) is not None:
        w.add_rope_freq_base(v)
    if (v := m.rope.get("sliding_attention", {}).get("rope_theta")) is not None:
        w.add_rope_freq_base_swa(v)
    if (v := find(["rms_norm_eps", "norm_eps"])) is not None:
        w.add_layer_norm_rms_eps(v)
    if (v := find(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"])) is not None:
        w.add_layer_norm_eps(v)
    if (v := find(["num_local_experts", "num_experts", "n_routed_experts"])) is not None:
        w.add_expert_count(v)
    if (v := find(["num_experts_per_tok", "num_experts_per_token", "top_k_experts"])) is not None:
        w.add_expert_used_count(v)
    if (v := m.hp.get("n_group")) is not None:
        w.add_expert_group_count(v)
    if (v := m.hp.get("topk_group")) is not None:
        w.add_expert_group_used_count(v)
    score = find(["score_function", "scoring_func", "score_func", "moe_router_activation",
                  "moe_router_activation_func", "expert_selection_fn"])
    if score is not None:
        gating = {"sigmoid": gguf.ExpertGatingFuncType.SIGMOID, "softmax": gguf.ExpertGatingFuncType.SOFTMAX}
        if score not in gating:
            raise SourceError(f"{m.path / 'config.json'}: expert gating function {score!r} is not supported")
        w.add_expert_gating_func(gating[score])
    if (v := m.hp.get("head_dim")) is not None:
        w.add_key_length(v)
        w.add_value_length(v)
    w.add_file_type(m.file_type)


def llama(m: Meta) -> None:
    """LlamaModel.set_gguf_parameters's additions: vocab size and the rotary dimension."""
    m.w.add_vocab_size(m.need(["vocab_size"]))
    rope_dim = m.hp.get("head_dim")
    if rope_dim is None:
        rope_dim = m.need(["hidden_size"]) // m.need(["num_attention_heads"])
    m.w.add_rope_dimension_count(rope_dim)


def pooling(m: Meta) -> None:
    """TextModel._try_set_pooling_type (Qwen2/Qwen3): sentence-transformers' pooling, if any."""
    import json

    modules_path = m.path / "modules.json"
    if modules_path.is_file():
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        pooling_dir = next((mod["path"] for mod in modules if str(mod.get("type", "")).endswith("Pooling")), None)
        if pooling_dir is not None:
            cfg = json.loads((m.path / pooling_dir / "config.json").read_text(encoding="utf-8"))
            modes = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}
            if cfg.get("pooling_mode_mean_tokens"):
                kind = gguf.PoolingType.MEAN
            elif cfg.get("pooling_mode_cls_token"):
                kind = gguf.PoolingType.CLS
            elif cfg.get("pooling_mode_lasttoken"):
                kind = gguf.PoolingType.LAST
            elif cfg.get("pooling_mode") in modes:
                kind = modes[cfg["pooling_mode"]]
            else:
                raise SourceError(f"{m.path / pooling_dir / 'config.json'}: only mean, cls and last-token pooling are supported")
            m.w.add_pooling_type(kind)
    if (classifier := m.hp.get("classifier_pooling")) is not None:
        raise SourceError(f"{m.path / 'config.json'}: classifier_pooling {classifier!r}: classification heads are not supported")


def moe_ff(m: Meta) -> None:
    """Qwen2MoeModel.set_gguf_parameters: expert and shared-expert feed-forward sizes."""
    if (v := m.hp.get("moe_intermediate_size")) is not None:
        m.w.add_expert_feed_forward_length(v)
    if (v := m.hp.get("shared_expert_intermediate_size")) is not None:
        m.w.add_expert_shared_feed_forward_length(v)


def gemma2(m: Meta) -> None:
    """Gemma2Model.set_gguf_parameters (it replaces TextModel's)."""
    w, hp = m.w, m.hp
    w.add_context_length(m.need(["max_position_embeddings"]))
    w.add_embedding_length(m.need(["hidden_size"]))
    w.add_block_count(m.n_layer)
    w.add_feed_forward_length(m.need(["intermediate_size"]))
    w.add_head_count(m.need(["num_attention_heads"]))
    w.add_head_count_kv(hp["num_key_value_heads"] if "num_key_value_heads" in hp else hp["num_attention_heads"])
    w.add_layer_norm_rms_eps(m.need(["rms_norm_eps"]))
    w.add_key_length(m.need(["head_dim"]))
    w.add_value_length(m.need(["head_dim"]))
    w.add_file_type(m.file_type)
    w.add_attn_logit_softcapping(m.need(["attn_logit_softcapping"]))
    w.add_final_logit_softcapping(m.need(["final_logit_softcapping"]))
    w.add_sliding_window(m.need(["sliding_window"]))


def gemma3(m: Meta) -> None:
    """Gemma3Model.set_gguf_parameters, after TextModel's: the same keys again with Gemma 3's
    defaults (a rewritten key keeps its place and takes the new value)."""
    w, hp = m.w, m.hp
    w.add_context_length(hp.get("max_position_embeddings", 131072))
    w.add_head_count(hp.get("num_attention_heads", 8))
    w.add_layer_norm_rms_eps(hp.get("rms_norm_eps", 1e-6))
    w.add_key_length(hp.get("head_dim", 256))
    w.add_value_length(hp.get("head_dim", 256))
    w.add_rope_freq_base(m.full_rope.get("rope_theta", 1_000_000.0))
    if hp.get("attn_logit_softcapping") is not None:
        raise SourceError(f"{m.path / 'config.json'}: attn_logit_softcapping is set, which Gemma 3 does not have")
    if final := hp.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(final)
    if hp.get("sliding_window_pattern") != 1:
        w.add_sliding_window(m.need(["sliding_window"]))
    w.add_head_count_kv(hp.get("num_key_value_heads", 4))


def phi3(m: Meta) -> None:
    """Phi3MiniModel.set_gguf_parameters (it replaces TextModel's)."""
    w = m.w
    n_embd, n_head = m.need(["hidden_size", "n_embd"]), m.need(["num_attention_heads", "n_head"])
    if "original_max_position_embeddings" not in m.rope:
        raise SourceError(f"{m.path / 'config.json'}: missing original_max_position_embeddings, which Phi-3 needs")
    w.add_context_length(m.need(["n_positions", "max_position_embeddings"]))
    w.add_rope_scaling_orig_ctx_len(m.rope["original_max_position_embeddings"])
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(m.need(["intermediate_size"]))
    w.add_block_count(m.n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(m.need(["num_key_value_heads", "n_head_kv"]))
    w.add_layer_norm_rms_eps(m.need(["rms_norm_eps"]))
    w.add_rope_dimension_count(phi3_rope_dims(m))
    if "rope_theta" not in m.full_rope:
        raise SourceError(f"{m.path / 'config.json'}: missing rope_theta, which Phi-3 needs")
    w.add_rope_freq_base(m.full_rope["rope_theta"])
    w.add_file_type(m.file_type)
    w.add_sliding_window(m.hp.get("sliding_window") or 0)  # 0 tells Phi-4 from other Phi-3 models


def phi3_rope_dims(m: Meta) -> int:
    return int(m.rope.get("partial_rotary_factor", 1.0) * m.need(["hidden_size", "n_embd"])) // m.need(["num_attention_heads", "n_head"])


def granite(m: Meta) -> None:
    """GraniteModel.set_gguf_parameters's additions: the four multipliers (0 or absent: no key)."""
    for key, add in (("attention_multiplier", m.w.add_attention_scale), ("embedding_multiplier", m.w.add_embedding_scale),
                     ("residual_multiplier", m.w.add_residual_scale), ("logits_scaling", m.w.add_logit_scale)):
        if value := m.hp.get(key):
            add(value)
    if m.hp.get("spatial_target_layers") or m.hp.get("deepstack_layer_map"):
        raise SourceError(f"{m.path / 'config.json'}: Granite vision checkpoints are not supported")


def olmo2(m: Meta) -> None:
    """Olmo2Model.set_gguf_parameters's additions: the sliding window, where there is one."""
    if "sliding_window" in m.hp:
        m.w.add_sliding_window(m.hp["sliding_window"])
        if "layer_types" in m.hp:
            pattern = [t == "sliding_attention" for t in m.hp["layer_types"]]
        else:
            pattern = [(i + 1) % 4 != 0 for i in range(m.need(["num_hidden_layers"]))]
        m.w.add_sliding_window_pattern(pattern)


def ministral3(m: Meta) -> None:
    """Mistral3Model.Ministral3Model.set_gguf_parameters's additions (model_type ministral3 only)."""
    if m.hp.get("model_type") == "ministral3":
        if m.rope.get("rope_type") != "yarn":
            raise SourceError(f"{m.path / 'config.json'}: ministral3 needs yarn rope_parameters")
        m.w.add_rope_scaling_yarn_log_mul(m.rope["mscale_all_dim"])
        m.w.add_attn_temperature_scale(m.rope["llama_4_scaling_beta"])


def gpt_oss(m: Meta) -> None:
    """GptOssModel.set_gguf_parameters's additions."""
    m.w.add_sliding_window(m.need(["sliding_window"]))
    m.w.add_expert_feed_forward_length(m.need(["intermediate_size"]))


# -------------------------------------------------------------------- tensor transforms as data


@dataclass(frozen=True)
class Experts:
    """Per-expert matrices stacked into one tensor per projection. `pattern` matches a member's
    HF name with groups (layer, expert, projection); `stacked` is the HF-style name the stack is
    mapped from; `order` the converter's emission order; `count` the hparam naming n_expert."""

    pattern: str
    stacked: str
    order: tuple[str, ...]
    count: tuple[str, ...]


MIXTRAL_EXPERTS = Experts(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$",
                          "layers.{bid}.feed_forward.experts.{w}.weight", ("w1", "w2", "w3"), ("num_local_experts",))
QWEN_EXPERTS = Experts(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(down_proj|gate_proj|up_proj)\.weight$",
                       "model.layers.{bid}.mlp.experts.{w}.weight", ("down_proj", "gate_proj", "up_proj"),
                       ("num_local_experts", "num_experts"))


@dataclass(frozen=True)
class Family:
    arch: gguf.MODEL_ARCH
    params: tuple[Callable[[Meta], None], ...]   # metadata steps, in order
    vocab: str                                   # hf_vocab routine: llama, spm_or_gpt2, gpt2, gemma2, gemma3, phi3
    permute_qk: bool = False
    norm_plus_one: bool = False
    experts: Experts | None = None
    fused_experts: bool = False                  # Qwen2MoeModel: 3-D mlp.experts.{gate_up,down}_proj as well
    gpt_oss: bool = False
    trim_vocab_rows: bool = False
    drop: tuple[str, ...] = ()                   # HF tensor names the converter skips
    drop_hparams: tuple[str, ...] = ()           # config keys the converter pops before reading
    extra: str | None = None                     # generated tensors: "llama3_rope" or "phi3_rope"
    text_defaults: dict[str, Any] = field(default_factory=dict)  # sub-config defaults transformers fills in
    block_tensors: tuple[gguf.MODEL_TENSOR, ...] = ()            # every block must have these
    dense_shapes: bool = True                    # check ffn_gate/up/down against intermediate_size


LLAMA_PARAMS = (text_model, llama)

T = gguf.MODEL_TENSOR
ATTENTION = (T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT)
DENSE = (T.ATTN_NORM, *ATTENTION, T.FFN_NORM, T.FFN_GATE, T.FFN_DOWN, T.FFN_UP)
MOE = (T.ATTN_NORM, *ATTENTION, T.FFN_NORM, T.FFN_GATE_INP)
GEMMA = (T.ATTN_NORM, *ATTENTION, T.FFN_PRE_NORM, T.FFN_GATE, T.FFN_DOWN, T.FFN_UP)  # pre_feedforward_layernorm

# Gemma3TextConfig's defaults (transformers 5.x): gemma-3-*-it's config.json leaves them out of
# text_config, and the converter reads them through AutoConfig
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    "attn_logit_softcapping": None, "final_logit_softcapping": None, "sliding_window": 4096,
    "query_pre_attn_scalar": 256,
}
# MistralConfig's defaults, for Mistral3ForConditionalGeneration's text_config
MISTRAL_TEXT_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "sliding_window": 4096,
}

FAMILIES: dict[str, Family] = {
    # llama-like (LlamaModel): q/k permuted for llama.cpp's rope, vocab by LlamaModel.set_vocab
    "LlamaForCausalLM":   Family(A.LLAMA, LLAMA_PARAMS, "llama", permute_qk=True, extra="llama3_rope", block_tensors=DENSE),
    "LLaMAForCausalLM":   Family(A.LLAMA, LLAMA_PARAMS, "llama", permute_qk=True, extra="llama3_rope", block_tensors=DENSE),
    "MistralForCausalLM": Family(A.LLAMA, LLAMA_PARAMS, "llama", permute_qk=True, extra="llama3_rope", block_tensors=DENSE),
    "MixtralForCausalLM": Family(A.LLAMA, LLAMA_PARAMS, "llama", permute_qk=True, extra="llama3_rope",
                                 experts=MIXTRAL_EXPERTS, block_tensors=MOE),
    "SmolLM3ForCausalLM": Family(A.SMOLLM3, LLAMA_PARAMS, "llama", permute_qk=True, extra="llama3_rope", block_tensors=DENSE),
    "GraniteForCausalLM": Family(A.GRANITE, (text_model, llama, granite), "llama", permute_qk=True,
                                 extra="llama3_rope", drop_hparams=("head_dim",), block_tensors=DENSE),
    "Mistral3ForConditionalGeneration": Family(A.MISTRAL3, (text_model, llama, ministral3), "llama",
                                               permute_qk=True, extra="llama3_rope",
                                               text_defaults=MISTRAL_TEXT_DEFAULTS, block_tensors=DENSE),
    # Qwen
    "Qwen2ForCausalLM":    Family(A.QWEN2, (text_model, pooling), "spm_or_gpt2", block_tensors=DENSE),
    "Qwen3ForCausalLM":    Family(A.QWEN3, (text_model, pooling), "spm_or_gpt2", block_tensors=DENSE),
    "Qwen2MoeForCausalLM": Family(A.QWEN2MOE, (text_model, moe_ff), "gpt2", experts=QWEN_EXPERTS, fused_experts=True,
                                  block_tensors=MOE),
    "Qwen3MoeForCausalLM": Family(A.QWEN3MOE, (text_model, moe_ff), "gpt2", experts=QWEN_EXPERTS, fused_experts=True,
                                  block_tensors=MOE),
    # Gemma: norms stored as w - 1
    "Gemma2ForCausalLM": Family(A.GEMMA2, (gemma2,), "gemma2", norm_plus_one=True, drop=("lm_head.weight",),
                               block_tensors=GEMMA),
    "Gemma3ForCausalLM": Family(A.GEMMA3, (text_model, gemma3), "gemma3", norm_plus_one=True, trim_vocab_rows=True,
                               block_tensors=GEMMA),
    "Gemma3ForConditionalGeneration": Family(A.GEMMA3, (text_model, gemma3), "gemma3", norm_plus_one=True,
                                             trim_vocab_rows=True, text_defaults=GEMMA3_TEXT_DEFAULTS,
                                             block_tensors=GEMMA),
    # others
    "Phi3ForCausalLM":   Family(A.PHI3, (phi3,), "phi3", extra="phi3_rope", dense_shapes=False,
                             block_tensors=(T.ATTN_NORM, T.ATTN_QKV, T.ATTN_OUT, T.FFN_NORM, T.FFN_UP, T.FFN_DOWN)),
    "Olmo2ForCausalLM":  Family(A.OLMO2, (text_model, olmo2), "gpt2",
                             block_tensors=(*ATTENTION, T.FFN_GATE, T.FFN_DOWN, T.FFN_UP)),
    "GptOssForCausalLM": Family(A.GPT_OSS, (text_model, gpt_oss), "gpt2", gpt_oss=True,
                             block_tensors=(*ATTENTION, T.FFN_GATE_INP)),
}


def supported() -> str:
    return ", ".join(sorted(FAMILIES))


# -------------------------------------------------------------------- generated tensors


def llama3_rope_factors(rope: dict, head_dim: int) -> list[float] | None:
    """LlamaModel.generate_extra_tensors: per-frequency factors for llama3 rope scaling."""
    import numpy as np

    if str(rope.get("rope_type", "")).lower() != "llama3":
        return None
    base = rope.get("rope_theta", 10000.0)
    # torch computes the frequencies in float32, and so do we
    freqs = np.float32(1.0) / np.power(np.float32(base), np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors = []
    for freq in freqs:  # float32 scalars: the smooth ramp stays float32, as in torch
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def phi3_rope_factors(m: Meta) -> tuple[float, list[float], list[float]] | None:
    """Phi3MiniModel.generate_extra_tensors: (attention factor, long factors, short factors) for
    long-context Phi-3 models, or None."""
    long_factors, short_factors = m.rope.get("long_factor"), m.rope.get("short_factor")
    if not long_factors:
        return None
    cfg = m.path / "config.json"
    orig = m.rope["original_max_position_embeddings"]
    scale = m.need(["n_positions", "max_position_embeddings"]) / orig
    kind = str(m.rope.get("rope_type", "")).lower()
    if kind in ("su", "longrope"):
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    elif kind == "yarn":
        attn_factor = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        raise SourceError(f"{cfg}: rope scaling type {kind or 'missing'!r} is not supported for Phi-3")
    if short_factors is None:
        raise SourceError(f"{cfg}: rope_scaling has long_factor but no short_factor")
    half = phi3_rope_dims(m) / 2
    if len(long_factors) != len(short_factors) or len(long_factors) != half:
        raise SourceError(f"{cfg}: rope long and short factors must both have {half:g} entries")
    return attn_factor, list(long_factors), list(short_factors)


def expert_match(experts: Experts, name: str) -> tuple[int, int, str] | None:
    m = re.match(experts.pattern, name)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None
