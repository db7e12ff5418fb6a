"""llama.cpp's file types (llama_ftype) and ggml type sizes: names, numbers, default types,
the file type of an input as llama_model_loader guesses it."""

from __future__ import annotations

import enum
import re

from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType as T

from ..errors import PlanError

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



def ftype_name(ftype: int) -> str:
    try:
        name = FType(ftype & ~FTYPE_GUESSED).name
    except ValueError:
        name = f"file type {ftype}"
    return name + (" (guessed)" if ftype & FTYPE_GUESSED else "")


