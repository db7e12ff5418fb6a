"""Tokenizers from GGUF metadata give llama.cpp's token ids.

Default tier: golden ids made by llama.cpp (scripts/make_imatrix_golden.py tokens) for the real
stories260K vocabulary (SentencePiece) and the GPT-2 vocabulary (byte-level BPE), llama.cpp's own
tokenizer test pairs for GPT-2, hand-made pre-tokenizer splits, and errors.
Reference tier: every vocabulary with .inp/.out test pairs in the llama.cpp sources, and varied
texts against llama-cpp-python's tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from quantize_cli.runtime.pretokenize import _GPT2, _LLAMA3, _QWEN2, pre_tokenize
from quantize_cli.runtime.tokenizer import Tokenizer, TokenizerError, read_gguf_metadata, tokenizer_from_gguf

DATA = Path(__file__).parent / "data"
GOLDEN = Path(__file__).parent / "golden"
STORIES = DATA / "stories260K.gguf"
GPT2 = DATA / "ggml-vocab-gpt-2.gguf"
LLAMA_CPP_MODELS = Path(os.environ.get(
    "LLAMA_CPP_SRC", "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp")) / "models"


def calibration_text() -> str:
    text = (DATA / "calibration-en.txt").read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def read_test_pairs(path: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's tests/test-tokenizer-0 format: texts split by a marker line, ids one line each."""
    raw = Path(str(path) + ".inp").read_bytes().decode("utf-8")
    texts = raw.split("\n__ggml_vocab_test__\n")
    outs = Path(str(path) + ".out").read_text(encoding="utf-8").split("\n")
    pairs = [(t, [int(x) for x in o.split()]) for t, o in zip(texts, outs)]
    assert len(pairs) >= 40
    return pairs


@pytest.fixture(scope="module")
def golden():
    return json.loads((GOLDEN / "tokenizer_ids.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def stories():
    return tokenizer_from_gguf(STORIES)


@pytest.fixture(scope="module")
def gpt2():
    return tokenizer_from_gguf(GPT2)


def test_stories260k_is_sentencepiece(stories):
    assert stories.model == "llama"
    assert stories.n_vocab == 512
    assert (stories.bos_id, stories.eos_id, stories.add_bos, stories.add_space_prefix) == (1, 2, True, True)
    assert stories.encode("Once upon a time") == [1, 403, 407, 261, 378]


@pytest.mark.parametrize("label", ["stories260K", "gpt-2"])
def test_golden_texts(golden, stories, gpt2, label):
    tok = stories if label == "stories260K" else gpt2
    cases = golden[label]["cases"]
    assert len(cases) == 48
    wrong = [(c["text"], c["add_special"], c["parse_special"]) for c in cases
             if tok.encode(c["text"], c["add_special"], c["parse_special"]) != c["ids"]]
    assert wrong == []


@pytest.mark.parametrize("label", ["stories260K", "gpt-2"])
def test_golden_calibration_text(golden, stories, gpt2, label):
    tok = stories if label == "stories260K" else gpt2
    ids = tok.encode(calibration_text())
    want = golden[label]["calibration"]
    assert ids[:64] == want["head"] and ids[-64:] == want["tail"]
    assert len(ids) == want["n"]
    assert hashlib.sha256(np.asarray(ids, dtype="<i4").tobytes()).hexdigest() == want["sha256"]


def test_gpt2_llama_cpp_test_pairs(gpt2):
    pairs = read_test_pairs(GPT2)
    wrong = [t for t, ids in pairs if gpt2.encode(t, add_special=False) != ids]
    assert wrong == []


def test_spm_byte_fallback(stories):
    # stories260K has 256 byte tokens <0x00>..<0xFF> at ids 3..258; '日' is not a token
    ids = stories.encode("日", add_special=False)
    assert ids[-3:] == [3 + b for b in "日".encode()]


def test_spm_special_tokens(stories):
    # control tokens are text unless parse_special; <s> is id 1
    assert 1 not in stories.encode("a <s> b", add_special=False)
    assert stories.encode("a <s> b", add_special=False, parse_special=True).count(1) == 1


@pytest.mark.parametrize("expr, text, words", [
    (_GPT2, "Hello world's 12345 ok!!  \n x", ["Hello", " world", "'s", " 12345", " ok", "!!", "  \n", " x"]),
    (_GPT2, "a   b", ["a", "  ", " b"]),
    (_LLAMA3, "I'M 12345 ok!!\n\n  x", ["I", "'M", " ", "123", "45", " ok", "!!\n\n", " ", " x"]),
    (_LLAMA3, "tab\tend  ", ["tab", "\tend", "  "]),
    (_QWEN2, "x 2024!", ["x", " ", "2", "0", "2", "4", "!"]),
])
def test_pre_tokenizer_splits(expr, text, words):
    assert pre_tokenize(text, [expr]) == words
    assert "".join(pre_tokenize(text, [expr])) == text


def test_regex_fallback_splits_digits_first():
    # smollm/starcoder: "\p{N}" isolates each digit before the GPT-2 split
    assert pre_tokenize("abc 123", [r"\p{N}", _GPT2]) == ["abc", " ", "1", "2", "3"]


def test_fast_metadata_reader_matches_gguf_package():
    from gguf import GGUFReader

    meta = read_gguf_metadata(STORIES)
    reader = GGUFReader(STORIES)
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        want = field.contents()
        got = meta[key]
        if isinstance(want, float):
            assert got == pytest.approx(want)
        else:
            assert got == want, key


def meta_getter(**overrides):
    base = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a"]}
    base.update(overrides)
    return lambda k, d=None: base.get(k, d)


def test_no_tokenizer_metadata():
    with pytest.raises(TokenizerError, match="no tokenizer metadata"):
        Tokenizer(lambda k, d=None: d)


def test_unsupported_tokenizer_model():
    with pytest.raises(TokenizerError, match="tokenizer model 'bert' is not supported"):
        Tokenizer(meta_getter(**{"tokenizer.ggml.model": "bert"}))


def test_unknown_pre_tokenizer():
    with pytest.raises(TokenizerError, match="pre-tokenizer 'nonsense' .* is not supported"):
        Tokenizer(meta_getter(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.merges": [],
                                 "tokenizer.ggml.pre": "nonsense"}))


def test_bpe_without_merges():
    with pytest.raises(TokenizerError, match="no merges"):
        Tokenizer(meta_getter(**{"tokenizer.ggml.model": "gpt2"}))


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"nope" * 10)
    with pytest.raises(TokenizerError, match="not a GGUF file"):
        tokenizer_from_gguf(p)


