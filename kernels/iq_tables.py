"""Grid tables of the IQ quantizers: grids and sign table from the gguf package, and the
quantization-side lookup tables (kmap, kneighbors) derived from them as llama.cpp derives them
in iq2xs_init_impl / iq3xs_init_impl (ggml-quants.c).

Vocabulary (C names):
- levels: uint8 (grid_size, n): the level index l of each grid element (rank in gguf's grid_map).
  llama.cpp's quantizers work with positions 2*l + 1 (its kgrid_q2xs / kgrid_q3xs bytes).
- kmap: int32 (kmap_size,): for a packed level word u = sum(l_k << bits*k), the grid index when u
  is a grid point, else -(offset + 1) where kneighbors[offset] is the neighbour count and
  kneighbors[offset + 1 : offset + 1 + count] the neighbours, in C's order.
- kneighbors: uint16: for every packed word not on the grid, all grid points whose squared
  distance (in positions) is among the `nwant` smallest distinct distances, sorted by
  (distance, grid index) as C's qsort with iq2_compare_func leaves them. The order decides
  ties in the quantizers' neighbour search, so it is mirrored exactly.

Building is pure NumPy (so NUMBA_DISABLE_JIT changes nothing): 0.1-0.25 s for the 256- to
1024-entry grids, 0.6 s and +50 MB for IQ1_S's 2048. So kmap/kneighbors are kept on disk beside
Numba's cache (NUMBA_CACHE_DIR, else kernels/__pycache__), named by a hash of the grid and the
parameters, and a later process loads them in milliseconds; an unwritable or damaged cache only
means building again. Verified equal to the C tables, entry for entry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import quants as gguf_quants

from .gguf_compat import GGMLQuantizationType as T

# llama.cpp's parameters per type: (bits per level in the packed word, kmap_size, nwant).
# iq2xs_init_impl: kmap_size 43692; nwant 3 for IQ1_S/IQ1_M, 1 for IQ2_S, else 2.
# iq3xs_init_impl: kmap_size 4096; nwant 2 for the 256 grid (IQ3_XXS), 3 for 512 (IQ3_S).
PARAMS = {
    T.IQ2_XXS: (2, 43692, 2),
    T.IQ2_XS: (2, 43692, 2),
    T.IQ2_S: (2, 43692, 1),
    T.IQ1_S: (2, 43692, 3),
    T.IQ1_M: (2, 43692, 3),
    T.IQ3_XXS: (3, 4096, 2),
    T.IQ3_S: (3, 4096, 3),
}


def _quant_class(qtype: T):
    cls = gguf_quants._type_traits[T(qtype)]
    cls.init_grid()
    return cls


def grid_values(qtype: T) -> np.ndarray:
    """The dequantization grid (iq2xxs_grid, iq3s_grid, ...) as float32 (grid_size, n)."""
    cls = _quant_class(qtype)
    return np.ascontiguousarray(cls.grid.reshape(cls.grid_shape), dtype=np.float32)


def grid_levels(qtype: T) -> np.ndarray:
    """Level index of every grid element, uint8 (grid_size, n): llama.cpp's kgrid_* tables unpacked."""
    cls = _quant_class(qtype)
    grid_map = np.array(cls.grid_map, dtype=np.float32)
    values = cls.grid.reshape(cls.grid_shape)
    levels = np.argmax(values[..., None] == grid_map, axis=-1)
    assert np.array_equal(grid_map[levels], values), qtype
    return np.ascontiguousarray(levels, dtype=np.uint8)


def ksigns() -> np.ndarray:
    """ksigns_iq2xs: 7 sign bits -> 8 sign bits with even parity, uint8 (128,)."""
    return np.frombuffer(gguf_quants.IQ2_XXS.ksigns, dtype=np.uint8).copy()


