"""Importance matrices: collection as llama-imatrix, both file formats, the command.

Default tier: llama-imatrix's own file for the first 2 chunks of the calibration text on
stories260K (tests/golden/stories260K-imatrix.gguf, -ctk f32 -ctv f32 -fa off; made by
scripts/make_imatrix_golden.py imatrix) against our collection; the GGUF writer byte for byte;
GGUF <-> .dat round trips; load_imatrix's values as llama-quantize computes them; bad files.
Reference tier (tests/test_imatrix_reference.py): llama-imatrix and llama-quantize binaries.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from quantize_cli.imatrix import command as imatrix_cmd
from quantize_cli.errors import ImatrixError
from quantize_cli.formats.imatrix_file import load_imatrix, save_imatrix
from quantize_cli.imatrix.collector import Collector
from quantize_cli.imatrix.command import ImatrixOptions, compute_imatrix

DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent / "golden"
STORIES = DATA / "stories260K.gguf"
LLAMA_FILE = GOLDEN / "stories260K-imatrix.gguf"
MATMULS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def worst_relative(ours: dict, theirs: dict) -> float:
    """Largest |a-b| / max|b| over entries: llama-imatrix vs ours, per entry's largest value."""
    assert sorted(ours) == sorted(theirs)
    return max(float(np.abs(ours[n] - theirs[n]).max() / np.abs(theirs[n]).max()) for n in theirs)


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    """About 1600 tokens of the calibration text: 3 chunks of 512 for stories260K."""
    p = tmp_path_factory.mktemp("text") / "calibration-head.txt"
    p.write_text((DATA / "calibration-en.txt").read_text(encoding="utf-8")[:2700], encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def ours_2_chunks(tmp_path_factory):
    """Our imatrix over the same 2 chunks as the golden llama-imatrix file."""
    out = tmp_path_factory.mktemp("ours") / "imatrix.gguf"
    result = compute_imatrix(STORIES, ImatrixOptions(text_file=DATA / "calibration-en.txt", output=out, chunks=2))
    return out, result


# --- parity with llama-imatrix (golden file) -------------------------------------------------------

def test_golden_file_loads_as_llama_quantize_reads_it():
    data = load_imatrix(LLAMA_FILE)
    assert data.chunk_count == 2 and data.chunk_size == 512 and not data.is_legacy
    assert data.datasets == ["calibration-en.txt"]
    assert sorted(data.entries) == sorted(f"blk.{i}.{m}.weight" for i in range(5) for m in MATMULS)
    assert data.entries["blk.0.ffn_down.weight"].shape == (172,)
    assert all(int(c[0]) == 1024 for c in data.counts.values())
    # llama-quantize's value: in_sum2 / count
    np.testing.assert_array_equal(data.entries["blk.3.attn_q.weight"],
                                  data.sums["blk.3.attn_q.weight"] / np.float32(1024))


def test_in_sum2_matches_llama_imatrix(ours_2_chunks):
    out, result = ours_2_chunks
    ours, theirs = load_imatrix(out), load_imatrix(LLAMA_FILE)
    assert {n: list(c) for n, c in ours.counts.items()} == {n: list(c) for n, c in theirs.counts.items()}
    assert worst_relative(ours.sums, theirs.sums) < 1e-3
    assert (ours.chunk_count, ours.chunk_size) == (theirs.chunk_count, theirs.chunk_size)


def test_perplexity_matches_llama_imatrix(ours_2_chunks):
    _, result = ours_2_chunks
    theirs = json.loads((GOLDEN / "stories260K-imatrix.json").read_text())["ppl"]
    assert len(result.chunk_ppl) == len(theirs) == 2
    for a, b in zip(result.chunk_ppl, theirs):
        assert abs(a - b) / b < 0.005


def test_gguf_writer_is_byte_identical_to_llama_imatrix(tmp_path):
    """Load llama-imatrix's file into the collector and save it: the same bytes."""
    c = Collector(chunk_size=512)
    c.merge_file(LLAMA_FILE)
    out = save_imatrix(tmp_path / "copy.gguf", c)
    assert out.read_bytes() == LLAMA_FILE.read_bytes()


# --- formats -----------------------------------------------------------------------------------------

def collector_with(values: dict[str, np.ndarray], tokens: int, chunk_size: int = 512, prompt: str = "t.txt"):
    c = Collector(chunk_size=chunk_size, prompt_file=prompt)
    for name, v in values.items():
        x = np.tile(np.sqrt(v / tokens), (tokens, 1)).astype(np.float32)
        c.observe(name, x)
    c.chunk_done()
    return c


def test_gguf_dat_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vals = {f"blk.{i}.ffn_down.weight": rng.random(96).astype(np.float32) * 50 for i in range(3)}
    c = collector_with(vals, 1024)
    g = save_imatrix(tmp_path / "a.gguf", c, "gguf")
    d = save_imatrix(tmp_path / "a.dat", c, "dat")
    gi, di = load_imatrix(g), load_imatrix(d)
    assert di.is_legacy and not gi.is_legacy
    assert gi.chunk_count == di.chunk_count == 2 and di.datasets == gi.datasets == ["t.txt"]
    for name in vals:
        np.testing.assert_allclose(di.entries[name], gi.entries[name], rtol=1e-6)
    # .dat -> GGUF (the command's --in-file conversion) -> .dat keeps the values
    c2 = Collector(chunk_size=512)
    c2.merge_file(d)
    g2 = save_imatrix(tmp_path / "b.gguf", c2, "gguf")
    c3 = Collector(chunk_size=512)
    c3.merge_file(g2)
    d2 = save_imatrix(tmp_path / "b.dat", c3, "dat")
    for name in vals:
        np.testing.assert_allclose(load_imatrix(g2).entries[name], gi.entries[name], rtol=1e-6)
        np.testing.assert_allclose(load_imatrix(d2).entries[name], di.entries[name], rtol=1e-6)


def test_dat_layout(tmp_path):
    c = collector_with({"blk.0.attn_q.weight": np.array([4.0, 16.0], np.float32)}, 16, chunk_size=16, prompt="x")
    raw = save_imatrix(tmp_path / "m.dat", c, "dat").read_bytes()
    name = b"blk.0.attn_q.weight"
    want = struct.pack("<ii", 1, len(name)) + name + struct.pack("<ii", 1, 2) + struct.pack("<2f", 4 / 16, 16 / 16)
    want += struct.pack("<ii", 1, 1) + b"x"
    assert raw == want


def test_gguf_layout(tmp_path):
    """gguf_write_to_file's layout, by hand: header, 4 KV pairs, tensor infos (ggml_n_dims: trailing
    1s dropped), data aligned to 32 bytes with padding after every tensor."""
    c = collector_with({"blk.0.attn_q.weight": np.array([16.0, 64.0], np.float32)}, 16, chunk_size=16, prompt="x")

    def s(text):
        return struct.pack("<Q", len(text)) + text.encode()

    want = b"GGUF" + struct.pack("<IQQ", 3, 2, 4)
    want += s("general.type") + struct.pack("<I", 8) + s("imatrix")
    want += s("imatrix.datasets") + struct.pack("<IIQ", 9, 8, 1) + s("x")
    want += s("imatrix.chunk_count") + struct.pack("<II", 4, 1)
    want += s("imatrix.chunk_size") + struct.pack("<II", 4, 16)
    want += s("blk.0.attn_q.weight.in_sum2") + struct.pack("<IQIQ", 1, 2, 0, 0)
    want += s("blk.0.attn_q.weight.counts") + struct.pack("<IQIQ", 1, 1, 0, 32)
    want += b"\0" * (-len(want) % 32)
    want += struct.pack("<2f", 16.0, 64.0) + b"\0" * 24 + struct.pack("<f", 16.0) + b"\0" * 28
    assert save_imatrix(tmp_path / "m.gguf", c).read_bytes() == want


def test_merge_adds_up(tmp_path):
    a = collector_with({"blk.0.attn_q.weight": np.full(4, 2.0, np.float32)}, 512)
    b = collector_with({"blk.0.attn_q.weight": np.full(4, 6.0, np.float32)}, 1024)
    pa, pb = save_imatrix(tmp_path / "a.gguf", a), save_imatrix(tmp_path / "b.gguf", b)
    c = Collector(chunk_size=512)
    c.merge_file(pa)
    c.merge_file(pb)
    assert c.last_chunk == 3 and c.datasets == ["t.txt", "t.txt"]
    np.testing.assert_allclose(c.stats["blk.0.attn_q.weight"].values, 8.0, rtol=1e-6)
    assert list(c.stats["blk.0.attn_q.weight"].counts) == [1536]


def test_small_batches_and_other_tensors_are_ignored():
    c = Collector(chunk_size=512)
    c.observe("blk.0.attn_q.weight", np.ones((15, 4), np.float32))  # < 16 tokens: llama-imatrix skips
    c.observe("token_embd.weight", np.ones((32, 4), np.float32))
    c.observe("output.weight", np.ones((32, 4), np.float32))  # only with process_output
    assert c.stats == {}
    c.process_output = True
    c.observe("output.weight", np.ones((32, 4), np.float32))
    assert list(c.stats) == ["output.weight"]


def test_load_expert_counts_and_zero_counts(tmp_path):
    """GGUF entries with several matrices: each divided by its own count, 1 where the count is 0."""
    from quantize_cli.imatrix.collector import Stats

    c = Collector(chunk_size=4)
    c.stats["blk.0.ffn_up_exps.weight"] = Stats(np.arange(6, dtype=np.float32), np.array([2, 0, 4], np.int64))
    c.last_chunk = 1
    data = load_imatrix(save_imatrix(tmp_path / "e.gguf", c))
    np.testing.assert_array_equal(data.entries["blk.0.ffn_up_exps.weight"], [0, 0.5, 1, 1, 1, 1.25])


# --- bad files ---------------------------------------------------------------------------------------

def test_truncated_gguf(tmp_path):
    p = tmp_path / "t.gguf"
    p.write_bytes(LLAMA_FILE.read_bytes()[:300])
    with pytest.raises(ImatrixError, match="truncated or corrupt GGUF imatrix"):
        load_imatrix(p)


def test_truncated_dat(tmp_path):
    c = collector_with({"blk.0.attn_q.weight": np.ones(64, np.float32)}, 512)
    raw = save_imatrix(tmp_path / "m.dat", c, "dat").read_bytes()
    (tmp_path / "cut.dat").write_bytes(raw[:60])
    with pytest.raises(ImatrixError, match="truncated legacy imatrix"):
        load_imatrix(tmp_path / "cut.dat")


def test_not_an_imatrix(tmp_path):
    p = tmp_path / "text.dat"
    p.write_bytes(b"hello, this is not an imatrix at all" * 3)
    with pytest.raises(ImatrixError, match="not an imatrix file"):
        load_imatrix(p)
    with pytest.raises(ImatrixError, match="no <weight>.in_sum2"):
        load_imatrix(STORIES)
    with pytest.raises(ImatrixError, match="no such imatrix file"):
        load_imatrix(tmp_path / "missing.gguf")


def test_nan_entries(tmp_path):
    c = collector_with({"blk.0.attn_q.weight": np.ones(8, np.float32)}, 512)
    c.stats["blk.0.attn_q.weight"].values[3] = np.nan
    p = save_imatrix(tmp_path / "nan.gguf", c)
    with pytest.raises(ImatrixError, match="blk.0.attn_q.weight has NaN or infinite values"):
        load_imatrix(p)


def test_gguf_without_metadata_is_refused(tmp_path):
    import gguf

    p = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_tensor("blk.0.attn_q.weight.in_sum2", np.ones(4, np.float32))
    w.add_tensor("blk.0.attn_q.weight.counts", np.ones(1, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ImatrixError, match="without its metadata"):
        load_imatrix(p)


def test_nan_activations_name_the_tensor():
    c = Collector()
    x = np.ones((32, 4), np.float32)
    x[5, 1] = np.inf
    with pytest.raises(ImatrixError, match="feeding blk.1.ffn_down.weight"):
        c.observe("blk.1.ffn_down.weight", x)


# --- the command ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    a.command("imatrix")(imatrix_cmd.imatrix)
    a.command("other")(lambda: None)  # two commands, so `imatrix` is a subcommand as in the real CLI
    return a


def run(app, *args):
    return CliRunner().invoke(app, ["imatrix", *map(str, args)])


def test_cli_happy_path(app, short_text, tmp_path):
    out = tmp_path / "i.gguf"
    r = run(app, STORIES, "-f", short_text, "-o", out, "-t", "1")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("[1]") and "[3]" in r.stdout and "Final estimate: PPL = " in r.stdout
    data = load_imatrix(out)
    assert data.chunk_count == 2 and data.datasets == [str(short_text)]
    # llama-imatrix runs the 3 chunks as 3 parallel sequences in micro-batches of 170 tokens each,
    # and drops the last micro-batch (2 tokens x 3 < 16 rows): 510 tokens recorded per chunk
    assert all(int(c[0]) == 1530 for c in data.counts.values())


def test_collected_rows():
    from quantize_cli.imatrix.command import collected_rows

    assert collected_rows(512, 2048, 512, 4).all() and collected_rows(512, 2048, 512, 2).all()
    assert list(np.flatnonzero(~collected_rows(512, 2048, 512, 3))) == [510, 511]
    assert list(np.flatnonzero(~collected_rows(1030, 2048, 512, 1))) == list(range(1024, 1030))
    assert collected_rows(512, 512, 512, 1).all()


def test_cli_dat_no_ppl_process_output(app, short_text, tmp_path):
    out = tmp_path / "i.dat"
    r = run(app, STORIES, "-f", short_text, "-o", out, "--output-format", "dat", "--no-ppl", "--chunks", "2",
            "--process-output")
    assert r.exit_code == 0, r.output
    assert "PPL" not in r.stdout
    data = load_imatrix(out)
    assert data.is_legacy and data.chunk_count == 2 and "output.weight" in data.entries


def test_cli_from_chunk_and_save_frequency(app, short_text, tmp_path):
    out = tmp_path / "i.gguf"
    text = tmp_path / "long.txt"
    text.write_text((DATA / "calibration-en.txt").read_text(encoding="utf-8")[:5000], encoding="utf-8")
    r = run(app, STORIES, "-f", text, "-o", out, "--chunk", "1", "--chunks", "2", "--save-frequency", "1",
            "--no-ppl")
    assert r.exit_code == 0, r.output
    assert load_imatrix(tmp_path / "i.gguf.at_1").chunk_count == 1
    assert load_imatrix(out).chunk_count == 2


def test_cli_merge_in_files_and_statistics(app, tmp_path):
    out = tmp_path / "merged.gguf"
    r = run(app, "--in-file", f"{LLAMA_FILE},{LLAMA_FILE}", "-o", out)
    assert r.exit_code == 0, r.output
    merged, one = load_imatrix(out), load_imatrix(LLAMA_FILE)
    assert merged.chunk_count == 4 and merged.datasets == one.datasets * 2
    np.testing.assert_allclose(merged.entries["blk.1.ffn_up.weight"], one.entries["blk.1.ffn_up.weight"], rtol=1e-6)
    r = run(app, "--in-file", LLAMA_FILE, "--show-statistics")
    assert r.exit_code == 0, r.output
    assert "Computing statistics for" in r.stdout and "(35 tensors)" in r.stdout
    assert "Computing weighted average statistics per layer (5 layers)" in r.stdout


def test_cli_errors(app, tmp_path, short_text):
    out = tmp_path / "never.gguf"
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Once upon a time.", encoding="utf-8")
    r = run(app, STORIES, "-f", tiny, "-o", out)
    assert r.exit_code == 1
    assert "error: the text tokenizes to only 6 tokens; llama-imatrix needs at least 1024" in r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert "error: " in run(app, STORIES, "-f", empty, "-o", out).stderr
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 1000)
    r = run(app, STORIES, "-f", latin1, "-o", out)
    assert r.exit_code == 1 and "is not UTF-8 (invalid byte 0xe9 at offset 3)" in r.stderr
    r = run(app, "-o", out)
    assert r.exit_code == 1 and "no text (-f) and no --in-file" in r.stderr
    r = run(app, "--in-file", LLAMA_FILE, "--in-file", LLAMA_FILE, "--show-statistics")
    assert r.exit_code == 1 and "exactly one imatrix file" in r.stderr
    r = run(app, STORIES, "-f", short_text, "-o", out, "--output-format", "txt")
    assert r.exit_code == 1 and "--output-format 'txt'" in r.stderr
    assert not out.exists()


def test_cli_in_file_of_another_model(app, tmp_path, short_text):
    c = collector_with({"blk.0.attn_q.weight": np.ones(128, np.float32)}, 512)
    other = save_imatrix(tmp_path / "other.gguf", c)
    r = run(app, STORIES, "-f", short_text, "--in-file", other, "-o", tmp_path / "x.gguf")
    assert r.exit_code == 1 and "made for another model" in r.stderr
    c = collector_with({"blk.9.attn_q.weight": np.ones(64, np.float32)}, 512)
    other = save_imatrix(tmp_path / "other2.gguf", c)
    r = run(app, STORIES, "-f", short_text, "--in-file", other, "-o", tmp_path / "x.gguf")
    assert r.exit_code == 1 and "blk.9.attn_q.weight is not in the model" in r.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_cli_model_without_tokenizer(app, tmp_path, short_text):
    import gguf
    from gguf import GGUFReader

    src = GGUFReader(STORIES)
    p = tmp_path / "notok.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    for key in ("llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.rope.dimension_count"):
        w.add_uint32(key, int(src.fields[key].contents()))
    for t in src.tensors:
        w.add_tensor(t.name, np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run(app, p, "-f", short_text, "-o", tmp_path / "x.gguf")
    assert r.exit_code == 1 and "has no tokenizer metadata" in r.stderr


def test_cli_has_help(app):
    r = CliRunner().invoke(app, ["imatrix", "--help"])
    assert r.exit_code == 0
    for opt in ("--file", "--output", "--output-format", "--ctx-size", "--chunks", "--from-chunk",
                "--output-frequency", "--save-frequency", "--process-output", "--no-ppl", "--parse-special",
                "--in-file", "--show-statistics", "--threads", "--kv-f16"):
        assert opt in r.stdout


def test_pyquantize_convert_uses_llama_imatrix_file(tmp_path):
    """llama-imatrix's file, fed to `pyquantize convert --imatrix`, is read and recorded."""
    from quantize_cli.cli import app as main_app
    from quantize_cli.sources import open_source

    out = tmp_path / "q.gguf"
    r = CliRunner().invoke(main_app, ["convert", str(STORIES), str(out), "Q4_0", "--imatrix", str(LLAMA_FILE), "-q"])
    assert r.exit_code == 0, r.output
    with open_source(out) as src:
        assert src.kv_value("quantize.imatrix.entries_count") == 35
        assert src.kv_value("quantize.imatrix.chunks_count") == 2


def test_cli_unsupported_architecture_and_missing_model(app, tmp_path, short_text):
    import gguf

    p = tmp_path / "falcon.gguf"
    w = gguf.GGUFWriter(str(p), "falcon")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run(app, p, "-f", short_text, "-o", tmp_path / "x.gguf")
    assert r.exit_code == 1
    from quantize_cli.runtime.arch import supported

    assert r.stderr.strip() == f"error: architecture 'falcon' is not supported by the forward pass (supported: {supported()})"
    r = run(app, tmp_path / "missing.gguf", "-f", short_text, "-o", tmp_path / "x.gguf")
    assert r.exit_code == 1 and "missing.gguf: no such file" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