# --- reference tier ----------------------------------------------------------------------------------

VOCABS_WITH_PAIRS = ["llama-spm", "gpt-2", "llama-bpe", "qwen2", "starcoder", "refact", "mpt", "falcon",
                     "deepseek-coder", "command-r", "phi-3"]


def _need_sources():
    if not LLAMA_CPP_MODELS.is_dir():
        pytest.skip(f"llama.cpp sources absent ({LLAMA_CPP_MODELS}; set LLAMA_CPP_SRC): no vocabulary test pairs")


@pytest.mark.reference
@pytest.mark.parametrize("name", VOCABS_WITH_PAIRS)
def test_llama_cpp_vocab_test_pairs(name):
    _need_sources()
    path = LLAMA_CPP_MODELS / f"ggml-vocab-{name}.gguf"
    tok = tokenizer_from_gguf(path)
    pairs = read_test_pairs(path)
    wrong = [t for t, ids in pairs if tok.encode(t, add_special=False) != ids]
    assert wrong == []


@pytest.mark.reference
@pytest.mark.parametrize("name", ["stories260K", "llama-spm", "gpt-2", "llama-bpe", "qwen2", "starcoder", "phi-3"])
def test_against_llama_cpp_python(name):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python): no reference tokenizer")
    if name == "stories260K":
        path = STORIES
    else:
        _need_sources()
        path = LLAMA_CPP_MODELS / f"ggml-vocab-{name}.gguf"
    from llama_cpp import Llama

    ref = Llama(model_path=str(path), vocab_only=True, verbose=False)
    tok = tokenizer_from_gguf(path)
    cal = calibration_text()
    rng = random.Random(1)
    texts = [cal[a:a + rng.randrange(1, 3000)] for a in (rng.randrange(len(cal) - 3000) for _ in range(20))]
    texts += ["  \t\n\r\n  x", "😀 emoji, 中文, עברית, العربية", "x" * 500, "1234567890" * 5, "<|endoftext|><s></s>"]
    wrong = []
    for text in texts:
        for add_special, parse_special in ((True, False), (False, True)):
            if tok.encode(text, add_special, parse_special) != ref.tokenize(text.encode(), add_special, parse_special):
                wrong.append((text[:40], add_special, parse_special))
    assert wrong == []
