"""The IQ grid tables (kernels/iq_tables.py) against llama.cpp's.

Default tier: the kmap/kneighbors we derive equal llama.cpp's own arrays (their SHA-256, taken
from iq2xs_init_impl / iq3xs_init_impl of a ggml build), and a slow obvious search agrees with
them on sampled words. Reference tier: inputs built to land on every grid point and on every
off-grid level word quantize to ggml's bytes, so every table entry the quantizers can reach is
exercised through the real thing."""

import hashlib

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

import kernels
from kernels import iq_tables

# SHA-256 prefixes of llama.cpp's arrays after ggml_quantize_init: kmap (int32, kmap_size entries)
# and kneighbors (uint16, its total length), as the C leaves them in iq2_data / iq3_data.
C_TABLES = {
    T.IQ2_XXS: ("709b1f45e8457bc27656b3bc37ea881f", "fb8727a3ecbf6124f63c263d0c1b0592", 417400),
    T.IQ2_XS: ("d6b796100158d2c7de48d0a2d5c38efc", "b94f3f7601b0130674b6e0b7fdccc240", 551722),
    T.IQ2_S: ("bdd7645b9d68dcd282605e039b72ed72", "7e06788dce7035c2d4fdc983be81429c", 209100),
    T.IQ1_S: ("732ed77320813d3250cbecd7235db1a2", "9a5d4a8807610d7ecdb328c531a60a6e", 1375339),
    T.IQ3_XXS: ("2384bfe6ea71e4257727bfd5ec66d358", "4b54395c1c3e9766e6cbb7f2f84a3ebb", 22825),
    T.IQ3_S: ("53eb24b689961eea61a0a46257a182ac", "662208b0d2ce2fa3346c5fb672db4be1", 28317),
}

GRID_TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S]


def _sha(array, dtype):
    return hashlib.sha256(np.ascontiguousarray(array, dtype=dtype).tobytes()).hexdigest()[:32]


@pytest.mark.parametrize("qtype", list(C_TABLES), ids=[t.name for t in C_TABLES])
def test_tables_equal_llama_cpp(qtype):
    kmap_sha, kneighbors_sha, size = C_TABLES[qtype]
    t = iq_tables.tables(qtype)
    assert t.kneighbors.size == size
    assert _sha(t.kmap, "<i4") == kmap_sha
    assert _sha(t.kneighbors, "<u2") == kneighbors_sha


def _naive_neighbours(levels, bits, nwant, word):
    """The C's loop, spelled out: all grid points, sorted by (distance, index), cut after nwant distances."""
    n = levels.shape[1]
    pos = [2 * ((word >> (bits * k)) & ((1 << bits) - 1)) + 1 for k in range(n)]
    dist = sorted((sum((2 * int(levels[j, k]) + 1 - pos[k]) ** 2 for k in range(n)), j) for j in range(len(levels)))
    out, distinct = [], []
    for d2, j in dist:
        if not distinct or d2 > distinct[-1]:
            if len(distinct) == nwant:
                break
            distinct.append(d2)
        out.append(j)
    return out


@pytest.mark.parametrize("qtype", GRID_TYPES, ids=[t.name for t in GRID_TYPES])
def test_neighbour_lists_match_naive_search(qtype):
    bits, kmap_size, nwant = iq_tables.PARAMS[qtype]
    t = iq_tables.tables(qtype)
    n = t.levels.shape[1]
    words = (t.levels.astype(np.int64) << (bits * np.arange(n))).sum(axis=1)
    assert np.array_equal(t.kmap[words], np.arange(len(t.levels)))  # every grid point maps to itself
    assert np.count_nonzero(t.kmap >= 0) == len(t.levels)
    assert np.array_equal(t.grid, 2 * t.levels.astype(np.int8) + 1)
    rng = np.random.default_rng(7)
    off_grid = np.nonzero(t.kmap < 0)[0]
    sample = np.concatenate([off_grid[:5], off_grid[-5:], rng.choice(off_grid, 40, replace=False)])
    for word in sample:
        off = -int(t.kmap[word]) - 1
        got = t.kneighbors[off + 1:off + 1 + int(t.kneighbors[off])].tolist()
        assert got == _naive_neighbours(t.levels, bits, nwant, int(word)), f"{qtype.name} word {word}"


