"""The NumPy llama forward pass against llama.cpp's logits.

Default tier: golden logits of stories260K made by llama.cpp (F32 KV cache, no flash attention;
scripts/make_imatrix_golden.py logits), RoPE/RMSNorm pieces, errors on unsupported models.
Reference tier: logits against llama-cpp-python on stories260K and on a small random llama with
a byte-level BPE vocabulary (scripts/make_bpe_llama.py).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantize_cli.runtime.blocks import ROPE_NEOX, ROPE_NORM, apply_rope, rms_norm, rope_cache
from quantize_cli.runtime.model import Model, ModelError

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent / "golden"
STORIES = DATA / "stories260K.gguf"


@pytest.fixture(scope="module")
def stories():
    m = Model(STORIES)
    yield m
    m.close()


def test_config(stories):
    c = stories.cfg
    assert (c.arch, c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_rot) == \
        ("llama", 512, 64, 5, 8, 4, 8, 172, 8)
    assert stories.output_name == "output.weight"


def test_logits_match_llama_cpp(stories):
    g = np.load(GOLDEN / "stories260K_logits.npz")
    logits = stories.forward(g["tokens"])
    want = g["logits"]
    got = logits[g["rows"]]
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < 1e-5 * scale
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_logits_from_and_no_logits(stories):
    g = np.load(GOLDEN / "stories260K_logits.npz")
    tail = stories.forward(g["tokens"], logits_from=256)
    assert tail.shape == (256, 512)
    np.testing.assert_allclose(tail[0], g["logits"][list(g["rows"]).index(256)], atol=1e-4)
    assert stories.forward(g["tokens"][:32], logits=False) is None


def test_observer_sees_every_blk_matmul(stories):
    seen = []
    stories.forward(np.arange(20), observe=lambda name, x: seen.append((name, x.shape)), logits=False,
                    process_output=True)
    names = [n for n, _ in seen]
    assert len(names) == 5 * 7 + 1 and names[-1] == "output.weight"
    assert names[:7] == [f"blk.0.{p}" for p in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                                "ffn_down")]
    assert dict(seen)["blk.0.ffn_down"] == (20, 172) and dict(seen)["blk.4.attn_output"] == (20, 64)


def test_causal(stories):
    """A token's logits do not depend on later tokens."""
    ids = np.array([1, 403, 407, 261, 378, 300, 42, 7])
    full = stories.forward(ids)
    short = stories.forward(ids[:4])
    np.testing.assert_allclose(full[:4], short, rtol=1e-5, atol=1e-5)


def test_rms_norm():
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    y = rms_norm(x, np.array([1.0, 2.0], dtype=np.float32), 0.0)
    np.testing.assert_allclose(y, [[3 / np.sqrt(12.5), 8 / np.sqrt(12.5)]], rtol=1e-6)


def test_rope_rotates_pairs():
    cos, sin = rope_cache(3, 4, 10000.0, 1.0)
    assert cos.shape == (3, 2)
    np.testing.assert_allclose(cos[0], 1) and np.testing.assert_allclose(sin[0], 0)
    np.testing.assert_allclose(sin[2], np.sin([2.0, 2.0 * 10000 ** -0.5]), rtol=1e-6)
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 4).repeat(3, axis=0)
    norm = apply_rope(x, cos, sin, 4, ROPE_NORM)
    neox = apply_rope(x, cos, sin, 4, ROPE_NEOX)
    # position 1, first pair: NORM rotates (x0, x1), NEOX rotates (x0, x2)
    c, s = np.cos(1.0), np.sin(1.0)
    np.testing.assert_allclose(norm[1, 0, :2], [1 * c - 2 * s, 1 * s + 2 * c], rtol=1e-6)
    np.testing.assert_allclose(neox[1, 0, [0, 2]], [1 * c - 3 * s, 1 * s + 3 * c], rtol=1e-6)
    # norms are kept
    np.testing.assert_allclose(np.linalg.norm(norm, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-6)


def write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray], **kv) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        w.add_uint32(key, value) if isinstance(value, int) else w.add_string(key, value)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", "gpt2", {"token_embd.weight": np.zeros((4, 8), np.float32)})
    with pytest.raises(ModelError, match="architecture 'gpt2' is not supported .*supported: deepseek2, gemma, .*llama, .*qwen2, .*smollm3\\)$"):
        Model(p)


def test_missing_tensor(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", "llama", {"token_embd.weight": np.zeros((4, 8), np.float32),
                                                  "output_norm.weight": np.ones(8, np.float32)},
                   **{"llama.embedding_length": 8, "llama.block_count": 1, "llama.attention.head_count": 2,
                      "llama.feed_forward_length": 16})
    with pytest.raises(ModelError, match="has no blk.0.attn_norm.weight tensor"):
        Model(p)


