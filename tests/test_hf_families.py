"""Today's Hugging Face model families against llama.cpp's convert_hf_to_gguf.py (reference tier).

For each family in scripts/make_hf_checkpoint.py's FAMILIES: a tiny checkpoint with random
weights, written by transformers beside the family's real config.json layout, with tokenizer files
made from a llama.cpp vocabulary and a real chat template. convert_hf_to_gguf.py (from the llama.cpp
sources, run with the torch interpreter) converts it; our HFSource must give the same tensors
(names, order, shapes, types, bytes) and the same metadata (keys, order, types, values), and our
`convert DIR OUT F32|BF16` the same file content. Our one-pass Q4_K_M, and IQ4_XS with an imatrix
(llama-imatrix's, made once per family from the two-step F32 file and given to both routes), must
equal convert_hf_to_gguf.py followed by llama-quantize, byte for byte; llama-perplexity loads our
one-pass files and gives the two-step files' logits.

Needs: a Python with torch and transformers (PYQUANTIZE_TORCH_PYTHON, default /work/torchenv/bin/python;
see the README's "Hugging Face checkpoints" section for how to make one), llama.cpp's sources
(LLAMA_CPP_DIR) and, for the quantized files, llama-quantize (LLAMA_QUANTIZE or llama-cpp-python's
libllama), llama-imatrix and llama-perplexity (LLAMA_CPP_BIN, default /work/ref/build/bin).
Each is skipped with the reason when absent. Checkpoints and reference GGUFs are cached in
PYQUANTIZE_HF_FAMILY_CACHE when set (keyed by the generator script's content), else per session.
"""

from __future__ import annotations

import hashlib
import os
import re
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
TEXT = ROOT / "tests" / "data" / "calibration-en.txt"
BIN = Path(os.environ.get("LLAMA_CPP_BIN", "/work/ref/build/bin"))
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


def tool(name: str) -> Path:
    exe = BIN / name
    if not exe.is_file():
        pytest.skip(f"{exe} not found: llama.cpp's tools are not built (scripts/build_llama_cpp.sh; set LLAMA_CPP_BIN)")
    return exe


def llama_quantize(src: Path, dst: Path, ftype: str, allow_requantize: bool = False, imatrix: Path | None = None) -> Path:
    binary = Path(os.environ.get("LLAMA_QUANTIZE", BIN / "llama-quantize"))
    if binary.is_file():
        _run([str(binary), *(["--allow-requantize"] if allow_requantize else []),
              *(["--imatrix", str(imatrix)] if imatrix else []), str(src), str(dst), ftype, "1"], "llama-quantize")
        return dst
    import ggml_ref
    import gguf
    import llama_quantize_ref

    if llama_quantize_ref.lib() is None:
        pytest.skip(f"no llama-quantize at {binary} (set LLAMA_QUANTIZE) and {ggml_ref.WHY_ABSENT}")
    entries = None
    if imatrix:
        from quantize_cli.formats.imatrix_file import load_imatrix

        entries = dict(load_imatrix(imatrix).entries)
    rc, log = llama_quantize_ref.quantize(src, dst, int(gguf.LlamaFileType[f"MOSTLY_{ftype}"]),
                                          allow_requantize=allow_requantize, imatrix=entries)
    assert rc == 0, log
    return dst


def imatrix(cache: Path, family: str) -> Path:
    """llama-imatrix on the two-step F32 file (2 chunks of 128 tokens of tests/data/calibration-en.txt),
    made once per family; both routes quantize with it."""
    ref = reference(cache, family, "F32", "f32")
    out = cache / f"{family}-F32.imatrix.gguf"
    if not out.is_file():
        tmp = cache / f".{family}-F32.imatrix.tmp.gguf"
        _run([str(tool("llama-imatrix")), "-m", str(ref), "-f", str(TEXT), "-o", str(tmp), "-c", "128", "-b", "128",
              "--chunks", "2", "-t", "2", "--no-ppl"], f"llama-imatrix on {family}")
        tmp.rename(out)
    return out


# every quantized file once per session, for the byte and the loading tests alike
ROUTES = {"Q4_K_M": [], "IQ4_XS": ["--imatrix"]}


