"""Streaming GGUF writer.

Every byte size follows from the plan, so the header (metadata and all tensor infos) is
written first, then each tensor's data is written as it is produced and dropped. The layout
is what ggml's gguf_write produces: GGUF v3, 32-byte alignment (or general.alignment), tensor
data offsets in plan order, each tensor padded with zeros to the alignment.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
from kernels.gguf_compat import GGUFValueType

from .values import KV, TensorInfo

GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32

_SCALAR_FORMAT = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


def _string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _value(vtype: GGUFValueType, value: Any, item_type: GGUFValueType | None) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _string(value)
    if vtype == GGUFValueType.ARRAY:
        if item_type is None:
            raise ValueError("array KV without an item type")
        items = list(value)
        body = b"".join(_value(item_type, v, None) for v in items)
        return struct.pack("<IQ", int(item_type), len(items)) + body
    return struct.pack(_SCALAR_FORMAT[vtype], value)


def serialize_kv(kv: KV) -> bytes:
    """The exact bytes of one metadata pair: copied as read when possible, else encoded."""
    if kv.raw is not None:
        return kv.raw
    return _string(kv.key) + struct.pack("<I", int(kv.vtype)) + _value(kv.vtype, kv.value, kv.item_type)


def pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _n_dims(ne: tuple[int, ...]) -> int:
    # gguf writes ggml_n_dims(tensor): trailing dimensions of size 1 are dropped
    n = len(ne)
    while n > 1 and ne[n - 1] == 1:
        n -= 1
    return max(n, 1)


def header_bytes(kv: list[KV], infos: list[TensorInfo], alignment: int = DEFAULT_ALIGNMENT) -> bytes:
    """Magic, version, counts, metadata, tensor infos, zero padding up to the data section."""
    parts = [b"GGUF", struct.pack("<IQQ", GGUF_VERSION, len(infos), len(kv))]
    parts += [serialize_kv(pair) for pair in kv]
    offset = 0
    for info in infos:
        n = _n_dims(info.ne)
        parts.append(_string(info.name) + struct.pack("<I", n) + struct.pack(f"<{n}Q", *info.ne[:n])
                     + struct.pack("<IQ", int(info.type), offset))
        offset += pad(info.nbytes, alignment)
    head = b"".join(parts)
    return head + bytes(pad(len(head), alignment) - len(head))


def alignment_of(kv: list[KV]) -> int:
    for pair in kv:
        if pair.key == "general.alignment":
            return int(pair.get())
    return DEFAULT_ALIGNMENT


class ShardWriter:
    """Writes one GGUF file: header first, then tensors in info order, checking every size."""

    def __init__(self, f, kv: list[KV], infos: list[TensorInfo]):
        self.f = f
        self.infos = infos
        self.alignment = alignment_of(kv)
        self.next = 0
        self._written = 0  # bytes of the current tensor so far
        f.write(header_bytes(kv, infos, self.alignment))

    def write(self, data: np.ndarray | bytes | memoryview) -> None:
        """Append bytes of the current tensor (a tensor may come in several slabs)."""
        buf = memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1)) if isinstance(data, np.ndarray) else memoryview(data)
        self.f.write(buf)
        self._written += buf.nbytes

    def end_tensor(self) -> None:
        info = self.infos[self.next]
        if self._written != info.nbytes:
            raise AssertionError(f"{info.name}: wrote {self._written} bytes, planned {info.nbytes}")
        self.f.write(bytes(pad(info.nbytes, self.alignment) - info.nbytes))
        self.next += 1
        self._written = 0

    def close(self) -> None:
        if self.next != len(self.infos):
            raise AssertionError(f"only {self.next} of {len(self.infos)} tensors written")

