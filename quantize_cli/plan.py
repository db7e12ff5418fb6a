"""The plan: one decision per tensor (target type and why), mirroring llama.cpp's
src/llama-quant.cpp and tools/quantize/quantize.cpp. A pure function of (source tensors and
metadata, options, imatrix entry names): it reads no tensor data and writes nothing.

Order matters, as in llama.cpp: the per-category counters (i_attention_wv, i_ffn_down, ...)
advance in the order tensors are planned, which is llama_model_loader's weights_map order
(non-layer tensors by name first, then ``blk.N`` tensors by numeric layer, names sorted within a
layer) or, with --keep-split, (shard, offset) order.

llama.cpp only quantizes architectures it knows. For any other architecture this module uses
the same name-based rules with hyper-parameters read generically (``{arch}.block_count`` or the
highest ``blk.N``, ``{arch}.attention.head_count[_kv]``, ``{arch}.expert_count``) and also treats
Hugging Face style names (``embed_tokens``, ``lm_head``) as token embedding / output; the plan's
``notes`` say which generic rules were used.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFValueType

from .errors import PlanError
from .source import KV, Source, TensorRef

GGML_QNT_VERSION = 2
FTYPE_GUESSED = 1024  # LLAMA_FTYPE_GUESSED: set on a file type guessed from the tensor types

Q2_0: T | None = getattr(T, "Q2_0", None)  # None only if a future gguf gives the name to another value


def type_sizes(qtype: T) -> tuple[int, int]:
    """(block size, bytes per block) of a ggml type."""
    sizes = GGML_QUANT_SIZES.get(qtype)
    if sizes is None:
        raise PlanError(f"ggml type {int(qtype)} has no known block size")
    return sizes


def row_bytes(qtype: T, n_per_row: int) -> int:
    """ggml_row_size: type_size * n / block_size (its assert that the block divides n is compiled
    out, so a row that does not fit still gets a size in a dry run)."""
    block_size, type_size = type_sizes(qtype)
    return type_size * n_per_row // block_size


class FType(enum.IntEnum):
    """llama_ftype (include/llama.h), named as llama-quantize names them."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q8_0 = 7
    Q5_0 = 8
    Q5_1 = 9
    Q2_K = 10
    Q3_K_S = 11
    Q3_K_M = 12
    Q3_K_L = 13
    Q4_K_S = 14
    Q4_K_M = 15
    Q5_K_S = 16
    Q5_K_M = 17
    Q6_K = 18
    IQ2_XXS = 19
    IQ2_XS = 20
    Q2_K_S = 21
    IQ3_XS = 22
    IQ3_XXS = 23
    IQ1_S = 24
    IQ4_NL = 25
    IQ3_S = 26
    IQ3_M = 27
    IQ2_S = 28
    IQ2_M = 29
    IQ4_XS = 30
    IQ1_M = 31
    BF16 = 32
    TQ1_0 = 36
    TQ2_0 = 37
    MXFP4_MOE = 38
    NVFP4 = 39
    Q1_0 = 40
    Q2_0 = 41


