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
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

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
    release: Callable[[], None] = lambda: None  # drop the tensor's pages from memory once written

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


class _InfoOnlyReader:
    """The gguf package's reader, minus the per-tensor numpy views it builds eagerly (those fail
    opaquely on a truncated file and cost time on big models): tensor infos are kept as fields."""

    @staticmethod
    def open(path: Path):
        from gguf import GGUFReader

        class Reader(GGUFReader):
            def _build_tensors(self, start_offs, fields):
                self.tensor_fields = fields
                self.tensors = []

        return Reader(path, "r")


class GGUFFileSource(Source):
    """One GGUF file, memory-mapped."""

    def __init__(self, path: Path, split: int = 0):
        self.path = Path(path)
        _check_header(self.path)
        size = self.path.stat().st_size
        try:
            reader = _InfoOnlyReader.open(self.path)
        except (ValueError, IndexError, KeyError, struct.error, OverflowError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.path}: truncated or corrupt GGUF header/metadata ({exc})") from None
        self._reader = reader
        self.alignment = int(reader.alignment)
        self.data_offset = int(reader.data_offset)
        mm = reader.data
        fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]
        infos = reader.tensor_fields
        self.tensor_info_offset = infos[0].offset if infos else None
        self.kv = []
        for i, f in enumerate(fields):
            end = fields[i + 1].offset if i + 1 < len(fields) else (self.tensor_info_offset or self._kv_end(f))
            vtype = GGUFValueType(f.types[0])
            item_type = GGUFValueType(f.types[-1]) if vtype == GGUFValueType.ARRAY and len(f.types) > 1 else None
            self.kv.append(KV(f.name, vtype, item_type=item_type, raw=bytes(mm[f.offset:end]), _decode=f.contents))
        if self.data_offset > size:
            raise SourceError(f"{self.path}: truncated: tensor data would start at byte {self.data_offset}, file has {size}")
        self.tensors = []
        names = set()
        for field_ in infos:
            _, name_data, _, dims, raw_type, rel_offset = field_.parts
            name = bytes(name_data).decode("utf-8", errors="replace")
            if name in names:
                raise SourceError(f"{self.path}: tensor {name} appears twice")
            names.add(name)
            try:
                qtype = GGMLQuantizationType(int(raw_type[0]))
            except ValueError:
                raise SourceError(f"{self.path}: tensor {name} has unknown ggml type {int(raw_type[0])}") from None
            ne = tuple(int(d) for d in dims)
            ref = TensorRef(name=name, ne=ne, type=qtype, load=lambda: None, split=split,
                            offset=self.data_offset + int(rel_offset[0]))
            if ne and ne[0] % GGML_QUANT_SIZES[qtype][0]:
                raise SourceError(f"{self.path}: tensor {name} has rows of {ne[0]}, not a multiple of {qtype.name}'s block")
            end = ref.offset + ref.nbytes
            if end > size:
                raise SourceError(
                    f"{self.path}: tensor {name} data runs past the end of the file "
                    f"(needs bytes up to {end}, file has {size}): the file is truncated")
            ref.load = _loader(mm, ref.offset, ref.nbytes)
            ref.release = _releaser(mm, ref.offset, ref.nbytes)
            self.tensors.append(ref)

    @staticmethod
    def _kv_end(f) -> int:
        return f.offset + sum(int(p.nbytes) for p in f.parts)

    def close(self) -> None:
        self._reader = None


def _loader(mm: np.ndarray, offset: int, nbytes: int) -> Callable[[], np.ndarray]:
    return lambda: mm[offset:offset + nbytes]


def _releaser(mm: np.ndarray, offset: int, nbytes: int) -> Callable[[], None]:
    """Tell the kernel we are done with a tensor's pages (as llama.cpp's unmap_weight does), so
    the resident size stays near one tensor instead of growing to the whole file."""
    def release() -> None:
        raw = getattr(mm, "_mmap", None)
        if raw is None or not hasattr(raw, "madvise"):
            return
        page = mmap.PAGESIZE
        start = offset // page * page
        end = min(len(raw), (offset + nbytes + page - 1) // page * page)
        if end > start:
            raw.madvise(mmap.MADV_DONTNEED, start, end - start)
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
