"""llama-quantize's options: QuantizeOptions and the parsing of its command-line values
(tensor types, --tensor-type, --tensor-type-file, --prune-layers, --override-kv)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from kernels.gguf_compat import GGMLQuantizationType as T, GGUFValueType

from ..errors import PlanError
from ..formats.values import KV


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
    """--tensor-type-file: NAME=TYPE entries separated by spaces or newlines (UTF-8 text)."""
    from ..formats.output import check_input_file

    try:
        check_input_file(Path(path), "text file", PlanError)
    except PlanError as exc:
        raise PlanError(f"--tensor-type-file {path}: cannot read it ({str(exc).removeprefix(f'{path}: ')})") from None
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise PlanError(f"--tensor-type-file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise PlanError(f"--tensor-type-file {path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start}); give NAME=TYPE lines") from None
    try:
        return [parse_tensor_type_option(word) for word in text.split()]
    except PlanError as exc:
        raise PlanError(f"--tensor-type-file {path}: {exc}") from None


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
    if key == "general.alignment":
        # gguf_set_val_* aborts on any other: llama.cpp reads only a u32 power of two here
        m = re.match(r"\s*[+-]?\d+", value) if kind == "int" else None
        align = abs(int(m.group())) & 0xFFFFFFFF if m else 0
        if kind != "int" or align == 0 or align & (align - 1):
            raise PlanError(f"--override-kv '{text}': general.alignment must be int: and a power of two "
                            "(llama.cpp refuses any other)")
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

