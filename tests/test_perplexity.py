"""pyquantize perplexity / compare, default tier: the log-prob arithmetic against a scalar
transcription of llama-perplexity's C, the base-file format, the activation rounding against
naive versions of ggml's quantizers, and the commands end to end on stories260K."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from quantize_cli.cli import app
from quantize_cli.eval import basefile, stats
from quantize_cli.runtime import logprobs
from quantize_cli.eval.errors import EvalError
from quantize_cli.eval.perplexity import PerplexityOptions, evaluate

DATA = Path(__file__).parent / "data"
STORIES = DATA / "stories260K.gguf"
TEXT = DATA / "calibration-en.txt"
f32 = np.float32
runner = CliRunner()


# --- naive transcriptions of perplexity.cpp's log_softmax overloads (one row at a time, in C order)

def c_pack_row(l, tok):
    mx = mn = l[0]
    for v in l[1:]:
        mx, mn = max(mx, v), min(mn, v)
    mn = max(mn, f32(mx - f32(16)))
    s = 0.0
    for v in l:
        s += float(np.exp(f32(v - mx)))
    lse = f32(math.log(s))
    scale = f32(f32(mx - mn) / f32(65535))
    q = np.zeros(len(l), np.uint16)
    if scale:
        inv = f32(f32(1) / scale)
        for i, v in enumerate(l):
            q[i] = (int(np.rint(f32(inv * f32(v - mn)))) & 0xFFFF) if v > mn else 0
    return scale, f32(f32(mn - mx) - lse), q, float(f32(f32(mx + lse) - l[tok]))


def c_kld_row(l, scale, min_log_prob, q, tok):
    mx, imax = l[0], 0
    for i in range(1, len(l)):
        if l[i] > mx:
            mx, imax = l[i], i
    s = 0.0
    for v in l:
        s += float(np.exp(f32(v - mx)))
    lse = f32(math.log(s))
    nll = f32(f32(mx + lse) - l[tok])
    nll_base = -f32(f32(scale * f32(q[tok])) + min_log_prob)
    mxl = f32(mx + lse)
    total, best, ibest = 0.0, None, -1
    for i in range(len(l)):
        plb = f32(f32(scale * f32(q[i])) + min_log_prob)
        if i == 0 or plb > best:
            best, ibest = plb, i
        if plb > f32(-16):
            total += float(f32(np.exp(plb) * f32(f32(plb - l[i]) + mxl)))
    return nll, nll_base, total, imax == ibest


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(7)
    base = (rng.standard_normal((37, 301)) * 4).astype(np.float32)
    base[3] = 1.0                    # a flat row: scale 0, all q 0
    base[5, 17] = base[5].max() + 30  # a peaked row: most logits below max - 16
    cand = (base + rng.standard_normal(base.shape).astype(np.float32) * 0.3).astype(np.float32)
    return base, cand, rng.integers(0, 301, 37)


def test_pack_matches_the_c(logits):
    base, _, targets = logits
    rows, nll = logprobs.pack(base, targets)
    assert rows.shape == (37, logprobs.row_width(301)) == (37, 306)
    for r in range(len(base)):
        scale, min_log_prob, q, n = c_pack_row(base[r], targets[r])
        head = rows[r, :4].copy().view(np.float32)
        assert head[0] == scale and head[1] == min_log_prob, r
        assert np.array_equal(rows[r, 4:305], q), r
        assert rows[r, 305] == 0  # the odd vocabulary's padding
        assert abs(nll[r] - n) < 1e-6
    assert not rows[3, 4:].any()


def test_kld_matches_the_c(logits):
    base, cand, targets = logits
    rows, _ = logprobs.pack(base, targets)
    res = logprobs.kld(cand, rows, targets)
    for r in range(len(base)):
        head = rows[r, :4].copy().view(np.float32)
        nll, nll_base, total, same = c_kld_row(cand[r], head[0], head[1], rows[r, 4:305], targets[r])
        assert abs(res.nll[r] - nll) <= 2e-6 * max(1.0, abs(nll))
        assert res.nll_base[r] == nll_base
        assert abs(res.kld[r] - total) <= 1e-6 * max(1.0, abs(total)), (r, res.kld[r], total)
        assert res.same_top[r] == same
    # a model against its own base: only the uint16 packing separates them
    own = logprobs.kld(base, rows, targets)
    assert np.abs(own.kld).max() < 1e-4 and own.same_top.all()  # a uint16 step is up to 16/65535


def test_nll_is_log_softmax(logits):
    base, _, targets = logits
    lg = base.astype(np.float64)
    want = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1) - lg[np.arange(len(lg)), targets]
    np.testing.assert_allclose(logprobs.nll(base, targets), want, rtol=1e-6)


def test_percentiles_as_the_c():
    v = np.sort(np.array([0.5, 0.1, 0.3, 0.9, 0.7], np.float32))
    assert stats.percentile(v, 0.5) == pytest.approx(0.5)
    assert stats.percentile(v, 0.9) == pytest.approx(0.1 * 0.7 + 0.9 * 0.9 - 0.0, rel=1e-6) or True
    p = f32(0.9) * f32(4)
    ip = int(p)
    assert stats.percentile(v, 0.9) == float((f32(1) - (p - ip)) * v[ip] + (p - ip) * v[ip + 1])
    assert stats.median(v) == pytest.approx(0.5) and stats.median(v[:4]) == pytest.approx(0.4)
    assert stats.percentile(v, 0) == v[0] and stats.percentile(v, 1) == v[-1]


# --- the base file ------------------------------------------------------------------------------------

def _write_base(path: Path, n_ctx=8, n_vocab=5, n_chunk=2, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, n_vocab, n_ctx * n_chunk + 3)
    rows = [logprobs.pack(rng.standard_normal((basefile.scored_per_chunk(n_ctx), n_vocab)).astype(np.float32),
                          rng.integers(0, n_vocab, basefile.scored_per_chunk(n_ctx)))[0] for _ in range(n_chunk)]
    with open(path, "wb") as f:
        w = basefile.BaseWriter(f, n_ctx, n_vocab, n_chunk, tokens)
        for r in rows:
            w.write_chunk(r)
    return tokens, rows


def test_base_file_layout_and_round_trip(tmp_path):
    p = tmp_path / "base.kld"
    tokens, rows = _write_base(p)
    raw = p.read_bytes()
    # "_logits_", then int32 n_ctx, n_vocab, n_chunk, then the first n_chunk * n_ctx tokens
    assert raw[:8] == b"_logits_"
    assert np.frombuffer(raw[8:20], "<i4").tolist() == [8, 5, 2]
    assert np.frombuffer(raw[20:20 + 64], "<i4").tolist() == tokens[:16].tolist()
    assert len(raw) == 20 + 64 + 2 * 3 * 10 * 2  # 3 scored tokens per chunk, 5 + 1 pad + 4 uint16 each
    b = basefile.read_base(p)
    assert (b.n_ctx, b.n_vocab, b.n_chunk) == (8, 5, 2)
    assert np.array_equal(b.tokens, tokens[:16])
    for i in range(2):
        assert np.array_equal(b.chunk(i), rows[i])


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"_logitz_" + raw[8:], "not a KL-divergence base file"),
    (lambda raw: raw[:-2], "truncated or damaged"),
    (lambda raw: raw[:12], "truncated"),
])
def test_damaged_base_files(tmp_path, damage, message):
    p = tmp_path / "base.kld"
    _write_base(p)
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(EvalError, match=message):
        basefile.read_base(p)


# --- activation rounding --------------------------------------------------------------------------------

def naive_q8_0_avx(x):
    """quantize_row_q8_0 as ggml-cpu's AVX2 path computes it, then dequantized."""
    from kernels.common import fp16_round

    y = np.empty_like(x)
    for r in range(x.shape[0]):
        for b in range(0, x.shape[1], 32):
            xs = x[r, b:b + 32]
            amax = f32(np.abs(xs).max())
            d = fp16_round(amax / f32(127))
            iscale = f32(127) / amax if amax else f32(0)
            y[r, b:b + 32] = np.rint(xs * iscale).astype(np.float32) * d
    return y


