"""The plan: one decision per tensor (target type and why), mirroring llama.cpp's
llama-quant.cpp. A pure function of (source tensors and metadata, options, imatrix names):
it reads no tensor data and writes nothing.

Output order is llama.cpp's: its weights map sorts non-layer tensors by name first, then
``blk.N`` tensors by numeric layer, names sorted within a layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFValueType, LlamaFileType as FT

from .errors import PlanError
from .source import KV, Source, TensorRef

GGML_QNT_VERSION = 2

# llama_ftype_get_default_type for the file types this plan supports so far.
DEFAULT_TYPE: dict[int, T] = {
    FT.ALL_F32: T.F32,
    FT.MOSTLY_F16: T.F16,
    FT.MOSTLY_BF16: T.BF16,
    FT.MOSTLY_Q8_0: T.Q8_0,
}

FLOAT_TYPES = (T.F32, T.F16, T.BF16)


@dataclass
class QuantizeOptions:
    ftype: int  # llama_ftype; ignored with only_copy (COPY)
    only_copy: bool = False
    allow_requantize: bool = False
    leave_output_tensor: bool = False
    pure: bool = False
    keep_split: bool = False
    output_tensor_type: T | None = None
    token_embedding_type: T | None = None
    tensor_types: list[tuple[str, T]] = field(default_factory=list)  # (regex, type), first match wins
    prune_layers: list[int] = field(default_factory=list)
    include_weights: list[str] = field(default_factory=list)
    exclude_weights: list[str] = field(default_factory=list)
    kv_overrides: list[KV] = field(default_factory=list)  # appended after file_type, in order


@dataclass
class TensorPlan:
    name: str  # output name (differs from the source's when layers are pruned)
    ref: TensorRef
    type: T  # target type
    reason: str
    requires_imatrix: bool = False
    imatrix_name: str = ""
    split: int = 0

    @property
    def ne(self) -> tuple[int, ...]:
        return self.ref.ne

    @property
    def quantize(self) -> bool:
        return self.type != self.ref.type

    @property
    def nbytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.type]
        return self.ref.n_elements // block_size * type_size


@dataclass
class Plan:
    tensors: list[TensorPlan]
    kv: list[KV]  # output metadata, in order (split keys are added per shard by the writer)
    ftype: int
    n_splits: int = 1
    n_fallback: int = 0


def _layer_of(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def llama_order(tensors: list[TensorRef]) -> list[TensorRef]:
    """llama_model_loader's weights_map order (weight_name_comparer)."""
    return sorted(tensors, key=lambda t: (_layer_of(t.name), t.name.encode()))


def n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return max(n, 1)


def allows_quantization(name: str, ne: tuple[int, ...], options: QuantizeOptions) -> bool:
    """tensor_allows_quantization (the architecture-independent part)."""
    if options.only_copy or n_dims(ne) < 2:
        return False
    ok = name.endswith("weight") and "_norm.weight" not in name
    ok &= not (options.leave_output_tensor and name == "output.weight")
    for part in ("ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
                 "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight"):
        ok &= part not in name
    ok &= name not in ("position_embd.weight", "token_types.weight")
    return ok


def fallback_type(ne0: int, qtype: T) -> tuple[T, str]:
    """tensor_type_fallback: a compatible type when ne[0] is not a multiple of the block size."""
    block = GGML_QUANT_SIZES[qtype][0]
    if ne0 % block == 0:
        return qtype, ""
    to = qtype if block <= 32 else {
        T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
        T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
    }.get(qtype, T.IQ4_NL)
    if ne0 % GGML_QUANT_SIZES[to][0] != 0:
        to = T.F16
    return to, f"row {ne0} not a multiple of {block} ({qtype.name}) -> fallback {to.name}"


def output_kv(source: Source, ftype: int, options: QuantizeOptions, block_count: int | None) -> list[KV]:
    """llama-quantize's metadata: input pairs in order, then quantization_version and file_type
    (gguf_set_val moves an existing key to the end), split keys removed, then the overrides."""
    out: list[KV] = [kv for kv in source.kv]

    def set_kv(new: KV) -> None:
        out[:] = [kv for kv in out if kv.key != new.key]
        out.append(new)

    set_kv(KV("general.quantization_version", GGUFValueType.UINT32, GGML_QNT_VERSION))
    set_kv(KV("general.file_type", GGUFValueType.UINT32, int(ftype)))
    out[:] = [kv for kv in out if kv.key not in ("split.no", "split.count", "split.tensors.count")]
    for kv in options.kv_overrides:
        set_kv(kv)
    if block_count is not None:
        arch = source.kv_value("general.architecture", "llama")
        set_kv(KV(f"{arch}.block_count", GGUFValueType.UINT32, block_count))
    return out


