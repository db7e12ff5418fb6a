"""GGUF reading: the header, metadata and tensor infos of a file, in one pass over a read-only
memory map (gguf.cpp's gguf_init_from_file, without the tensor data).

The reader validates as gguf.cpp does and refuses what it refuses, with its reason, in one line
(tests/test_hostile_reference.py compares the two on the whole adversarial corpus); anything
quoted from the file is a short, escaped excerpt."""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import SourceError
from .output import check_input_file
from .values import KV

GGUF_MAGIC = b"GGUF"
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFLayout:
    """Where everything is in a GGUF file: read in one pass, no value decoded until asked."""

    version: int
    kv: list[KV]
    tensor_infos: list[tuple[str, tuple[int, ...], int, int]]  # (name, ne, ggml type, offset in data)
    tensor_info_offset: int
    alignment: int
    data_offset: int
    buf: mmap.mmap


def read_gguf_layout(path: str | Path) -> GGUFLayout:
    """Parse a GGUF header, metadata and tensor infos from a read-only memory map, refusing what
    llama.cpp's gguf_init_from_file refuses, for the same reason, in one line.

    Metadata values stay undecoded (``KV.raw`` holds their exact bytes; ``KV.get()`` decodes on
    demand): a 150k-token vocabulary costs a walk over its string lengths, not an object per
    string. Raises SourceError naming what is wrong."""
    path = Path(path)
    check_input_file(path, "GGUF file", SourceError)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        version, kv, infos, info_offset, alignment, data_offset = _parse_layout(buf, len(buf))
    except _Corrupt as exc:
        raise SourceError(f"{path}: {exc}") from None
    return GGUFLayout(version, kv, infos, info_offset, alignment, data_offset, buf)


def _decoder(buf, vtype: int, pos: int) -> Callable[[], Any]:
    return lambda: decode_value(buf, vtype, pos)[0]


# ---- validating layout reader: refuses what llama.cpp's gguf_init_from_file refuses -----------------
# (ggml/src/gguf.cpp, gguf_init_from_reader), with its reasons, one line each, plus what
# llama_model_loader refuses about the tensor data (data past the end of the file).

GGUF_DEFAULT_ALIGNMENT = 32
GGUF_MAX_VERSION = 3
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # names are at most 63 bytes
GGML_TYPE_COUNT = 43
GGUF_MAX_STRING_LENGTH = 1 << 30
GGUF_MAX_ARRAY_ELEMENTS = 1 << 30
INT64_MAX = (1 << 63) - 1
SIZE_MAX = (1 << 64) - 1
_TYPE_NAME = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "str",
              9: "arr", 10: "u64", 11: "i64", 12: "f64"}
_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def quote(raw: bytes, limit: int = 48) -> str:
    """A short, escaped excerpt of bytes read from a file, for an error message."""
    text = raw[:limit].decode("utf-8", errors="backslashreplace")
    text = text.encode("unicode_escape").decode("ascii")
    return f"'{text}'" + ("..." if len(raw) > limit else "")


class _Corrupt(Exception):
    """Raised inside the reader; becomes one SourceError line naming the file."""


