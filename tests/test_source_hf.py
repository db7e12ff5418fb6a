"""The Hugging Face checkpoint source (quantize_cli/sources/hf.py).

Checkpoint folders are made from GGUF files by scripts/make_hf_checkpoint.py, which inverts
llama.cpp's convert_hf_to_gguf.py; reading them back must give the GGUF's tensors byte for byte
and the metadata llama.cpp needs. Data: tests/data/stories260K.gguf (karpathy/llama2.c, MIT) and
tests/data/ggml-vocab-gpt-2.gguf (llama.cpp's models/ folder, MIT: the GPT-2 vocabulary, no weights).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import gguf
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from hypothesis import given, settings, strategies as st

from quantize_cli.errors import SourceError
from quantize_cli.sources import open_source
from quantize_cli.sources.hf import HFSource, _permute

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(ROOT / "scripts"))
import make_hf_checkpoint as mk  # noqa: E402

STORIES = DATA / "stories260K.gguf"
GPT2_VOCAB = DATA / "ggml-vocab-gpt-2.gguf"


def llama_cpp_vocab(name: str) -> Path | None:
    """A vocabulary GGUF from a llama.cpp checkout's models/ folder, where one is around."""
    import os

    roots = [os.environ.get("LLAMA_CPP_DIR", ""), "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp"]
    for root in filter(None, roots):
        p = Path(root) / "models" / f"ggml-vocab-{name}.gguf"
        if p.is_file():
            return p
    return None


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def stories_hf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "stories260K"
    mk.gguf_to_hf(need(STORIES), out)
    return out


def synthetic(tmp_path_factory, name: str, vocab: Path, **kw) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("hf")
    gguf_path, out = base / f"{name}.gguf", base / name
    shards = kw.pop("shards", 1)
    mk.synthetic_gguf(gguf_path, vocab, **{"n_embd": 64, "n_ff": 96, "n_layer": 2, "n_head": 4, "n_head_kv": 2, **kw})
    mk.gguf_to_hf(gguf_path, out, None, shards)
    return gguf_path, out


@pytest.fixture(scope="session")
def gpt2_hf(tmp_path_factory) -> tuple[Path, Path]:
    return synthetic(tmp_path_factory, "gpt2vocab", need(GPT2_VOCAB), chat_template="{{ messages[0]['content'] }}")


@pytest.fixture(scope="session")
def qwen2_hf(tmp_path_factory) -> tuple[Path, Path]:
    return synthetic(tmp_path_factory, "qwen2", need(GPT2_VOCAB), arch="qwen2", seed=1)


@pytest.fixture(scope="session")
def bf16_hf(tmp_path_factory) -> tuple[Path, Path]:
    return synthetic(tmp_path_factory, "bf16", need(GPT2_VOCAB), dtype="BF16", seed=2, shards=3)


def copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


@lru_cache(maxsize=8)
def gguf_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], GGMLQuantizationType, bytes]]:
    r = GGUFReader(path)
    return {t.name: (tuple(int(d) for d in t.shape), GGMLQuantizationType(t.tensor_type),
                     bytes(np.asarray(t.data).reshape(-1).view(np.uint8))) for t in r.tensors}


@lru_cache(maxsize=8)
def gguf_kv(path: Path) -> dict:
    r = GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def assert_same_tensors(src, gguf_path: Path) -> None:
    want = gguf_tensors(gguf_path)
    got = {t.name: (t.ne, t.type, bytes(t.load())) for t in src.tensors}
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name][:2] == want[name][:2], name
        assert got[name][2] == want[name][2], f"{name}: data differs"


# llama.cpp's defaults for keys convert_hf_to_gguf.py writes only when the folder says so; the
# stories260K GGUF (made by llama.cpp's llama2.c converter) spells them out.
LLAMA_CPP_DEFAULTS = {
    "tokenizer.ggml.unknown_token_id": 0,  # SPM default unk
    "tokenizer.ggml.seperator_token_id": 0xFFFFFFFF,  # none
    "tokenizer.ggml.padding_token_id": 0xFFFFFFFF,  # none
}
NOT_COMPARED = {"general.name", "general.file_type", "general.type", "general.size_label", "general.quantization_version"}


def assert_keys_round_trip(src, gguf_path: Path) -> None:
    assert_same_keys({kv.key: kv.get() for kv in src.kv}, gguf_path)


