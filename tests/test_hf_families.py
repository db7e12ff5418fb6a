"""Today's Hugging Face model families against llama.cpp's convert_hf_to_gguf.py (reference tier).

For each family in scripts/make_hf_checkpoint.py's FAMILIES: a tiny checkpoint with random
weights, written by transformers beside the family's real config.json layout, with tokenizer files
made from a llama.cpp vocabulary and a real chat template. convert_hf_to_gguf.py (from the llama.cpp
sources, run with the torch interpreter) converts it; our HFSource must give the same tensors
(names, order, shapes, types, bytes) and the same metadata (keys, order, types, values), and our
`convert DIR OUT F32|BF16` the same file content. Our one-pass Q4_K_M must equal
convert_hf_to_gguf.py followed by llama-quantize, byte for byte.

Needs: a Python with torch and transformers (PYQUANTIZE_TORCH_PYTHON, default /work/torchenv/bin/python;
see the README's "Hugging Face checkpoints" section for how to make one), llama.cpp's sources
(LLAMA_CPP_DIR) and, for Q4_K_M, llama-quantize (LLAMA_QUANTIZE or llama-cpp-python's libllama).
Each is skipped with the reason when absent. Checkpoints and reference GGUFs are cached in
PYQUANTIZE_HF_FAMILY_CACHE when set (keyed by the generator script's content), else per session.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from typer.testing import CliRunner

from quantize_cli.cli import app
from quantize_cli.sources.hf import HFSource

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_hf_checkpoint.py"
LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR", "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp"))
TORCH_PYTHON = Path(os.environ.get("PYQUANTIZE_TORCH_PYTHON", "/work/torchenv/bin/python"))

FAMILIES = ["qwen3", "gemma2", "gemma3", "gemma3mm", "phi3", "granite", "olmo2", "smollm3", "mixtral",
            "qwen3moe", "qwen2moe", "mistral3", "gptoss"]

# the quicker part of the tier: one dense, one Gemma, one MoE family at the source level (`-m reference -k`)
QUICK = {"qwen3", "gemma3", "mixtral"}


def _families(quick: set[str] = QUICK) -> list:
    return [f if f in quick else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]


# every case builds a checkpoint with torch and runs convert_hf_to_gguf.py, then reads both files with
# gguf's reader (minutes on Gemma's 262k vocabulary): the whole tier is slow, run by hand or by `make test-all`
pytestmark = [pytest.mark.reference, pytest.mark.slow]


@lru_cache(maxsize=1)
def _why_no_reference() -> str | None:
    if not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
        return f"llama.cpp's convert_hf_to_gguf.py is not at {LLAMA_CPP} (set LLAMA_CPP_DIR)"
    if not TORCH_PYTHON.is_file():
        return (f"no torch interpreter at {TORCH_PYTHON} (set PYQUANTIZE_TORCH_PYTHON; the README says how to "
                f"make one): convert_hf_to_gguf.py needs torch")
    probe = subprocess.run([str(TORCH_PYTHON), "-c", "import torch, transformers, gguf, sentencepiece"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"{TORCH_PYTHON} lacks torch/transformers/gguf/sentencepiece: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def _need_reference() -> None:
    if (why := _why_no_reference()) is not None:
        pytest.skip(why)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    key = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]
    root = os.environ.get("PYQUANTIZE_HF_FAMILY_CACHE")
    path = Path(root) / key if root else tmp_path_factory.mktemp("hf-families")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"{what} failed:\n{done.stderr[-3000:]}"


def checkpoint(cache: Path, family: str, dtype: str) -> Path:
    _need_reference()
    out = cache / f"{family}-{dtype}"
    if not (out / "config.json").is_file():
        tmp = cache / f".{family}-{dtype}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _run([str(TORCH_PYTHON), str(SCRIPT), "family", family, str(tmp), "--dtype", dtype], f"making the {family} checkpoint")
        tmp.rename(out)
    return out


def reference(cache: Path, family: str, dtype: str, outtype: str) -> Path:
    """convert_hf_to_gguf.py --outtype OUTTYPE of the family's checkpoint."""
    folder = checkpoint(cache, family, dtype)
    out = cache / f"{family}-{dtype}.ref-{outtype}.gguf"
    if not out.is_file():
        tmp = out.with_suffix(".tmp")
        _run([str(TORCH_PYTHON), str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype,
              "--outfile", str(tmp)], f"convert_hf_to_gguf.py on {family}")
        tmp.rename(out)
    return out


def gguf_kv(path: Path) -> list[tuple[str, object]]:
    r = GGUFReader(path)
    return [(k, (tuple(int(t) for t in f.types), f.contents())) for k, f in r.fields.items() if not k.startswith("GGUF.")]


def gguf_tensors(path: Path) -> list[tuple[str, tuple[int, ...], int, bytes]]:
    r = GGUFReader(path)
    return [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), bytes(np.asarray(t.data).reshape(-1).view(np.uint8)))
            for t in r.tensors]


def first_difference(want: list, got: list, what: str) -> str:
    names_w, names_g = [x[0] for x in want], [x[0] for x in got]
    if names_w != names_g:
        missing = [n for n in names_w if n not in names_g]
        extra = [n for n in names_g if n not in names_w]
        return f"{what} names/order differ: missing {missing[:5]}, extra {extra[:5]}, order {names_w[:6]} vs {names_g[:6]}"
    for a, b in zip(want, got):
        if a != b:
            return f"{what} {a[0]} differs: {str(a[1:])[:300]} vs {str(b[1:])[:300]}"
    return ""


