"""llama.cpp's per-tensor rules (src/llama-quant.cpp): tensor order and categories, which
tensors are quantized, the hyper-parameters the rules read, the type choice with its reason,
and the fallback when a row does not fit the type's block."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from kernels.gguf_compat import GGMLQuantizationType as T, GGUFValueType

from ..errors import PlanError
from ..formats.values import KV
from ..sources.base import Source, TensorRef
from .ftypes import FLOAT_TYPES, FTYPE_GUESSED, KNOWN_ARCHS, Q2_0, _LAYERS_70B, FType, type_sizes
from .options import QuantizeOptions


# names, order, categories


def _sscanf_layer(name: str) -> int | None:
    """sscanf(name, "blk.%d.", &il) == 1: the number after "blk." (the final "." is not checked)."""
    m = re.match(r"blk\.\s*([+-]?\d+)", name)
    return int(m.group(1)) if m else None


def _layer_of(name: str) -> int:
    layer = _sscanf_layer(name)
    return -1 if layer is None else layer


def llama_order(tensors: list[TensorRef]) -> list[TensorRef]:
    """llama_model_loader's weights_map order (weight_name_comparer)."""
    return sorted(tensors, key=lambda t: (_layer_of(t.name), t.name.encode()))


def n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return max(n, 1)


class Cat(enum.Enum):
    TOKEN_EMBD = "token_embd"
    ATTENTION_Q = "attn_q"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"


_CATEGORY_SUBSTRINGS = (
    ("attn_qkv.weight", Cat.ATTENTION_QKV), ("attn_kv_b.weight", Cat.ATTENTION_KV_B),
    ("attn_v.weight", Cat.ATTENTION_V), ("attn_k.weight", Cat.ATTENTION_K),
    ("attn_q.weight", Cat.ATTENTION_Q), ("attn_output.weight", Cat.ATTENTION_OUTPUT),
    ("ffn_up", Cat.FFN_UP), ("ffn_gate", Cat.FFN_GATE), ("ffn_down", Cat.FFN_DOWN),
)
# Generic rules only (unknown architectures): Hugging Face names of the embedding and the head.
_GENERIC_TOKEN_EMBD = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings)\.weight$")
_GENERIC_OUTPUT = re.compile(r"(^|\.)lm_head\.weight$")


def category(name: str, generic: bool = False) -> Cat:
    """tensor_get_category."""
    if name == "output.weight" or (generic and _GENERIC_OUTPUT.search(name)):
        return Cat.OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight") or (generic and _GENERIC_TOKEN_EMBD.search(name)):
        return Cat.TOKEN_EMBD
    for part, cat in _CATEGORY_SUBSTRINGS:
        if part in name:
            return cat
    return Cat.OTHER


def _is_attn_v(cat: Cat) -> bool:
    return cat in (Cat.ATTENTION_V, Cat.ATTENTION_QKV, Cat.ATTENTION_KV_B)


_NEVER_QUANTIZED = (
    ("ffn_gate_inp.weight", "expert router"), ("ffn_gate_tid2eid.weight", "expert routing table"),
    ("altup", "altup (tiny)"), ("laurel", "laurel (tiny)"), ("per_layer_model_proj", "per_layer_model_proj"),
    ("ssm_conv1d", "conv1d (tiny)"), ("shortconv.conv.weight", "conv (tiny)"),
    ("indexer.k_proj.weight", "indexer projection (tiny)"), ("indexer.q_proj.weight", "indexer projection (tiny)"),
    *((f"time_mix_{p}.weight", "RWKV small weight") for p in (
        "first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2", "decay_w1", "decay_w2", "lerp_fused")),
    ("attn_rel_b.weight", "relative position bias"),
    (".position_embd", "position embedding"), ("sam.pos_embd", "multimodal"), ("sam.neck.", "multimodal"),
    ("sam.net_", "multimodal"), (".rel_pos", "multimodal"), (".patch_embd", "multimodal"),
    (".patch_merger", "multimodal"), ("a.rvq.codebook", "audio codebook"), ("mm.a.code_embd", "audio codebook"),
)
_GLM5_NEXT_KEPT = ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
                   "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight",
                   "ssm_g_b.weight", "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight")