def test_moe_without_expert_count(tmp_path):
    p = write_gguf(tmp_path / "m.gguf", "llama", {"token_embd.weight": np.zeros((4, 8), np.float32),
                                                  "blk.0.ffn_gate_inp.weight": np.zeros((2, 8), np.float32)},
                   **{"llama.embedding_length": 8, "llama.block_count": 1, "llama.attention.head_count": 2,
                      "llama.feed_forward_length": 16})
    with pytest.raises(ModelError, match="mixture-of-experts model needs llama.expert_count"):
        Model(p)


def test_nan_weights_name_the_layer(tmp_path):
    from gguf import GGUFReader

    src = GGUFReader(STORIES)
    import gguf

    p = tmp_path / "nan.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    for key in ("llama.embedding_length", "llama.block_count", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.rope.dimension_count"):
        w.add_uint32(key, int(src.fields[key].contents()))
    for t in src.tensors:
        data = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if t.name == "blk.2.ffn_up.weight":
            data = data.copy()
            data[0, 0] = np.nan
        w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match=r"after layer 2 \(blk.2\)"):
        Model(p).forward(np.arange(32))


# --- reference tier ----------------------------------------------------------------------------------

def _llama_cpp():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python): no reference logits")
    from llama_cpp import Llama

    return Llama


def _reference_logits(path: Path, ids, kv_f16: bool = False) -> np.ndarray:
    Llama = _llama_cpp()
    kw = dict(type_k=1, type_v=1, flash_attn=True) if kv_f16 else dict(type_k=0, type_v=0, flash_attn=False)
    llm = Llama(model_path=str(path), n_ctx=len(ids), n_batch=len(ids), n_ubatch=len(ids), logits_all=True,
                verbose=False, n_threads=1, **kw)
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


@pytest.mark.reference
def test_reference_logits_stories(stories):
    from quantize_cli.runtime.tokenizer import tokenizer_from_gguf

    text = (DATA / "calibration-en.txt").read_text(encoding="utf-8")[5000:8000]
    ids = tokenizer_from_gguf(STORIES).encode(text)[:300]
    want = _reference_logits(STORIES, ids)
    got = stories.forward(ids)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory):
    vocab = DATA / "ggml-vocab-gpt-2.gguf"
    out = tmp_path_factory.mktemp("bpe") / "bpe-llama.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_bpe_llama.py"), str(vocab), str(out)],
                   check=True, capture_output=True)
    return out


@pytest.mark.reference
def test_reference_logits_bpe_llama(bpe_llama):
    from quantize_cli.runtime.tokenizer import tokenizer_from_gguf

    text = (DATA / "calibration-en.txt").read_text(encoding="utf-8")[:3000]
    ids = tokenizer_from_gguf(bpe_llama).encode(text)[:256]
    want = _reference_logits(bpe_llama, ids)
    m = Model(bpe_llama)
    got = m.forward(ids)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()


@pytest.mark.reference
def test_reference_kv_f16_mimic(stories):
    """--kv-f16 rounds like llama.cpp's default F16 cache; it must land closer to that run than F32 does."""
    g = np.load(GOLDEN / "stories260K_logits.npz")
    ids = g["tokens"][:256]
    want = _reference_logits(STORIES, ids, kv_f16=True)
    plain = stories.forward(ids)
    stories.kv_f16 = True
    try:
        mimic = stories.forward(ids)
    finally:
        stories.kv_f16 = False
    assert np.abs(mimic - want).max() < np.abs(plain - want).max()


@pytest.fixture(scope="module")
def qwen2_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen2") / "qwen2.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_bpe_llama.py"), str(DATA / "ggml-vocab-gpt-2.gguf"),
                    str(out), "--arch", "qwen2"], check=True, capture_output=True)
    return out


@pytest.mark.reference
def test_reference_logits_qwen2(qwen2_model):
    """qwen2: Q/K/V biases and NEOX RoPE."""
    from quantize_cli.runtime.tokenizer import tokenizer_from_gguf

    text = (DATA / "calibration-en.txt").read_text(encoding="utf-8")[:3000]
    ids = tokenizer_from_gguf(qwen2_model).encode(text)[:200]
    want = _reference_logits(qwen2_model, ids)
    m = Model(qwen2_model)
    assert m.cfg.rope_type == ROPE_NEOX
    got = m.forward(ids)
    assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
