"""Reference tier for hostile input: llama.cpp judges the same files.

- Every GGUF our reader refuses, gguf_init_from_file (libggml-base, with the data loaded, as
  llama.cpp's loaders read it) refuses too: the whole corpus plus seeded random byte flips.
- Row validation (formats/rows.py) agrees with ggml_validate_row_data, block by block.
- Where llama_model_quantize refuses a hostile-looking model we refuse, and where it writes a
  file we write the identical file.
"""

from __future__ import annotations

import ctypes
import random
import struct
from functools import lru_cache

import numpy as np
import pytest

import ggml_ref
import hostile_corpus as corpus
import kernels
from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType as T
from quantize_cli.errors import PyquantizeError
from quantize_cli.formats.rows import first_invalid_block
from quantize_cli.sources import open_source

pytestmark = pytest.mark.reference


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


@lru_cache(maxsize=1)
def ggml():
    if ggml_ref.lib() is None:
        return None
    so = ggml_ref.lib()
    so.gguf_init_from_file.restype = ctypes.c_void_p
    so.gguf_init_from_file.argtypes = [ctypes.c_char_p, _InitParams]
    so.gguf_free.argtypes = [ctypes.c_void_p]
    so.ggml_free.argtypes = [ctypes.c_void_p]
    so.ggml_validate_row_data.restype = ctypes.c_bool
    so.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    return so


@pytest.fixture(scope="module")
def so():
    lib = ggml()
    if lib is None:
        pytest.skip(ggml_ref.WHY_ABSENT)
    return lib


def gguf_reads(so, path) -> bool:
    ctx = ctypes.c_void_p()
    g = so.gguf_init_from_file(str(path).encode(), _InitParams(False, ctypes.pointer(ctx)))
    if not g:
        return False
    so.gguf_free(g)
    if ctx.value:
        so.ggml_free(ctx)
    return True


def we_read(path) -> tuple[bool, str]:
    try:
        open_source(path).close()
        return True, ""
    except PyquantizeError as exc:
        return False, str(exc)


def random_flips(n: int, seed: int = 13) -> list[tuple[str, bytes]]:
    """Single-byte corruptions of the header, metadata and tensor infos (the data section holds
    only weights), seeded: the same files every run."""
    blob = corpus.stories_bytes()
    header_end = len(blob) - len(corpus.stories().data)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pos = rng.randrange(4, header_end)
        b = bytearray(blob)
        b[pos] = rng.choice([0x00, 0xFF, 0x7F, 0x80, b[pos] ^ (1 << rng.randrange(8))])
        out.append((f"flip {i} at {pos}", bytes(b)))
    return out


def test_what_we_refuse_gguf_refuses(so, tmp_path):
    files = [(c.id, c.gguf) for c in corpus.all_cases() if c.gguf is not None]
    files += [(f"accepted: {c[0]}", c[1]) for c in corpus.accepted_cases()]
    files += random_flips(400)
    disagree, counts = [], {"both refuse": 0, "both read": 0, "only gguf refuses": 0}
    path = tmp_path / "x.gguf"
    for cid, blob in files:
        path.write_bytes(blob)
        ours, why = we_read(path)
        theirs = gguf_reads(so, path)
        if not ours and theirs:
            disagree.append(f"{cid}: we refuse ({why}), gguf_init_from_file reads it")
        counts["both refuse" if not ours and not theirs else "both read" if ours and theirs else "only gguf refuses"] += 1
    print(f"{len(files)} files: {counts}")
    assert not disagree, "\n".join(disagree)
    assert counts["both refuse"] > 150


@pytest.mark.parametrize("qtype", [t for t in T if t in GGML_QUANT_SIZES and kernels.can_quantize(t)],
                         ids=lambda t: t.name)
