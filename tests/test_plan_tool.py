"""Reference tier, through the llama-quantize tool itself (built from the same sdist by
scripts/build_llama_cpp.sh): what the tool does before calling the library, and the planner
mirrors, is checked here: --tensor-type lower-casing and --tensor-type-file, --prune-layers
parsing, --imatrix (legacy .dat) with --include-weights/--exclude-weights and the
quantize.imatrix.* metadata, --override-kv, file types by number or alias, --keep-split naming.
Each case runs the tool for real and compares its file with our plan, byte for byte in metadata
and sizes."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import plan_cases
from quantize_cli.plan import (
    QuantizeOptions, make_plan, parse_file_type, parse_override_kv, parse_prune_layers, parse_tensor_type,
    parse_tensor_type_option, read_tensor_type_file,
)
from quantize_cli.sources import open_source

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import make_golden_plans as golden  # noqa: E402

pytestmark = pytest.mark.reference

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> Path | None:
    candidates = [os.environ.get("PYQUANTIZE_LLAMA_QUANTIZE"),
                  os.path.join(os.environ.get("LLAMA_CPP_BUILD", str(ROOT.parent / "ref" / "build")), "bin", "llama-quantize"),
                  shutil.which("llama-quantize")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


@pytest.fixture(scope="module")
def tool():
    path = _tool()
    if path is None:
        pytest.skip("llama-quantize is not built (run scripts/build_llama_cpp.sh, or set PYQUANTIZE_LLAMA_QUANTIZE)")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("plan-tool")


def write_legacy_imatrix(path: Path, source, chunks: int, dataset: str) -> dict[str, int]:
    """A legacy .dat imatrix (llama-imatrix's old format) with an entry for each 2-D+ weight."""
    entries = {t.name: t.ne[0] * (t.ne[2] if len(t.ne) > 2 else 1)
               for t in source.tensors if len(t.ne) >= 2 and t.name.endswith("weight") and t.ne[1] > 1}
    with open(path, "wb") as f:
        f.write(struct.pack("<i", len(entries)))
        for name, n in entries.items():
            f.write(struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 1, n))
            f.write(np.linspace(0.5, 2.0, n, dtype=np.float32).tobytes())
        f.write(struct.pack("<ii", chunks, len(dataset)) + dataset.encode())
    return entries


def run_tool(tool: Path, args: list[str], cwd: Path) -> str:
    proc = subprocess.run([str(tool), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return proc.stdout + proc.stderr


def test_tensor_types_from_flags_and_file(tool, work):
    model = golden.model_path("llama-gqa4", work)
    (work / "types.txt").write_text("blk\\.[0-3]\\.FFN_DOWN=iq4_nl\n  FFN=Q5_K  output=q8_0\n")
    run_tool(tool, ["--tensor-type", "ATTN_V=Q8_0", "--tensor-type-file", "types.txt",
                    str(model), "out.gguf", "q4_k"], work)
    tensor_types = [parse_tensor_type_option("ATTN_V=Q8_0"), *read_tensor_type_file(work / "types.txt")]
    ftype, _ = parse_file_type("q4_k")
    plan = make_plan(open_source(model), QuantizeOptions(ftype=ftype, tensor_types=tensor_types))
    plan_cases.compare_file(plan, work / "out.gguf")


def test_prune_layers_and_overrides_and_numeric_file_type(tool, work):
    model = golden.model_path("llama-gqa4", work)
    run_tool(tool, ["--prune-layers", "6,1,1", "--override-kv", "general.name=str:pruned",
                    "--override-kv", "tokenizer.ggml.bos_token_id=int:-3", "--override-kv", "x.scale=float:0.25",
                    "--output-tensor-type", "Q8_0", "--token-embedding-type", "q4_0",
                    str(model), "out.gguf", "17", "1"], work)
    ftype, name = parse_file_type("17")
    assert name == "Q5_K"
    options = QuantizeOptions(ftype=ftype, prune_layers=parse_prune_layers("6,1,1"),
                              output_tensor_type=parse_tensor_type("Q8_0"), token_embedding_type=parse_tensor_type("q4_0"),
                              kv_overrides=[parse_override_kv(t) for t in (
                                  "general.name=str:pruned", "tokenizer.ggml.bos_token_id=int:-3", "x.scale=float:0.25")])
    plan_cases.compare_file(make_plan(open_source(model), options), work / "out.gguf")


@pytest.mark.parametrize("file_type,filters", [
    ("Q4_0", []),
    ("Q4_0", ["--include-weights", "attn", "--include-weights", "ffn_up"]),
    ("IQ4_NL", ["--exclude-weights", "ffn_down"]),
    ("Q4_0", ["--exclude-weights", "blk", "--exclude-weights", "token_embd", "--exclude-weights", "output"]),
    ("IQ2_XS", []),
])
def test_imatrix_filters_and_metadata(tool, work, file_type, filters):
    model = golden.model_path("llama-gqa4", work)
    source = open_source(model)
    entries = write_legacy_imatrix(work / "imatrix.dat", source, chunks=12, dataset="calibration-en.txt")
    run_tool(tool, ["--imatrix", "imatrix.dat", *filters, str(model), "out.gguf", file_type], work)
    include = [filters[i + 1] for i in range(0, len(filters), 2) if filters[i] == "--include-weights"]
    exclude = [filters[i + 1] for i in range(0, len(filters), 2) if filters[i] == "--exclude-weights"]
    ftype, _ = parse_file_type(file_type)
    options = QuantizeOptions(ftype=ftype, include_weights=include, exclude_weights=exclude,
                              imatrix_file="imatrix.dat", imatrix_datasets=["calibration-en.txt"], imatrix_chunks=12)
    plan = make_plan(source, options, entries)
    assert not plan.errors, plan.errors
    plan_cases.compare_file(plan, work / "out.gguf")


def test_keep_split_names_shards_like_the_tool(tool, work):
    model = golden.model_path("llama-gqa4-split", work)
    run_tool(tool, ["--keep-split", str(model), "out.gguf", "Q4_K_M"], work)
    plan = make_plan(open_source(model), QuantizeOptions(ftype=parse_file_type("Q4_K_M")[0], keep_split=True))
    for shard in range(plan.n_splits):
        plan_cases.compare_file(plan, work / f"out-{shard + 1:05d}-of-{plan.n_splits:05d}.gguf", shard)