# llama-quantize's QUANT_OPTIONS: name -> (llama_ftype, description), in its order (the order
# decides which name a number maps to: COPY comes after F32 so that 0 means F32).
FILE_TYPES: dict[str, tuple[int, str]] = {n: (f, d) for n, f, d in (
    ("Q1_0", FType.Q1_0, " 1.125 bpw quantization"),
    ("Q2_0", FType.Q2_0, " 2.25 bpw quantization (group 64)"),
    ("Q4_0", FType.Q4_0, " 4.34G, +0.4685 ppl @ Llama-3-8B"),
    ("Q4_1", FType.Q4_1, " 4.78G, +0.4511 ppl @ Llama-3-8B"),
    ("MXFP4_MOE", FType.MXFP4_MOE, " MXFP4 MoE"),
    ("Q5_0", FType.Q5_0, " 5.21G, +0.1316 ppl @ Llama-3-8B"),
    ("Q5_1", FType.Q5_1, " 5.65G, +0.1062 ppl @ Llama-3-8B"),
    ("IQ2_XXS", FType.IQ2_XXS, " 2.06 bpw quantization"),
    ("IQ2_XS", FType.IQ2_XS, " 2.31 bpw quantization"),
    ("IQ2_S", FType.IQ2_S, " 2.5  bpw quantization"),
    ("IQ2_M", FType.IQ2_M, " 2.7  bpw quantization"),
    ("IQ1_S", FType.IQ1_S, " 1.56 bpw quantization"),
    ("IQ1_M", FType.IQ1_M, " 1.75 bpw quantization"),
    ("TQ1_0", FType.TQ1_0, " 1.69 bpw ternarization"),
    ("TQ2_0", FType.TQ2_0, " 2.06 bpw ternarization"),
    ("Q2_K", FType.Q2_K, " 2.96G, +3.5199 ppl @ Llama-3-8B"),
    ("Q2_K_S", FType.Q2_K_S, " 2.96G, +3.1836 ppl @ Llama-3-8B"),
    ("IQ3_XXS", FType.IQ3_XXS, " 3.06 bpw quantization"),
    ("IQ3_S", FType.IQ3_S, " 3.44 bpw quantization"),
    ("IQ3_M", FType.IQ3_M, " 3.66 bpw quantization mix"),
    ("Q3_K", FType.Q3_K_M, "alias for Q3_K_M"),
    ("IQ3_XS", FType.IQ3_XS, " 3.3 bpw quantization"),
    ("Q3_K_S", FType.Q3_K_S, " 3.41G, +1.6321 ppl @ Llama-3-8B"),
    ("Q3_K_M", FType.Q3_K_M, " 3.74G, +0.6569 ppl @ Llama-3-8B"),
    ("Q3_K_L", FType.Q3_K_L, " 4.03G, +0.5562 ppl @ Llama-3-8B"),
    ("IQ4_NL", FType.IQ4_NL, " 4.50 bpw non-linear quantization"),
    ("IQ4_XS", FType.IQ4_XS, " 4.25 bpw non-linear quantization"),
    ("Q4_K", FType.Q4_K_M, "alias for Q4_K_M"),
    ("Q4_K_S", FType.Q4_K_S, " 4.37G, +0.2689 ppl @ Llama-3-8B"),
    ("Q4_K_M", FType.Q4_K_M, " 4.58G, +0.1754 ppl @ Llama-3-8B"),
    ("Q5_K", FType.Q5_K_M, "alias for Q5_K_M"),
    ("Q5_K_S", FType.Q5_K_S, " 5.21G, +0.1049 ppl @ Llama-3-8B"),
    ("Q5_K_M", FType.Q5_K_M, " 5.33G, +0.0569 ppl @ Llama-3-8B"),
    ("Q6_K", FType.Q6_K, " 6.14G, +0.0217 ppl @ Llama-3-8B"),
    ("Q8_0", FType.Q8_0, " 7.96G, +0.0026 ppl @ Llama-3-8B"),
    ("F16", FType.F16, "14.00G, +0.0020 ppl @ Mistral-7B"),
    ("BF16", FType.BF16, "14.00G, -0.0050 ppl @ Mistral-7B"),
    ("F32", FType.F32, "26.00G              @ 7B"),
    ("COPY", FType.F32, "only copy tensors, no quantizing"),
)}

