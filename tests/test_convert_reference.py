"""Reference tier: whole files. `convert()` against llama.cpp's llama_model_quantize (the library
llama-quantize calls) on the real stories260K model and on synthetic llama models, for every
file type whose kernels exist, with and without an importance matrix: the files must be
byte-identical. The first differing byte is reported with the tensor it falls in.

The full matrix (every file type on the 8-layer synthetic model, with and without imatrix) is
marked slow; `make test` runs a representative subset, `make test-all` everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kernels
from quantize_cli.convert import ImatrixInput, convert
from quantize_cli.errors import PyquantizeError
from quantize_cli.plan import FILE_TYPES, QuantizeOptions, make_plan
from quantize_cli.sources import open_source

pytestmark = pytest.mark.reference

ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"

# Spine types (issue 2) and a representative subset for the default run.
FAST_TYPES = ["F32", "F16", "BF16", "Q8_0", "COPY", "Q4_0", "Q4_K_M", "Q6_K", "IQ4_XS"]


def runnable(name: str, source) -> bool:
    """A file type runs when every tensor its plan quantizes has a kernel."""
    ftype, _ = FILE_TYPES[name]
    options = QuantizeOptions(ftype=ftype, only_copy=name == "COPY")
    try:
        plan = make_plan(source, options, {t.name: t.ne[0] for t in source.tensors})
    except PyquantizeError:
        return True  # refused at planning time: check() verifies llama.cpp refuses too
    return all(kernels.can_quantize(tp.type) for tp in plan.tensors if tp.quantize)


def synthetic(tmp_path_factory, name: str, *args: str) -> Path:
    out = tmp_path_factory.getbasetemp() / f"{name}.gguf"
    if not out.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic.py"), str(out), *args], check=True)
    return out


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    small = ["--layers", "8", "--embd", "256", "--ff", "512", "--heads", "4", "--vocab", "512"]
    return {
        "stories260K": STORIES,
        "llama-f32": synthetic(tmp_path_factory, "llama-f32", *small, "--kv-heads", "2", "--outliers"),
        "llama-f16": synthetic(tmp_path_factory, "llama-f16", *small, "--kv-heads", "2", "--dtype", "f16"),
        "llama-bf16": synthetic(tmp_path_factory, "llama-bf16", *small, "--kv-heads", "2", "--dtype", "bf16"),
        "llama-gqa1-f32": synthetic(tmp_path_factory, "llama-gqa1", *small, "--kv-heads", "4"),
    }


def random_imatrix(source, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in source.tensors:
        if len(t.ne) >= 2 and t.name.startswith("blk."):
            n = t.ne[0] * (t.ne[2] if len(t.ne) > 2 else 1)
            v = (rng.random(n) ** 2 * 5).astype(np.float32)
            v[rng.random(n) < 0.05] = 0.0
            out[t.name] = v
    return out


def first_difference(ours: Path, ref: Path) -> str | None:
    a, b = ours.read_bytes(), ref.read_bytes()
    if a == b:
        return None
    n = min(len(a), len(b))
    at = next((i for i in range(n) if a[i] != b[i]), n)
    where = "header/metadata"
    for t in open_source(ref).tensors:
        if t.offset <= at < t.offset + t.nbytes:
            where = f"tensor {t.name} ({t.type.name}) byte {at - t.offset}"
    return f"sizes {len(a)} vs {len(b)}; first difference at byte {at}: {where}"


def check(ggml, tmp_path, model: Path, name: str, imatrix: dict | None = None, **opts):
    import llama_quantize_ref as ref

    ftype, _ = FILE_TYPES[name]
    with open_source(model) as source:
        if not runnable(name, source):
            pytest.skip(f"{name}: some kernels of its mix do not exist yet")
    ref_out, our_out = tmp_path / "ref.gguf", tmp_path / "ours.gguf"
    rc, log = ref.quantize(model, ref_out, ftype, only_copy=name == "COPY", imatrix=imatrix, nthread=2, **opts)
    options = QuantizeOptions(ftype=ftype, only_copy=name == "COPY", **opts)
    im = ImatrixInput("", imatrix) if imatrix else None
    if rc != 0:
        # llama.cpp refuses (an imatrix is required, no block size fits): so must we, cleanly
        with pytest.raises(PyquantizeError):
            convert(model, our_out, options, im, nthreads=2)
        assert not our_out.exists()
        return
    convert(model, our_out, options, im, nthreads=2)
    problem = first_difference(our_out, ref_out)
    assert problem is None, f"{model.name} {name}{' imatrix' if imatrix else ''}: {problem}"


@pytest.mark.parametrize("name", FAST_TYPES)
def test_stories_identical(ggml, tmp_path, models, name):
    check(ggml, tmp_path, models["stories260K"], name)


@pytest.mark.parametrize("model,name", [
    ("llama-f32", "F16"), ("llama-f32", "BF16"), ("llama-f32", "Q8_0"), ("llama-f32", "Q4_K_M"),
    ("llama-f16", "Q8_0"), ("llama-f16", "COPY"), ("llama-bf16", "Q8_0"), ("llama-bf16", "F16"),
    ("llama-gqa1-f32", "Q3_K_M"),
])
def test_synthetic_identical(ggml, tmp_path, models, model, name):
    check(ggml, tmp_path, models[model], name)


@pytest.mark.parametrize("name", ["Q4_K_M", "IQ2_XS"])
def test_file_identical_with_imatrix(ggml, tmp_path, models, name):
    with open_source(models["llama-f32"]) as s:
        imatrix = random_imatrix(s, 7)
    check(ggml, tmp_path, models["llama-f32"], name, imatrix)


@pytest.mark.slow
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("name", list(FILE_TYPES))
@pytest.mark.parametrize("model", ["stories260K", "llama-f32", "llama-f16", "llama-bf16", "llama-gqa1-f32"])
def test_file_identical_full(ggml, tmp_path, models, model, name, with_imatrix):
    imatrix = None
    if with_imatrix:
        with open_source(models[model]) as s:
            imatrix = random_imatrix(s, 11)
    elif name.startswith(("IQ1", "IQ2_XXS", "IQ2_XS")):
        pytest.skip(f"{name} requires an imatrix")
    check(ggml, tmp_path, models[model], name, imatrix)


PURE_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K"]


@pytest.mark.parametrize("name", ["Q4_1", "Q3_K_S", "Q5_K_S"])
def test_pure_identical(ggml, tmp_path, models, name):
    check(ggml, tmp_path, models["llama-f32"], name, pure=True)


@pytest.mark.parametrize("name", ["Q5_0", "Q2_K"])
def test_pure_identical_with_imatrix(ggml, tmp_path, models, name):
    with open_source(models["llama-f32"]) as s:
        imatrix = random_imatrix(s, 5)
    check(ggml, tmp_path, models["llama-f32"], name, imatrix, pure=True)


@pytest.mark.slow
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("name", PURE_TYPES)
@pytest.mark.parametrize("model", ["stories260K", "llama-f32"])
def test_pure_identical_full(ggml, tmp_path, models, model, name, with_imatrix):
    imatrix = None
    if with_imatrix:
        with open_source(models[model]) as s:
            imatrix = random_imatrix(s, 13)
    check(ggml, tmp_path, models[model], name, imatrix, pure=True)
