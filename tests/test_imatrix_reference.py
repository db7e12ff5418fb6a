"""Reference tier: our imatrix against the llama-imatrix and llama-quantize binaries.

Needs llama.cpp's tools built by scripts/build_llama_cpp.sh (LLAMA_CPP_BIN, default
/work/ref/build/bin); each test skips, saying so, when a binary is absent. Compares, on the same
chunks: every in_sum2 value within 1e-3 of the entry's largest value, identical counts, per-chunk
perplexity within 0.5 %; and that each program reads the other's files.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantize_cli.formats.imatrix_file import load_imatrix
from quantize_cli.imatrix.command import ImatrixOptions, compute_imatrix

pytestmark = pytest.mark.reference

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
STORIES = DATA / "stories260K.gguf"
BIN = Path(os.environ.get("LLAMA_CPP_BIN", "/work/ref/build/bin"))


def tool(name: str) -> Path:
    exe = BIN / name
    if not exe.exists():
        pytest.skip(f"{exe} not found: llama.cpp's tools are not built (scripts/build_llama_cpp.sh)")
    return exe


def llama_imatrix(model: Path, text: Path, out: Path, *extra: str) -> list[float]:
    cmd = [str(tool("llama-imatrix")), "-m", str(model), "-f", str(text), "-o", str(out), "-c", "512",
           "-t", "1", *extra]
    # llama.cpp logs from a worker thread; once in a full test run (not reproduced in 25 runs
    # under load) its log lacked the last chunk's perplexity. A log with every chunk is complete;
    # otherwise run it again.
    expected = int(extra[extra.index("--chunks") + 1]) if "--chunks" in extra else None
    for _ in range(3):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ppl = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", proc.stdout + proc.stderr)]
        if expected is None or len(ppl) >= expected:
            break
    return ppl


PLAIN = ("-ctk", "f32", "-ctv", "f32", "-fa", "off")


def compare(ours_path: Path, theirs_path: Path, ours_ppl, theirs_ppl, tol: float = 1e-3) -> float:
    ours, theirs = load_imatrix(ours_path), load_imatrix(theirs_path)
    assert (ours.chunk_count, ours.chunk_size, ours.datasets) == (theirs.chunk_count, theirs.chunk_size,
                                                                   theirs.datasets)
    assert sorted(ours.sums) == sorted(theirs.sums)
    assert {n: list(c) for n, c in ours.counts.items()} == {n: list(c) for n, c in theirs.counts.items()}
    worst = max(float(np.abs(ours.sums[n] - theirs.sums[n]).max() / np.abs(theirs.sums[n]).max())
                for n in theirs.sums)
    assert worst < tol
    assert len(ours_ppl) == len(theirs_ppl)
    assert max(abs(a - b) / b for a, b in zip(ours_ppl, theirs_ppl)) < 0.005
    return worst


def test_stories260k_parity(tmp_path):
    text = DATA / "calibration-en.txt"
    theirs_ppl = llama_imatrix(STORIES, text, tmp_path / "theirs.gguf", "--chunks", "6", "--process-output", *PLAIN)
    result = compute_imatrix(STORIES, ImatrixOptions(text_file=text, output=tmp_path / "ours.gguf", chunks=6,
                                                     process_output=True))
    compare(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", result.chunk_ppl, theirs_ppl)


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe") / "bpe-llama.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_bpe_llama.py"), str(DATA / "ggml-vocab-gpt-2.gguf"),
                    str(out)], check=True, capture_output=True)
    return out


def test_bpe_llama_parity(tmp_path, bpe_llama):
    text = DATA / "calibration-en.txt"
    theirs_ppl = llama_imatrix(bpe_llama, text, tmp_path / "theirs.gguf", "--chunks", "3", *PLAIN)
    result = compute_imatrix(bpe_llama, ImatrixOptions(text_file=text, output=tmp_path / "ours.gguf", chunks=3))
    compare(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", result.chunk_ppl, theirs_ppl)


def test_from_chunk_and_parse_special(tmp_path):
    text = DATA / "calibration-en.txt"
    theirs_ppl = llama_imatrix(STORIES, text, tmp_path / "theirs.gguf", "--chunks", "2", "--chunk", "3",
                               "--parse-special", *PLAIN)
    result = compute_imatrix(STORIES, ImatrixOptions(text_file=text, output=tmp_path / "ours.gguf", chunks=2,
                                                     from_chunk=3, parse_special=True))
    compare(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", result.chunk_ppl, theirs_ppl)


def test_kv_f16_mimic_is_closer_to_the_default_run(tmp_path):
    """llama-imatrix's defaults (F16 KV cache, flash attention auto) against our plain and --kv-f16 runs."""
    text = DATA / "calibration-en.txt"
    llama_imatrix(STORIES, text, tmp_path / "default.gguf", "--chunks", "2")
    compute_imatrix(STORIES, ImatrixOptions(text_file=text, output=tmp_path / "plain.gguf", chunks=2))
    compute_imatrix(STORIES, ImatrixOptions(text_file=text, output=tmp_path / "f16.gguf", chunks=2, kv_f16=True))
    theirs = load_imatrix(tmp_path / "default.gguf").sums

    def worst(path):
        ours = load_imatrix(path).sums
        return max(float(np.abs(ours[n] - theirs[n]).max() / np.abs(theirs[n]).max()) for n in theirs)

    assert worst(tmp_path / "f16.gguf") < worst(tmp_path / "plain.gguf")


