"""Value types shared by readers, sources, the plan and the writer: one metadata pair (KV) and
one tensor as the writer lays it out (TensorInfo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from kernels.gguf_compat import GGUFValueType


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



@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]
    type: int
    nbytes: int