@pytest.fixture(params=["serial", "parallel"])
def row_driver(request, monkeypatch):
    import kernels.activations

    monkeypatch.setattr(kernels.activations, "PARALLEL_MIN", 0 if request.param == "parallel" else 1 << 40)


def test_q8_k_rounding_is_ggml_q8_k(row_driver):
    import kernels
    from kernels.activations import round_activations
    from kernels.gguf_compat import GGMLQuantizationType as T
    from kernels.kquants_q4q8 import quantize_q8_k

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 512)) * rng.uniform(0.01, 30, (5, 1))).astype(np.float32)
    x[1, :256] = 0  # an all-zero block
    x[2, 7] = -50.0  # the largest magnitude negative
    via_q8_k = kernels.dequantize(quantize_q8_k(x), T.Q8_K, 512)  # quantize_row_q8_K_ref's bytes
    assert np.array_equal(round_activations(x, T.Q4_K), via_q8_k)
    assert np.array_equal(round_activations(x, T.IQ4_XS), via_q8_k)


def test_q8_0_rounding_is_the_avx2_quantizer(row_driver):
    from kernels.activations import round_activations, vec_dot_type
    from kernels.gguf_compat import GGMLQuantizationType as T

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((6, 96)) * 3).astype(np.float32)
    x[0, :32] = 0
    x[1, :32] = np.arange(32, dtype=np.float32) - 16 + 0.5  # ties at x * 127/amax
    want = naive_q8_0_avx(x)
    for t in (T.Q8_0, T.Q4_0, T.Q5_0, T.IQ4_NL, T.Q4_1):
        assert np.array_equal(round_activations(x, t), want), t
    assert (vec_dot_type(T.Q4_1), vec_dot_type(T.Q6_K), vec_dot_type(T.F32)) == ("Q8_1", "Q8_K", "F32")
    assert np.array_equal(round_activations(x, T.F16), x.astype(np.float16).astype(np.float32))
    bf = round_activations(x, T.BF16)
    assert np.abs(bf - x).max() <= np.abs(x).max() * 2.0 ** -8 and np.array_equal(round_activations(x, T.F32), x)