def _parse_layout(buf, size: int):
    """Walk the header, metadata and tensor infos of a GGUF buffer, checking everything gguf.cpp
    checks. Returns (version, kv, infos, info_offset, alignment, data_offset)."""
    unpack_from = struct.unpack_from

    def need(pos: int, n: int, what: str) -> None:
        if pos + n > size:
            raise _Corrupt(f"truncated: the file ends inside {what} (byte {pos} + {n} > {size})")

    def read_string(pos: int, what: str) -> tuple[bytes, int]:
        need(pos, 8, f"the length of {what}")
        (n,) = unpack_from("<Q", buf, pos)
        pos += 8
        if n > GGUF_MAX_STRING_LENGTH:
            raise _Corrupt(f"{what}: string length {n} exceeds the maximum {GGUF_MAX_STRING_LENGTH}")
        if pos + n > size:
            raise _Corrupt(f"truncated: {what}: string length {n} exceeds the remaining {size - pos} bytes")
        return bytes(buf[pos:pos + n]), pos + n

    def skip_strings(pos: int, count: int, what: str) -> int:
        for _ in range(count):
            (n,) = unpack_from("<Q", buf, pos) if pos + 8 <= size else (None,)
            if n is None:
                raise _Corrupt(f"truncated: the file ends inside {what}")
            if n > GGUF_MAX_STRING_LENGTH:
                raise _Corrupt(f"{what}: string length {n} exceeds the maximum {GGUF_MAX_STRING_LENGTH}")
            pos += 8 + n
            if pos > size:
                raise _Corrupt(f"truncated: a string of {what} runs past the end of the file")
        return pos

    if size < 4:
        raise _Corrupt("file is empty: not a GGUF file" if size == 0 else
                       f"file is truncated ({size} bytes): not a GGUF file")
    magic = bytes(buf[0:4])
    if magic != GGUF_MAGIC:
        raise _Corrupt(f"not a GGUF file (magic {quote(magic)}, expected 'GGUF')")
    need(4, 4, "the header (version)")
    (version,) = unpack_from("<I", buf, 4)
    if version == 0:
        raise _Corrupt("bad GGUF version 0: GGUF version 0 is not supported")
    if version & 0xFFFF == 0:
        raise _Corrupt(f"GGUF version {version} is not supported: it is extremely large; the file's byte "
                       "order does not match this machine's (a big-endian file?)")
    if version == 1:
        raise _Corrupt("GGUF version 1 is not supported any more; convert the model again with a current llama.cpp")
    if version > GGUF_MAX_VERSION:
        raise _Corrupt(f"GGUF version {version} is not supported (only 2 and 3)")
    need(8, 16, "the header (tensor and metadata counts)")
    n_tensors, n_kv = unpack_from("<qq", buf, 8)
    if n_tensors < 0 or n_tensors > SIZE_MAX // 352:
        raise _Corrupt(f"number of tensors is {n_tensors}, which is not a valid count")
    if n_kv < 0 or n_kv > SIZE_MAX // 88:
        raise _Corrupt(f"number of key-value pairs is {n_kv}, which is not a valid count")
    # the smallest pair (1-byte key, u8 value) takes 14 bytes, the smallest tensor info 24:
    # a count that cannot fit is a lie found now, not after a long walk
    if 24 + n_kv * 14 + n_tensors * 24 > size:
        raise _Corrupt(f"truncated or corrupt: {n_kv} key-value pairs and {n_tensors} tensors cannot fit "
                       f"in {size} bytes")

    pos = 24
    kv: list[KV] = []
    seen_keys: set[bytes] = set()
    for i in range(n_kv):
        start = pos
        raw_key, pos = read_string(pos, f"key {i}")
        if not raw_key:
            raise _Corrupt(f"key {i} is empty")
        if raw_key in seen_keys:
            raise _Corrupt(f"duplicate key {quote(raw_key)} (key {i}): metadata key appears twice")
        seen_keys.add(raw_key)
        key = raw_key.decode("utf-8", errors="replace")
        need(pos, 4, f"the type of key {quote(raw_key)}")
        (vtype,) = unpack_from("<I", buf, pos)
        pos += 4
        value_pos = pos
        item_type = None
        if vtype == _ARRAY:
            need(pos, 12, f"the array header of key {quote(raw_key)}")
            item, count = unpack_from("<IQ", buf, pos)
            pos += 12
            if item not in _TYPE_NAME or item == _ARRAY:
                raise _Corrupt(f"key {quote(raw_key)} has invalid GGUF type {_c_int(item)}")
            if count > GGUF_MAX_ARRAY_ELEMENTS:
                raise _Corrupt(f"key {quote(raw_key)}: array of {count} elements exceeds the maximum "
                               f"{GGUF_MAX_ARRAY_ELEMENTS}")
            if item == _STRING:
                if count * 8 > size - pos:
                    raise _Corrupt(f"truncated: key {quote(raw_key)}: {count} strings cannot fit in the "
                                   f"remaining {size - pos} bytes")
                pos = skip_strings(pos, count, f"key {quote(raw_key)}")
            else:
                nbytes = count * _SIZE[item]
                if nbytes > size - pos:
                    raise _Corrupt(f"truncated: key {quote(raw_key)}: an array of {count} {_TYPE_NAME[item]} "
                                   f"exceeds the remaining {size - pos} bytes")
                pos += nbytes
            item_type = GGUFValueType(item)
        elif vtype == _STRING:
            _, pos = read_string(pos, f"the value of key {quote(raw_key)}")
        elif vtype in _SIZE:
            need(pos, _SIZE[vtype], f"the value of key {quote(raw_key)}")
            pos += _SIZE[vtype]
        else:
            raise _Corrupt(f"key {quote(raw_key)} has invalid GGUF type {_c_int(vtype)}")
        kv.append(KV(key, GGUFValueType(vtype), item_type=item_type, raw=bytes(buf[start:pos]),
                     _decode=_decoder(buf, vtype, value_pos)))

    alignment = GGUF_DEFAULT_ALIGNMENT
    for pair in kv:
        if pair.key == "general.alignment":
            if pair.vtype != GGUFValueType.UINT32:
                got = f"arr[{_TYPE_NAME[int(pair.item_type)]}]" if pair.item_type is not None else _TYPE_NAME[int(pair.vtype)]
                raise _Corrupt(f"key 'general.alignment' must be of type u32 but is {got}")
            alignment = int(pair.get())
            if alignment == 0 or alignment & (alignment - 1):
                raise _Corrupt(f"general.alignment {alignment} is not a power of 2")

    info_offset = pos
    infos = []
    seen_names: set[bytes] = set()
    for i in range(n_tensors):
        raw_name, pos = read_string(pos, f"the name of tensor {i}")
        if len(raw_name) >= GGML_MAX_NAME:
            raise _Corrupt(f"tensor name {i} is too long: {len(raw_name)} bytes ({quote(raw_name, 24)}); "
                           f"llama.cpp allows at most {GGML_MAX_NAME - 1}")
        if raw_name in seen_names:
            raise _Corrupt(f"duplicate tensor name {quote(raw_name)} (tensor {i}): tensor appears twice")
        seen_names.add(raw_name)
        name = raw_name.decode("utf-8", errors="replace")
        need(pos, 4, f"the dimensions of tensor {quote(raw_name)}")
        (n_dims,) = unpack_from("<I", buf, pos)
        pos += 4
        if n_dims > GGML_MAX_DIMS:
            raise _Corrupt(f"tensor {quote(raw_name)} has invalid number of dimensions: {n_dims} > {GGML_MAX_DIMS}")
        need(pos, 8 * n_dims, f"the shape of tensor {quote(raw_name)}")
        ne = list(unpack_from(f"<{n_dims}q", buf, pos)) if n_dims else []
        pos += 8 * n_dims
        for j, d in enumerate(ne):
            if d < 0:
                raise _Corrupt(f"tensor {quote(raw_name)} dimension {j} has a negative number of elements: {d}")
        full = ne + [1] * (GGML_MAX_DIMS - len(ne))
        n_elements = full[0]
        for d in full[1:]:
            if d > 1 and INT64_MAX // d < n_elements:
                raise _Corrupt(f"tensor {quote(raw_name)} has shape {tuple(full)} whose element count would "
                               "overflow int64")
            n_elements *= d
        need(pos, 12, f"the type and offset of tensor {quote(raw_name)}")
        ttype, offset = unpack_from("<iQ", buf, pos)
        pos += 12
        if ttype < 0 or ttype >= GGML_TYPE_COUNT:
            raise _Corrupt(f"tensor {quote(raw_name)} has invalid ggml type {ttype}; it should be in "
                           f"[0, {GGML_TYPE_COUNT})")
        sizes = _QUANT_SIZES_BY_CODE.get(ttype)
        if sizes is None:
            raise _Corrupt(f"tensor {quote(raw_name)} has ggml type {ttype}, which llama.cpp no longer "
                           "supports (block size 0)")
        block_size, type_size = sizes
        if full[0] % block_size:
            raise _Corrupt(f"tensor {quote(raw_name)} of type {_type_name(ttype)} has {full[0]} elements per row, "
                           f"not a multiple of its block size ({block_size})")
        if n_elements // block_size > SIZE_MAX // type_size:
            raise _Corrupt(f"tensor {quote(raw_name)} with shape {tuple(full)} has a size in bytes > {SIZE_MAX}")
        # a 0-dimensional tensor is one element, as ggml reads it
        infos.append((name, tuple(int(d) for d in ne) if ne else (1,), int(ttype), int(offset)))

    data_offset = (pos + alignment - 1) // alignment * alignment
    if infos and data_offset > size:
        raise _Corrupt(f"truncated: the data section would start at byte {data_offset}, the file has {size}")
    # gguf.cpp requires the offsets to be exactly the running sum of the padded tensor sizes
    expected = 0
    for name, ne, ttype, offset in infos:
        if offset != expected:
            raise _Corrupt(f"tensor {quote(name.encode())} has offset {offset}, expected {expected} (tensor "
                           "offsets must follow each other in order, aligned to general.alignment)")
        block_size, type_size = _QUANT_SIZES_BY_CODE[ttype]
        nbytes = _n_elements(ne) // block_size * type_size
        expected += (nbytes + alignment - 1) // alignment * alignment
        if expected > SIZE_MAX:
            raise _Corrupt(f"tensor {quote(name.encode())}: the data section size overflows")
    return int(version), kv, infos, info_offset, alignment, data_offset