# llama_model_loader's guess of a file's type from its most common tensor type
_FTYPE_OF_TYPE = {
    T.F32: 0, T.F16: 1, T.BF16: 32, T.Q4_0: 2, T.Q4_1: 3, T.Q5_0: 8, T.Q5_1: 9, T.Q8_0: 7, T.Q2_K: 10,
    T.Q3_K: 12, T.Q4_K: 15, T.Q5_K: 17, T.Q6_K: 18, T.TQ1_0: 36, T.TQ2_0: 37, T.IQ2_XXS: 19, T.IQ2_XS: 20,
    T.IQ2_S: 28, T.IQ3_XXS: 23, T.IQ1_S: 24, T.IQ1_M: 31, T.IQ4_NL: 25, T.IQ4_XS: 30, T.IQ3_S: 26,
    T.NVFP4: 39, T.Q1_0: 40,
}
LLAMA_FTYPE_GUESSED = 1024


def source_ftype(source: Source) -> int:
    """The input's llama_ftype, as llama_model_loader knows it: general.file_type if present,
    else the type most tensors have (first to reach the maximum in llama order), marked GUESSED.
    COPY writes this value."""
    value = source.kv_value("general.file_type")
    if value is not None:
        return int(value)
    counts: dict[T, int] = {}
    best, best_n = T.F32, 0
    for ref in llama_order(source.tensors):
        counts[ref.type] = counts.get(ref.type, 0) + 1
        if counts[ref.type] > best_n:
            best, best_n = ref.type, counts[ref.type]
    return _FTYPE_OF_TYPE.get(best, 0) | LLAMA_FTYPE_GUESSED


def make_plan(source: Source, options: QuantizeOptions, imatrix_names: set[str] | None = None) -> Plan:
    ftype = source_ftype(source) if options.only_copy else int(options.ftype)
    if not options.only_copy and options.ftype not in DEFAULT_TYPE:
        raise PlanError(f"file type {FT(options.ftype).name} cannot be planned yet")
    default_type = DEFAULT_TYPE.get(options.ftype, T.F32)
    decisions: list[TensorPlan] = []
    n_fallback = 0
    for ref in llama_order(source.tensors):
        if not allows_quantization(ref.name, ref.ne, options):
            why = "copy" if options.only_copy else "not quantized (1-D, norm or excluded by name)"
            decisions.append(TensorPlan(ref.name, ref, ref.type, why, split=ref.split if options.keep_split else 0))
            continue
        qtype, reason = default_type, f"default type of {FT(options.ftype).name}"
        if qtype not in FLOAT_TYPES:
            qtype, why = fallback_type(ref.ne[0], qtype)
            if why:
                n_fallback += 1
                reason = why
        decisions.append(TensorPlan(ref.name, ref, qtype, reason, imatrix_name=ref.name,
                                    split=ref.split if options.keep_split else 0))
    return Plan(decisions, output_kv(source, ftype, options, None), ftype,
                n_splits=source.n_splits if options.keep_split else 1, n_fallback=n_fallback)


