"""`pyquantize convert FOLDER OUT TYPE` on Hugging Face checkpoint folders, end to end.

Folders are made from GGUF models by scripts/make_hf_checkpoint.py (see test_source_hf.py).
Default tier: the F32 output carries the original GGUF's tensors byte for byte and its hparams
and tokenizer keys; quantized outputs equal those converted from the original GGUF; bad input
is one line, a non-zero exit and nothing at OUT. Reference tier: llama.cpp loads our files and
computes the same logits as from the original GGUF (F32) and from llama-quantize's outputs of
it (Q8_0, Q4_K_M), whose tensors ours equal byte for byte.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import gguf
from quantize_cli.cli import app
from test_source_hf import GPT2_VOCAB, STORIES, assert_same_keys, gguf_kv, gguf_tensors, mk, need

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def convert(src: Path, out: Path, ftype: str, *extra) -> Path:
    result = run("convert", src, out, ftype, "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def stories_hf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "stories260K"
    mk.gguf_to_hf(need(STORIES), out)
    return out


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic llama with the GPT-2 vocabulary and rows of 256, so K-quants apply, in BF16."""
    base = tmp_path_factory.mktemp("hf")
    gguf_path, folder = base / "bpe256.gguf", base / "bpe256"
    mk.synthetic_gguf(gguf_path, need(GPT2_VOCAB), n_embd=256, n_ff=512, n_layer=2, n_head=2, n_head_kv=1,
                      dtype="BF16", seed=3)
    mk.gguf_to_hf(gguf_path, folder, None, shards=2)
    return gguf_path, folder


def test_f32_output_has_the_original_tensors_and_keys(stories_hf, tmp_path):
    out = convert(stories_hf, tmp_path / "out.gguf", "F32")
    assert gguf_tensors(out) == gguf_tensors(STORIES)
    assert_same_keys(gguf_kv(out), STORIES)
    assert gguf_kv(out)["general.file_type"] == gguf.LlamaFileType.ALL_F32


@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_K_M", "Q6_K", "IQ4_NL"])
def test_quantized_from_folder_equals_quantized_from_gguf(stories_hf, tmp_path, ftype):
    """Same planner, kernels and writer: every tensor's type and bytes match those converted
    from the original GGUF (the order is convert_hf_to_gguf's, so compare by name)."""
    ours = convert(stories_hf, tmp_path / "hf.gguf", ftype)
    theirs = convert(STORIES, tmp_path / "gguf.gguf", ftype)
    assert gguf_tensors(ours) == gguf_tensors(theirs)
    kv_ours, kv_theirs = gguf_kv(ours), gguf_kv(theirs)
    assert kv_ours["general.file_type"] == kv_theirs["general.file_type"]


def test_bf16_shards_to_q4_k_m_equal_the_gguf_route(bpe_model, tmp_path):
    gguf_path, folder = bpe_model
    ours = convert(folder, tmp_path / "hf.gguf", "Q4_K_M")
    theirs = convert(gguf_path, tmp_path / "gguf.gguf", "Q4_K_M")
    tensors = gguf_tensors(ours)
    assert tensors == gguf_tensors(theirs)
    assert tensors["blk.0.attn_q.weight"][1] == gguf.GGMLQuantizationType.Q4_K
    assert gguf_kv(ours)["tokenizer.ggml.pre"] == "gpt-2"