def _n_elements(ne) -> int:
    n = 1
    for d in ne:
        n *= int(d)
    return n


def _c_int(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def _type_name(code: int) -> str:
    try:
        return GGMLQuantizationType(code).name
    except ValueError:
        return str(code)


_QUANT_SIZES_BY_CODE = {int(t): s for t, s in GGML_QUANT_SIZES.items()}


def decode_value(buf, vtype: int, pos: int) -> tuple[Any, int]:
    """One metadata value at `pos` as Python data (arrays as lists); returns it and the end."""
    if vtype == _STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace"), pos + 8 + n
    if vtype == _ARRAY:
        item, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item in _NUMPY:
            arr = np.frombuffer(buf, dtype=_NUMPY[item], count=count, offset=pos)
            return arr.tolist(), pos + arr.nbytes
        out = []
        for _ in range(count):
            value, pos = decode_value(buf, item, pos)
            out.append(value)
        return out, pos
    fmt = _SCALAR[vtype]
    return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)


# llama_model_base::load_hparams reads these for every architecture (llama-model.cpp), typed: a
# present key of another type makes llama-quantize (and every llama.cpp tool) stop with "key ...
# has wrong type ...". "arr" marks get_key_or_arr keys, where an array of u32/i32 is also fine.
_HPARAM_TYPES = {
    "context_length": "u32", "embedding_length": "u32", "block_count": "u32", "expert_count": "u32",
    "expert_group_count": "u32", "expert_group_used_count": "u32", "nextn_predict_layers": "u32",
    "rope.dimension_count": "u32", "rope.freq_base": "f32", "rope.scaling.original_context_length": "u32",
    "attention.layer_norm_rms_epsilon": "f32", "attention.layer_norm_epsilon": "f32",
    "expert_used_count": "arr", "feed_forward_length": "arr", "attention.head_count": "arr",
    "attention.head_count_kv": "arr",
}
_VTYPE_OF = {"u32": GGUFValueType.UINT32, "f32": GGUFValueType.FLOAT32, "str": GGUFValueType.STRING}


