"""Quantized tensors kept in the search cache, so that a second target mostly copies bytes.

A target run spends its time in the kernels of the chosen types (with an imatrix, one thread,
random rows: Q4_1 60, IQ4_NL 80-90, IQ3_S 270, IQ3_XXS 440 ns per weight, against 2-13 for the
Q8_0/Q5_0 of a plain Q4_K_M on 576-wide rows). With
`--search-cache DIR` every tensor a run quantizes whole is kept in DIR, and the first run that
writes a file for a model (and imatrix, and candidate set) also quantizes the candidates that the
targets within +-15 % of its own would choose (target.py decides which). A later target copies
what it finds and quantizes only the rest.

One file per (tensor, type): `q-<key>.bin`, a 32-byte header (magic, format version, payload
length, CRC-32 of the payload, the first 12 bytes of the key) then the tensor's bytes exactly as
the writer emits them. The key hashes everything the bytes depend on: the input tensor (name,
storage type, shape, a CRC-32 of all its data, and the sampled fingerprint of the whole input),
its imatrix vector, the type, and the kernels (pyquantize's version, a hash of every kernels/*.py
source, Numba's and NumPy's versions). An entry whose header, length or CRC does not match is
treated as absent (removed, and quantized again): a damaged cache never reaches an output.
Files are written to a temporary name and renamed, so a crash leaves no half entry. The CRC of
each input tensor costs one more read of the input (SmolLM2's 540 MB F32: 0.17 s of CRC-32 from
the page cache); a sampled fingerprint alone could miss an in-place edit between its windows,
and a wrong byte here would go into an output.

F16, BF16 and Q8_0 are never kept: their kernels cost about what reading the bytes back does.
Disk use is the entries' bytes; `--search-cache-max` (default 8 GiB, 0: keep none) bounds it by
removing the least recently used entries at the end of a run.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from kernels.gguf_compat import GGMLQuantizationType as T

STORE_VERSION = 1
MAGIC = b"PQTS"
HEADER = struct.Struct("<4sIQI12s")  # magic, version, payload bytes, CRC-32, key prefix
DEFAULT_MAX_BYTES = 8 << 30
NOT_KEPT = frozenset((T.F32, T.F16, T.BF16, T.Q8_0))  # as cheap to quantize as to read back
_CHUNK = 16 << 20
STALE_TMP_S = 24 * 3600


def kernel_identity() -> str:
    """What decides the kernels' bytes: every kernels/*.py source, pyquantize's, Numba's and
    NumPy's versions."""
    import numba

    import kernels

    from .. import __version__

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{__version__}|{numba.__version__}|{np.__version__}\n".encode())
    root = Path(kernels.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\n")
        h.update(path.read_bytes())
    return h.hexdigest()


def crc32(data: np.ndarray) -> int:
    """CRC-32 of an array's bytes (3 GB/s here; blake2b managed 0.7)."""
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    crc = 0
    for start in range(0, flat.size, _CHUNK):
        crc = zlib.crc32(flat[start:start + _CHUNK], crc)
    return crc


class TensorStore:
    """The quantized tensors of one input and imatrix in a cache directory."""

    def __init__(self, directory: Path, source_key: str, max_bytes: int = DEFAULT_MAX_BYTES):
        self.directory = Path(directory)
        self.source_key = source_key
        self.max_bytes = max_bytes
        self._kernels = ""  # kernel_identity(), on first use (a --dry-run never needs it)
        self.used: set[Path] = set()  # entries this run read or wrote (trimmed last)
        self.hits = self.misses = self.stored = 0
        self.bytes_written = 0
        # set by target.py: () -> (plans of what nearby targets would choose, a callback once they are stored)
        self.nearby: Callable[[], tuple[list, Callable[[], None]]] | None = None
        self._input_crc: dict[str, int] = {}

    # keys ------------------------------------------------------------------------------------

    def keeps(self, qtype: T) -> bool:
        return self.max_bytes > 0 and qtype not in NOT_KEPT

    def _input_identity(self, ref) -> int:
        crc = self._input_crc.get(ref.name)
        if crc is None:
            crc = self._input_crc[ref.name] = crc32(ref.load())
            ref.release()  # memory stays near one tensor
        return crc

    def key(self, ref, qtype: T, imatrix: np.ndarray | None) -> str:
        self._kernels = self._kernels or kernel_identity()
        h = hashlib.blake2b(digest_size=16)
        im = "none" if imatrix is None else hashlib.blake2b(
            np.ascontiguousarray(imatrix, dtype=np.float32).tobytes(), digest_size=16).hexdigest()
        h.update(f"{STORE_VERSION}|{self._kernels}|{self.source_key}|{ref.name}|{ref.type.name}|{tuple(ref.ne)}|"
                 f"{self._input_identity(ref)}|{im}|{qtype.name}".encode())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"q-{key}.bin"

    def has(self, key: str, nbytes: int) -> bool:
        """Present with the right size (the content is checked when read)."""
        try:
            return self.path(key).stat().st_size == HEADER.size + nbytes
        except OSError:
            return False

    # read ------------------------------------------------------------------------------------

    def get(self, key: str, nbytes: int) -> np.ndarray | None:
        """The entry's bytes, or None when absent or damaged (a damaged file is removed)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER.size)
                payload = np.fromfile(f, dtype=np.uint8)
        except OSError:
            self.misses += 1
            return None
        ok = len(head) == HEADER.size
        if ok:
            magic, version, length, crc, prefix = HEADER.unpack(head)
            ok = (magic == MAGIC and version == STORE_VERSION and length == nbytes == payload.size
                  and prefix == bytes.fromhex(key)[:12] and crc32(payload) == crc)
        if not ok:
            self.misses += 1
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            return None
        self.hits += 1
        self.used.add(path)
        try:
            os.utime(path)  # recently used: trimmed last
        except OSError:
            pass
        return payload

    # write -----------------------------------------------------------------------------------

    def fits(self, nbytes: int) -> bool:
        """Whether this run may keep one more entry of `nbytes` within max_bytes."""
        return self.bytes_written + HEADER.size + nbytes <= self.max_bytes

    def writer(self, key: str) -> "EntryWriter":
        return EntryWriter(self, key)

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self._entries())

    def _entries(self) -> list[Path]:
        out = []
        for p in self.directory.glob("q-*.bin"):
            if p.is_file():
                out.append(p)
        return out

    def trim(self) -> int:
        """Remove least recently used entries, other runs' first, until the entries fit
        `max_bytes`; returns the bytes removed."""
        for p in self.directory.glob(".q-*.tmp"):  # left by a killed run; a live one is younger
            try:
                if p.stat().st_mtime < time.time() - STALE_TMP_S:
                    p.unlink(missing_ok=True)
            except OSError:
                continue
        entries = []
        for p in self._entries():
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime_ns, p.name, p, st.st_size))
        total = sum(e[3] for e in entries)
        removed = 0
        for _, _, p, size in sorted(entries, key=lambda e: (e[2] in self.used, e[0], e[1])):
            if total <= self.max_bytes:
                break
            try:
                p.unlink(missing_ok=True)
            except OSError:
                continue
            total -= size
            removed += size
        return removed


class EntryWriter:
    """Streams one tensor's bytes into a temporary file, renamed into place by commit(). The
    cache only saves time: when it cannot be written (disk full, read-only) the entry is dropped
    and the run goes on."""

    def __init__(self, store: TensorStore, key: str):
        self.store = store
        self.key = key
        self.crc = 0
        self.length = 0
        self.f = None
        try:
            fd, self.tmp = tempfile.mkstemp(dir=store.directory, prefix=".q-", suffix=".tmp")
            self.f = os.fdopen(fd, "wb")
            self.f.write(b"\0" * HEADER.size)
        except OSError:
            self.abort()

    def write(self, data: np.ndarray) -> None:
        if self.f is None:
            return
        flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self.crc = zlib.crc32(flat, self.crc)
        self.length += flat.size
        try:
            self.f.write(flat.data)
        except OSError:
            self.abort()

    def commit(self) -> None:
        if self.f is None:
            return
        path = self.store.path(self.key)
        try:
            self.f.seek(0)
            self.f.write(HEADER.pack(MAGIC, STORE_VERSION, self.length, self.crc, bytes.fromhex(self.key)[:12]))
            self.f.close()
            os.replace(self.tmp, path)
        except OSError:
            self.abort()
            return
        self.store.used.add(path)
        self.store.stored += 1
        self.store.bytes_written += HEADER.size + self.length

    def abort(self) -> None:
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
        self.f = None
        if getattr(self, "tmp", None):
            Path(self.tmp).unlink(missing_ok=True)