def kmap_kneighbors(levels: np.ndarray, bits: int, kmap_size: int, nwant: int) -> tuple[np.ndarray, np.ndarray]:
    """kmap and kneighbors for a grid of level indices, as iq2xs_init_impl / iq3xs_init_impl build them.

    levels: (grid_size, n) level indices; bits: bits per level in a packed word (2 or 3);
    kmap_size and nwant: the C's constants for that grid (see PARAMS)."""
    levels = np.asarray(levels, dtype=np.int64)
    grid_size, n = levels.shape
    shifts = bits * np.arange(n)
    pos_grid = 2 * levels + 1  # kgrid_q2xs / kgrid_q3xs bytes

    kmap = np.full(kmap_size, -1, dtype=np.int64)
    for i, index in enumerate((levels << shifts).sum(axis=1)):  # in order: a repeated point keeps the last index
        kmap[index] = i

    off_grid = np.nonzero(kmap < 0)[0]
    pos_grid_f = pos_grid.astype(np.float32)
    grid_norm = (pos_grid_f * pos_grid_f).sum(axis=1)
    counts, neighbours = [], []
    chunk = 1024  # off-grid words per step: (chunk, grid_size) temporaries; 4096 peaked at +160 MB for IQ1_S
    for start in range(0, off_grid.size, chunk):
        words = off_grid[start:start + chunk]
        pos = (2 * ((words[:, None] >> shifts) & ((1 << bits) - 1)) + 1).astype(np.float32)  # (m, n)
        # squared distances to every grid point, exact: small integers in float32
        d2 = (pos * pos).sum(axis=1)[:, None] + grid_norm[None, :] - 2 * (pos @ pos_grid_f.T)
        d2 = d2.astype(np.int16)  # (m, grid_size); at most 8 * 14**2
        # C keeps the points whose distance is among the nwant smallest distinct ones
        threshold = d2.min(axis=1)
        for _ in range(nwant - 1):
            larger = np.where(d2 > threshold[:, None], d2, np.int16(np.iinfo(np.int16).max)).min(axis=1)
            threshold = np.where(larger == np.iinfo(np.int16).max, threshold, larger)
        rows, cols = np.nonzero(d2 <= threshold[:, None])
        # ... in the order qsort with iq2_compare_func leaves them: by (d2, j)
        key = (rows * np.int64(2**15) + d2[rows, cols]) * grid_size + cols
        counts.append(np.bincount(rows, minlength=len(words)))
        neighbours.append(cols[np.argsort(key, kind="stable")])
    counts = np.concatenate(counts)
    neighbours = np.concatenate(neighbours)

    # the C layout: for each off-grid word in order, [count, neighbour...]
    offsets = np.concatenate([[0], np.cumsum(counts + 1)[:-1]])
    kneighbors = np.empty(int((counts + 1).sum()), dtype=np.uint16)
    kneighbors[offsets] = counts
    slots = np.ones(kneighbors.size, dtype=bool)
    slots[offsets] = False
    kneighbors[slots] = neighbours
    kmap[off_grid] = -(offsets + 1)
    return kmap.astype(np.int32), kneighbors


@dataclass(frozen=True)
class IQTables:
    """Everything a grid quantizer needs for one type; arrays are C-contiguous and read-only."""
    levels: np.ndarray      # uint8 (grid_size, n): level index l per element
    grid: np.ndarray        # int8 (grid_size, n): positions 2*l + 1 (llama.cpp's kgrid_q2xs / kgrid_q3xs)
    values: np.ndarray      # float32 (grid_size, n): dequantization grid
    kmap: np.ndarray        # int32 (kmap_size,)
    kneighbors: np.ndarray  # uint16


@lru_cache(maxsize=None)
def tables(qtype: T) -> IQTables:
    """The tables of one type (IQ1_S and IQ1_M share a grid), built once per process."""
    qtype = T(qtype)
    if qtype == T.IQ1_M:
        return tables(T.IQ1_S)
    bits, kmap_size, nwant = PARAMS[qtype]
    levels = grid_levels(qtype)
    kmap, kneighbors = _cached_kmap_kneighbors(levels, bits, kmap_size, nwant)
    result = IQTables(levels, (2 * levels + 1).astype(np.int8), grid_values(qtype), kmap, kneighbors)
    for array in (result.levels, result.grid, result.values, result.kmap, result.kneighbors):
        array.setflags(write=False)
    return result


_CACHE_FORMAT = b"iq-tables-1"


def cache_dir() -> Path:
    """Where built tables are kept: Numba's cache directory when one is set, else ours."""
    return Path(os.environ.get("NUMBA_CACHE_DIR") or Path(__file__).resolve().parent / "__pycache__")


def _digest(kmap: np.ndarray, kneighbors: np.ndarray) -> bytes:
    return hashlib.sha256(kmap.tobytes() + kneighbors.tobytes()).digest()


def _cached_kmap_kneighbors(levels: np.ndarray, bits: int, kmap_size: int, nwant: int):
    key = hashlib.sha256(_CACHE_FORMAT + repr((bits, kmap_size, nwant, levels.shape)).encode()
                         + np.ascontiguousarray(levels, dtype=np.uint8).tobytes()).hexdigest()[:24]
    path = cache_dir() / f"iq_tables_{key}.npz"
    try:
        with np.load(path) as z:
            kmap, kneighbors, digest = z["kmap"], z["kneighbors"], bytes(z["digest"])
        if (kmap.dtype == np.int32 and kmap.shape == (kmap_size,) and kneighbors.dtype == np.uint16
                and digest == _digest(kmap, kneighbors)):
            return kmap, kneighbors
    except Exception:  # absent, unreadable or damaged (a bad zip, a missing array): build it
        pass
    kmap, kneighbors = kmap_kneighbors(levels, bits, kmap_size, nwant)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".iq_tables_", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, kmap=kmap, kneighbors=kneighbors,
                         digest=np.frombuffer(_digest(kmap, kneighbors), dtype=np.uint8))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:  # a read-only install: build per process, as before
        pass
    return kmap, kneighbors