def test_dry_run_on_a_folder(stories_hf, tmp_path):
    result = run("convert", stories_hf, tmp_path / "out.gguf", "Q4_K_M", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out.gguf").exists()
    assert "blk.0.attn_q.weight" in result.output


def test_no_vocab_flag(stories_hf, tmp_path):
    folder = tmp_path / "novocab"
    shutil.copytree(stories_hf, folder)
    (folder / "tokenizer.model").unlink()
    out = tmp_path / "out.gguf"
    result = run("convert", folder, out, "F32", "--quiet")
    assert result.exit_code != 0 and not out.exists()
    assert "--no-vocab" in result.output
    convert(folder, out, "F32", "--no-vocab")
    assert gguf_kv(out)["tokenizer.ggml.model"] == "none"


def _break(kind: str, folder: Path) -> None:
    if kind == "config":
        (folder / "config.json").write_text("{")
    elif kind == "shape":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["intermediate_size"] = 128
        (folder / "config.json").write_text(json.dumps(cfg))
    elif kind == "tokenizer":
        (folder / "tokenizer.model").unlink()
    elif kind == "arch":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["architectures"] = ["BertModel"]
        (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("kind", ["config", "shape", "tokenizer", "arch"])
def test_bad_input_is_one_line_and_leaves_nothing(stories_hf, tmp_path, kind):
    folder = tmp_path / "bad"
    shutil.copytree(stories_hf, folder)
    _break(kind, folder)
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = run("convert", folder, outdir / "out.gguf", "Q8_0")
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert list(outdir.iterdir()) == []


# ------------------------------------------------------------------ reference tier: llama.cpp


def _llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python), so llama.cpp is absent")


# use_extra_bufts=False: the CPU weight-repacking buffers of llama-cpp-python 0.3.36's llama.cpp
# crash (SIGSEGV in llama_decode) on quantized stories260K, llama-quantize's own output included.
LOGITS = """
import sys, json, numpy as np, llama_cpp, llama_cpp.llama_cpp as lc
default_params = lc.llama_model_default_params
def no_repack():
    p = default_params()
    p.use_extra_bufts = False
    return p
lc.llama_model_default_params = no_repack
model = llama_cpp.Llama(sys.argv[1], n_ctx=64, logits_all=True, verbose=False, n_threads=1, seed=0)
tokens = model.tokenize(sys.argv[2].encode(), add_bos=True)
model.eval(tokens)
np.save(sys.argv[3], np.array(model.scores[:len(tokens)]))
print(json.dumps(tokens))
"""


def logits(path: Path, prompt: str) -> tuple[list[int], np.ndarray]:
    """Token ids and logits from llama.cpp, in a child process: one llama.cpp context per
    process keeps it clear of the llama_model_quantize handle the tests also load."""
    _llama_cpp()
    out = Path(tempfile.mkdtemp(prefix="pyquantize-logits-")) / "logits.npy"  # never beside the model
    done = subprocess.run([sys.executable, "-c", LOGITS, str(path), prompt, str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(out)


def llama_quantize(src: Path, dst: Path, ftype: str) -> Path:
    import ggml_ref
    import llama_quantize_ref

    if llama_quantize_ref.lib() is None:
        pytest.skip(ggml_ref.WHY_ABSENT)
    rc, log = llama_quantize_ref.quantize(src, dst, int(gguf.LlamaFileType[f"MOSTLY_{ftype}"]))
    assert rc == 0, log
    return dst


PROMPT = "Once upon a time, there was a little"


@pytest.mark.reference
def test_llama_cpp_same_logits_f32(stories_hf, tmp_path):
    _llama_cpp()
    ours = convert(stories_hf, tmp_path / "ours.gguf", "F32")
    t_ours, l_ours = logits(ours, PROMPT)
    t_orig, l_orig = logits(STORIES, PROMPT)
    assert t_ours == t_orig
    assert np.array_equal(l_ours, l_orig)


@pytest.mark.reference
@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_K_M"])
def test_llama_cpp_same_logits_as_llama_quantize(stories_hf, tmp_path, ftype):
    _llama_cpp()
    ours = convert(stories_hf, tmp_path / "ours.gguf", ftype)
    theirs = llama_quantize(STORIES, tmp_path / "theirs.gguf", ftype)
    assert gguf_tensors(ours) == gguf_tensors(theirs)
    t_ours, l_ours = logits(ours, PROMPT)
    t_theirs, l_theirs = logits(theirs, PROMPT)
    assert t_ours == t_theirs
    assert np.array_equal(l_ours, l_theirs)


@pytest.mark.reference
@pytest.mark.parametrize("ftype", ["Q8_0", "Q4_K_M"])
def test_llama_cpp_bpe_model_same_logits_as_llama_quantize(bpe_model, tmp_path, ftype):
    """BF16 shards with a byte-level BPE vocabulary versus llama-quantize of the BF16 GGUF."""
    _llama_cpp()
    gguf_path, folder = bpe_model
    ours = convert(folder, tmp_path / "ours.gguf", ftype)
    theirs = llama_quantize(gguf_path, tmp_path / "theirs.gguf", ftype)
    assert gguf_tensors(ours) == gguf_tensors(theirs)
    t_ours, l_ours = logits(ours, "Hello world, this is a test.")
    t_theirs, l_theirs = logits(theirs, "Hello world, this is a test.")
    assert t_ours == t_theirs
    assert np.array_equal(l_ours, l_theirs)