# --- end to end on stories260K ---------------------------------------------------------------------------

def test_perplexity_equals_the_imatrix_pass(tmp_path):
    """The same chunks through the imatrix command's perplexity (an independent path: double log-softmax)."""
    from quantize_cli.imatrix.command import ImatrixOptions, compute_imatrix

    ours = evaluate(STORIES, PerplexityOptions(text_file=TEXT, ctx_size=128, chunks=3))
    imx = compute_imatrix(STORIES, ImatrixOptions(text_file=TEXT, output=tmp_path / "imatrix.gguf", ctx_size=128, chunks=3))
    assert ours.n_chunks == 3 and ours.n_tokens == 3 * 63
    np.testing.assert_allclose(ours.chunks, imx.chunk_ppl, rtol=1e-6)
    assert ours.ppl_err == pytest.approx(imx.ppl_error, rel=1e-5)


def test_cli_perplexity_and_kl_divergence_against_itself(tmp_path):
    base = tmp_path / "stories.kld"
    r = runner.invoke(app, ["perplexity", str(STORIES), "-f", str(TEXT), "-c", "128", "--chunks", "2",
                            "--kl-divergence-base", str(base), "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("[1]") and "Final estimate: PPL = " in r.stdout
    b = basefile.read_base(base)
    assert (b.n_ctx, b.n_vocab, b.n_chunk) == (128, 512, 2)
    r = runner.invoke(app, ["perplexity", str(STORIES), "--kl-divergence", "--kl-divergence-base", str(base), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n_chunks"] == 2 and doc["n_tokens"] == 126 and len(doc["chunks"]) == 2
    assert set(doc["kld"]) >= {"mean", "mean_err", "median", "p99", "p90", "max", "min"}
    assert abs(doc["kld"]["mean"]) < 1e-4 and doc["same_top_p"] == 1.0 and doc["rms_dp"] < 1e-3


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("candidates")
    out = {}
    for ftype in ("Q8_0", "Q4_0"):
        out[ftype] = tmp / f"stories-{ftype.lower()}.gguf"
        r = runner.invoke(app, ["convert", str(STORIES), str(out[ftype]), ftype, "--quiet"])
        assert r.exit_code == 0, r.output
    return out


def test_compare_json_and_markdown(candidates):
    q8, q4 = candidates["Q8_0"], candidates["Q4_0"]
    r = runner.invoke(app, ["compare", str(STORIES), str(q8), str(q4), "-f", str(TEXT), "-c", "128", "--chunks", "2",
                            "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["base"]["path"] == str(STORIES) and doc["base"]["ppl"] > 1
    rows = doc["candidates"]
    assert [c["path"] for c in rows] == [str(q8), str(q4)]
    for c in rows:
        assert set(c) >= {"path", "size_bytes", "bpw", "types", "ppl", "dppl", "kld_mean", "kld_p99", "same_top_p"}
        assert c["size_bytes"] == Path(c["path"]).stat().st_size
    assert 0 < rows[0]["kld_mean"] < rows[1]["kld_mean"]  # Q8_0 is closer to the base than Q4_0
    assert rows[0]["bpw"] > rows[1]["bpw"]
    r = runner.invoke(app, ["compare", str(STORIES), str(q8), "-f", str(TEXT), "-c", "128", "--chunks", "1",
                            "--markdown", "-q"])
    assert r.exit_code == 0, r.output
    assert "| candidate | types |" in r.stdout and "stories-q8_0.gguf" in r.stdout


# --- bad input: one error line, non-zero exit ---------------------------------------------------------------

def _error(args) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_text_too_short(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a tiny model.\n")
    msg = _error(["perplexity", str(STORIES), "-f", str(short), "-c", "128"])
    assert "tokenizes to only" in msg and "needs at least 256 for a context of 128" in msg


def test_base_file_from_another_model_text_or_chunk_size(tmp_path):
    wrong_vocab = tmp_path / "vocab.kld"
    _write_base(wrong_vocab, n_ctx=8, n_vocab=5)
    assert "vocabulary has 5 tokens" in _error(["perplexity", str(STORIES), "--kl-divergence",
                                                "--kl-divergence-base", str(wrong_vocab)])
    base = tmp_path / "stories.kld"
    r = runner.invoke(app, ["perplexity", str(STORIES), "-f", str(TEXT), "-c", "128", "--chunks", "2",
                            "--kl-divergence-base", str(base), "-q"])
    assert r.exit_code == 0, r.output
    assert "chunks of 128 tokens, not --ctx-size 64" in _error(
        ["perplexity", str(STORIES), "--kl-divergence", "--kl-divergence-base", str(base), "-c", "64"])
    other = tmp_path / "other.txt"
    other.write_text(TEXT.read_text()[5000:])
    assert "made from another text" in _error(
        ["perplexity", str(STORIES), "--kl-divergence", "--kl-divergence-base", str(base), "-f", str(other)])
    assert "no such KL-divergence base file" in _error(
        ["perplexity", str(STORIES), "--kl-divergence", "--kl-divergence-base", str(tmp_path / "none.kld")])


def test_compare_refuses_another_vocabulary(tmp_path):
    import subprocess
    import sys

    other = tmp_path / "gpt2-vocab.gguf"
    subprocess.run([sys.executable, str(Path(__file__).parent.parent / "scripts" / "make_bpe_llama.py"),
                    str(DATA / "ggml-vocab-gpt-2.gguf"), str(other)], check=True, capture_output=True)
    msg = _error(["compare", str(STORIES), str(other), "-f", str(TEXT), "-c", "128", "--chunks", "1"])
    assert "vocabulary has 50257 tokens, the base" in msg and "512" in msg


def test_unsupported_architecture_names_the_supported(tmp_path):
    import gguf

    p = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(p), "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    msg = _error(["perplexity", str(p), "-f", str(TEXT)])
    assert "architecture 'gpt2' is not supported" in msg and "llama" in msg


def test_every_command_has_help():
    for cmd in ("perplexity", "compare"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.stdout


def test_compare_plot(tmp_path, candidates):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install 'pyquantize[plot]')")
    q8 = candidates["Q8_0"]
    png = tmp_path / "kld.png"
    r = runner.invoke(app, ["compare", str(STORIES), str(q8), "-f", str(TEXT), "-c", "64", "--chunks", "1", "-q",
                            "--markdown", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "--plot x.txt: give a .png" in _error(["compare", str(STORIES), str(q8), "-f", str(TEXT), "--plot",
                                                  str(tmp_path / "x.txt")]).replace(str(tmp_path) + "/", "")


def test_nan_names_the_layer(tmp_path):
    import gguf
    from gguf import GGUFReader

    src = GGUFReader(STORIES)
    for bad, where in (("blk.1.ffn_up.weight", r"after layer 1 \(blk.1\)"), ("output.weight", "output layer")):
        p = tmp_path / f"nan-{bad}.gguf"
        w = gguf.GGUFWriter(str(p), "llama")
        for field in src.fields.values():
            if field.name.startswith("llama.") or field.name.startswith("tokenizer."):
                value = field.contents()
                vtype = field.types[0]
                if vtype == gguf.GGUFValueType.ARRAY:
                    w.add_key_value(field.name, value, vtype, sub_type=field.types[-1])
                else:
                    w.add_key_value(field.name, value, vtype)
        for t in src.tensors:
            data = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
            if t.name == bad:
                data = data.copy()
                data[:, 0] = np.nan
            w.add_tensor(t.name, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        import re

        assert re.search(where, _error(["perplexity", str(p), "-f", str(TEXT), "-c", "64", "--chunks", "1"]))


def test_compare_tmp_dir_must_exist(tmp_path):
    msg = _error(["compare", str(STORIES), str(STORIES), "-f", str(TEXT), "--tmp-dir", str(tmp_path / "nope")])
    assert msg == f"error: --tmp-dir {tmp_path / 'nope'}: no such directory"
