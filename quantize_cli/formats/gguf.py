"""GGUF reading: the header, metadata and tensor infos of a file, in one pass over a read-only
memory map (gguf.cpp's gguf_init_from_file, without the tensor data)."""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from kernels.gguf_compat import GGUFValueType

from ..errors import SourceError
from .values import KV

GGUF_MAGIC = b"GGUF"
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def _check_header(path: Path) -> None:
    """Fail early, with a clear line, on what the gguf reader reports badly."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory, not a GGUF file")
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file")
    except PermissionError:
        raise SourceError(f"{path}: permission denied")
    if len(head) < 8:
        raise SourceError(f"{path}: file is truncated ({len(head)} bytes): not a complete GGUF header")
    if head[:4] != GGUF_MAGIC:
        raise SourceError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise SourceError(f"{path}: GGUF version {version} is not supported (only 2 and 3)")


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
    """Parse a GGUF header, metadata and tensor infos from a read-only memory map.

    Metadata values stay undecoded (``KV.raw`` holds their exact bytes; ``KV.get()`` decodes on
    demand): a 150k-token vocabulary costs a walk over its string lengths, not an object per
    string. Raises SourceError naming what is wrong."""
    path = Path(path)
    _check_header(path)
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise SourceError(f"{path}: file is empty: not a GGUF file") from None
    unpack_from = struct.unpack_from

    def skip_string(pos: int) -> int:
        (n,) = unpack_from("<Q", buf, pos)
        if pos + 8 + n > len(buf):
            raise struct.error("string runs past the end")
        return pos + 8 + n

    def skip_value(vtype: int, pos: int) -> int:
        if vtype == _STRING:
            return skip_string(pos)
        if vtype == _ARRAY:
            item, count = unpack_from("<IQ", buf, pos)
            pos += 12
            if item == _STRING:
                for _ in range(count):
                    pos = skip_string(pos)
                return pos
            if item in _NUMPY:
                end = pos + count * np.dtype(_NUMPY[item]).itemsize
                if end > len(buf):
                    raise struct.error("array runs past the end")
                return end
            for _ in range(count):
                pos = skip_value(item, pos)
            return pos
        if vtype not in _SCALAR:
            raise ValueError(f"unknown metadata value type {vtype}")
        return pos + struct.calcsize(_SCALAR[vtype])

    def decoder(vtype: int, pos: int) -> Callable[[], Any]:
        return lambda: decode_value(buf, vtype, pos)[0]

    try:
        version, n_tensors, n_kv = unpack_from("<IQQ", buf, 4)
        pos = 24
        kv: list[KV] = []
        for _ in range(n_kv):
            start = pos
            (n,) = unpack_from("<Q", buf, pos)
            key = bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace")
            pos = skip_string(pos)
            (vtype,) = unpack_from("<I", buf, pos)
            value_pos = pos + 4
            item_type = None
            if vtype == _ARRAY:
                (item_type,) = unpack_from("<I", buf, value_pos)
                item_type = GGUFValueType(item_type)
            pos = skip_value(vtype, value_pos)
            kv.append(KV(key, GGUFValueType(vtype), item_type=item_type, raw=bytes(buf[start:pos]),
                         _decode=decoder(vtype, value_pos)))
        info_offset = pos
        infos = []
        for _ in range(n_tensors):
            (n,) = unpack_from("<Q", buf, pos)
            name = bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace")
            pos = skip_string(pos)
            (n_dims,) = unpack_from("<I", buf, pos)
            if n_dims > 4:
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            ne = unpack_from(f"<{n_dims}Q", buf, pos + 4)
            ttype, offset = unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, tuple(int(d) for d in ne), int(ttype), int(offset)))
    except (struct.error, ValueError, OverflowError) as exc:
        raise SourceError(f"{path}: truncated or corrupt GGUF header/metadata ({exc})") from None
    alignment = 32
    for pair in kv:
        if pair.key == "general.alignment":
            value = pair.get()
            if pair.vtype != GGUFValueType.UINT32 or value == 0 or value & (value - 1):
                raise SourceError(f"{path}: general.alignment must be a power of two (uint32), got {value!r}")
            alignment = int(value)
    data_offset = (pos + alignment - 1) // alignment * alignment
    return GGUFLayout(int(version), kv, infos, info_offset, alignment, data_offset, buf)


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