def assert_same_keys(got: dict, gguf_path: Path) -> None:
    """Every key of the GGUF but general.* bookkeeping has the same value in `got`, or is one
    whose absence llama.cpp reads as the GGUF's value."""
    want = gguf_kv(gguf_path)
    for key, value in want.items():
        if key in NOT_COMPARED:
            continue
        if key not in got:
            assert LLAMA_CPP_DEFAULTS.get(key) == value, f"{key} is missing and llama.cpp's default is not {value!r}"
            continue
        if isinstance(value, float):
            assert np.float32(got[key]) == np.float32(value), key
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert np.array_equal(np.float32(got[key]), np.float32(value)), key
        else:
            assert got[key] == value, key


# ------------------------------------------------------------------ round trips


def test_stories_tensors_round_trip_byte_identical(stories_hf):
    with open_source(stories_hf) as src:
        assert isinstance(src, HFSource)
        assert_same_tensors(src, STORIES)


def test_stories_keys_round_trip(stories_hf):
    with HFSource(stories_hf) as src:
        assert_keys_round_trip(src, STORIES)
        kv = {k.key: k for k in src.kv}
        assert kv["tokenizer.ggml.model"].value == "llama"
        assert kv["tokenizer.ggml.pre"].value == "default"
        assert kv["general.file_type"].value == gguf.LlamaFileType.ALL_F32
        assert kv["general.quantization_version"].value == gguf.GGML_QUANT_VERSION
        assert kv["tokenizer.ggml.scores"].item_type == GGUFValueType.FLOAT32
        assert kv["tokenizer.ggml.token_type"].item_type == GGUFValueType.INT32


