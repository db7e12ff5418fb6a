"""The spine end to end: convert -> GGUF file -> inspect, on the real stories260K model, for the
unquantized types and Q8_0; and every kind of bad input the brief names."""

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from quantize_cli.cli import app
from quantize_cli.sources import open_source

DATA = Path(__file__).parent / "data"
STORIES = DATA / "stories260K.gguf"

# sha256 of llama-quantize's output for stories260K (llama.cpp of llama-cpp-python 0.3.36),
# recorded by tests/test_convert_reference.py; our files must be byte-identical.
LLAMA_QUANTIZE_SHA256 = {
    "F32": "f18837d06914bcc6",
    "F16": "4cd29bbe9cb3b735",
    "BF16": "633551c4cd934c20",
    "Q8_0": "ff8701a45da28293",
    "COPY": "f40a10bece340d0e",
}

runner = CliRunner()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("ftype", sorted(LLAMA_QUANTIZE_SHA256))
def test_stories_byte_identical_to_llama_quantize(tmp_path, ftype):
    out = tmp_path / f"out-{ftype}.gguf"
    result = run("convert", STORIES, out, ftype, "--quiet")
    assert result.exit_code == 0, result.output
    assert sha(out) == LLAMA_QUANTIZE_SHA256[ftype]


def test_q8_0_fallback_and_inspect(tmp_path):
    out = tmp_path / "q8.gguf"
    assert run("convert", STORIES, out, "q8_0", "--quiet").exit_code == 0
    result = run("inspect", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    types = {t["name"]: t["type"] for t in doc["tensors"]}
    # rows of 64 fit Q8_0's 32-blocks; ffn_down's rows of 172 do not: llama.cpp falls back to F16
    assert types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors stay F32
    assert doc["metadata"]["general.file_type"] == 7
    assert doc["metadata"]["general.quantization_version"] == 2
    assert doc["n_tensors"] == 48
    assert doc["types"]["F16"]["tensors"] == 5
    # data equals what Q8_0 dequantizes to, within Q8_0's error
    src = {t.name: t for t in open_source(STORIES).tensors}
    q = {t.name: t for t in open_source(out).tensors}
    import kernels
    x = src["blk.0.attn_q.weight"].load().view(np.float32).reshape(-1, 64)
    y = kernels.dequantize(q["blk.0.attn_q.weight"].load(), q["blk.0.attn_q.weight"].type, 64)
    assert np.abs(x - y).max() <= np.abs(x).max() / 127 + 1e-6


def test_default_output_name_and_positional_threads(tmp_path):
    src = tmp_path / "model.gguf"
    shutil.copy(STORIES, src)
    result = run("convert", src, "F16", "1", "--quiet")
    assert result.exit_code == 0, result.output
    assert sha(tmp_path / "ggml-model-F16.gguf") == LLAMA_QUANTIZE_SHA256["F16"]


def test_numeric_file_type_and_json_summary(tmp_path):
    out = tmp_path / "o.gguf"
    result = run("convert", STORIES, out, "7", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["file_type"] == 7 and doc["n_tensors"] == 48 and doc["n_fallback"] == 5
    assert doc["bytes_out"] == sum(t.nbytes for t in open_source(out).tensors)


def test_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "o.gguf"
    result = run("convert", STORIES, out, "Q8_0", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert not out.exists()
    doc = json.loads(result.output)
    assert len(doc["tensors"]) == 48


def test_inspect_markdown_and_no_tensors():
    result = run("inspect", STORIES, "--markdown")
    assert result.exit_code == 0
    assert "| blk.0.ffn_down.weight | 172x64 | F32 | 44,032 |" in result.output
    result = run("inspect", STORIES, "--json", "--no-tensors")
    doc = json.loads(result.output)
    assert "tensors" not in doc and doc["n_elements"] == 292800 and doc["bpw"] == 32.0
    assert doc["metadata"]["tokenizer.ggml.tokens"]["length"] == 512


# --- bad input: one line on stderr, non-zero exit, no traceback, nothing at OUT -----------------

def assert_clean_failure(result, out: Path | None, *fragments: str):
    assert result.exit_code != 0
    err = result.stderr if hasattr(result, "stderr") else result.output
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], lines[0]
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temporary file left"


def _stories_layout():
    src = open_source(STORIES)
    first_tensor_info = src.tensor_info_offset
    return src.data_offset, first_tensor_info, src.tensors


def test_wrong_magic(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + STORIES.read_bytes()[4:])
    out = tmp_path / "o.gguf"
    assert_clean_failure(run("convert", bad, out, "Q8_0"), out, "not a GGUF file")


def test_unsupported_version(tmp_path):
    data = bytearray(STORIES.read_bytes())
    data[4:8] = struct.pack("<I", 7)
    bad = tmp_path / "v7.gguf"
    bad.write_bytes(bytes(data))
    out = tmp_path / "o.gguf"
    assert_clean_failure(run("convert", bad, out, "Q8_0"), out, "GGUF version 7 is not supported")


@pytest.mark.parametrize("where", ["header", "kv", "tensor_info", "data"])
def test_truncated(tmp_path, where):
    data_offset, tensor_info, _ = _stories_layout()
    cut = {"header": 6, "kv": 200, "tensor_info": tensor_info + 10, "data": data_offset + 1000}[where]
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(STORIES.read_bytes()[:cut])
    out = tmp_path / "o.gguf"
    assert_clean_failure(run("convert", bad, out, "Q8_0"), out, "truncated")


def test_tensor_data_past_end(tmp_path):
    data_offset, _, tensors = _stories_layout()
    last = max(tensors, key=lambda t: t.offset)
    bad = tmp_path / "short.gguf"
    bad.write_bytes(STORIES.read_bytes()[: last.offset + 16])
    out = tmp_path / "o.gguf"
    assert_clean_failure(run("convert", bad, out, "F16"), out, last.name, "past the end")


def test_unknown_type(tmp_path):
    out = tmp_path / "o.gguf"
    assert_clean_failure(run("convert", STORIES, out, "Q9_9"), out, "'Q9_9'", "pyquantize types")


def test_output_directory_missing(tmp_path):
    out = tmp_path / "no" / "such" / "o.gguf"
    assert_clean_failure(run("convert", STORIES, out, "F16"), None, "does not exist")


def test_output_directory_not_writable(tmp_path):
    # /proc refuses new files even to root, where a chmod'ed directory would not
    assert_clean_failure(run("convert", STORIES, "/proc/o.gguf", "F16"), None, "/proc/o.gguf")


def test_in_equals_out(tmp_path):
    src = tmp_path / "m.gguf"
    shutil.copy(STORIES, src)
    before = src.read_bytes()
    assert_clean_failure(run("convert", src, src, "F16"), None, "output is the input")
    assert src.read_bytes() == before


def test_requantize_needs_flag(tmp_path):
    q8 = tmp_path / "q8.gguf"
    assert run("convert", STORIES, q8, "Q8_0", "--quiet").exit_code == 0
    out = tmp_path / "o.gguf"
    assert_clean_failure(run("convert", q8, out, "F16"), out, "already quantized", "Q8_0", "--allow-requantize")
    result = run("convert", q8, out, "F16", "--allow-requantize", "--quiet")
    assert result.exit_code == 0, result.output
    assert open_source(out).tensors[3].type.name == "F16"


def test_nan_weights(tmp_path):
    _, _, tensors = _stories_layout()
    target = next(t for t in tensors if t.name == "blk.2.attn_k.weight")
    data = bytearray(STORIES.read_bytes())
    data[target.offset + 40:target.offset + 44] = struct.pack("<f", float("nan"))
    bad = tmp_path / "nan.gguf"
    bad.write_bytes(bytes(data))
    out = tmp_path / "o.gguf"
    assert_clean_failure(run("convert", bad, out, "Q8_0"), out, "blk.2.attn_k.weight", "NaN")


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    import kernels

    calls = {"n": 0}
    real = kernels.quantize

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(*args, **kw)

    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous contents")
    monkeypatch.setattr(kernels, "quantize", flaky)
    result = run("convert", STORIES, out, "Q8_0")
    assert result.exit_code == 130
    assert out.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]


@pytest.mark.parametrize("command", [[], ["convert"], ["inspect"], ["types"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.output