def check_metadata_types(kv: list[KV], overrides: list[KV] | None = None, path: Path | str = "") -> None:
    """Refuse the metadata llama.cpp's model loader refuses: general.architecture that is not a
    string, and the common hyper-parameters of another type than llama.cpp reads them as. An
    --override-kv of the right type replaces the stored value, as in llama.cpp."""
    over = {o.key: o for o in overrides or []}
    by_key = {pair.key: pair for pair in kv}
    prefix = f"{path}: " if path else ""

    def type_name(pair: KV) -> str:
        if pair.vtype == GGUFValueType.ARRAY:
            return f"arr[{_TYPE_NAME.get(int(pair.item_type), '?')}]" if pair.item_type is not None else "arr"
        return _TYPE_NAME.get(int(pair.vtype), str(int(pair.vtype)))

    arch_kv = by_key.get("general.architecture")
    if arch_kv is not None and arch_kv.vtype != GGUFValueType.STRING:
        raise SourceError(f"{prefix}key general.architecture has wrong type {type_name(arch_kv)} but expected "
                          "type str (llama.cpp refuses the model)")
    if arch_kv is None:
        return
    arch = arch_kv.get()
    for suffix, want in _HPARAM_TYPES.items():
        key = f"{arch}.{suffix}"
        pair = over.get(key) or by_key.get(key)
        if pair is None:
            continue
        if want == "arr":
            ok = pair.vtype == GGUFValueType.UINT32 or (
                pair.vtype == GGUFValueType.ARRAY and pair.item_type in (GGUFValueType.UINT32, GGUFValueType.INT32))
            expected = "u32 (or an array of u32/i32)"
        else:
            ok = pair.vtype == _VTYPE_OF[want]
            expected = want
        if not ok:
            raise SourceError(f"{prefix}key {key} has wrong type {type_name(pair)} but expected type {expected} "
                              f"(llama.cpp refuses the model); fix it, e.g. --override-kv {key}="
                              f"{'float' if want == 'f32' else 'int'}:VALUE")