def test_stories_key_order_is_the_converters(stories_hf):
    """ModelBase.write(): architecture, type, name..., the hparams, file type, vocab size and rope
    dimensions (LlamaModel), quantization version, then the vocabulary."""
    with HFSource(stories_hf) as src:
        assert [k.key for k in src.kv] == [
            "general.architecture", "general.type", "general.name", "general.size_label",
            "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
            "llama.attention.head_count", "llama.attention.head_count_kv",
            "llama.attention.layer_norm_rms_epsilon", "general.file_type", "llama.vocab_size",
            "llama.rope.dimension_count", "general.quantization_version",
            "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]


def test_tensor_order_is_the_converters(stories_hf):
    """convert_hf_to_gguf.py walks shards in name order and each shard's tensors sorted by HF name."""
    with HFSource(stories_hf) as src:
        names = [t.name for t in src.tensors]
    assert names[:4] == ["output.weight", "token_embd.weight", "blk.0.attn_norm.weight", "blk.0.ffn_down.weight"]
    assert names[-1] == "output_norm.weight"


def test_loads_are_flat_bytes_of_the_declared_size(stories_hf):
    with HFSource(stories_hf) as src:
        for t in src.tensors:
            data = t.load()
            assert data.dtype == np.uint8 and data.ndim == 1 and data.size == t.nbytes


def test_bpe_vocab_round_trip(gpt2_hf):
    gguf_path, folder = gpt2_hf
    with HFSource(folder) as src:
        assert_same_tensors(src, gguf_path)
        assert_keys_round_trip(src, gguf_path)
        kv = {k.key: k.get() for k in src.kv}
    assert kv["tokenizer.ggml.model"] == "gpt2"
    assert kv["tokenizer.ggml.pre"] == "gpt-2"  # found by llama.cpp's token-id hash
    assert len(kv["tokenizer.ggml.merges"]) == len(gguf_kv(GPT2_VOCAB)["tokenizer.ggml.merges"])
    assert kv["tokenizer.chat_template"] == "{{ messages[0]['content'] }}"
    assert kv["tokenizer.ggml.bos_token_id"] == kv["tokenizer.ggml.eos_token_id"] == 50256


@pytest.mark.slow
def test_llama3_bpe_vocab_round_trip(tmp_path_factory):
    vocab = llama_cpp_vocab("llama-bpe")
    if vocab is None:
        pytest.skip("ggml-vocab-llama-bpe.gguf not found (set LLAMA_CPP_DIR to a llama.cpp checkout)")
    gguf_path, folder = synthetic(tmp_path_factory, "llama3", vocab, n_layer=1)
    with HFSource(folder) as src:
        assert_same_tensors(src, gguf_path)
        assert_keys_round_trip(src, gguf_path)
        kv = {k.key: k.get() for k in src.kv}
    assert kv["tokenizer.ggml.pre"] == "llama-bpe"
    assert kv["tokenizer.ggml.add_bos_token"] is True


def test_qwen2_biases_no_permutation_no_vocab_size_key(qwen2_hf):
    gguf_path, folder = qwen2_hf
    with HFSource(folder) as src:
        assert_same_tensors(src, gguf_path)
        assert_keys_round_trip(src, gguf_path)
        keys = [k.key for k in src.kv]
        assert "blk.0.attn_q.bias" in {t.name for t in src.tensors}
    assert keys[0] == "general.architecture" and "qwen2.block_count" in keys
    assert "qwen2.vocab_size" not in keys and "qwen2.rope.dimension_count" not in keys


def test_bf16_shards_keep_bf16_and_widen_norms_exactly(bf16_hf):
    gguf_path, folder = bf16_hf
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*-of-00003.safetensors"))) == 3
    with HFSource(folder) as src:
        assert_same_tensors(src, gguf_path)  # the synthetic GGUF has F32 norms, BF16 matrices
        kv = {k.key: k.get() for k in src.kv}
    assert kv["general.file_type"] == gguf.LlamaFileType.MOSTLY_BF16


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_f16_and_bf16_matrices_keep_their_type_norms_widen_to_f32(stories_hf, tmp_path, dtype):
    out = tmp_path / dtype
    mk.gguf_to_hf(STORIES, out, dtype)
    norm32 = np.frombuffer(gguf_tensors(STORIES)["blk.0.attn_norm.weight"][2], np.float32)
    stored = mk._cast(norm32, "F32", dtype)  # what the folder holds
    widened = stored.astype(np.float32) if dtype == "F16" else (stored.astype(np.uint32) << 16).view(np.float32)
    with HFSource(out) as src:
        by_name = {t.name: t for t in src.tensors}
        assert by_name["blk.0.attn_q.weight"].type == GGMLQuantizationType[dtype]
        assert by_name["blk.0.attn_norm.weight"].type == GGMLQuantizationType.F32
        assert np.array_equal(by_name["blk.0.attn_norm.weight"].load().view(np.float32), widened)
        assert src.kv_value("general.file_type") == (
            gguf.LlamaFileType.MOSTLY_F16 if dtype == "F16" else gguf.LlamaFileType.MOSTLY_BF16)


def test_tied_embeddings_give_no_output_tensor(stories_hf, tmp_path):
    """A checkpoint without lm_head: convert_hf_to_gguf writes no output.weight and llama.cpp
    reuses token_embd."""
    folder = copy(stories_hf, tmp_path)
    st = _read_st(folder / "model.safetensors")
    del st["lm_head.weight"]
    _write_st(folder / "model.safetensors", st)
    _edit_json(folder / "config.json", tie_word_embeddings=True)
    with HFSource(folder) as src:
        names = {t.name for t in src.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names


def test_model_card_metadata(stories_hf, tmp_path):
    """general.* from README.md's front matter, through gguf's Metadata as the converter does."""
    folder = copy(stories_hf, tmp_path)
    (folder / "README.md").write_text("---\nlicense: mit\ntags:\n- tiny\nlanguage:\n- en\n---\n# stories\n")
    with HFSource(folder) as src:
        kv = {k.key: k.get() for k in src.kv}
    assert kv["general.license"] == "mit" and kv["general.tags"] == ["tiny"] and kv["general.languages"] == ["en"]


def test_error_malformed_model_card(stories_hf, tmp_path):
    folder = copy(stories_hf, tmp_path)
    (folder / "README.md").write_text("---\nlicense: [mit\n---\n")
    assert "README.md: the model card's front matter is not valid YAML" in error_of(folder)


def test_llama3_rope_scaling_makes_rope_freqs(stories_hf, tmp_path):
    folder = copy(stories_hf, tmp_path)
    _edit_json(folder / "config.json", rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    with HFSource(folder) as src:
        assert src.tensors[0].name == "rope_freqs.weight" and src.tensors[0].ne == (4,)
        factors = src.tensors[0].load().view(np.float32)
        assert factors[0] == 1.0 and factors[-1] == 8.0
        kv = {k.key: k.get() for k in src.kv}
    assert kv["llama.rope.freq_base"] == 500000.0
    assert "llama.rope.scaling.type" not in kv


def test_linear_rope_scaling_keys(stories_hf, tmp_path):
    folder = copy(stories_hf, tmp_path)
    _edit_json(folder / "config.json", rope_scaling={"type": "linear", "factor": 2.0})
    with HFSource(folder) as src:
        kv = {k.key: k.get() for k in src.kv}
    assert kv["llama.rope.scaling.type"] == "linear" and kv["llama.rope.scaling.factor"] == 2.0


def test_no_vocab(stories_hf, tmp_path):
    folder = copy(stories_hf, tmp_path)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        (folder / f).unlink()
    with pytest.raises(SourceError, match=r"no tokenizer\.model or tokenizer\.json.*--no-vocab"):
        HFSource(folder)
    with HFSource(folder, no_vocab=True) as src:
        kv = {k.key: k.get() for k in src.kv}
        assert_same_tensors(src, STORIES)
    assert kv["tokenizer.ggml.model"] == "none" and not any(k.startswith("tokenizer.ggml.tokens") for k in kv)


def test_kv_values_serialize_through_the_gguf_writer(gpt2_hf, tmp_path):
    """The KVs carry plain values and element types a writer can serialize (raw is None)."""
    _, folder = gpt2_hf
    out = tmp_path / "kv.gguf"
    with HFSource(folder) as src:
        w = gguf.GGUFWriter(out, src.kv_value("general.architecture"))
        w.kv_data[0].clear()
        for kv in src.kv:
            assert kv.raw is None
            w.add_key_value(kv.key, kv.value, kv.vtype, sub_type=kv.item_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        back = gguf_kv(out)
        for kv in src.kv:
            if kv.vtype == GGUFValueType.FLOAT32:
                assert np.float32(back[kv.key]) == np.float32(kv.value)
            else:
                assert back[kv.key] == kv.value, kv.key


@settings(max_examples=30, deadline=None)
@given(n_head=st.integers(1, 4), half=st.integers(1, 4), cols=st.integers(0, 3))
def test_permute_inverts_the_scripts_unpermute(n_head, half, cols):
    shape = (n_head * half * 2,) + ((cols,) if cols else ())
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    assert np.array_equal(_permute(mk._unpermute(x, n_head), n_head), x)


# ------------------------------------------------------------------ bad input


def _edit_json(path: Path, drop: tuple[str, ...] = (), **changes) -> None:
    data = json.loads(path.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(changes)
    path.write_text(json.dumps(data))


def _read_st(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = (np.frombuffer(raw[8 + n + a:8 + n + b], np.uint8).copy().reshape(-1), meta["dtype"], meta["shape"])
    return out


def _write_st(path: Path, tensors: dict) -> None:
    """Rewrite a safetensors file from _read_st's (bytes, dtype, shape) entries."""
    header, offset, blobs = {}, 0, []
    for name, (data, dtype, shape) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
        blobs.append(data.tobytes())
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(blobs))


@pytest.fixture
def folder(stories_hf, tmp_path) -> Path:
    return copy(stories_hf, tmp_path)


def error_of(path: Path, **kw) -> str:
    with pytest.raises(SourceError) as exc:
        HFSource(path, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_error_missing_config(folder):
    (folder / "config.json").unlink()
    assert "no config.json" in error_of(folder)


def test_error_malformed_config(folder):
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')
    assert "config.json: not valid JSON" in error_of(folder)


def test_error_config_not_an_object(folder):
    (folder / "config.json").write_text("[1, 2]")
    assert "expected a JSON object, found list" in error_of(folder)


def test_error_unsupported_architecture_lists_supported(folder):
    _edit_json(folder / "config.json", architectures=["GPTNeoXForCausalLM"])
    msg = error_of(folder)
    assert "architecture GPTNeoXForCausalLM is not supported; supported: Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, " in msg
    assert "GraniteForCausalLM, LLaMAForCausalLM, LlamaForCausalLM, Mistral3ForConditionalGeneration, " in msg
    assert msg.endswith("for others, run llama.cpp's convert_hf_to_gguf.py, then pyquantize convert on its GGUF")


def test_error_no_architectures(folder):
    _edit_json(folder / "config.json", drop=("architectures",))
    assert 'no "architectures" list' in error_of(folder)


def test_error_missing_hparam(folder):
    _edit_json(folder / "config.json", drop=("intermediate_size",))
    assert error_of(folder).endswith("config.json: missing intermediate_size")


def test_error_bad_hparam(folder):
    _edit_json(folder / "config.json", hidden_size="64")
    assert "hidden_size is '64', expected a positive integer" in error_of(folder)


def test_error_prequantized_checkpoint(folder):
    _edit_json(folder / "config.json", quantization_config={"quant_method": "gptq", "bits": 4})
    assert "already quantized (quant_method 'gptq')" in error_of(folder)


def test_error_shape_contradicts_config(folder):
    _edit_json(folder / "config.json", intermediate_size=128)
    msg = error_of(folder)
    assert "down_proj.weight has shape [64, 172] but config.json implies [64, 128]" in msg


def test_error_vocab_size_contradicts_embeddings(folder):
    _edit_json(folder / "config.json", vocab_size=600)
    assert "but config.json implies [600, 64]" in error_of(folder)


def test_error_more_layers_in_config_than_weights(folder):
    _edit_json(folder / "config.json", num_hidden_layers=6)
    msg = error_of(folder)
    assert "lack blk.5.attn_norm.weight, blk.5.attn_q.weight, blk.5.attn_k.weight and 6 more" in msg


def test_error_fewer_layers_in_config_than_weights(folder):
    _edit_json(folder / "config.json", num_hidden_layers=4)
    assert "tensor model.layers.4.input_layernorm.weight has no llama GGUF name" in error_of(folder)


@pytest.mark.parametrize("dtype, nbytes", [("I8", 1), ("I32", 4)])
def test_error_unsupported_dtype_names_it(folder, dtype, nbytes):
    st = _read_st(folder / "model.safetensors")
    data, _, shape = st["model.layers.0.mlp.down_proj.weight"]
    st["model.layers.0.mlp.down_proj.weight"] = (data[:data.size // 4 * nbytes], dtype, shape)
    _write_st(folder / "model.safetensors", st)
    msg = error_of(folder)
    assert f"model.layers.0.mlp.down_proj.weight has dtype {dtype}, which is not supported (only F32, F16, BF16)" in msg


def _fp8_folder(folder: Path, block=(32, 48), scale_shape=(2, 4), extra: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """down_proj of layer 0 (64 x 172) as float8_e4m3fn codes with a float32 weight_scale_inv."""
    st = _read_st(folder / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, 64 * 172, dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x38  # no NaN codes
    scale = rng.random(scale_shape, dtype=np.float32) + np.float32(0.5)
    st[name] = (codes, "F8_E4M3", (64, 172))
    st[name + "_scale_inv"] = (np.atleast_1d(scale).view(np.uint8).reshape(-1), "F32", scale_shape)
    st["model.layers.0.mlp.down_proj.activation_scale"] = (np.ones(1, np.float32).view(np.uint8), "F32", (1,))
    st.update(extra or {})
    _write_st(folder / "model.safetensors", st)
    _edit_json(folder / "config.json", quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3",
                                                             "quant_method": "fp8", "weight_block_size": list(block)})
    return codes.reshape(64, 172), scale


def test_float8_tables():
    from quantize_cli.sources.hf_safetensors import E4M3

    spots = {0x00: 0.0, 0x01: 2.0 ** -9, 0x07: 7 * 2.0 ** -9, 0x08: 2.0 ** -6, 0x38: 1.0, 0x3C: 1.5, 0x7E: 448.0,
             0x80: -0.0, 0xB8: -1.0, 0xFE: -448.0}
    assert {c: float(E4M3[c]) for c in spots} == spots
    assert np.isnan(E4M3[[0x7F, 0xFF]]).all() and np.isfinite(np.delete(E4M3, [0x7F, 0xFF])).all()
    assert (np.diff(E4M3[:0x7F]) > 0).all()  # 0 .. 448 ascending


def test_fp8_weights_dequantize_as_the_converter(folder):
    """quant_method fp8 (ModelBase.dequant_model): X_scale_inv scales X, repeated over
    weight_block_size blocks and cut at the edge (172 = 3 x 48 + 28); X becomes an F32 tensor, the
    scales and activation scales leave the tensor list; the rest keeps its type."""
    from quantize_cli.sources.hf_safetensors import E4M3

    codes, scale = _fp8_folder(folder)
    with HFSource(folder) as src:
        tensors = {t.name: t for t in src.tensors}
        t = tensors["blk.0.ffn_down.weight"]
        assert t.type == GGMLQuantizationType.F32 and t.ne == (172, 64)
        got = t.load().view(np.float32).reshape(64, 172)
        rows, cols = np.arange(64)[:, None], np.arange(172)[None, :]
        assert np.array_equal(got, E4M3[codes] * scale[rows // 32, cols // 48])
        assert len(tensors) == len(src.tensors) and not any("scale" in n for n in tensors)
        assert tensors["blk.0.ffn_up.weight"].type == GGMLQuantizationType.F32  # stories260K is F32 already


def test_fp8_per_tensor_scale(folder):
    """No weight_block_size: a scalar scale broadcasts over the whole weight."""
    from quantize_cli.sources.hf_safetensors import E4M3

    codes, scale = _fp8_folder(folder, block=(), scale_shape=())
    _edit_json(folder / "config.json", quantization_config={"quant_method": "fp8"})
    with HFSource(folder) as src:
        t = {t.name: t for t in src.tensors}["blk.0.ffn_down.weight"]
        assert np.array_equal(t.load().view(np.float32).reshape(64, 172), E4M3[codes] * scale)


def test_error_fp8_without_scale_or_scale_without_weight(folder, tmp_path):
    other = copy(folder, tmp_path / "b")
    third = copy(folder, tmp_path / "c")
    _fp8_folder(folder)
    st = _read_st(folder / "model.safetensors")
    del st["model.layers.0.mlp.down_proj.weight_scale_inv"]
    _write_st(folder / "model.safetensors", st)
    assert "down_proj.weight is F8_E4M3 without a weight_scale_inv" in error_of(folder)
    _fp8_folder(other, extra={"model.layers.0.mlp.nothing.weight_scale_inv": (np.ones(1, np.float32).view(np.uint8), "F32", (1,))})
    assert "nothing.weight_scale_inv has no weight model.layers.0.mlp.nothing.weight to scale" in error_of(other)
    _fp8_folder(third, scale_shape=(1, 1))  # one 32 x 48 block's scale for a 64 x 172 weight
    with HFSource(third) as src:
        t = {t.name: t for t in src.tensors}["blk.0.ffn_down.weight"]
        with pytest.raises(SourceError, match=r"scale_inv \(shape \[1, 1\], blocks \[32, 48\]\) does not fit"):
            t.load()


def test_error_truncated_safetensors(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    assert "model.safetensors: not a valid safetensors file" in error_of(folder)


def test_error_no_weights(folder):
    (folder / "model.safetensors").unlink()
    assert error_of(folder).endswith("no model.safetensors or model.safetensors.index.json")
    (folder / "pytorch_model.bin").write_bytes(b"")
    assert "only PyTorch pickle weights" in error_of(folder)


def test_error_shard_listed_in_index_is_missing(bf16_hf, tmp_path):
    folder = copy(bf16_hf[1], tmp_path)
    (folder / "model-00002-of-00003.safetensors").unlink()
    assert "shard model-00002-of-00003.safetensors listed in model.safetensors.index.json is missing" in error_of(folder)


def test_error_index_lists_a_tensor_no_shard_holds(bf16_hf, tmp_path):
    folder = copy(bf16_hf[1], tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00003.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "tensor model.layers.9.mlp.up_proj.weight is listed in model.safetensors.index.json" in error_of(folder)


def test_error_malformed_index(bf16_hf, tmp_path):
    folder = copy(bf16_hf[1], tmp_path)
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    assert 'no "weight_map" object' in error_of(folder)


def test_error_corrupt_tokenizer_model(folder):
    (folder / "tokenizer.model").write_bytes(b"\x0a\x03abc garbage")
    assert "tokenizer.model: not a SentencePiece model" in error_of(folder)


def test_error_corrupt_tokenizer_json(gpt2_hf, tmp_path):
    folder = copy(gpt2_hf[1], tmp_path)
    (folder / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    assert "tokenizer.json: cannot be read as a tokenizer" in error_of(folder)


def test_error_unknown_bpe_pretokenizer(gpt2_hf, tmp_path):
    folder = copy(gpt2_hf[1], tmp_path)
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    assert "BPE pre-tokenizer not recognized (chkhsh " in error_of(folder)
    with HFSource(folder, no_vocab=True) as src:  # --no-vocab still converts the weights
        assert src.kv_value("tokenizer.ggml.model") == "none"


def test_error_not_a_directory(tmp_path):
    assert "not a directory" in error_of(tmp_path / "nothing")
