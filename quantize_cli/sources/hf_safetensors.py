"""The safetensors side of a Hugging Face checkpoint: which shards hold which tensors, and each
tensor's bytes, memory-mapped on their own, read only when asked for.

`read_shards` checks the shards and model.safetensors.index.json against each other and lists
every tensor in the converter's order; an `Entry` is one of them, not yet read.
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

    def raw(self) -> np.ndarray:
        """The stored elements (BF16 as uint16 bits, U8 as uint8), shaped, memory-mapped."""
        np_dtype = DTYPES[self.dtype][0] if self.dtype in DTYPES else np.dtype(np.uint8)
        return map_bytes(self.shard, self.offset, self.nbytes).view(np_dtype).reshape(self.shape)


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
