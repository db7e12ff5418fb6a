"""Model sources: what the converter reads. One small interface for every input format.

A source gives ordered metadata (``kv``) and lazy tensor references (``tensors``); nothing is
loaded until a tensor's turn. ``TensorRef.ne`` is in ggml order: ``ne[0]`` is the row length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType

from ..formats.values import KV


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