def test_row_validation_matches_ggml(so, qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    n = block * max(2, 512 // block)
    rng = np.random.default_rng(int(qtype))
    rows = rng.standard_normal((4, n)).astype(np.float32)
    q = np.ascontiguousarray(kernels.quantize(rows, qtype, np.ones(n, np.float32)).reshape(4, -1))
    patterns = [0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x7BFF, 0xFFFF, 0x0000]
    checked = 0
    for off in range(0, size - 1):
        for pattern in patterns:
            bad = q.copy()
            bad[1, size + off:size + off + 2] = np.frombuffer(struct.pack("<H", pattern), np.uint8)
            ours = first_invalid_block(qtype, bad) is None
            theirs = all(so.ggml_validate_row_data(int(qtype), bad[r].ctypes.data, bad.shape[1]) for r in range(4))
            assert ours == theirs, f"{qtype.name}: bytes {off}..{off + 1} = {pattern:#06x}: ours {ours}, ggml {theirs}"
            checked += 1
    assert checked


def test_weight_cases_as_llama_quantize(so, tmp_path):
    import llama_quantize_ref as ref
    from typer.testing import CliRunner

    from quantize_cli.cli import app
    from quantize_cli.plan import parse_file_type

    if ref.lib() is None:
        pytest.skip("libllama.so is absent: " + ggml_ref.WHY_ABSENT)
    cases = [(c.id, c.gguf, c.build(tmp_path)[3]) for c in corpus.weight_cases()]
    cases += [(cid, blob, ftype) for cid, blob, ftype, _ in corpus.accepted_cases()]
    for cid, blob, ftype in cases:
        src = tmp_path / "in.gguf"
        src.write_bytes(blob)
        ours, theirs = tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
        result = CliRunner().invoke(app, ["convert", str(src), str(ours), ftype, "--quiet"])
        rc, log = ref.quantize(src, theirs, parse_file_type(ftype)[0])
        assert (result.exit_code == 0) == (rc == 0), f"{cid}: ours exit {result.exit_code} ({result.stderr.strip()}), llama.cpp rc {rc}"
        if rc == 0:
            assert ours.read_bytes() == theirs.read_bytes(), f"{cid}: outputs differ"


def _llama_quantize():
    import os
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for c in (os.environ.get("PYQUANTIZE_LLAMA_QUANTIZE"),
              os.path.join(os.environ.get("LLAMA_CPP_BUILD", str(root.parent / "ref" / "build")), "bin", "llama-quantize"),
              shutil.which("llama-quantize")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def test_llama_quantize_tool_agrees_on_the_corpus(tmp_path):
    """Every malformed model of the corpus, every weight case and every accepted case through the
    llama-quantize tool built from the same sources: where it writes a file, we write the same
    bytes; where it refuses, we refuse."""
    import subprocess

    from typer.testing import CliRunner

    from quantize_cli.cli import app

    tool = _llama_quantize()
    if tool is None:
        pytest.skip("llama-quantize is not built (scripts/build_llama_cpp.sh, or set PYQUANTIZE_LLAMA_QUANTIZE "
                    "or LLAMA_CPP_BUILD)")
    files, seen = [], set()
    for c in corpus.all_cases():
        if c.gguf is not None and c.gguf not in seen:
            seen.add(c.gguf)
            argv = c.build(tmp_path)
            files.append((c.id, c.gguf, argv[3] if argv[0] == "convert" else "Q8_0"))
    files += [(f"accepted: {cid}", blob, ftype) for cid, blob, ftype, _ in corpus.accepted_cases()]
    src, ours, theirs = tmp_path / "in.gguf", tmp_path / "ours.gguf", tmp_path / "theirs.gguf"
    disagree, counts = [], {"both refuse": 0, "both write the same": 0}
    for cid, blob, ftype in files:
        src.write_bytes(blob)
        for p in (ours, theirs):
            p.unlink(missing_ok=True)
        result = CliRunner().invoke(app, ["convert", str(src), str(ours), ftype, "1", "--quiet"])
        proc = subprocess.run([str(tool), str(src), str(theirs), ftype, "1"], capture_output=True, timeout=300)
        we_ok, they_ok = result.exit_code == 0, proc.returncode == 0 and theirs.exists()
        if we_ok and they_ok:
            if ours.read_bytes() != theirs.read_bytes():
                disagree.append(f"{cid}: both write, the bytes differ")
            else:
                counts["both write the same"] += 1
        elif not we_ok and not they_ok:
            counts["both refuse"] += 1
        elif we_ok:
            disagree.append(f"{cid}: we write a file, llama-quantize refuses "
                            f"({proc.stderr.decode(errors='replace').strip().splitlines()[-1:]})")
        else:
            disagree.append(f"{cid}: llama-quantize writes a file, we refuse ({result.stderr.strip()})")
    print(f"{len(files)} models: {counts}")
    assert not disagree, "\n".join(disagree)
