"""Reference tier: the same command line to llama.cpp's llama-quantize tool and to
`pyquantize convert` must give byte-identical files. This covers what the library API cannot
express (imatrix files in both formats, option parsing) and every llama-quantize option.
Skips, saying why, when the tool is not built (scripts/build_llama_cpp.sh)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantize_cli.cli import app
from quantize_cli.sources import open_source
from test_plan_tool import _tool, write_legacy_imatrix

pytestmark = pytest.mark.reference

ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"
IMATRIX_GGUF = ROOT / "tests" / "golden" / "stories260K-imatrix.gguf"
runner = CliRunner()


@pytest.fixture(scope="module")
def tool():
    path = _tool()
    if path is None:
        pytest.skip("llama-quantize is not built (run scripts/build_llama_cpp.sh, or set PYQUANTIZE_LLAMA_QUANTIZE)")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli-tool")
    shutil.copy(STORIES, work / "stories.gguf")
    shutil.copy(IMATRIX_GGUF, work / "imatrix.gguf")
    with open_source(STORIES) as s:
        write_legacy_imatrix(work / "imatrix.dat", s, chunks=3, dataset="calib.txt")
    shape = ["--layers", "8", "--embd", "256", "--ff", "512", "--heads", "4", "--kv-heads", "2", "--vocab", "512"]
    synth = [sys.executable, str(ROOT / "scripts" / "make_synthetic.py")]
    subprocess.run([*synth, str(work / "llama.gguf"), *shape], check=True, cwd=work)
    subprocess.run([*synth, str(work / "split.gguf"), *shape, "--split-max-tensors", "30"], check=True, cwd=work)
    return work


def both(tool: Path, work: Path, args: list[str], out_names=("out.gguf",)) -> None:
    """Run llama-quantize and pyquantize with the same arguments (OUT renamed) in `work`."""
    ref_args = [a.replace("OUT", "ref") for a in args]
    our_args = [a.replace("OUT", "ours") for a in args]
    proc = subprocess.run([str(tool), *ref_args], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import os
    cwd = os.getcwd()
    os.chdir(work)
    try:
        result = runner.invoke(app, ["convert", *our_args, "--quiet"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    for name in out_names:
        ref, ours = work / name.replace("OUT", "ref"), work / name.replace("OUT", "ours")
        assert ref.read_bytes() == ours.read_bytes(), f"{ours.name} differs from llama-quantize's {ref.name}"


@pytest.mark.parametrize("ftype", ["IQ2_XS", "Q4_K_M", "IQ3_M", "Q2_K_S"])
def test_imatrix_gguf(tool, work, ftype):
    both(tool, work, ["--imatrix", "imatrix.gguf", "stories.gguf", "OUT.gguf", ftype], ["OUT.gguf"])


@pytest.mark.parametrize("filters", [[], ["--include-weights", "attn"], ["--exclude-weights", "ffn_down"]])
def test_imatrix_dat_and_filters(tool, work, filters):
    both(tool, work, ["--imatrix", "imatrix.dat", *filters, "stories.gguf", "OUT.gguf", "Q4_K_S"], ["OUT.gguf"])


def test_tensor_types_output_and_embedding_types(tool, work):
    (work / "tt.txt").write_text("ffn_up=q5_0\n")
    both(tool, work, ["--tensor-type", "attn_v=q8_0", "--tensor-type-file", "tt.txt",
                      "--output-tensor-type", "q6_k", "--token-embedding-type", "q4_0",
                      "llama.gguf", "OUT.gguf", "Q4_K_M", "2"], ["OUT.gguf"])


def test_leave_output_pure_override_kv_prune(tool, work):
    both(tool, work, ["--leave-output-tensor", "--pure", "--override-kv", "general.name=str:renamed",
                      "--override-kv", "llama.context_length=int:4096", "--prune-layers", "2,5",
                      "llama.gguf", "OUT.gguf", "Q5_K_S"], ["OUT.gguf"])


def test_keep_split(tool, work):
    shards = sorted(p.name for p in work.glob("split-0000*-of-*.gguf"))
    assert len(shards) >= 2, "the synthetic model should be split"
    n = len(shards)
    both(tool, work, ["--keep-split", shards[0], "OUT.gguf", "Q8_0"],
         [f"OUT-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)])


def test_requantize(tool, work):
    both(tool, work, ["stories.gguf", "q8-OUT.gguf", "Q8_0"], ["q8-OUT.gguf"])
    both(tool, work, ["--allow-requantize", "q8-ref.gguf", "OUT.gguf", "Q4_0"], ["OUT.gguf"])
