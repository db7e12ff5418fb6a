"""The output guard (formats/output.py), the row validation (formats/rows.py), and the inputs
llama-quantize accepts that we must accept too (hostile-looking, but valid)."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import hostile_corpus as corpus
import kernels
from kernels.gguf_compat import GGML_QUANT_SIZES, GGMLQuantizationType as T
from quantize_cli.cli import app
from quantize_cli.errors import OutputError
from quantize_cli.formats import output
from quantize_cli.formats.rows import first_invalid_block
from quantize_cli.sources import open_source


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- atomic outputs ------------------------------------------------------------------------------

def test_unnamed_temp_file_while_writing(tmp_path):
    out = tmp_path / "o.bin"
    with output.atomic_outputs([out]) as (tmp,):
        with open(tmp, "r+b") as f:
            f.write(b"data")
        if hasattr(os, "O_TMPFILE"):
            assert entries(tmp_path) == [], "O_TMPFILE: nothing is visible until the file is complete"
    assert out.read_bytes() == b"data"
    assert entries(tmp_path) == ["o.bin"]
    assert out.stat().st_mode & 0o777 == 0o666 & ~output._umask()


@pytest.mark.parametrize("unnamed", [True, False])
def test_failure_leaves_target_and_directory_as_they_were(tmp_path, monkeypatch, unnamed):
    if not unnamed:
        monkeypatch.setenv("PYQUANTIZE_NO_TMPFILE", "1")
    out = tmp_path / "o.bin"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with output.atomic_outputs([out]) as (tmp,):
            with open(tmp, "r+b") as f:
                f.write(b"partial")
            raise RuntimeError("stop")
    assert out.read_bytes() == b"previous"
    assert entries(tmp_path) == ["o.bin"]


def test_named_fallback_is_locked_while_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("PYQUANTIZE_NO_TMPFILE", "1")
    out = tmp_path / "o.bin"
    with output.atomic_outputs([out]) as (tmp,):
        assert tmp.parent == tmp_path and tmp.name.startswith(".o.bin.pyquantize-") and tmp.name.endswith(".part")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            with pytest.raises(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the live run holds it
        finally:
            os.close(fd)
        with open(tmp, "r+b") as f:
            f.write(b"x")
    assert entries(tmp_path) == ["o.bin"]


def test_stale_named_temps_are_removed_unless_locked(tmp_path, monkeypatch):
    monkeypatch.setenv("PYQUANTIZE_NO_TMPFILE", "1")
    old = time.time() - 3600
    dead = tmp_path / ".o.bin.pyquantize-dead1.part"
    alive = tmp_path / ".o.bin.pyquantize-live2.part"
    young = tmp_path / ".o.bin.pyquantize-new3.part"
    other = tmp_path / ".o.bin.somebody-else.part"  # not our naming: never touched
    for p in (dead, alive, young, other):
        p.write_bytes(b"x" * 100)
    for p in (dead, alive, other):
        os.utime(p, (old, old))
    holder = os.open(alive, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with output.atomic_outputs([tmp_path / "o.bin"]) as (tmp,):
            with open(tmp, "r+b") as f:
                f.write(b"new")
    finally:
        os.close(holder)
    assert entries(tmp_path) == sorted([alive.name, young.name, other.name, "o.bin"])


def test_disk_full_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "o.bin"

    with pytest.raises(OutputError, match="No space left on device"):
        with output.atomic_outputs([out]) as (tmp,):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert entries(tmp_path) == []


@pytest.mark.parametrize("command", ["convert", "imatrix"])
def test_file_size_limit_is_one_line(tmp_path, command):
    """A real write failure (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC) in a real process."""
    (tmp_path / "in.gguf").write_bytes(corpus.stories_bytes())
    (tmp_path / "text.txt").write_bytes(corpus.TEXT.read_bytes()[:20000])
    if command == "convert":
        argv = ["convert", "in.gguf", "o.gguf", "Q8_0", "--quiet"]
    else:
        argv = ["imatrix", "in.gguf", "-f", "text.txt", "-o", "o.gguf", "-c", "64", "--chunks", "1", "-q", "--no-ppl"]
    # a first run without the limit fills Numba's cache (its own writes would hit the limit too)
    warm = subprocess.run([sys.executable, "-m", "quantize_cli.cli", *argv], cwd=tmp_path, capture_output=True,
                          timeout=300)
    assert warm.returncode == 0, warm.stderr
    (tmp_path / "o.gguf").unlink()
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); "
            "from quantize_cli.cli import main; sys.argv = ['pyquantize'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "File too large" in lines[0], proc.stderr
    assert entries(tmp_path) == ["in.gguf", "text.txt"]


def test_out_equal_to_an_input_in_every_spelling(tmp_path, monkeypatch):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"model")
    (tmp_path / "d").mkdir()
    os.symlink(src, tmp_path / "s.gguf")
    os.link(src, tmp_path / "h.gguf")
    monkeypatch.chdir(tmp_path)
    for spelling in ("m.gguf", "./m.gguf", "d/../m.gguf", str(src), "s.gguf", "h.gguf"):
        with pytest.raises(OutputError, match="output is the input"):
            output.refuse_overwriting_inputs([Path(spelling)], [src])
    output.refuse_overwriting_inputs([tmp_path / "other.gguf"], [src, None])


# --- row validation ------------------------------------------------------------------------------

# one type per scale layout (d first, d+m, d at the end, d+dmin at the end, the IQ1_M nibbles,
# E8M0); the reference tier checks every type against ggml_validate_row_data
LAYOUT_TYPES = [T.Q4_0, T.Q4_1, T.Q2_K, T.Q6_K, T.TQ1_0, T.IQ1_M, T.MXFP4]


@pytest.mark.parametrize("qtype", LAYOUT_TYPES, ids=lambda t: t.name)
def test_valid_rows_pass_and_an_inf_scale_is_found(qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    n = block * max(2, 512 // block)
    rows = np.random.default_rng(5).standard_normal((3, n)).astype(np.float32)
    imatrix = np.ones(n, np.float32) if qtype == T.IQ1_M else None
    q = kernels.quantize(rows, qtype, imatrix).reshape(3, -1)
    assert first_invalid_block(qtype, q) is None
    # a scale that no finite input can give: every byte pair of block 1 of row 2 set to fp16 Inf
    # must either be found there or leave the dequantized block finite (a quant byte, not a scale)
    for off in range(0, size - 1):
        bad = q.copy()
        blk = bad[2, size:2 * size]
        blk[off:off + 2] = np.frombuffer(struct.pack("<H", 0x7C00), np.uint8)
        hit = first_invalid_block(qtype, bad)
        values = kernels.dequantize(bad[2:3], qtype, n)[0, block:2 * block]
        if hit is not None:
            assert (hit.row, hit.block) == (2, 1)
        else:
            assert np.isfinite(values).all(), f"{qtype.name}: Inf at byte {off} not found"


def test_float_rows():
    x = np.ones((2, 8), np.float32)
    assert first_invalid_block(T.F32, x.view(np.uint8)) is None
    x[1, 5] = np.inf
    hit = first_invalid_block(T.F32, x.view(np.uint8))
    assert (hit.row, hit.block, hit.what) == (1, 5, "inf")
    h = np.ones((1, 4), np.float16)
    h[0, 2] = np.float16(np.nan)
    assert first_invalid_block(T.F16, h.view(np.uint8)).what == "nan"
    b = np.array([[0x3F80, 0x7F80]], np.uint16)  # BF16 1.0, +Inf
    assert first_invalid_block(T.BF16, b.view(np.uint8)).what == "inf"


# --- hostile-looking input that llama-quantize accepts -------------------------------------------

def convert(tmp_path, blob: bytes, ftype: str):
    src = tmp_path / "in.gguf"
    src.write_bytes(blob)
    out = tmp_path / f"out-{ftype}.gguf"
    result = CliRunner().invoke(app, ["convert", str(src), str(out), ftype, "--quiet"])
    return result, out


@pytest.mark.parametrize("case_id", [c[0] for c in corpus.accepted_cases()])
def test_accepted(tmp_path, case_id):
    _, blob, ftype, same_as = next(c for c in corpus.accepted_cases() if c[0] == case_id)
    result, out = convert(tmp_path, blob, ftype)
    assert result.exit_code == 0, result.stderr
    open_source(out).close()
    if same_as is not None:
        (tmp_path / "ref").mkdir()
        _, ref = convert(tmp_path / "ref", same_as, ftype)
        assert out.read_bytes() == ref.read_bytes()