def our_source_as_gguf(folder: Path, path: Path) -> Path:
    """HFSource's pairs and tensors, unconverted, written in its order (no planner, no writer
    reordering): what the source claims convert_hf_to_gguf.py writes."""
    import gguf

    with HFSource(folder) as src:
        w = gguf.GGUFWriter(path, src.arch_name)
        w.kv_data[0].clear()
        for kv in src.kv:
            w.add_key_value(kv.key, kv.get(), kv.vtype, sub_type=kv.item_type)
        for t in src.tensors:
            data = t.load()
            w.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(np.float32), data.nbytes, raw_dtype=t.type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in src.tensors:
            w.write_tensor_data(t.load().view(np.uint8))
        w.close()
    return path


# ------------------------------------------------------------------ the source, pair for pair


@pytest.mark.parametrize("family", _families())
def test_source_equals_convert_hf_to_gguf_f32(cache, tmp_path, family):
    """F32 checkpoint, --outtype f32: every pair and every tensor, in order, byte for byte."""
    ref = reference(cache, family, "F32", "f32")
    ours = our_source_as_gguf(checkpoint(cache, family, "F32"), tmp_path / "ours.gguf")
    assert not (diff := first_difference(gguf_kv(ref), gguf_kv(ours), "metadata")), diff
    assert not (diff := first_difference(gguf_tensors(ref), gguf_tensors(ours), "tensor")), diff


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_source_equals_convert_hf_to_gguf_bf16(cache, tmp_path, family):
    """BF16 checkpoint, --outtype bf16: matrices stay BF16, norms/routers/biases become F32."""
    ref = reference(cache, family, "BF16", "bf16")
    ours = our_source_as_gguf(checkpoint(cache, family, "BF16"), tmp_path / "ours.gguf")
    assert not (diff := first_difference(gguf_kv(ref), gguf_kv(ours), "metadata")), diff
    assert not (diff := first_difference(gguf_tensors(ref), gguf_tensors(ours), "tensor")), diff


# ------------------------------------------------------------------ pyquantize convert


def convert(src: Path, out: Path, ftype: str, *extra: str) -> Path:
    result = CliRunner().invoke(app, ["convert", str(src), str(out), ftype, "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family, dtype, ftype", [(f, "F32", "F32") for f in FAMILIES] + [(f, "BF16", "BF16") for f in FAMILIES])
def test_convert_equals_convert_hf_to_gguf(cache, tmp_path, family, dtype, ftype):
    """`pyquantize convert DIR OUT F32|BF16`: the same tensors and pairs as convert_hf_to_gguf.py;
    the order is llama-quantize's (tensors by llama.cpp's name order, general.file_type and
    general.quantization_version last), as for every file convert writes. gpt-oss's MXFP4 experts
    stay MXFP4 in the converter's F32/BF16 files; for us that is COPY (F32 or BF16 would dequantize
    them, as llama-quantize would)."""
    ref = reference(cache, family, dtype, ftype.lower())
    ours = convert(checkpoint(cache, family, dtype), tmp_path / "ours.gguf", "COPY" if family == "gptoss" else ftype)
    assert sorted(gguf_kv(ours)) == sorted(gguf_kv(ref))
    assert sorted(gguf_tensors(ours)) == sorted(gguf_tensors(ref))


def llama_quantize(src: Path, dst: Path, ftype: str, allow_requantize: bool = False) -> Path:
    binary = Path(os.environ.get("LLAMA_QUANTIZE", "/work/ref/build/bin/llama-quantize"))
    if binary.is_file():
        _run([str(binary), *(["--allow-requantize"] if allow_requantize else []), str(src), str(dst), ftype, "1"],
             "llama-quantize")
        return dst
    import ggml_ref
    import gguf
    import llama_quantize_ref

    if llama_quantize_ref.lib() is None:
        pytest.skip(f"no llama-quantize at {binary} (set LLAMA_QUANTIZE) and {ggml_ref.WHY_ABSENT}")
    rc, log = llama_quantize_ref.quantize(src, dst, int(gguf.LlamaFileType[f"MOSTLY_{ftype}"]),
                                          allow_requantize=allow_requantize)
    assert rc == 0, log
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_one_pass_q4_k_m_equals_two_step(cache, tmp_path, family):
    """convert DIR OUT Q4_K_M == llama-quantize(convert_hf_to_gguf.py --outtype f32), whole file.
    gpt-oss's MXFP4 experts are requantized on both sides (--allow-requantize)."""
    extra = ["--allow-requantize"] if family == "gptoss" else []
    ref = llama_quantize(reference(cache, family, "F32", "f32"), tmp_path / "theirs.gguf", "Q4_K_M", bool(extra))
    ours = convert(checkpoint(cache, family, "F32"), tmp_path / "ours.gguf", "Q4_K_M", *extra)
    assert not (diff := first_difference(gguf_kv(ref), gguf_kv(ours), "metadata")), diff
    assert not (diff := first_difference(gguf_tensors(ref), gguf_tensors(ours), "tensor")), diff
    assert ours.read_bytes() == ref.read_bytes()
