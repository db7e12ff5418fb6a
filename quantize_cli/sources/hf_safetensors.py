"""The safetensors side of a Hugging Face checkpoint: which shards hold which tensors, and each
tensor's bytes, memory-mapped on their own, read only when asked for.

`read_shards` checks the shards and model.safetensors.index.json against each other and lists
every tensor in the converter's order; an `Entry` is one of them, not yet read. FP8 checkpoints
(quantization_config.quant_method "fp8") are dequantized as the converter's ModelBase.dequant_model
does: `attach_fp8_scales` pairs each weight with its `weight_scale_inv`, and the weight's `values()`
are then float32 `weight.float() * scale`, the scale repeated over its blocks.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import SourceError, excerpt
from ..formats.output import check_input_file
from .hf_vocab import _read_json

# safetensors dtype -> (numpy dtype of the stored elements, ggml type we expose)
DTYPES: dict[str, tuple[np.dtype, GGMLQuantizationType]] = {
    "F32": (np.dtype("<f4"), GGMLQuantizationType.F32),
    "F16": (np.dtype("<f2"), GGMLQuantizationType.F16),
    "BF16": (np.dtype("<u2"), GGMLQuantizationType.BF16),
    "F64": (np.dtype("<f8"), GGMLQuantizationType.F32),  # the converter narrows F64 to F32 too
}


@dataclass
class Entry:
    """One tensor of the checkpoint, not yet read."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: Path
    offset: int
    nbytes: int
    scale: Entry | None = None              # FP8: the weight's scale_inv tensor
    block: tuple[int, ...] | None = None    # FP8: quantization_config's weight_block_size

    def raw(self) -> np.ndarray:
        """The stored elements (BF16 as uint16 bits, U8 and FP8 as uint8), shaped, memory-mapped."""
        np_dtype = DTYPES[self.dtype][0] if self.dtype in DTYPES else np.dtype(np.uint8)
        return map_bytes(self.shard, self.offset, self.nbytes).view(np_dtype).reshape(self.shape)

    def values(self) -> np.ndarray:
        """raw(), except F64 narrowed to float32 and a scaled (FP8) weight dequantized to float32,
        as the converter gives them to the model's tensor transforms."""
        if self.scale is not None:
            return dequant_simple(self, self.scale, self.block)
        if self.dtype == "F64":
            return self.raw().astype(np.float32)
        return self.raw()


def _e4m3_table() -> np.ndarray:
    """float8_e4m3fn's 256 codes as float32 (exactly; 0x7F and 0xFF are NaN): sign, 4 exponent bits
    with bias 7 (0: subnormal), 3 mantissa bits, no infinities."""
    c = np.arange(256)
    e, m = (c >> 3) & 0xF, (c & 7).astype(np.float64)
    v = np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * 2.0 ** (e - 7.0))
    v = np.where((c & 0x7F) == 0x7F, np.nan, v)
    return np.where(c >> 7, -v, v).astype(np.float32)


E4M3 = _e4m3_table()
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")


def as_float32(e: Entry) -> np.ndarray:
    """torch's `.float()` of the stored tensor: exact for every dtype we read."""
    x = e.raw()
    if e.dtype == "BF16":
        return bf16_to_f32(x)
    if e.dtype == "F8_E4M3":
        return E4M3[x]
    if e.dtype == "F8_E5M2":  # float8_e5m2 is the top byte of a float16
        return (x.astype(np.uint16) << 8).view(np.float16).astype(np.float32)
    if e.dtype not in DTYPES:
        raise SourceError(f"{e.shard.name}: tensor {e.name} has dtype {e.dtype}, which cannot scale an FP8 weight")
    return x.astype(np.float32)


def dequant_simple(weight: Entry, scale_entry: Entry, block: tuple[int, ...] | None) -> np.ndarray:
    """ModelBase.dequant_model's dequant_simple: the scale repeated `block[i]` times along the
    weight's last dimensions and cut to its shape (blocks at the edge are partial), broadcast over
    any dimensions it lacks, then one float32 product per element."""
    scale = as_float32(scale_entry)
    if block is not None:
        first = scale.ndim - len(block)
        for i, size in enumerate(block):
            scale = np.repeat(scale, size, axis=first + i)
        scale = scale[tuple(slice(0, size) for size in weight.shape)]
    while scale.ndim < len(weight.shape):
        scale = scale[..., None]
    try:
        return as_float32(weight) * scale
    except ValueError:
        raise SourceError(f"{weight.shard.name}: {scale_entry.name} (shape {list(scale_entry.shape)}, blocks "
                          f"{list(block) if block else None}) does not fit {weight.name} (shape {list(weight.shape)})") from None


