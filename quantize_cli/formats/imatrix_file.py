"""Importance matrix files: llama.cpp's two formats, read and written.

What llama-imatrix collects (tools/imatrix/imatrix.cpp): for every matrix multiplication whose
weight is a `blk.*` tensor (and `output.weight` with --process-output), the sum over all tokens of
the squared input activations, per input column (`in_sum2`), and the number of tokens (`counts`).

Files:
- GGUF (default): `general.type = imatrix`, `imatrix.datasets`, `imatrix.chunk_count`,
  `imatrix.chunk_size`, then per weight (sorted by name) `<name>.in_sum2` (F32, ne = [n_in, n_mat])
  and `<name>.counts` (F32, ne = [1, n_mat]). Raw sums: files add up.
- legacy .dat: int32 n_entries, then per entry (sorted) int32 name length, name, int32 ncall,
  int32 nval, float32[nval] = in_sum2/count*ncall; then int32 chunk count, int32 length + dataset.

`load_imatrix` gives what llama-quantize uses (tools/quantize/quantize.cpp load_imatrix): the mean
squared activation per column, in_sum2/count per expert (1 where count is 0) for GGUF, stored/ncall
for .dat.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..errors import ImatrixError, excerpt

if TYPE_CHECKING:  # the collector (imatrix/) is above this module; the writers only read its fields
    from ..imatrix.collector import Collector

GGUF_MAGIC = b"GGUF"
ALIGNMENT = 32


# --- what llama-quantize uses -----------------------------------------------------------------------

@dataclass
class ImatrixData:
    """An importance matrix as llama-quantize sees it. ``entries[name]`` is float32, n_in * n_mat."""

    entries: dict[str, np.ndarray]
    datasets: list[str]
    chunk_count: int
    chunk_size: int
    path: Optional[Path] = None
    is_legacy: bool = False
    sums: dict[str, np.ndarray] = field(default_factory=dict)    # raw in_sum2 (GGUF) / stored values (.dat)
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # int64 per matrix (GGUF) / [ncall] (.dat)


@dataclass
class _Raw:
    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    datasets: list[str]
    chunk_count: int
    chunk_size: int
    is_legacy: bool
    has_metadata: bool


def _read_raw(path: Path) -> _Raw:
    """common_imatrix_load: GGUF when the file is one, else the legacy format."""
    from .output import check_input_file

    check_input_file(Path(path), "imatrix file", ImatrixError, missing="no such imatrix file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise ImatrixError(f"{path}: no such imatrix file") from None
    except IsADirectoryError:
        raise ImatrixError(f"{path}: is a directory, not an imatrix file") from None
    if head == GGUF_MAGIC:
        return _read_gguf(path)
    return _read_legacy(path)


def _read_gguf(path: Path) -> _Raw:
    """common_imatrix_load's GGUF half: gguf_init_from_file with the data loaded, so what the
    validating reader refuses, and a data section shorter than its padded size, are refused."""
    from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

    from ..errors import SourceError
    from .gguf import read_gguf_layout

    try:
        layout = read_gguf_layout(path)
    except SourceError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise ImatrixError(f"{path}: truncated or corrupt GGUF imatrix: {reason}") from None
    tensors = []
    end = layout.data_offset
    for name, ne, ttype, offset in layout.tensor_infos:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        n = int(np.prod(ne, dtype=np.int64))
        nbytes = n // block * size
        end = max(end, layout.data_offset + offset + (nbytes + layout.alignment - 1) // layout.alignment
                  * layout.alignment)
        tensors.append((name, GGMLQuantizationType(ttype), layout.data_offset + offset, n))
    if end > len(layout.buf):
        raise ImatrixError(f"{path}: truncated GGUF imatrix: its data needs {end} bytes, the file has {len(layout.buf)}")
    if not tensors:
        raise ImatrixError(f"{path}: the GGUF file has no tensors; it is not an imatrix (no data)")

    class _T:
        def __init__(self, name, ttype, start, n):
            self.name, self.tensor_type = name, ttype
            self.data = np.frombuffer(layout.buf, dtype="<f4", count=n, offset=start) if ttype == 0 else None

    reader_tensors = [_T(*t) for t in tensors]
    by_key = {kv.key: kv for kv in layout.kv}

    def value(key: str):
        kv = by_key.get(key)
        if kv is None:
            return None
        if key == "imatrix.datasets":
            return kv.get() if kv.vtype == GGUFValueType.ARRAY and kv.item_type == GGUFValueType.STRING else None
        if kv.vtype != GGUFValueType.UINT32:  # gguf_get_val_u32 asserts the type
            raise ImatrixError(f"{path}: {key} must be a u32, not {kv.vtype.name.lower()}; the imatrix is damaged")
        return kv.get()

    datasets = value("imatrix.datasets")
    chunk_count = value("imatrix.chunk_count")
    chunk_size = value("imatrix.chunk_size")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    pairs: dict[str, list] = {}
    for t in reader_tensors:
        if not t.name:
            continue
        for suffix, slot in ((".in_sum2", 0), (".counts", 1)):
            if t.name.endswith(suffix):
                pairs.setdefault(t.name[: -len(suffix)], [None, None])[slot] = t
    if not pairs:
        raise ImatrixError(f"{path}: no <weight>.in_sum2 / <weight>.counts tensors; it is not an imatrix GGUF "
                           "(a model file given by mistake?)")
    for name in sorted(pairs):
        s, c = pairs[name]
        if s is None or c is None:
            raise ImatrixError(f"{path}: {name} has {'no .counts' if c is None else 'no .in_sum2'} tensor "
                               "(mismatched sums and counts)")
        if s.tensor_type != GGMLQuantizationType.F32 or c.tensor_type != GGMLQuantizationType.F32:
            raise ImatrixError(f"{path}: {name}: in_sum2 and counts must be F32")
        sums[name] = np.array(s.data, dtype=np.float32).reshape(-1)
        cnt = np.array(c.data, dtype=np.float32).reshape(-1)
        try:
            counts[name] = np.array([_lround(x) for x in cnt], dtype=np.int64)
        except ImatrixError as exc:
            raise ImatrixError(f"{path}: {name}: {exc}") from None
        if not counts[name].size or sums[name].size % counts[name].size:
            raise ImatrixError(f"{path}: {name}: {sums[name].size} sums do not split into {counts[name].size} matrices")
    return _Raw(
        sums=sums, counts=counts,
        datasets=[str(d) for d in datasets] if isinstance(datasets, list) else [],
        chunk_count=int(chunk_count or 0), chunk_size=int(chunk_size or 0), is_legacy=False,
        has_metadata=all(k in by_key for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")))


def _lround(x: float) -> int:
    if not math.isfinite(x):
        raise ImatrixError("an imatrix count is NaN or infinite; the imatrix is damaged")
    if abs(x) >= 2.0 ** 62:
        raise ImatrixError(f"an imatrix count of {x:g} is too large for an integer; the imatrix is damaged")
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)  # lround: half away from zero


def _read_legacy(path: Path) -> _Raw:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str, what: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ImatrixError(f"{path}: truncated legacy imatrix: the file ends inside {what}")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    if len(data) < 4:
        raise ImatrixError(f"{path}: not an imatrix file (neither GGUF nor legacy .dat: only {len(data)} bytes)")
    (n_entries,) = take("<i", "the entry count")
    if n_entries < 1:
        raise ImatrixError(f"{path}: not an imatrix file (neither GGUF nor legacy .dat: entry count {n_entries})")
    if n_entries > len(data) // 12:
        raise ImatrixError(f"{path}: not an imatrix file (neither GGUF nor legacy .dat: "
                           f"{n_entries} entries cannot fit in {len(data)} bytes)")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in range(n_entries):
        (length,) = take("<i", f"entry {i + 1}'s name length")
        if length < 0 or pos + length > len(data):
            raise ImatrixError(f"{path}: truncated or corrupt legacy imatrix: entry {i + 1}'s name runs past the end")
        raw_name = data[pos:pos + length]
        pos += length
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise ImatrixError(f"{path}: not an imatrix file (entry {i + 1}'s name is not text)") from None
        ncall, nval = take("<ii", f"entry '{excerpt(name)}'s header")
        if nval < 1:
            raise ImatrixError(f"{path}: corrupt legacy imatrix: entry '{excerpt(name)}' has {nval} values")
        if pos + 4 * nval > len(data):
            raise ImatrixError(f"{path}: truncated legacy imatrix: entry '{excerpt(name)}' needs {nval} values "
                               f"but the file ends first")
        sums[name] = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        counts[name] = np.array([ncall], dtype=np.int64)
    chunk_count = 0
    datasets: list[str] = []
    if pos + 4 <= len(data):  # the trailing chunk count and dataset name are optional
        (chunk_count,) = struct.unpack_from("<i", data, pos)
        pos += 4
        if pos + 4 <= len(data):
            (length,) = struct.unpack_from("<i", data, pos)
            pos += 4
            if 0 < length <= len(data) - pos:
                datasets.append(data[pos:pos + length].decode("utf-8", errors="replace"))
    return _Raw(sums=sums, counts=counts, datasets=datasets, chunk_count=chunk_count, chunk_size=0,
                is_legacy=True, has_metadata=False)


def load_imatrix(path: str | Path) -> ImatrixData:
    """Read a GGUF or legacy imatrix file; entries are the values llama-quantize would use."""
    path = Path(path)
    raw = _read_raw(path)
    if not raw.is_legacy and not raw.has_metadata:
        raise ImatrixError(f"{path}: GGUF imatrix without its metadata (imatrix.datasets, imatrix.chunk_count, "
                           "imatrix.chunk_size); llama-quantize refuses it too")
    entries: dict[str, np.ndarray] = {}
    for name, sums in raw.sums.items():
        cnt = raw.counts[name]
        if raw.is_legacy:
            ncall = int(cnt[0]) if cnt.size else 0
            e = sums / np.float32(ncall) if ncall > 0 else sums.copy()
        else:
            ne0 = sums.size // cnt.size
            e = np.empty_like(sums)
            for j, c in enumerate(cnt):
                block = slice(j * ne0, (j + 1) * ne0)
                e[block] = sums[block] / np.float32(c) if c > 0 else np.float32(1.0)
        e = e.astype(np.float32)
        if not np.isfinite(e).all():
            raise ImatrixError(f"{path}: entry {name} has NaN or infinite values; the imatrix is damaged")
        entries[name] = e
    return ImatrixData(entries=entries, datasets=raw.datasets, chunk_count=raw.chunk_count,
                       chunk_size=raw.chunk_size, path=path, is_legacy=raw.is_legacy,
                       sums=raw.sums, counts=raw.counts)


# --- writing -------------------------------------------------------------------------------------------

def save_imatrix(path: str | Path, collected: Collector, fmt: str = "gguf", inputs=()) -> Path:
    """Write the collected data as llama-imatrix would, through the output guard (never over one
    of `inputs`; an unnamed temp file renamed only when complete)."""
    path = Path(path)
    if fmt not in ("gguf", "dat"):
        raise ImatrixError(f"unknown imatrix output format {fmt!r} (use gguf or dat)")
    blob = _gguf_bytes(collected) if fmt == "gguf" else _dat_bytes(collected)
    from .output import atomic_outputs

    with atomic_outputs([path], inputs) as (tmp,):
        with open(tmp, "r+b") as f:
            f.write(blob)
    return path


def _gguf_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gguf_bytes(c: Collector) -> bytes:
    """IMatrixCollector::save_imatrix through gguf_write_to_file, byte for byte."""
    kv = bytearray()
    kv += _gguf_string("general.type") + struct.pack("<I", 8) + _gguf_string("imatrix")
    datasets = c.all_datasets()
    kv += _gguf_string("imatrix.datasets") + struct.pack("<IIQ", 9, 8, len(datasets))
    for d in datasets:
        kv += _gguf_string(d)
    kv += _gguf_string("imatrix.chunk_count") + struct.pack("<II", 4, c.last_chunk)
    kv += _gguf_string("imatrix.chunk_size") + struct.pack("<II", 4, c.chunk_size)
    tensors: list[tuple[str, list[int], np.ndarray]] = []
    for name in sorted(c.stats):
        st = c.stats[name]
        nval, nmat = st.values.size, st.counts.size
        if nval == 0 or nmat == 0:
            continue
        tensors.append((f"{name}.in_sum2", [nval // nmat, nmat], st.values.astype("<f4")))
        tensors.append((f"{name}.counts", [1, nmat], st.counts.astype("<f4")))
    info = bytearray()
    offset = 0
    for tname, ne, data in tensors:
        n_dims = max([i + 1 for i, n in enumerate(ne) if n > 1], default=1)  # ggml_n_dims
        info += _gguf_string(tname) + struct.pack("<I", n_dims)
        info += struct.pack(f"<{n_dims}Q", *ne[:n_dims]) + struct.pack("<IQ", 0, offset)
        offset += _pad(data.nbytes)
    out = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), 4)) + kv + info
    out += b"\0" * (_pad(len(out)) - len(out))
    for _, _, data in tensors:
        out += data.tobytes() + b"\0" * (_pad(data.nbytes) - data.nbytes)
    return bytes(out)


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _dat_bytes(c: Collector) -> bytes:
    """IMatrixCollector::save_imatrix_legacy."""
    names = sorted(n for n, st in c.stats.items() if st.counts.size and (st.counts != 0).any())
    out = bytearray(struct.pack("<i", len(names)))
    for name in names:
        st = c.stats[name]
        b = name.encode("utf-8")
        out += struct.pack("<i", len(b)) + b
        ncall = (int(st.counts.max()) + c.chunk_size - 1) // c.chunk_size  # ceiling: no accidental zeros
        nval, nmat = st.values.size, st.counts.size
        out += struct.pack("<ii", ncall, nval)
        per = nval // nmat
        count = np.repeat(st.counts.astype(np.float32), per)
        value = st.values.astype(np.float32).copy()
        empty = count == 0  # partial data (an unused expert) is stored as 1
        value[empty], count[empty] = 1.0, 1.0
        out += ((value / count) * np.float32(ncall)).astype("<f4").tobytes()
    out += struct.pack("<i", c.last_chunk)
    dataset = c.prompt_file or (c.datasets[-1] if c.datasets else "")
    b = dataset.encode("utf-8")
    out += struct.pack("<i", len(b)) + b
    return bytes(out)