def test_llama_quantize_reads_our_files(tmp_path):
    exe = tool("llama-quantize")
    text = DATA / "calibration-en.txt"
    compute_imatrix(STORIES, ImatrixOptions(text_file=text, output=tmp_path / "ours.gguf", chunks=2))
    compute_imatrix(STORIES, ImatrixOptions(text_file=text, output=tmp_path / "ours.dat", chunks=2,
                                            output_format="dat"))
    for imatrix in ("ours.gguf", "ours.dat"):
        proc = subprocess.run([str(exe), "--imatrix", str(tmp_path / imatrix), str(STORIES),
                               str(tmp_path / "q.gguf"), "Q4_0", "1"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "loaded 35 importance matrix entries" in proc.stdout + proc.stderr


def test_llama_imatrix_merges_our_file(tmp_path):
    """llama-imatrix --in-file reads our GGUF and writes back the same data."""
    text = DATA / "calibration-en.txt"
    compute_imatrix(STORIES, ImatrixOptions(text_file=text, output=tmp_path / "ours.gguf", chunks=2))
    proc = subprocess.run([str(tool("llama-imatrix")), "-m", str(STORIES), "--in-file", str(tmp_path / "ours.gguf"),
                           "-o", str(tmp_path / "back.gguf")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "back.gguf").read_bytes() == (tmp_path / "ours.gguf").read_bytes()


def test_token_ids_for_the_bpe_llama(bpe_llama):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: no reference tokenizer")
    from llama_cpp import Llama

    from quantize_cli.runtime.tokenizer import tokenizer_from_gguf

    text = (DATA / "calibration-en.txt").read_text(encoding="utf-8")[:-1]
    ref = Llama(model_path=str(bpe_llama), vocab_only=True, verbose=False)
    assert tokenizer_from_gguf(bpe_llama).encode(text) == ref.tokenize(text.encode(), add_bos=True, special=False)


# --- the same collection through llama-cpp-python's libllama (no binary needed) -------------------

def _ctypes_ref():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python): no reference library")
    sys.path.insert(0, str(ROOT / "scripts"))
    import llama_imatrix_ctypes

    return llama_imatrix_ctypes


@pytest.fixture(scope="module")
def qwen2_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen2") / "qwen2.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_bpe_llama.py"), str(DATA / "ggml-vocab-gpt-2.gguf"),
                    str(out), "--arch", "qwen2"], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("which", ["stories260K", "bpe_llama", "qwen2_model"])
def test_parity_through_libllama(tmp_path, which, request):
    ref = _ctypes_ref()
    model = STORIES if which == "stories260K" else request.getfixturevalue(which)
    text_path = DATA / "calibration-en.txt"
    text = text_path.read_text(encoding="utf-8")[:-1]
    stats, theirs_ppl = ref.collect(model, text, chunks=3, process_output=True)
    ref.save(stats, tmp_path / "theirs.gguf", str(text_path), 512)
    # the libllama driver runs one chunk per batch: as llama-imatrix -b 512
    result = compute_imatrix(model, ImatrixOptions(text_file=text_path, output=tmp_path / "ours.gguf", chunks=3,
                                                   process_output=True, batch_size=512))
    worst = compare(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", result.chunk_ppl, theirs_ppl)
    assert worst < 1e-4


def test_kv_f16_mimic_through_libllama(tmp_path):
    """--kv-f16 reproduces llama.cpp's default run (F16 KV cache, tiled flash attention): layer 0
    agrees to float rounding, and the perplexity is far closer than the F32 run's. Deeper layers
    drift by up to ~5e-4: a K or V value a hair from an f16 rounding boundary rounds the other way."""
    ref = _ctypes_ref()
    text_path = DATA / "calibration-en.txt"
    stats, theirs_ppl = ref.collect(STORIES, text_path.read_text(encoding="utf-8")[:-1], chunks=2, defaults=True)
    ref.save(stats, tmp_path / "default.gguf", str(text_path), 512)
    plain = compute_imatrix(STORIES, ImatrixOptions(text_file=text_path, output=tmp_path / "plain.gguf", chunks=2))
    mimic = compute_imatrix(STORIES, ImatrixOptions(text_file=text_path, output=tmp_path / "f16.gguf", chunks=2,
                                                    kv_f16=True))
    theirs = load_imatrix(tmp_path / "default.gguf").sums

    def worst(path, prefix=""):
        ours = load_imatrix(path).sums
        return max(float(np.abs(ours[n] - theirs[n]).max() / np.abs(theirs[n]).max()) for n in theirs
                   if n.startswith(prefix))

    assert worst(tmp_path / "f16.gguf", "blk.0.") < 1e-5 < worst(tmp_path / "plain.gguf", "blk.0.")
    assert worst(tmp_path / "f16.gguf") < worst(tmp_path / "plain.gguf")
    for ours_f16, ours_f32, t in zip(mimic.chunk_ppl, plain.chunk_ppl, theirs_ppl):
        assert abs(ours_f16 - t) < 0.1 * abs(ours_f32 - t)
