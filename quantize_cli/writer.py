"""Streaming GGUF writer with atomic output.

Every byte size follows from the plan, so the header (metadata and all tensor infos) is
written first, then each tensor's data is written as it is produced and dropped. The layout
is what ggml's gguf_write produces: GGUF v3, 32-byte alignment (or general.alignment), tensor
data offsets in plan order, each tensor padded with zeros to the alignment.

Output goes to temporary files beside the targets; they are renamed over the targets only when
every file is complete. On any error, Ctrl-C or SIGTERM the temporary files are removed and the
targets are left as they were.
"""

from __future__ import annotations

import os
import signal
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from kernels.gguf_compat import GGUFValueType

from .errors import OutputError
from .source import KV

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


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]
    type: int
    nbytes: int


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


def check_writable(target: Path) -> None:
    parent = target.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{target}: directory {parent} is not writable")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory; give a file name for the output")


class _Terminated(BaseException):
    pass


@contextmanager
def atomic_outputs(targets: list[Path]) -> Iterator[list[Path]]:
    """Yield temporary paths beside each target; rename them all over the targets on success,
    remove them on any failure (including Ctrl-C and SIGTERM)."""
    for t in targets:
        check_writable(t)
    temps: list[Path] = []

    def on_term(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        for t in targets:
            fd, name = tempfile.mkstemp(prefix=f".{t.name}.", suffix=".part", dir=t.resolve().parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        for tmp, t in zip(temps, targets):
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, t)
        temps = []
    except _Terminated:
        raise KeyboardInterrupt("terminated") from None
    except OSError as exc:
        raise OutputError(f"{targets[0]}: cannot write output ({exc.strerror or exc})") from None
    finally:
        for tmp in temps:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