def attach_fp8_scales(path: Path, entries: list[Entry], block: list[int] | None) -> list[Entry]:
    """ModelBase.dequant_model for quant_method "fp8": X_scale_inv (and Mistral's X.qscale_weight)
    scales X, which is then dequantized; the scales and the unused activation scales are dropped."""
    by_name = {e.name: e for e in entries}
    drop = set()
    for e in entries:
        weight_name = None
        if e.name.endswith("_scale_inv"):
            weight_name = e.name.removesuffix("_scale_inv")
        elif e.name.endswith(".qscale_weight"):
            weight_name = e.name.removesuffix("qscale_weight") + "weight"
        elif e.name.endswith((".activation_scale", "_activation_scale", ".qscale_act")):
            drop.add(e.name)
        if weight_name is not None:
            if weight_name not in by_name:
                raise SourceError(f"{path}: {e.name} has no weight {weight_name} to scale")
            w = by_name[weight_name]
            w.scale, w.block = e, tuple(int(b) for b in block) if block else None
            drop.add(e.name)
    return [e for e in entries if e.name not in drop]


def read_shards(path: Path) -> list[tuple[str, str, tuple[int, ...], Path, int, int]]:
    """Every tensor of the checkpoint in the converter's order: shards sorted by file name, tensors
    sorted by name within a shard. Each is (name, dtype, shape, shard, byte offset, byte count)."""
    from safetensors import SafetensorError, safe_open

    index_path = path / "model.safetensors.index.json"
    weight_map: dict[str, str] = {}
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise SourceError(f"{index_path}: no \"weight_map\" object of tensor name -> shard file")
        parts = sorted(set(weight_map.values()))
        missing = [p for p in parts if not (path / p).is_file()]
        if missing:
            raise SourceError(f"{path}: shard {missing[0]} listed in model.safetensors.index.json is missing"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    else:
        parts = sorted(p.name for p in path.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors"))
    if not parts:
        if any(path.glob("pytorch_model*.bin")) or any(path.glob("*.pt")):
            raise SourceError(f"{path}: only PyTorch pickle weights (.bin/.pt); save the model as safetensors first")
        raise SourceError(f"{path}: no model.safetensors or model.safetensors.index.json")

    entries = []
    in_parts: dict[str, str] = {}
    for part in parts:
        shard = path / part
        check_input_file(shard, "safetensors file", SourceError)  # a FIFO would block the open
        try:
            with safe_open(str(shard), framework="numpy"):  # validates the header against the file size
                pass
        except SafetensorError as exc:
            raise SourceError(f"{shard}: not a valid safetensors file ({excerpt(str(exc))})") from None
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        start = 8 + n
        for name in sorted(k for k in header if k != "__metadata__"):
            meta = header[name]
            begin, end = meta["data_offsets"]
            if name in in_parts:
                raise SourceError(f"{path}: tensor {name} is in both {in_parts[name]} and {part}")
            in_parts[name] = part
            entries.append((name, meta["dtype"], tuple(meta["shape"]), shard, start + begin, end - begin))

    if weight_map:
        absent = sorted(set(weight_map) - set(in_parts))
        if absent:
            raise SourceError(f"{path}: tensor {absent[0]} is listed in model.safetensors.index.json "
                              f"(in {weight_map[absent[0]]}) but no shard holds it")
        extra = sorted(set(in_parts) - set(weight_map))
        if extra:
            raise SourceError(f"{path}: tensor {extra[0]} in {in_parts[extra[0]]} is not listed in model.safetensors.index.json")
    return entries


def map_bytes(path: Path, offset: int, nbytes: int) -> np.ndarray:
    """The tensor's bytes, memory-mapped on their own: the mapping goes when the array does, so
    pages read for one tensor do not stay in the process (as they would with one map per shard,
    which counts every tensor read so far in its resident size)."""
    if nbytes == 0:
        return np.empty(0, np.uint8)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), offset + nbytes - start, access=mmap.ACCESS_READ, offset=start)
    return np.frombuffer(mm, np.uint8, count=nbytes, offset=offset - start)


def bf16_to_f32(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << 16).view(np.float32)