@pytest.fixture(scope="session")
def outputs(tmp_path_factory):
    made: dict[tuple[str, str, str], Path] = {}
    root = tmp_path_factory.mktemp("hf-quantized")

    def get(cache: Path, family: str, ftype: str, route: str) -> Path:
        """route "two-step": llama-quantize of convert_hf_to_gguf.py's F32 file; "one-pass": our convert."""
        key = (family, ftype, route)
        if key not in made:
            requant = family == "gptoss"  # MXFP4 experts are requantized on both sides
            imat = imatrix(cache, family) if "--imatrix" in ROUTES[ftype] else None
            out = root / f"{family}-{ftype}-{route}.gguf"
            if route == "two-step":
                made[key] = llama_quantize(reference(cache, family, "F32", "f32"), out, ftype, requant, imat)
            else:
                extra = [*(["--allow-requantize"] if requant else []), *(["--imatrix", str(imat)] if imat else [])]
                made[key] = convert(checkpoint(cache, family, "F32"), out, ftype, *extra)
        return made[key]

    return get


def assert_same_file(theirs: Path, ours: Path) -> None:
    """Byte-identical files; where they are not, the first differing pair or tensor (gguf's reader
    is slow on 150k-token vocabularies, so it reads only files that differ)."""
    if ours.read_bytes() == theirs.read_bytes():
        return
    assert not (diff := first_difference(gguf_kv(theirs), gguf_kv(ours), "metadata")), diff
    assert not (diff := first_difference(gguf_tensors(theirs), gguf_tensors(ours), "tensor")), diff
    raise AssertionError(f"{ours.name} and {theirs.name} have the same pairs and tensors but differ in bytes")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_one_pass_q4_k_m_equals_two_step(cache, outputs, family):
    """convert DIR OUT Q4_K_M == llama-quantize(convert_hf_to_gguf.py --outtype f32), whole file.
    gpt-oss's MXFP4 experts are requantized on both sides (--allow-requantize)."""
    assert_same_file(outputs(cache, family, "Q4_K_M", "two-step"), outputs(cache, family, "Q4_K_M", "one-pass"))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_one_pass_iq4_xs_with_imatrix_equals_two_step(cache, outputs, family):
    """convert DIR OUT IQ4_XS --imatrix F == llama-quantize --imatrix F (convert_hf_to_gguf.py --outtype
    f32), whole file, with llama-imatrix's file for that family (its rows of 64 fall back to IQ4_NL)."""
    theirs = outputs(cache, family, "IQ4_XS", "two-step")
    assert b"quantize.imatrix.file" in theirs.read_bytes()[:1 << 24]  # llama-quantize used the imatrix
    assert_same_file(theirs, outputs(cache, family, "IQ4_XS", "one-pass"))


def llama_perplexity_logits(model: Path, logits: Path) -> tuple[str, bytes]:
    """llama-perplexity over 2 chunks of 128 tokens, its logits saved (--kl-divergence-base): the
    final estimate line and the saved logits."""
    cmd = [str(tool("llama-perplexity")), "-m", str(model), "-f", str(TEXT), "-c", "128", "-b", "128", "--chunks", "2",
           "-t", "2", "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--kl-divergence-base", str(logits)]
    for _ in range(3):  # under load llama.cpp's log thread has lost the final report (tests/test_perplexity_reference.py)
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, f"llama-perplexity could not run {model.name}:\n{done.stderr[-3000:]}"
        final = re.search(r"Final estimate: PPL = ([0-9.]+ \+/- [0-9.]+)", done.stdout + done.stderr)
        if final:
            return final.group(1), logits.read_bytes()
    raise AssertionError(f"no final estimate from llama-perplexity on {model.name}:\n{done.stderr[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_loads_one_pass_outputs(cache, outputs, tmp_path, family):
    """llama-perplexity loads our one-pass Q4_K_M and IQ4_XS files and computes the logits of the
    two-step files: the same perplexity and the same saved logits, byte for byte."""
    for ftype in ROUTES:
        ppl_theirs, logits_theirs = llama_perplexity_logits(outputs(cache, family, ftype, "two-step"), tmp_path / "theirs.kld")
        ppl_ours, logits_ours = llama_perplexity_logits(outputs(cache, family, ftype, "one-pass"), tmp_path / "ours.kld")
        assert (ppl_ours, len(logits_ours)) == (ppl_theirs, len(logits_theirs)), (family, ftype)
        assert logits_ours == logits_theirs, (family, ftype)


# ------------------------------------------------------------------ FP8 checkpoints (block-scaled float8_e4m3fn)

FP8_FAMILIES = ["qwen3", "qwen3moe"]
FP8_BLOCK = [64, 48]  # not a divisor of every matrix side: the converter's scale unpadding is exercised too


def e4m3_values() -> np.ndarray:
    """float8_e4m3fn's 256 codes as float32 (0x7F and 0xFF are NaN)."""
    c = np.arange(256)
    e, m = (c >> 3) & 0xF, (c & 7).astype(np.float64)
    v = np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * 2.0 ** (e - 7.0))
    v = np.where((c & 0x7F) == 0x7F, np.nan, v)
    return np.where(c >> 7, -v, v).astype(np.float32)


