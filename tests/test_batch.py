"""Several types from one read (convert --types), manifests and --skip-unchanged."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantize_cli import __version__
from quantize_cli.batch import Target, convert_types, expand_output, input_stem
from quantize_cli.cli import app
from quantize_cli.plan import QuantizeOptions, parse_file_type

ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"
# llama-quantize's outputs for stories260K (as in tests/test_convert_spine.py)
LLAMA_QUANTIZE_SHA256 = {"F16": "4cd29bbe9cb3b735", "BF16": "633551c4cd934c20", "Q8_0": "ff8701a45da28293",
                         "COPY": "f40a10bece340d0e"}

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A synthetic llama whose rows fit every K-quant (so the mixes differ per type)."""
    out = tmp_path_factory.mktemp("batch") / "small-f32.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic.py"), str(out), "--layers", "2",
                    "--embd", "256", "--ff", "512", "--heads", "4", "--kv-heads", "2", "--vocab", "320"], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def test_batch_matches_llama_quantize_and_reports_every_output(tmp_path):
    result = run("convert", STORIES, "--types", "F16,BF16,Q8_0,COPY", "-o", tmp_path / "{name}-{type}.gguf", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [o["type"] for o in doc["outputs"]] == ["F16", "BF16", "Q8_0", "COPY"]
    for o in doc["outputs"]:
        path = tmp_path / f"stories260K-{o['type']}.gguf"
        assert o["output"] == str(path) and not o["skipped"]
        assert sha(path)[:16] == LLAMA_QUANTIZE_SHA256[o["type"]]
        assert o["files"] == [{"path": str(path), "size": path.stat().st_size, "sha256": sha(path)}]
        assert o["manifest"] == str(path) + ".manifest.json"
    assert doc["bytes_read"] == 292800 * 4 and doc["pyquantize_version"] == __version__


def test_batch_identical_to_single_runs_kquants(tmp_path, small):
    types = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q3_K_S"]
    result = run("convert", small, "--types", ",".join(types), "-o", tmp_path / "b-{type}.gguf", "-q", "-t", "2")
    assert result.exit_code == 0, result.output
    for t in types:
        single = tmp_path / f"s-{t}.gguf"
        assert run("convert", small, single, t, "-q").exit_code == 0
        assert sha(single) == sha(tmp_path / f"b-{t}.gguf"), t
    assert not list(tmp_path.glob(".*.part"))


def test_manifest_contents(tmp_path, small):
    out = tmp_path / "m.gguf"
    assert run("convert", small, "Q4_K_M", "-o", out, "--pure", "--tensor-type", "attn_v=q8_0", "-q").exit_code == 0
    doc = json.loads((tmp_path / "m.gguf.manifest.json").read_text())
    assert doc["schema"] == "pyquantize-manifest/1" and doc["pyquantize_version"] == __version__
    assert doc["outputs"] == [{"file": "m.gguf", "size": out.stat().st_size, "sha256": sha(out)}]
    inspected = json.loads(run("inspect", out, "--json").output)
    assert {t: e["tensors"] for t, e in doc["type_mix"].items()} == {t: e["tensors"] for t, e in inspected["types"].items()}
    assert {t: e["bytes"] for t, e in doc["type_mix"].items()} == {t: e["bytes"] for t, e in inspected["types"].items()}
    assert doc["options"]["type"] == "Q4_K_M" and doc["options"]["pure"] is True
    assert doc["options"]["tensor_types"] == [["attn_v", "Q8_0"]]
    assert doc["input"]["size"] == small.stat().st_size and len(doc["input"]["fingerprint"]) == 64
    assert doc["command"] is not None
    # the manifest stays outside the GGUF: nothing pyquantize-specific inside
    assert b"pyquantize" not in out.read_bytes()


def test_skip_unchanged(tmp_path):
    src = tmp_path / "model.gguf"
    shutil.copy(STORIES, src)
    args = ["convert", src, "--types", "Q8_0,F16", "-o", tmp_path / "{type}.gguf", "--skip-unchanged", "--json"]
    first = json.loads(run(*args).output)
    assert [o["skipped"] for o in first["outputs"]] == [False, False]
    stamp = (tmp_path / "Q8_0.gguf").stat().st_mtime_ns
    again = json.loads(run(*args).output)
    assert [o["skipped"] for o in again["outputs"]] == [True, True]
    assert again["outputs"][0]["files"] == first["outputs"][0]["files"]
    assert (tmp_path / "Q8_0.gguf").stat().st_mtime_ns == stamp
    # a copy of the same input (new mtime, as after a CI cache restore) is the same input
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    assert [o["skipped"] for o in json.loads(run(*args).output)["outputs"]] == [True, True]
    # other options: rebuilt
    other = json.loads(run(*args[:-1], "--leave-output-tensor", "--json").output)
    assert [o["skipped"] for o in other["outputs"]] == [False, False]
    # an edited input: rebuilt
    data = bytearray(src.read_bytes())
    data[-100] ^= 1
    src.write_bytes(bytes(data))
    assert [o["skipped"] for o in json.loads(run(*args[:-1], "--leave-output-tensor", "--json").output)["outputs"]] == [False, False]
    # an output removed behind the manifest's back: rebuilt
    (tmp_path / "F16.gguf").unlink()
    third = json.loads(run(*args[:-1], "--leave-output-tensor", "--json").output)
    assert [o["skipped"] for o in third["outputs"]] == [True, False]


def test_input_fingerprint_samples(tmp_path):
    """The head whole, then 4 KiB of every 4 MiB and the tail: a change there is seen, a copy is
    the same input, the file's name and time play no part."""
    from quantize_cli.manifest import BLOCK, HEAD_BYTES, STRIDE, input_identity

    big = tmp_path / "big.gguf"
    data = bytearray(os.urandom(1 << 16)) * ((HEAD_BYTES + 3 * STRIDE) >> 16)
    big.write_bytes(data)
    base = input_identity(big)
    assert base["size"] == len(data) and base["files"][0]["name"] == "big.gguf"
    copy = tmp_path / "copy.gguf"
    shutil.copy(big, copy)
    assert input_identity(copy)["fingerprint"] == base["fingerprint"]

    def changed(pos: int) -> bool:
        edited = bytearray(data)
        edited[pos] ^= 0xFF
        big.write_bytes(edited)
        return input_identity(big)["fingerprint"] != base["fingerprint"]

    assert changed(5)                              # the head (GGUF metadata, tensor infos)
    assert changed(HEAD_BYTES + STRIDE + 100)      # inside a sampled block
    assert changed(len(data) - 1)                  # the tail
    assert not changed(HEAD_BYTES + BLOCK + 100)   # between samples: the documented blind spot


def test_everything_checked_before_work(tmp_path, small):
    out = tmp_path / "{type}.gguf"
    # IQ2_XXS needs an imatrix: nothing at all is written, Q8_0 included
    result = run("convert", small, "--types", "Q8_0,IQ2_XXS", "-o", out)
    assert result.exit_code == 1 and "IQ2_XXS" in result.output and "imatrix" in result.output
    assert list(tmp_path.iterdir()) == []
    # two types, one name
    result = run("convert", STORIES, "--types", "Q8_0,F16", "-o", tmp_path / "same.gguf")
    assert result.exit_code == 1 and "{type}" in result.output
    # the input as an output
    src = tmp_path / "in-F16.gguf"
    shutil.copy(STORIES, src)
    result = run("convert", src, "--types", "Q8_0,F16", "-o", tmp_path / "in-{type}.gguf")
    assert result.exit_code == 1 and "output is the input" in result.output
    assert not (tmp_path / "in-Q8_0.gguf").exists()
    # a folder that does not exist
    result = run("convert", STORIES, "--types", "Q8_0", "-o", tmp_path / "nope" / "{type}.gguf")
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize("args, fragment", [
    (["--types", "Q8_0", "-o", "x-{size}.gguf"], "only {type} and {name}"),
    (["OUT.gguf", "--types", "Q8_0"], "with --types give only IN"),
    (["--types", "Q8_0,q8_0"], "twice"),
    (["--types", "Q9_X"], "unknown file type"),
])
def test_usage_errors(tmp_path, args, fragment):
    result = run("convert", STORIES, *args)
    assert result.exit_code in (1, 2) and fragment in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_output_placeholders(tmp_path):
    assert input_stem(Path("a/llama-7b-f16.gguf")) == "llama-7b-f16"
    assert input_stem(Path("a/big-00001-of-00003.gguf")) == "big"
    assert expand_output("out/{name}.{type}.gguf", Path("m.gguf"), "Q4_K_M") == Path("out/m.Q4_K_M.gguf")
    assert expand_output("{{x}}-{type}", Path("m.gguf"), "Q8_0") == Path("{x}-Q8_0")


def test_single_type_with_o_and_default_names(tmp_path):
    src = tmp_path / "model.gguf"
    shutil.copy(STORIES, src)
    assert run("convert", src, "Q8_0", "-o", tmp_path / "{name}-{type}.gguf", "-q", "--no-manifest").exit_code == 0
    assert sha(tmp_path / "model-Q8_0.gguf")[:16] == LLAMA_QUANTIZE_SHA256["Q8_0"]
    assert not (tmp_path / "model-Q8_0.gguf.manifest.json").exists()
    # --types without -o: llama-quantize's default name per type, beside IN
    assert run("convert", src, "--types", "F16,Q8_0", "-q").exit_code == 0
    assert sha(tmp_path / "ggml-model-F16.gguf")[:16] == LLAMA_QUANTIZE_SHA256["F16"]
    assert (tmp_path / "ggml-model-Q8_0.gguf.manifest.json").exists()


def test_progress_names_the_types_together(tmp_path, small):
    events = []
    targets = [Target(n, QuantizeOptions(ftype=parse_file_type(n)[0]), tmp_path / f"{n}.gguf") for n in ("Q4_K_M", "Q6_K")]
    result = convert_types(small, targets, progress=lambda *e: events.append(e), manifests=False)
    assert events[0][0] == "plan" and events[0][2] == ["Q4_K_M", "Q6_K"]
    starts = {e[1]: e[2] for e in events if e[0] == "start"}
    assert starts["blk.0.attn_q.weight"] == ["Q4_K", "Q6_K"]
    assert starts["output.weight"] == ["Q6_K"]  # both want Q6_K: quantized once
    assert sum(e[3] for e in events if e[0] == "done") == events[0][3] == result.bytes_read


def test_pipelined_slabs_identical_to_single_runs(tmp_path, small, monkeypatch):
    """Many small slabs in flight on the worker threads (kernels of several slabs and tensors at
    once), written in order: every output as a single run's."""
    import threading

    import kernels
    import quantize_cli.convert as conv

    types = ["Q4_K_M", "Q6_K", "Q8_0", "F16"]
    singles = {}
    for t in types:
        assert run("convert", small, tmp_path / f"s-{t}.gguf", t, "-q").exit_code == 0
        singles[t] = sha(tmp_path / f"s-{t}.gguf")
    seen = set()
    real = kernels.quantize

    def quantize(*a):
        seen.add(threading.current_thread().name.split("_")[0])
        return real(*a)

    monkeypatch.setattr(kernels, "quantize", quantize)
    monkeypatch.setattr(conv, "SLAB_BYTES", 16 << 10)  # 16 rows of 256 weights: every tensor is many slabs
    targets = [Target(t, QuantizeOptions(ftype=parse_file_type(t)[0]), tmp_path / f"b-{t}.gguf") for t in types]
    convert_types(small, targets, nthreads=2, manifests=False)
    for t in types:
        assert sha(tmp_path / f"b-{t}.gguf") == singles[t], t
    import numba

    if numba.threading_layer() in ("omp", "tbb"):
        assert seen == {"quantize"}, seen  # every kernel ran on the pool
    assert numba.get_num_threads() == 2  # this thread's count is given back


@pytest.mark.parametrize("tensor, index, value, types, ftype, fragments", [
    ("blk.2.attn_k.weight", 10, float("nan"), "F16,Q8_0", "Q8_0", ("blk.2.attn_k.weight", "NaN")),
    ("blk.1.attn_q.weight", 100, 3e38, "Q8_0,F16", "Q8_0", ("blk.1.attn_q.weight", "row 1")),
    ("blk.0.attn_k.weight", 64 * 7, 1e5, "F16,Q8_0", "F16", ("blk.0.attn_k.weight", "row 7")),
    ("output_norm.weight", 3, float("inf"), "Q8_0,F16", "Q8_0", ("output_norm.weight",)),
])
def test_bad_weights_stop_the_batch_as_a_single_run(tmp_path, tensor, index, value, types, ftype, fragments):
    """NaN/Inf inputs, values a type cannot hold (llama.cpp's validation of every quantized slab)
    and invalid data in a copied tensor: the batch stops with the single run's error, writing nothing."""
    from hostile_corpus import f32_at, stories

    src = tmp_path / "in.gguf"
    src.write_bytes(f32_at(stories(), tensor, index, value).to_bytes())
    single = run("convert", src, tmp_path / "s.gguf", ftype, "-q")
    assert single.exit_code == 1 and all(f in single.output for f in fragments), single.output
    out = tmp_path / "out"
    out.mkdir()
    result = run("convert", src, "--types", types, "-o", out / "{type}.gguf", "-q")
    assert result.exit_code == 1 and result.output == single.output
    assert list(out.iterdir()) == []


def test_interrupt_on_a_worker_thread_leaves_nothing(tmp_path, small, monkeypatch):
    """Ctrl-C reaching a kernel task on the pool ends the batch as it ends a single run: exit 130,
    previous outputs untouched, no temporary files, the pool's threads gone."""
    import threading

    import kernels
    import quantize_cli.convert as conv

    calls = {"n": 0}
    real = kernels.quantize

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(*args, **kw)

    (tmp_path / "Q8_0.gguf").write_bytes(b"previous contents")
    monkeypatch.setattr(kernels, "quantize", flaky)
    monkeypatch.setattr(conv, "SLAB_BYTES", 16 << 10)
    result = run("convert", small, "--types", "Q4_K_M,Q8_0", "-o", tmp_path / "{type}.gguf", "-t", "2")
    assert result.exit_code == 130, result.output
    assert (tmp_path / "Q8_0.gguf").read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Q8_0.gguf"]
    assert not [t for t in threading.enumerate() if t.name.startswith("quantize")]