# llama_ftype_get_default_type. Absent: not a file type llama-quantize can produce (NVFP4).
DEFAULT_TYPE: dict[FType, T | None] = {
    FType.Q4_0: T.Q4_0, FType.Q4_1: T.Q4_1, FType.Q5_0: T.Q5_0, FType.Q5_1: T.Q5_1,
    FType.Q8_0: T.Q8_0, FType.F16: T.F16, FType.BF16: T.BF16, FType.F32: T.F32,
    FType.Q1_0: T.Q1_0, FType.Q2_0: Q2_0, FType.MXFP4_MOE: T.MXFP4,
    FType.Q2_K_S: T.Q2_K, FType.Q2_K: T.Q2_K, FType.IQ3_XS: T.IQ3_S,
    FType.Q3_K_S: T.Q3_K, FType.Q3_K_M: T.Q3_K, FType.Q3_K_L: T.Q3_K,
    FType.Q4_K_S: T.Q4_K, FType.Q4_K_M: T.Q4_K, FType.Q5_K_S: T.Q5_K, FType.Q5_K_M: T.Q5_K,
    FType.Q6_K: T.Q6_K, FType.TQ1_0: T.TQ1_0, FType.TQ2_0: T.TQ2_0,
    FType.IQ2_XXS: T.IQ2_XXS, FType.IQ2_XS: T.IQ2_XS, FType.IQ2_S: T.IQ2_XS, FType.IQ2_M: T.IQ2_S,
    FType.IQ3_XXS: T.IQ3_XXS, FType.IQ1_S: T.IQ1_S, FType.IQ1_M: T.IQ1_M,
    FType.IQ4_NL: T.IQ4_NL, FType.IQ4_XS: T.IQ4_XS, FType.IQ3_S: T.IQ3_S, FType.IQ3_M: T.IQ3_S,
}

FLOAT_TYPES = (T.F32, T.F16, T.BF16)
_NOT_QUANTIZED = frozenset((T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64))  # !ggml_is_quantized

# Architectures llama.cpp knows (LLM_ARCH_NAMES in src/llama-arch.cpp); others get generic rules.
KNOWN_ARCHS = frozenset("""
clip llama llama4 deci falcon grok gpt2 gptj gptneox mpt baichuan starcoder refact bert modern-bert
nomic-bert nomic-bert-moe neo-bert jina-bert-v2 jina-bert-v3 eurobert bloom stablelm qwen qwen2
qwen2moe qwen2vl qwen3 qwen3moe qwen3next qwen3vl qwen3vlmoe qwen35 qwen35moe qwen4exp phi2 phi3
phimoe plamo plamo2 plamo3 codeshell orion internlm2 minicpm minicpm3 gemma gemma2 gemma3 gemma3n
gemma4 gemma4-assistant gemma-embedding starcoder2 mamba mamba2 maple jamba falcon-h1 xverse
command-r cohere2 cohere2moe dbrx olmo olmo2 olmoe muse-glimmer openelm arctic deepseek deepseek2
deepseek2-ocr deepseek32 deepseek4 chatglm glm4 glm4moe glm-dsa bitnet t5 t5encoder jais jais2
nemotron nemotron_h nemotron_h_moe exaone exaone4 exaone-moe rwkv6 rwkv6qwen2 rwkv7 arwkv7 granite
granitemoe granitehybrid graniteswitch granite_swa chameleon wavtokenizer-dec plm bailingmoe
bailingmoe2 bailingmoe3 dots1 dots3note arcee afmoe laguna ernie4_5 ernie4_5-moe hunyuan-moe
hunyuan-dense hunyuan_vl hy_v3 hy_v4 smollm3 gpt-oss lfm2 lfm2moe dream smallthinker llada
llada-moe seed_oss grovemoe apertus minimax-01 hrm_text minimax-m2 minimax-m3 cogvlm rnd1
pangu-embedded mistral3 eagle3 dflash mistral4 paddleocr mimo2 step35 spark2_5 llama-embed
maincoder kimi-linear kimi-k3 glm5-next talkie mellum nanbeige qwen3tts pockettts
""".split())

# Architectures whose load_arch_hparams sets LLM_TYPE_70B at this many layers (llama: only with GQA).
_LAYERS_70B = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}


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
    kv_overrides: list[KV] = field(default_factory=list)  # --override-kv, in order (parse_override_kv)
    # where the imatrix came from. When imatrix_file is set, make_plan appends the quantize.imatrix.*
    # pairs itself (after kv_overrides, as llama-quantize does), counting the entries left after
    # --include/--exclude-weights; leave it empty when they are already in kv_overrides.
    imatrix_file: str = ""
    imatrix_datasets: list[str] = field(default_factory=list)
    imatrix_chunks: int = -1