def why_not_quantized(name: str, ne: tuple[int, ...], options: QuantizeOptions, arch: str = "llama") -> str | None:
    """tensor_allows_quantization, inverted: None when the tensor may be quantized, else why not."""
    if options.only_copy:
        return "COPY: copied as is"
    if n_dims(ne) < 2:
        return "1-D: kept"
    # C: name.rfind("weight") == name.size() - 6, which a 5-character name also passes (npos)
    if not (name.endswith("weight") or len(name) == 5):
        return "not a weight: kept"
    if "_norm.weight" in name:
        return "norm: kept"
    if options.leave_output_tensor and name == "output.weight":
        return "--leave-output-tensor: kept"
    for part, what in _NEVER_QUANTIZED:
        if part in name:
            return f"{what}: never quantized"
    if name in ("position_embd.weight", "token_types.weight"):
        return "position/token-type embedding: never quantized"
    if arch == "glm5-next":
        for part in _GLM5_NEXT_KEPT:
            if part in name:
                return f"glm5-next {part}: never quantized"
    return None


def allows_quantization(name: str, ne: tuple[int, ...], options: QuantizeOptions, arch: str = "llama") -> bool:
    """tensor_allows_quantization."""
    return why_not_quantized(name, ne, options, arch) is None


def _fallback(ne0: int, qtype: T) -> tuple[T, str]:
    """tensor_type_fallback: a compatible type when ne[0] is not a multiple of the block size."""
    block = type_sizes(qtype)[0]
    if ne0 % block == 0:
        return qtype, ""
    if qtype in (T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS):
        to = T.IQ4_NL
    elif qtype in (T.Q2_K, T.Q3_K, T.TQ1_0, T.TQ2_0) or (Q2_0 is not None and qtype == Q2_0):
        to = T.Q4_0
    elif qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        to = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}[qtype]
    elif block <= 32:
        to = qtype
    else:
        raise PlanError(f"no fallback type is defined for {qtype.name} (row {ne0} is not a multiple of {block})")
    if ne0 % type_sizes(to)[0] != 0:
        return T.F16, f"row {ne0} not a multiple of {block} ({qtype.name}) nor of {type_sizes(to)[0]} ({to.name}) -> fallback F16"
    return to, f"row {ne0} not a multiple of {block} ({qtype.name}) -> fallback {to.name}"


def fallback_type(ne0: int, qtype: T) -> tuple[T, str]:
    """Kept for callers of the first version: (type, reason or "")."""
    return _fallback(ne0, qtype)


# ---------------------------------------------------------------------------------------------
# the model's hyper-parameters, as llama_model::load_hparams reads them


@dataclass
class ModelInfo:
    arch: str
    known: bool
    n_layer_all: int
    n_head: int
    n_head_kv: int
    n_expert: int
    is_70b: bool  # LLM_TYPE_70B

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


def _first(value) -> int:
    """get_key_or_arr for layer 0: a scalar or the first element of a per-layer array."""
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else 0
    return int(value)


