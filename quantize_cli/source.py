"""Model sources: what the converter reads. One small interface for every input format.

A source gives ordered metadata (``kv``) and lazy tensor references (``tensors``); nothing is
loaded until a tensor's turn. ``TensorRef.ne`` is in ggml order: ``ne[0]`` is the row length.
GGUF files are memory-mapped through the gguf package's reader (zero-copy), and a split model
(``name-00001-of-00003.gguf``) is read as one source whose tensors know their shard.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import SourceError

GGUF_MAGIC = b"GGUF"
SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass
class KV:
    """One metadata pair. ``raw`` is its exact serialized form (key included) when it was read
    from a GGUF file, so copying it keeps every byte; new pairs are serialized from ``value``."""

    key: str
    vtype: GGUFValueType
    value: Any = None
    item_type: GGUFValueType | None = None  # element type of an ARRAY
    raw: bytes | None = None
    _decode: Callable[[], Any] | None = field(default=None, repr=False)

    def get(self) -> Any:
        if self._decode is not None:
            self.value = self._decode()
            self._decode = None
        return self.value


@dataclass
class TensorRef:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    type: GGMLQuantizationType
    load: Callable[[], np.ndarray]  # flat uint8 bytes of the tensor, as stored in `type`
    split: int = 0  # shard index of a split input
    offset: int = 0  # byte offset of the data in its file (for ordering a split model)
    # drop the tensor's pages from memory once used: all of them, or bytes [start, stop) of the tensor
    release: Callable[..., None] = lambda start=0, stop=None: None

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.type]
        return self.n_elements // block_size * type_size

    @property
    def n_per_row(self) -> int:
        return int(self.ne[0])

    @property
    def nrows(self) -> int:
        return self.n_elements // int(self.ne[0]) if self.ne[0] else 0


class Source:
    """What every input format provides."""

    path: Path
    kv: list[KV]
    tensors: list[TensorRef]
    n_splits: int = 1

    def kv_value(self, key: str, default: Any = None) -> Any:
        for pair in self.kv:
            if pair.key == key:
                return pair.get()
        return default

    def close(self) -> None:  # pragma: no cover - overridden where there is something to close
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


class GGUFFileSource(Source):
    """One GGUF file, memory-mapped."""

    def __init__(self, path: Path, split: int = 0):
        self.path = Path(path)
        layout = read_gguf_layout(self.path)
        size = len(layout.buf)
        self.version = layout.version
        self.alignment = layout.alignment
        self.data_offset = layout.data_offset
        self.tensor_info_offset = layout.tensor_info_offset
        self.kv = layout.kv
        if layout.tensor_infos and self.data_offset > size:
            raise SourceError(f"{self.path}: truncated: tensor data would start at byte {self.data_offset}, file has {size}")
        mm = np.frombuffer(layout.buf, dtype=np.uint8)
        self._buf = layout.buf
        self.tensors = []
        names = set()
        for name, ne, raw_type, rel_offset in layout.tensor_infos:
            if name in names:
                raise SourceError(f"{self.path}: tensor {name} appears twice")
            names.add(name)
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise SourceError(f"{self.path}: tensor {name} has unknown ggml type {raw_type}") from None
            ref = TensorRef(name=name, ne=ne, type=qtype, load=lambda: None, split=split,
                            offset=self.data_offset + rel_offset)
            if ne and ne[0] % GGML_QUANT_SIZES[qtype][0]:
                raise SourceError(f"{self.path}: tensor {name} has rows of {ne[0]}, not a multiple of {qtype.name}'s block")
            end = ref.offset + ref.nbytes
            if end > size:
                raise SourceError(
                    f"{self.path}: tensor {name} data runs past the end of the file "
                    f"(needs bytes up to {end}, file has {size}): the file is truncated")
            ref.load = _loader(mm, ref.offset, ref.nbytes)
            ref.release = _releaser(layout.buf, ref.offset, ref.nbytes)
            self.tensors.append(ref)

    def close(self) -> None:
        # Views handed out (tensor data) keep the map alive; it closes when the last one goes.
        self._buf = None


def _loader(mm: np.ndarray, offset: int, nbytes: int) -> Callable[[], np.ndarray]:
    return lambda: mm[offset:offset + nbytes]


def _releaser(mm: mmap.mmap, offset: int, nbytes: int) -> Callable[..., None]:
    """Tell the kernel we are done with a tensor's pages (as llama.cpp's unmap_weight does), so
    the resident size stays near one slab instead of growing to the whole file. The mapping is
    shared and read-only: a page dropped by mistake (one shared with a neighbour) is read again
    from the page cache, never lost."""
    def release(start: int = 0, stop: int | None = None) -> None:
        raw = mm
        stop = nbytes if stop is None else min(stop, nbytes)
        page = mmap.PAGESIZE
        begin = (offset + start) // page * page
        end = min(len(raw), (offset + stop + page - 1) // page * page)
        if end > begin:
            raw.madvise(mmap.MADV_DONTNEED, begin, end - begin)
    return release


class SplitGGUFSource(Source):
    """A model split across shards, read as one: metadata from the first shard, tensors from all."""

    def __init__(self, paths: list[Path]):
        self.path = paths[0]
        self.shards = [GGUFFileSource(p, split=i) for i, p in enumerate(paths)]
        self.kv = self.shards[0].kv
        self.tensors = [t for s in self.shards for t in s.tensors]
        self.n_splits = len(paths)
        self.alignment = self.shards[0].alignment

    def close(self) -> None:
        for s in self.shards:
            s.close()


def split_paths(path: Path) -> list[Path] | None:
    """All shard paths when `path` names a shard of a split model, else None."""
    m = SPLIT_RE.match(path.name)
    if not m:
        return None
    count = int(m.group("count"))
    paths = [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise SourceError(f"{path}: split model is missing shard(s) {', '.join(missing)}")
    return paths


def open_source(path: str | Path) -> Source:
    """Open a model: a GGUF file, the first shard of a split GGUF, or (later) a safetensors folder."""
    path = Path(path)
    if path.is_dir():
        try:
            from .source_hf import HFSource
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith("source_hf"):
                raise SourceError(f"{path}: is a directory; safetensors checkpoints are not supported yet") from None
            raise
        return HFSource(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    paths = split_paths(path)
    if paths and len(paths) > 1:
        return SplitGGUFSource(paths)
    return GGUFFileSource(path)