def to_e4m3(x: np.ndarray) -> np.ndarray:
    """Nearest float8_e4m3fn code of each value (|x| <= 448)."""
    pos = e4m3_values()[:0x7F]  # 0 .. 448, ascending
    a = np.abs(x)
    hi = np.clip(np.searchsorted(pos, a), 1, len(pos) - 1)
    code = np.where(a - pos[hi - 1] <= pos[hi] - a, hi - 1, hi)
    return (code | (np.signbit(x) << 7)).astype(np.uint8)


def fp8_checkpoint(cache: Path, family: str) -> Path:
    """The family's BF16 checkpoint with every *_proj.weight matrix (experts too) stored as
    float8_e4m3fn in FP8_BLOCK blocks with a float32 weight_scale_inv (w = fp8 * scale_inv), as
    Qwen's and DeepSeek's FP8 releases ship them; the rest stays BF16."""
    import json
    import struct

    sys.path.insert(0, str(SCRIPT.parent))
    import make_hf_checkpoint as mk

    src = checkpoint(cache, family, "BF16")
    out = cache / f"{family}-FP8"
    if (out / "config.json").is_file():
        return out
    tmp = cache / f".{family}-FP8.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {}
    for shard in sorted(src.glob("model*.safetensors")):
        blob = shard.read_bytes()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        for name in sorted(k for k in header if k != "__metadata__"):
            meta = header[name]
            a, b = meta["data_offsets"]
            raw = np.frombuffer(blob, np.uint8, b - a, 8 + n + a)
            if meta["dtype"] != "BF16" or len(meta["shape"]) != 2 or not name.endswith("proj.weight"):
                tensors[name] = (raw.copy(), meta["dtype"], meta["shape"])
                continue
            w = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(meta["shape"])
            rows, cols = w.shape
            br, bc = FP8_BLOCK
            scale = np.zeros(((rows + br - 1) // br, (cols + bc - 1) // bc), np.float32)
            q = np.zeros(w.shape, np.uint8)
            for i in range(scale.shape[0]):
                for j in range(scale.shape[1]):
                    block = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
                    scale[i, j] = max(float(np.abs(block).max()), 1e-12) / 448
                    q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = to_e4m3(block / scale[i, j])
            tensors[name] = (q, "F8_E4M3", list(q.shape))
            tensors[name + "_scale_inv"] = (scale, "F32", list(scale.shape))
    element = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "F8_E4M3": np.uint8}
    mk.write_safetensors(tmp, {k: (v.view(element[d]).reshape(shape), d) for k, (v, d, shape) in tensors.items()})
    config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": FP8_BLOCK}
    (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tmp.rename(out)
    return out


def fp8_reference(cache: Path, family: str, outtype: str) -> Path:
    folder = fp8_checkpoint(cache, family)
    out = cache / f"{family}-FP8.ref-{outtype}.gguf"
    if not out.is_file():
        tmp = out.with_suffix(".tmp")
        _run([str(TORCH_PYTHON), str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(folder), "--outtype", outtype,
              "--outfile", str(tmp)], f"convert_hf_to_gguf.py on {family} FP8")
        tmp.rename(out)
    return out


def test_e4m3_table_round_trips():
    """The test's own float8 encoder: every finite code decodes and encodes back to itself."""
    values = e4m3_values()
    finite = ~np.isnan(values)
    assert np.array_equal(to_e4m3(values[finite]), np.flatnonzero(finite))


@pytest.mark.slow
@pytest.mark.parametrize("family", FP8_FAMILIES)
def test_fp8_checkpoint_equals_convert_hf_to_gguf(cache, tmp_path, family):
    """An FP8 checkpoint: `convert DIR OUT F32|BF16` equal to convert_hf_to_gguf.py --outtype f32|bf16
    (the converter's dequantization, weight.float() * scale_inv repeated over its blocks), and the
    one-pass Q4_K_M equal to llama-quantize of the F32 file, byte for byte."""
    folder = fp8_checkpoint(cache, family)
    for ftype in ("F32", "BF16"):
        ref = fp8_reference(cache, family, ftype.lower())
        ours = convert(folder, tmp_path / f"ours-{ftype}.gguf", ftype)
        assert sorted(gguf_kv(ours)) == sorted(gguf_kv(ref)), ftype
        assert sorted(gguf_tensors(ours)) == sorted(gguf_tensors(ref)), ftype
    theirs = llama_quantize(fp8_reference(cache, family, "f32"), tmp_path / "theirs.gguf", "Q4_K_M")
    assert_same_file(theirs, convert(folder, tmp_path / "ours.gguf", "Q4_K_M"))