# llama-quantize's QUANT_OPTIONS: name -> (llama_ftype, description), in its order.
FILE_TYPES: dict[str, tuple[int, str]] = {
    "Q1_0": (40, " 1.125 bpw quantization"), "Q2_0": (41, " 2.25 bpw quantization (group 64)"),
    "Q4_0": (2, " 4.34G, +0.4685 ppl @ Llama-3-8B"), "Q4_1": (3, " 4.78G, +0.4511 ppl @ Llama-3-8B"),
    "MXFP4_MOE": (38, " MXFP4 MoE"), "Q5_0": (8, " 5.21G, +0.1316 ppl @ Llama-3-8B"),
    "Q5_1": (9, " 5.65G, +0.1062 ppl @ Llama-3-8B"), "IQ2_XXS": (19, " 2.06 bpw quantization"),
    "IQ2_XS": (20, " 2.31 bpw quantization"), "IQ2_S": (28, " 2.5  bpw quantization"),
    "IQ2_M": (29, " 2.7  bpw quantization"), "IQ1_S": (24, " 1.56 bpw quantization"),
    "IQ1_M": (31, " 1.75 bpw quantization"), "TQ1_0": (36, " 1.69 bpw ternarization"),
    "TQ2_0": (37, " 2.06 bpw ternarization"), "Q2_K": (10, " 2.96G, +3.5199 ppl @ Llama-3-8B"),
    "Q2_K_S": (21, " 2.96G, +3.1836 ppl @ Llama-3-8B"), "IQ3_XXS": (23, " 3.06 bpw quantization"),
    "IQ3_S": (26, " 3.44 bpw quantization"), "IQ3_M": (27, " 3.66 bpw quantization mix"),
    "Q3_K": (12, "alias for Q3_K_M"), "IQ3_XS": (22, " 3.3 bpw quantization"),
    "Q3_K_S": (11, " 3.41G, +1.6321 ppl @ Llama-3-8B"), "Q3_K_M": (12, " 3.74G, +0.6569 ppl @ Llama-3-8B"),
    "Q3_K_L": (13, " 4.03G, +0.5562 ppl @ Llama-3-8B"), "IQ4_NL": (25, " 4.50 bpw non-linear quantization"),
    "IQ4_XS": (30, " 4.25 bpw non-linear quantization"), "Q4_K": (15, "alias for Q4_K_M"),
    "Q4_K_S": (14, " 4.37G, +0.2689 ppl @ Llama-3-8B"), "Q4_K_M": (15, " 4.58G, +0.1754 ppl @ Llama-3-8B"),
    "Q5_K": (17, "alias for Q5_K_M"), "Q5_K_S": (16, " 5.21G, +0.1049 ppl @ Llama-3-8B"),
    "Q5_K_M": (17, " 5.33G, +0.0569 ppl @ Llama-3-8B"), "Q6_K": (18, " 6.14G, +0.0217 ppl @ Llama-3-8B"),
    "Q8_0": (7, " 7.96G, +0.0026 ppl @ Llama-3-8B"), "F16": (1, "14.00G, +0.0020 ppl @ Mistral-7B"),
    "BF16": (32, "14.00G, -0.0050 ppl @ Mistral-7B"), "F32": (0, "26.00G              @ 7B"),
    "COPY": (0, "only copy tensors, no quantizing"),
}


def parse_file_type(text: str) -> tuple[int, str]:
    """try_parse_ftype: a name (case-insensitive) or a numeric id; returns (ftype, canonical name)."""
    upper = text.strip().upper()
    if upper in FILE_TYPES:
        return FILE_TYPES[upper][0], upper
    try:
        number = int(upper)
    except ValueError:
        number = None
    if number is not None:
        for name, (ftype, _) in FILE_TYPES.items():
            if ftype == number:
                return ftype, name
    raise PlanError(f"unknown file type {text!r}; run `pyquantize types` for the list (e.g. Q4_K_M, Q8_0, F16)")


def parse_tensor_type(text: str) -> T:
    """A ggml tensor type by name (case-insensitive), for --output-tensor-type and friends."""
    try:
        return T[text.strip().upper()]
    except KeyError:
        raise PlanError(f"unknown tensor type {text!r} (e.g. q8_0, q6_k, f16)") from None


def plan_to_json(plan: Plan) -> dict:
    tensors = [{"name": tp.name, "shape": list(tp.ne), "from": tp.ref.type.name, "to": tp.type.name,
                "reason": tp.reason, "bytes": tp.nbytes, "bytes_in": tp.ref.nbytes} for tp in plan.tensors]
    n = sum(tp.ref.n_elements for tp in plan.tensors)
    bytes_in = sum(t["bytes_in"] for t in tensors)
    bytes_out = sum(t["bytes"] for t in tensors)
    return {"file_type": plan.ftype, "tensors": tensors, "n_elements": n, "bytes_in": bytes_in,
            "bytes_out": bytes_out, "bpw_in": round(bytes_in * 8 / n, 4) if n else 0.0,
            "bpw_out": round(bytes_out * 8 / n, 4) if n else 0.0, "n_fallback": plan.n_fallback}