def _on_and_off_grid_rows(qtype, rng):
    """Rows whose groups sit on every grid point, then on every level word of the rounding range
    (off-grid ones reach their neighbour lists), at their positions 2l+1 with random signs, a little
    jitter and a random scale per row."""
    t = iq_tables.tables(qtype)
    n = t.levels.shape[1]
    nlev = 3 if n == 8 else 8  # the quantizers clamp levels to [0, kMaxQ - 1]
    every_word = np.stack(np.meshgrid(*[np.arange(nlev)] * n, indexing="ij"), axis=-1).reshape(-1, n)
    groups = np.concatenate([t.levels.astype(np.int64), rng.permutation(every_word)])
    x = (2 * groups + 1).astype(np.float64)
    x *= rng.choice([-1.0, 1.0], size=x.shape) * (1 + 0.02 * rng.standard_normal(x.shape))
    x = x.reshape(-1)
    x = np.concatenate([x, rng.standard_normal((-x.size) % 1024)])
    rows = x.reshape(-1, 1024) * np.exp(rng.uniform(-3, 3, size=(x.size // 1024, 1)))
    return np.ascontiguousarray(rows, dtype=np.float32)


@pytest.mark.reference
@pytest.mark.parametrize("imatrix_kind", ["none", "positive", "with_zeros"])
@pytest.mark.parametrize("qtype", GRID_TYPES, ids=[t.name for t in GRID_TYPES])
def test_every_grid_point_and_level_word_matches_ggml(ggml, qtype, imatrix_kind):
    if imatrix_kind == "none" and ggml.lib().ggml_quantize_requires_imatrix(int(qtype)):
        pytest.skip(f"{qtype.name} requires an imatrix")
    rng = np.random.default_rng(int(qtype))
    rows = _on_and_off_grid_rows(qtype, rng)
    imatrix = None if imatrix_kind == "none" else (rng.random(rows.shape[1]) * 4 + 0.1).astype(np.float32)
    if imatrix_kind == "with_zeros":
        # zero weights make neighbours tie exactly, so this is where the neighbour order shows:
        # reversing every list changes nearly every block here (and none with positive weights)
        imatrix[rng.random(imatrix.size) < 0.3] = 0.0
    ref = ggml.quantize(rows, qtype, imatrix)
    problem = ggml.first_difference(kernels.quantize(rows, qtype, imatrix), ref, GGML_QUANT_SIZES[qtype][1])
    assert problem is None, f"{qtype.name} imatrix {imatrix_kind}: {problem}"
    dq = kernels.dequantize(ref, qtype, rows.shape[1])
    np.testing.assert_array_equal(dq.view(np.uint32), ggml.dequantize(ref, qtype, rows.shape[1]).view(np.uint32))


@pytest.mark.reference
@pytest.mark.parametrize("qtype", GRID_TYPES, ids=[t.name for t in GRID_TYPES])
def test_needs_imatrix_as_ggml_says(ggml, qtype):
    assert kernels.get(qtype).needs_imatrix == bool(ggml.lib().ggml_quantize_requires_imatrix(int(qtype)))


def test_missing_imatrix_is_refused():
    x = np.ones((1, 256), dtype=np.float32)
    for qtype in (T.IQ2_XXS, T.IQ2_XS):
        with pytest.raises(ValueError, match="importance matrix"):
            kernels.quantize(x, qtype, None)


def test_tables_cache_round_trip(tmp_path, monkeypatch):
    """Built tables are kept under NUMBA_CACHE_DIR and read back instead of rebuilt; a damaged
    file is rebuilt (and rewritten), an unwritable place only means building every time."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    levels = iq_tables.grid_levels(T.IQ3_XXS)
    bits, kmap_size, nwant = iq_tables.PARAMS[T.IQ3_XXS]
    want = iq_tables.kmap_kneighbors(levels, bits, kmap_size, nwant)

    got = iq_tables._cached_kmap_kneighbors(levels, bits, kmap_size, nwant)
    files = list(tmp_path.glob("iq_tables_*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob(".iq_tables_*"))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want))

    def no_build(*args):
        raise AssertionError("rebuilt although cached")

    with monkeypatch.context() as m:
        m.setattr(iq_tables, "kmap_kneighbors", no_build)
        cached = iq_tables._cached_kmap_kneighbors(levels, bits, kmap_size, nwant)
    assert all(np.array_equal(a, b) for a, b in zip(cached, want))

    for damage in (b"not a zip", files[0].read_bytes()[:-100]):
        files[0].write_bytes(damage)
        rebuilt = iq_tables._cached_kmap_kneighbors(levels, bits, kmap_size, nwant)
        assert all(np.array_equal(a, b) for a, b in zip(rebuilt, want))
    with monkeypatch.context() as m:  # ... and the rebuild was written back
        m.setattr(iq_tables, "kmap_kneighbors", no_build)
        iq_tables._cached_kmap_kneighbors(levels, bits, kmap_size, nwant)

    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocker / "sub"))  # cannot be created
    again = iq_tables._cached_kmap_kneighbors(levels, bits, kmap_size, nwant)
    assert all(np.array_equal(a, b) for a, b in zip(again, want))