def model_info(source: Source, overrides: list[KV] | None = None) -> tuple[ModelInfo, list[str]]:
    """Hyper-parameters the rules need, and notes on which were read generically."""
    over = {kv.key: kv for kv in overrides or []}

    def get(key: str, default=None, kind: GGUFValueType | None = None):
        # an --override-kv of the right kind also applies while llama.cpp loads the model
        if key in over and (kind is None or over[key].vtype == kind):
            return over[key].get()
        return source.kv_value(key, default)

    notes: list[str] = []
    arch = get("general.architecture", None, GGUFValueType.STRING)
    known = arch in KNOWN_ARCHS
    arch = arch or "(none)"
    if not known:
        notes.append(f"architecture '{arch}' is unknown to llama.cpp: generic rules "
                     "(2-D *weight tensors quantized, embedding/output also by Hugging Face names)")
    n_layer = get(f"{arch}.block_count", None, GGUFValueType.UINT32)
    if n_layer is None:
        layers = [_sscanf_layer(t.name) for t in source.tensors]
        n_layer = max((il for il in layers if il is not None), default=-1) + 1
        notes.append(f"{arch}.block_count missing: {n_layer} layers counted from blk.N names")
    n_head = _first(get(f"{arch}.attention.head_count", 0, GGUFValueType.UINT32))
    n_head_kv_raw = get(f"{arch}.attention.head_count_kv", None, GGUFValueType.UINT32)
    n_head_kv = n_head if n_head_kv_raw is None else _first(n_head_kv_raw)
    n_expert = int(get(f"{arch}.expert_count", 0, GGUFValueType.UINT32) or 0)
    if arch in ("hunyuan_vl", "hunyuan-dense") and n_expert <= 1:
        n_expert = 0
    if not known and not n_head:
        notes.append("no attention.head_count: GQA rules see n_gqa = 0")
    n_layer_nextn = int(get(f"{arch}.nextn_predict_layers", 0, GGUFValueType.UINT32) or 0)
    is_70b = False
    if arch in _LAYERS_70B and n_layer - n_layer_nextn == _LAYERS_70B[arch]:
        is_70b = arch != "llama" or (n_expert != 8 and n_head != n_head_kv)
    return ModelInfo(arch, known, int(n_layer), n_head, n_head_kv, n_expert, is_70b), notes


def _guess_ftype(tensors: list[TensorRef]) -> int:
    """llama_model_loader's file type guess: the most common tensor type, marked GUESSED."""
    counts: dict[T, int] = {}
    best_n, best = 0, T.F32
    for ref in tensors:
        counts[ref.type] = counts.get(ref.type, 0) + 1
        if best_n < counts[ref.type]:
            best_n, best = counts[ref.type], ref.type
    guess = {T.F32: FType.F32, T.F16: FType.F16, T.BF16: FType.BF16, T.Q4_0: FType.Q4_0, T.Q4_1: FType.Q4_1,
             T.Q5_0: FType.Q5_0, T.Q5_1: FType.Q5_1, T.Q8_0: FType.Q8_0, T.Q2_K: FType.Q2_K,
             T.Q3_K: FType.Q3_K_M, T.Q4_K: FType.Q4_K_M, T.Q5_K: FType.Q5_K_M, T.Q6_K: FType.Q6_K,
             T.TQ1_0: FType.TQ1_0, T.TQ2_0: FType.TQ2_0, T.IQ2_XXS: FType.IQ2_XXS, T.IQ2_XS: FType.IQ2_XS,
             T.IQ2_S: FType.IQ2_S, T.IQ3_XXS: FType.IQ3_XXS, T.IQ1_S: FType.IQ1_S, T.IQ1_M: FType.IQ1_M,
             T.IQ4_NL: FType.IQ4_NL, T.IQ4_XS: FType.IQ4_XS, T.IQ3_S: FType.IQ3_S, T.NVFP4: FType.NVFP4,
             T.Q1_0: FType.Q1_0}
    if Q2_0 is not None:
        guess[Q2_0] = FType.Q2_0
    return int(guess.get(best, FType.F32)) | FTYPE_GUESSED


LLAMA_FTYPE_GUESSED = FTYPE_GUESSED


def source_ftype(source: Source, overrides: list[KV] | None = None) -> int:
    """The input's llama_ftype as llama_model_loader knows it (COPY writes it): general.file_type
    (or an int --override-kv of it) if present, else the most common tensor type, marked GUESSED."""
    value = source.kv_value("general.file_type", None)
    for kv in overrides or []:
        if kv.key == "general.file_type" and kv.vtype == GGUFValueType.UINT32:
            value = kv.get()
    if value is not None:
        return int(value)
    return _guess_ftype(llama_order(source.tensors))


# ---------------------------------------------------------------------------------------------
# the per-tensor rules


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # the last term only runs when i_layer >= n_layers/8, so C's truncating % equals Python's
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


