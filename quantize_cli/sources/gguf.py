"""GGUF files as sources: one memory-mapped file, or a split model (``name-00001-of-00003.gguf``)
read as one source whose tensors know their shard."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Callable

import numpy as np
from kernels.gguf_compat import GGMLQuantizationType

from ..errors import SourceError
from ..formats.gguf import SPLIT_RE, read_gguf_layout
from .base import Source, TensorRef


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
        # names, types, shapes and offsets were validated by the reader (as gguf.cpp does); what is
        # left is llama_model_loader's check that each tensor's data lies inside the file
        for name, ne, raw_type, rel_offset in layout.tensor_infos:
            ref = TensorRef(name=name, ne=ne, type=GGMLQuantizationType(raw_type), load=lambda: None, split=split,
                            offset=self.data_offset + rel_offset)
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