@dataclass
class TensorPlan:
    name: str  # output name (differs from the source's when layers are pruned)
    ref: TensorRef
    type: T  # target type
    reason: str
    requires_imatrix: bool = False
    imatrix_name: str = ""  # the imatrix entry to use ("" for none)
    split: int = 0

    @property
    def ne(self) -> tuple[int, ...]:
        return self.ref.ne

    @property
    def quantize(self) -> bool:
        return self.type != self.ref.type

    @property
    def nbytes(self) -> int:
        if not self.quantize:
            return source_nbytes(self.ref)
        return self.ref.nrows * row_bytes(self.type, self.ref.n_per_row)


@dataclass
class Plan:
    tensors: list[TensorPlan]
    kv: list[KV]  # output metadata, in order (split keys are added per shard by the writer)
    ftype: int
    n_splits: int = 1
    n_fallback: int = 0
    n_elements: int = 0  # of every source tensor, pruned ones included (llama.cpp's bpw divides by it)
    has_imatrix: bool = False
    block_count: int | None = None  # set when layers were pruned
    arch: str = ""
    generic: bool = False  # architecture unknown to llama.cpp: generic rules
    notes: list[str] = field(default_factory=list)  # which generic rules were used
    warnings: list[str] = field(default_factory=list)
    # what llama.cpp would stop on when writing (imatrix missing or of the wrong size, requantizing
    # without --allow-requantize); empty when the plan can run. make_plan never raises for these,
    # so that --dry-run can show the plan anyway.
    errors: list[str] = field(default_factory=list)
    missing_imatrix: list[str] = field(default_factory=list)  # tensors that need an imatrix entry and have none

    @property
    def bytes_in(self) -> int:
        return sum(source_nbytes(t.ref) for t in self.tensors)

    @property
    def bytes_out(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def shard_kv(self, split: int) -> list[KV]:
        """Metadata of output shard `split` with --keep-split: shard 0 has every pair, the others
        only the split keys (llama.cpp starts them from gguf_init_empty)."""
        keys = [
            KV("split.no", GGUFValueType.UINT16, split),
            KV("split.count", GGUFValueType.UINT16, self.n_splits),
            KV("split.tensors.count", GGUFValueType.INT32, len(self.tensors)),
        ]
        if self.n_splits <= 1:
            return list(self.kv)
        return (list(self.kv) if split == 0 else []) + keys


def source_nbytes(ref: TensorRef) -> int:
    return ref.nrows * row_bytes(ref.type, ref.n_per_row)


# ---------------------------------------------------------------------------------------------
# parsing, as llama-quantize parses its command line


def parse_file_type(text: str) -> tuple[FType, str]:
    """try_parse_ftype: a name (any case) or a number; returns (ftype, canonical name).
    COPY returns (F32, "COPY"): the caller sets QuantizeOptions.only_copy."""
    upper = text.upper()
    if upper in FILE_TYPES:
        return FType(FILE_TYPES[upper][0]), upper
    m = re.match(r"\s*[+-]?\d+", text)  # std::stoi: leading blanks, a sign, digits, rest ignored
    if m:
        number = int(m.group())
        for name, (ftype, _) in FILE_TYPES.items():
            if ftype == number:
                return FType(ftype), name
    raise PlanError(f"unknown file type '{text}'; run `pyquantize types` for the list (e.g. Q4_K_M, Q8_0, F16)")


def parse_tensor_type(text: str) -> T:
    """parse_ggml_type: a ggml type name in any case (q4_k, Q8_0, iq4_nl, bf16, ...)."""
    for qtype in T:
        if qtype.name.lower() == text.lower():
            return qtype
    if text.lower() == "q2_0":
        raise PlanError("type Q2_0 needs a gguf package that knows GGML type 42; the installed one does not")
    raise PlanError(f"unknown tensor type '{text}': use a ggml type name such as q4_K, q8_0, iq4_nl, f16")


def parse_tensor_type_option(text: str) -> tuple[str, T]:
    """--tensor-type NAME=TYPE. The name is a regex searched in each tensor name; llama-quantize
    lower-cases it before compiling."""
    pattern, sep, type_name = text.partition("=")
    if not sep:
        raise PlanError(f"--tensor-type '{text}': expected NAME=TYPE, e.g. attn_v=q8_0")
    if not pattern:
        raise PlanError(f"--tensor-type '{text}': the tensor name (a regex) before '=' is missing")
    if not type_name:
        raise PlanError(f"--tensor-type '{text}': the type after '=' is missing")
    pattern = pattern.lower()
    _compile(pattern)
    return pattern, parse_tensor_type(type_name)


def read_tensor_type_file(path: str | Path) -> list[tuple[str, T]]:
    """--tensor-type-file: NAME=TYPE entries separated by spaces or newlines."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PlanError(f"--tensor-type-file {path}: cannot read it ({exc.strerror})") from None
    return [parse_tensor_type_option(word) for word in text.split()]


def parse_prune_layers(text: str) -> list[int]:
    """--prune-layers 1,5,7: sorted, without duplicates."""
    layers = []
    for word in text.split(","):
        m = re.match(r"\s*[+-]?\d+", word)
        if not m or int(m.group()) < 0:
            raise PlanError(f"--prune-layers: invalid layer number '{word}'; expected e.g. 3,5,7")
        layers.append(int(m.group()))
    return sorted(set(layers))


def parse_override_kv(text: str) -> KV:
    """--override-kv KEY=TYPE:VALUE (int, float, bool or str), as llama-quantize writes it:
    int as UINT32 (of the absolute value), float as FLOAT32."""
    key, sep, rest = text.partition("=")
    if not sep or len(key) >= 128:
        raise PlanError(f"--override-kv '{text}': expected KEY=TYPE:VALUE with a key under 128 characters")
    kind, colon, value = rest.partition(":")
    if not colon or kind not in ("int", "float", "bool", "str"):
        raise PlanError(f"--override-kv '{text}': TYPE must be int, float, bool or str, e.g. general.name=str:tiny")
    if kind == "int":
        m = re.match(r"\s*[+-]?\d+", value)  # atol
        number = int(m.group()) if m else 0
        return KV(key, GGUFValueType.UINT32, abs(number) & 0xFFFFFFFF)
    if kind == "float":
        m = re.match(r"\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf(inity)?|nan)", value, re.I)  # atof
        return KV(key, GGUFValueType.FLOAT32, float(m.group()) if m else 0.0)
    if kind == "bool":
        if value not in ("true", "false"):
            raise PlanError(f"--override-kv '{text}': a bool is true or false")
        return KV(key, GGUFValueType.BOOL, value == "true")
    if len(value) > 127:
        raise PlanError(f"--override-kv '{text}': a str value is at most 127 characters")
    return KV(key, GGUFValueType.STRING, value)


def imatrix_kv(file: str, datasets: list[str], n_entries: int, n_chunks: int) -> list[KV]:
    """The quantize.imatrix.* pairs llama-quantize appends to the overrides (after --override-kv)."""
    out = [KV("quantize.imatrix.file", GGUFValueType.STRING, _c_str127(file))]
    if datasets:
        out.append(KV("quantize.imatrix.dataset", GGUFValueType.STRING, _c_str127(datasets[0])))
    out.append(KV("quantize.imatrix.entries_count", GGUFValueType.UINT32, n_entries & 0xFFFFFFFF))
    if n_chunks > 0:
        out.append(KV("quantize.imatrix.chunks_count", GGUFValueType.UINT32, n_chunks & 0xFFFFFFFF))
    return out


def _c_str127(text: str) -> str | bytes:
    """strncpy into char[128]: the first 127 bytes. Should that cut a UTF-8 sequence, llama.cpp
    writes the cut bytes as they are, so the value stays bytes (the writer takes either)."""
    raw = text.encode()[:127]
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PlanError(f"--tensor-type pattern '{pattern}' is not a valid regular expression ({exc})") from None


# ---------------------------------------------------------------------------------------------
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


def ftype_name(ftype: int) -> str:
    try:
        name = FType(ftype & ~FTYPE_GUESSED).name
    except ValueError:
        name = f"file type {ftype}"
    return name + (" (guessed)" if ftype & FTYPE_GUESSED else "")


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


# ---------------------------------------------------------------------------------------------
# pruning and metadata


def _remap_layers(order: list[TensorRef], prune: list[int]) -> tuple[dict[str, str], dict[int, str], int]:
    """remap_layer over the weights_map order: new name per kept tensor ('' when pruned), the
    block mapping (original -> new id, '' when pruned) and the new block count."""
    names: dict[str, str] = {}
    mapped: dict[int, str] = {}
    next_id = 0
    for ref in order:
        if not prune:
            names[ref.name] = ref.name
            continue
        m = re.search(r"blk\.(\d+)\.", ref.name)
        if not m:
            names[ref.name] = ref.name
            continue
        blk = int(m.group(1))
        if blk not in mapped:
            if blk in prune:
                mapped[blk] = ""
            elif blk < prune[0]:
                mapped[blk] = str(blk)
                next_id = blk + 1
            else:
                mapped[blk] = str(next_id)
                next_id += 1
        new = mapped[blk]
        names[ref.name] = "" if not new else ref.name[:m.start(1)] + new + ref.name[m.end(1):]
    return names, mapped, next_id


def _remap_imatrix(name: str, mapped: dict[int, str]) -> str:
    """remap_imatrix: the imatrix entry of a renamed tensor is under its original layer."""
    if not mapped:
        return name
    m = re.search(r"blk\.(\d+)\.", name)
    if not m:
        return name
    for original, new in sorted(mapped.items()):
        if new == m.group(1):
            return name[:m.start(1)] + str(original) + name[m.end(1):]
    raise PlanError(f"{name}: no original layer maps to block {m.group(1)} (imatrix remapping)")


def filter_imatrix(names: Iterable[str], include: list[str], exclude: list[str]) -> list[str]:
    """prepare_imatrix: --exclude-weights drops entries whose name contains any of the strings,
    --include-weights keeps only entries containing one of them."""
    kept = list(names)
    for part in exclude:
        kept = [n for n in kept if part not in n]
    if include:
        kept = [n for n in kept if any(part in n for part in include)]
    return kept


def output_kv(source: Source, ftype: int, options: QuantizeOptions, block_count: int | None,
              n_imatrix_entries: int = 0) -> list[KV]:
    """llama-quantize's metadata: input pairs in order, then quantization_version and file_type
    (gguf_set_val moves an existing key to the end), split keys removed, then the overrides
    (--override-kv in order, then quantize.imatrix.*), then the pruned block count."""
    out: list[KV] = [kv for kv in source.kv]

    def set_kv(new: KV) -> None:
        out[:] = [kv for kv in out if kv.key != new.key]
        out.append(new)

    set_kv(KV("general.quantization_version", GGUFValueType.UINT32, GGML_QNT_VERSION))
    set_kv(KV("general.file_type", GGUFValueType.UINT32, int(ftype) & 0xFFFFFFFF))
    out[:] = [kv for kv in out if kv.key not in ("split.no", "split.count", "split.tensors.count")]
    overrides = list(options.kv_overrides)
    if n_imatrix_entries and options.imatrix_file:
        overrides += imatrix_kv(options.imatrix_file, options.imatrix_datasets, n_imatrix_entries, options.imatrix_chunks)
    for kv in overrides:
        set_kv(kv)
    if block_count is not None:
        arch = source.kv_value("general.architecture", "llama")
        set_kv(KV(f"{arch}.block_count", GGUFValueType.UINT32, block_count))
    return out


# ---------------------------------------------------------------------------------------------
# the plan


def make_plan(source: Source, options: QuantizeOptions,
              imatrix_names: Mapping[str, int] | Iterable[str] | None = None) -> Plan:
    """One decision per tensor, in output order.

    imatrix_names: the imatrix entries (before --include/--exclude-weights filtering), either
    names or a mapping name -> number of values (or the values), and then sizes are checked as
    llama.cpp does.
    """
    if options.include_weights and options.exclude_weights:
        raise PlanError("--include-weights and --exclude-weights cannot be used together; keep one")

    info, notes = model_info(source, options.kv_overrides)
    generic = not info.known

    if options.only_copy:
        ftype = source_ftype(source, options.kv_overrides)
        default_type = T.F32
        ftype_enum = FType.F32
    else:
        try:
            ftype_enum = FType(int(options.ftype))
        except ValueError:
            raise PlanError(f"invalid file type {options.ftype}: see FILE_TYPES for the ones llama-quantize makes") from None
        if ftype_enum not in DEFAULT_TYPE:
            raise PlanError(f"file type {ftype_enum.name} is not one llama-quantize can produce")
        default_type = DEFAULT_TYPE[ftype_enum]
        if default_type is None:
            raise PlanError(f"file type {ftype_enum.name} needs a gguf package that knows its ggml type; "
                            "the installed one does not (upgrade gguf)")
        ftype = int(ftype_enum)

    # imatrix entries left after --include/--exclude-weights; none left means no imatrix at all
    sizes: dict[str, int] | None = None
    if imatrix_names is None:
        entries: list[str] = []
    elif isinstance(imatrix_names, Mapping):
        # name -> number of values, or name -> the values themselves
        sizes = {k: v if isinstance(v, int) else int(getattr(v, "size", None) or len(v)) for k, v in imatrix_names.items()}
        entries = filter_imatrix(sizes, options.include_weights, options.exclude_weights)
    else:
        entries = filter_imatrix(imatrix_names, options.include_weights, options.exclude_weights)
    imatrix = set(entries)
    has_imatrix = bool(imatrix)

    patterns = [(_compile(p), t) for p, t in options.tensor_types]

    # weights_map order; pruning renames and drops there, before any --keep-split sorting
    order = llama_order(source.tensors)
    prune = sorted(set(options.prune_layers))
    if prune:
        layers = {il for il in (_sscanf_layer(t.name) for t in order) if il is not None}
        missing = [il for il in prune if il not in layers]
        if missing:
            have = f"0..{max(layers)}" if layers else "none"
            raise PlanError(f"--prune-layers {','.join(map(str, missing))}: no such layer (the model has layers {have})")
    new_names, mapped, blk_id = _remap_layers(order, prune)
    kept = [ref for ref in order if new_names[ref.name]]
    if options.keep_split:
        kept.sort(key=lambda ref: (ref.split, ref.offset))

    qs = _State(info, options, has_imatrix, patterns)
    cats = {}
    for ref in kept:
        name = new_names[ref.name]
        cat = category(name, generic)
        cats[ref.name] = cat
        if _is_attn_v(cat):
            qs.n_attention_wv += 1
        if cat == Cat.OUTPUT:
            qs.has_tied_embeddings = False

    decisions: list[TensorPlan] = []
    missing_imatrix: list[str] = []
    wrong_size: list[str] = []
    errors: list[str] = []
    requantize: list[str] = []
    for ref in kept:
        name = new_names[ref.name]
        split = ref.split if options.keep_split else 0
        why_not = why_not_quantized(name, ref.ne, options, info.arch)
        if why_not is not None:
            if generic and not options.only_copy:
                why_not = "generic: " + why_not
            decisions.append(TensorPlan(name, ref, ref.type, why_not, split=split))
            continue
        qtype, why = _get_type(qs, ref, name, default_type, ftype_enum, cats[ref.name])
        if generic:
            why = "generic: " + why
        requires = tensor_requires_imatrix(name, qtype, ftype, cats[ref.name])
        reason = why if "->" in why else f"{why} -> {qtype.name}"
        tensor_plan = TensorPlan(name, ref, qtype, reason, requires_imatrix=requires, split=split)
        if not has_imatrix:
            if requires:  # llama.cpp checks this before quantizing anything
                missing_imatrix.append(name)
        elif tensor_plan.quantize:
            entry = _remap_imatrix(name, mapped)
            if entry in imatrix:
                ne2 = ref.ne[2] if len(ref.ne) > 2 else 1
                want = ref.ne[0] * ne2
                if sizes is not None and sizes[entry] != want:
                    if category(name) != Cat.TOKEN_EMBD:
                        wrong_size.append(f"{name}: imatrix entry '{entry}' has {sizes[entry]} values, the tensor "
                                          f"needs {want}; the imatrix was made for another model")
                    # llama.cpp ignores a token_embd entry of the wrong size
                else:
                    tensor_plan.imatrix_name = entry
            if requires and not tensor_plan.imatrix_name:
                missing_imatrix.append(name)
        if tensor_plan.quantize and ref.ne[0] % type_sizes(qtype)[0]:
            # only an explicit --output-tensor-type / --token-embedding-type skips the fallback
            errors.append(f"{name}: row {ref.ne[0]} is not a multiple of {type_sizes(qtype)[0]} ({qtype.name}); "
                          f"llama.cpp aborts here: choose a type whose block size divides {ref.ne[0]}")
        if tensor_plan.quantize and ref.type not in _NOT_QUANTIZED and not options.allow_requantize:
            requantize.append(f"{name} ({ref.type.name})")
        decisions.append(tensor_plan)

    # what would stop llama.cpp (at its first offending tensor) once it starts writing; a dry run
    # only warns about the imatrix, as llama.cpp's does
    errors = wrong_size + errors
    warnings: list[str] = []
    if missing_imatrix:
        shown = ", ".join(missing_imatrix[:5]) + (f" and {len(missing_imatrix) - 5} more" if len(missing_imatrix) > 5 else "")
        where = "has no entry for" if has_imatrix else "is required (--imatrix FILE) for"
        message = (f"{ftype_name(ftype)}: an importance matrix {where} {len(missing_imatrix)} tensor(s) "
                   f"({shown}); without one these very low-bit types give garbage")
        errors.append(message)
        warnings.append(message)
    if requantize:
        errors.append(f"{len(requantize)} tensor(s) are already quantized ({', '.join(requantize[:3])}"
                      f"{' ...' if len(requantize) > 3 else ''}); pass --allow-requantize to requantize them")
    if qs.n_fallback:
        warnings.append(f"{qs.n_fallback} of {len(source.tensors)} tensor(s) required fallback quantization")

    n_splits = 1
    if options.keep_split:
        n_splits = max([t.split + 1 for t in decisions] + [1])
    block_count = blk_id if prune else None
    n_entries = len(imatrix) if has_imatrix else 0
    return Plan(decisions, output_kv(source, ftype, options, block_count, n_entries), ftype,
                n_splits=n_splits, n_fallback=qs.n_fallback,
                n_elements=sum(t.n_elements for t in source.tensors), has_imatrix=has_imatrix,
                block_count=block_count, arch=info.arch, generic=generic, notes=notes, warnings=warnings,
                errors=errors, missing_imatrix=missing_imatrix)


def plan_to_json(plan: Plan) -> dict:
    """The --dry-run --json document: one entry per tensor in output order, then the totals.
    bpw divides by every source tensor's weights (pruned ones too), as llama-quantize does."""
    tensors = [{
        "name": t.name,
        "shape": list(t.ne),
        "from": t.ref.type.name,
        "to": t.type.name,
        "reason": t.reason,
        "bytes": t.nbytes,
        "bytes_in": source_nbytes(t.ref),
        **({"imatrix": t.imatrix_name} if t.imatrix_name else {}),
        **({"split": t.split} if plan.n_splits > 1 else {}),
    } for t in plan.tensors]
    n = plan.n_elements
    bytes_in, bytes_out = plan.bytes_in, plan.bytes_out
    return {
        "file_type": plan.ftype,
        "file_type_name": ftype_name(plan.ftype),
        "arch": plan.arch,
        "generic": plan.generic,
        "notes": list(plan.notes),
        "tensors": tensors,
        "n_tensors": len(tensors),
        "n_elements": n,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "bpw_in": round(bytes_in * 8 / n, 4) if n else 0.0,
        "bpw_out": round(bytes_out * 8 / n, 4) if n else 0.0,
        "n_fallback": plan.n_fallback,
        "n_splits": plan.n_splits,
        "has_imatrix": plan.has_imatrix,
        "warnings": list(plan.warnings),
        "errors": list(plan.errors),
    }