class _State:
    """quantize_state_impl: the counters that advance as tensors are planned."""

    def __init__(self, info: ModelInfo, options: QuantizeOptions, has_imatrix: bool, patterns):
        self.info = info
        self.options = options
        self.has_imatrix = has_imatrix
        self.patterns = patterns
        self.n_attention_wv = 0
        self.n_ffn_down = self.n_ffn_gate = self.n_ffn_up = info.n_layer_all
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0
        self.n_fallback = 0
        self.has_tied_embeddings = True


def _layer_info(qs: _State, i_layer: int, n_layer: int, name: str) -> tuple[int, int]:
    if max(1, qs.info.n_expert) > 1:
        # experts are not consecutive in every model, so the layer comes from the name
        parsed = _sscanf_layer(name)
        if parsed is None:
            raise PlanError(f"{name}: cannot tell its layer (no blk.N. prefix) in a model with experts")
        if parsed < 0 or parsed >= n_layer:
            raise PlanError(f"{name}: layer {parsed} is outside [0, {n_layer}) (block_count)")
        i_layer = parsed
    return i_layer, n_layer


def _nth(i: int, n: int) -> str:
    return f"#{i} of {n}"


def _get_type_impl(qs: _State, new_type: T, ref: TensorRef, name: str, ftype: FType, cat: Cat) -> tuple[T, str]:
    """llama_tensor_get_type_impl: the file type's mixture rules. Returns (type, why)."""
    info = qs.info
    arch = info.arch
    n_gqa, n_expert = info.n_gqa, info.n_expert
    F = FType
    why = f"{ftype.name} default"

    if arch == "glm5-next" and any(p in name for p in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
        if new_type not in FLOAT_TYPES:
            return T.Q8_0, "glm5-next: never below Q8_0"

    if cat == Cat.OUTPUT or (qs.has_tied_embeddings and cat == Cat.TOKEN_EMBD):
        what = "output" if cat == Cat.OUTPUT else "token_embd (tied to output)"
        if qs.options.output_tensor_type is not None:
            return qs.options.output_tensor_type, f"{what}: --output-tensor-type"
        nx = ref.ne[0]
        if ftype == F.MXFP4_MOE:
            return T.Q8_0, f"{what} in MXFP4_MOE"
        if arch == "falcon":
            return T.Q8_0, f"{what} of falcon"
        if nx % type_sizes(new_type)[0] != 0:
            return T.Q8_0, f"{what}: row {nx} not a multiple of {type_sizes(new_type)[0]} ({new_type.name})"
        if ftype in (F.IQ2_XXS, F.IQ2_XS, F.IQ3_XXS, F.IQ1_S, F.IQ2_S, F.IQ2_M, F.IQ1_M):
            return T.Q5_K, f"{what} in {ftype.name}"
        if new_type != T.Q8_0:
            return T.Q6_K, f"{what}: at least Q6_K"
        return new_type, f"{what}: Q8_0 kept"

    if ftype == F.MXFP4_MOE:
        is_bailing_expert = arch == "bailingmoe3" and cat in (Cat.FFN_UP, Cat.FFN_GATE, Cat.FFN_DOWN)
        ne2 = ref.ne[2] if len(ref.ne) > 2 else 1
        if ne2 > 1 and (arch != "bailingmoe3" or is_bailing_expert):
            return T.MXFP4, "expert tensor in MXFP4_MOE"
        return T.Q8_0, "non-expert tensor in MXFP4_MOE"

    if cat == Cat.TOKEN_EMBD:
        if qs.options.token_embedding_type is not None:
            return qs.options.token_embedding_type, "token_embd: --token-embedding-type"
        if ftype in (F.IQ2_XXS, F.IQ2_XS, F.IQ1_S, F.IQ1_M):
            return T.Q2_K, f"token_embd in {ftype.name}"
        if ftype in (F.IQ2_S, F.IQ2_M, F.IQ3_XXS):
            return T.IQ3_S, f"token_embd in {ftype.name}"
        if ftype in (F.TQ1_0, F.TQ2_0, F.Q2_0):
            return T.Q4_K, f"token_embd in {ftype.name}"
        return new_type, why

    if ftype in (F.IQ2_XXS, F.IQ2_XS, F.IQ1_S, F.IQ2_S, F.IQ2_M, F.IQ1_M):
        low = ftype in (F.IQ2_S, F.IQ2_M)
        if _is_attn_v(cat):
            i = qs.i_attention_wv
            qs.i_attention_wv += 1
            if n_gqa >= 4 or n_expert >= 4:
                return T.Q4_K, f"{cat.value} with n_gqa {n_gqa} / {n_expert} experts (>= 4) in {ftype.name}"
            return (T.IQ3_S if low else T.Q2_K), f"{cat.value} {_nth(i, qs.n_attention_wv)} in {ftype.name}"
        if n_expert == 8 and cat == Cat.ATTENTION_K:
            return T.Q4_K, f"attn_k with 8 experts in {ftype.name}"
        if cat == Cat.FFN_DOWN:
            i = qs.i_ffn_down
            qs.i_ffn_down += 1
            if i < qs.n_ffn_down // 8:
                return (T.IQ3_S if low else T.Q2_K), f"ffn_down #{i} of {qs.n_ffn_down}: in first 1/8 of layers"
            return new_type, why
        if cat == Cat.ATTENTION_OUTPUT:
            if n_expert == 8:
                return T.Q5_K, f"attn_output with 8 experts in {ftype.name}"
            if ftype in (F.IQ1_S, F.IQ1_M):
                return T.IQ2_XXS, f"attn_output in {ftype.name}"
            if low:
                return T.IQ3_S, f"attn_output in {ftype.name}"
        return new_type, why

    if _is_attn_v(cat):
        i, n = qs.i_attention_wv, qs.n_attention_wv
        qs.i_attention_wv += 1
        v = cat.value
        if ftype == F.Q2_K:
            new_type, why = (T.Q4_K, f"{v} with n_gqa {n_gqa} >= 4") if n_gqa >= 4 else (T.Q3_K, f"{v} in Q2_K")
        elif ftype == F.Q2_K_S and n_gqa >= 4:
            new_type, why = T.Q4_K, f"{v} with n_gqa {n_gqa} >= 4"
        elif ftype == F.IQ3_XXS:
            if n_gqa >= 4:
                new_type, why = T.Q4_K, f"{v} with n_gqa {n_gqa} >= 4"
            elif not qs.has_imatrix:
                new_type, why = T.IQ3_S, f"{v} in IQ3_XXS without imatrix"
            else:
                new_type, why = T.IQ3_XXS, f"{v} in IQ3_XXS with imatrix"
        elif ftype in (F.IQ3_XS, F.IQ3_S) and n_gqa >= 4:
            new_type, why = T.Q4_K, f"{v} with n_gqa {n_gqa} >= 4"
        elif ftype == F.IQ3_M:
            new_type, why = T.Q4_K, f"{v} in IQ3_M"
        elif ftype == F.Q3_K_M:
            new_type, why = (T.Q5_K, f"{v} {_nth(i, n)}: one of the first 2") if i < 2 else (T.Q4_K, f"{v} in Q3_K_M")
        elif ftype == F.Q3_K_L:
            new_type, why = T.Q5_K, f"{v} in Q3_K_L"
        elif ftype in (F.IQ4_NL, F.IQ4_XS) and n_gqa >= 4:
            new_type, why = T.Q5_K, f"{v} with n_gqa {n_gqa} >= 4"
        elif ftype in (F.Q4_K_M, F.Q5_K_M) and _use_more_bits(i, n):
            new_type, why = T.Q6_K, f"{v} {_nth(i, n)}: first/last 1/8 of layers or every 3rd (use_more_bits)"
        elif ftype == F.Q4_K_S and i < 4:
            new_type, why = T.Q5_K, f"{v} {_nth(i, n)}: one of the first 4"
        if info.is_70b and new_type in (T.Q3_K, T.Q4_K):
            new_type, why = T.Q5_K, f"{v} of a 70B model (8 heads share attn_v)"
        if n_expert == 8:
            new_type, why = T.Q8_0, f"{v} with 8 experts"
        return new_type, why

    if cat == Cat.ATTENTION_K:
        if n_expert == 8:
            return T.Q8_0, "attn_k with 8 experts"
        if ftype == F.IQ3_XS:
            return T.IQ3_XXS, "attn_k in IQ3_XS"
        if ftype == F.IQ3_XXS:
            return T.IQ2_S, "attn_k in IQ3_XXS"
        return new_type, why

    if cat == Cat.ATTENTION_Q:
        if ftype == F.IQ3_XS:
            return T.IQ3_XXS, "attn_q in IQ3_XS"
        if ftype == F.IQ3_XXS:
            return T.IQ2_S, "attn_q in IQ3_XXS"
        return new_type, why

    if cat == Cat.FFN_DOWN:
        i_layer, n_layer = _layer_info(qs, qs.i_ffn_down, qs.n_ffn_down, name)
        qs.i_ffn_down += 1
        at = f"ffn_down in layer {i_layer} of {n_layer}"
        first8 = i_layer < n_layer // 8
        if ftype == F.Q2_K:
            return T.Q3_K, "ffn_down in Q2_K"
        if ftype == F.Q2_K_S:
            return (T.Q4_K, f"{at}: in first 1/8 of layers") if first8 else (new_type, why)
        if ftype == F.IQ3_XXS and not qs.has_imatrix:
            return (T.Q4_K, f"{at}: in first 1/8 of layers, no imatrix") if first8 else (T.Q3_K, "ffn_down in IQ3_XXS without imatrix")
        if ftype == F.Q3_K_M:
            if i_layer < n_layer // 16:
                return T.Q5_K, f"{at}: in first 1/16 of layers"
            if arch != "falcon":
                return T.Q4_K, "ffn_down in Q3_K_M"
            if _use_more_bits(i_layer, n_layer):
                return T.Q4_K, f"{at}: use_more_bits (falcon)"
            return T.Q3_K, f"{at} (falcon)"
        if ftype == F.IQ3_M and (first8 or (n_expert == 8 and _use_more_bits(i_layer, n_layer))):
            return T.Q4_K, f"{at}: in first 1/8 of layers" if first8 else f"{at}: use_more_bits with 8 experts"
        if ftype == F.Q3_K_L:
            return (T.Q4_K, "ffn_down in Q3_K_L (falcon)") if arch == "falcon" else (T.Q5_K, "ffn_down in Q3_K_L")
        if ftype == F.Q4_K_M:
            if arch == "falcon":
                if i_layer < n_layer // 16:
                    return T.Q6_K, f"{at}: in first 1/16 of layers (falcon)"
                if _use_more_bits(i_layer, n_layer):
                    return T.Q5_K, f"{at}: use_more_bits (falcon)"
                return T.Q4_K, f"{at} (falcon)"
            if _use_more_bits(i_layer, n_layer):
                return T.Q6_K, f"{at}: first/last 1/8 of layers or every 3rd (use_more_bits)"
            return new_type, why
        if first8 and ftype in (F.IQ4_NL, F.IQ4_XS) and not qs.has_imatrix:
            return T.Q5_K, f"{at}: in first 1/8 of layers, no imatrix"
        if ftype == F.Q5_K_M and _use_more_bits(i_layer, n_layer):
            return T.Q6_K, f"{at}: first/last 1/8 of layers or every 3rd (use_more_bits)"
        if ftype == F.Q4_K_S and arch != "falcon" and first8:
            return T.Q5_K, f"{at}: in first 1/8 of layers"
        if ftype in (F.Q4_0, F.Q5_0) and qs.has_imatrix and first8:
            to = T.Q4_1 if ftype == F.Q4_0 else T.Q5_1
            return to, f"{at}: in first 1/8 of layers, with imatrix"
        return new_type, why

    if cat == Cat.ATTENTION_OUTPUT:
        if arch != "falcon":
            if n_expert == 8:
                if ftype in (F.Q2_K, F.IQ3_XS, F.IQ3_XXS, F.Q3_K_S, F.Q3_K_M, F.IQ4_NL,
                             F.Q4_K_S, F.Q4_K_M, F.IQ3_S, F.IQ3_M, F.IQ4_XS):
                    return T.Q5_K, f"attn_output with 8 experts in {ftype.name}"
            else:
                to = {F.Q2_K: T.Q3_K, F.IQ3_XXS: T.IQ3_S, F.Q3_K_M: T.Q4_K, F.Q3_K_L: T.Q5_K, F.IQ3_M: T.Q4_K}.get(ftype)
                if to is not None:
                    return to, f"attn_output in {ftype.name}"
        elif ftype == F.Q3_K_L:
            return T.Q4_K, "attn_output in Q3_K_L (falcon)"
        return new_type, why

    if cat == Cat.ATTENTION_QKV:
        if ftype in (F.Q3_K_M, F.Q3_K_L, F.IQ3_M):
            return T.Q4_K, f"attn_qkv in {ftype.name}"
        if ftype == F.Q4_K_M:
            return T.Q5_K, "attn_qkv in Q4_K_M"
        if ftype == F.Q5_K_M:
            return T.Q6_K, "attn_qkv in Q5_K_M"
        return new_type, why

    if cat in (Cat.FFN_GATE, Cat.FFN_UP):
        attr = "i_ffn_gate" if cat == Cat.FFN_GATE else "i_ffn_up"
        i_layer, n_layer = _layer_info(qs, getattr(qs, attr), qs.n_ffn_gate if cat == Cat.FFN_GATE else qs.n_ffn_up, name)
        setattr(qs, attr, getattr(qs, attr) + 1)
        if ftype == F.IQ3_XS and n_layer // 8 <= i_layer < 7 * n_layer // 8:
            return T.IQ3_XXS, f"{cat.value} in layer {i_layer} of {n_layer}: middle 3/4 of layers in IQ3_XS"
        return new_type, why

    return new_type, why


def _get_type(qs: _State, ref: TensorRef, name: str, default_type: T, ftype: FType, cat: Cat) -> tuple[T, str]:
    """llama_tensor_get_type, for a tensor that allows quantization."""
    options = qs.options
    if options.token_embedding_type is not None and cat == Cat.TOKEN_EMBD:
        # per_layer_token_embd follows --token-embedding-type unless a --tensor-type names it
        named = name == "per_layer_token_embd.weight" and any(p.search(name) for p, _ in qs.patterns)
        if not named:
            return options.token_embedding_type, "--token-embedding-type"
    if options.output_tensor_type is not None and cat == Cat.OUTPUT:
        return options.output_tensor_type, "--output-tensor-type"

    new_type, why = default_type, f"{ftype.name} default"
    if default_type in FLOAT_TYPES:  # not ggml_is_quantized: no mixture, no --tensor-type, no fallback
        return new_type, f"{ftype.name}: every quantizable tensor"

    manual = False
    for pattern, qtype in qs.patterns:
        if pattern.search(name):
            new_type, why = qtype, f"--tensor-type {pattern.pattern}={qtype.name}"
            manual = True
            break
    if not manual and not options.pure:
        new_type, why = _get_type_impl(qs, new_type, ref, name, ftype, cat)
    elif options.pure and not manual:
        why = "--pure"

    fell_back, fallback_why = _fallback(ref.ne[0], new_type)
    if fallback_why:
        qs.n_fallback += 1
        return fell_back, fallback_why
    return new_type, why


def tensor_requires_imatrix(name: str, qtype: T, ftype: int, cat: Cat | None = None) -> bool:
    """tensor_requires_imatrix (token embedding and output never need one)."""
    if (cat or category(name)) in (Cat.TOKEN_EMBD, Cat.OUTPUT):
        return False
    if qtype in (T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S):
        return True
    return qtype == T.Q2_K and ftype == FType.Q2_K_S


