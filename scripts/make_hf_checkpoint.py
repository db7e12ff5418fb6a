#!/usr/bin/env python3
"""Build a Hugging Face checkpoint folder (config.json, safetensors, tokenizer files) from a GGUF,
by inverting what llama.cpp's convert_hf_to_gguf.py does, so `pyquantize convert FOLDER ...` can be
checked against the GGUF it came from.

    # a real model: stories260K (SentencePiece vocabulary) -> folder
    python scripts/make_hf_checkpoint.py from-gguf ../shared/data/stories260K.gguf /tmp/stories260K-hf

    # a synthetic llama model with a byte-level BPE vocabulary: writes the GGUF and the folder
    python scripts/make_hf_checkpoint.py synthetic /tmp/bpe-hf --gguf /tmp/bpe.gguf \\
        --vocab .../llama.cpp/models/ggml-vocab-llama-bpe.gguf

    # one of today's model families (qwen3, gemma3, mixtral, gptoss, ...), random weights written by
    # transformers beside the family's real config.json layout (needs torch + transformers)
    /work/torchenv/bin/python scripts/make_hf_checkpoint.py family qwen3 /tmp/qwen3-hf --dtype BF16

    # a large one (>= 500 MB of BF16 weights in shards) for memory measurements
    python scripts/make_hf_checkpoint.py synthetic /tmp/big-hf --large --vocab .../ggml-vocab-llama-spm.gguf

The inversion:
- tensors: GGUF names back to HF names, shapes reversed to (out_features, in_features), and the
  Q/K rows un-permuted for the `llama` architecture;
- config.json from the `{arch}.*` keys (rope_theta only when the GGUF has a freq_base, so the
  round trip gives back exactly the keys the GGUF had);
- tokenizer: `llama` (SentencePiece) vocabularies become tokenizer.model, `gpt2` (byte-level BPE)
  ones tokenizer.json, each with tokenizer_config.json. tokenizer.model is the ModelProto from
  sentencepiece_model.proto, encoded here field by field: sentencepiece ships the schema only as
  generated code that needs the `protobuf` package, which nothing else here needs.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType, GGUFReader

# GGUF name (block part after "blk.N.") -> HF name (after "model.layers.N.")
BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
HF_ARCH = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}

# tokenizer.json pieces per llama.cpp pre-tokenizer name (as in the models' own tokenizer.json)
LLAMA3_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
QWEN2_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"


def _split_then_bytes(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


PRE_TOKENIZERS = {
    "llama-bpe": {"pre_tokenizer": _split_then_bytes(LLAMA3_REGEX), "normalizer": None,
                  "ignore_merges": True, "bos_template": True},
    "qwen2": {"pre_tokenizer": _split_then_bytes(QWEN2_REGEX), "normalizer": {"type": "NFC"},
              "ignore_merges": False, "bos_template": False},
    "gpt-2": {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
              "normalizer": None, "ignore_merges": False, "bos_template": False},
}


# ------------------------------------------------------------------ GGUF -> HF folder


def gguf_to_hf(src: Path, out: Path, dtype: str | None = None, shards: int = 1) -> None:
    r = GGUFReader(src)
    kv = {name: f.contents() for name, f in r.fields.items() if not name.startswith("GGUF.")}
    arch = kv["general.architecture"]
    if arch not in HF_ARCH:
        sys.exit(f"error: {src}: architecture {arch} (only {', '.join(HF_ARCH)})")
    out.mkdir(parents=True, exist_ok=True)
    config = _config(kv, arch, r)
    n_head, n_head_kv = config["num_attention_heads"], config["num_key_value_heads"]

    tensors: dict[str, np.ndarray] = {}
    for t in r.tensors:
        hf = _hf_name(t.name)
        if hf is None:
            sys.exit(f"error: {src}: tensor {t.name} has no HF counterpart here")
        shape = tuple(int(d) for d in reversed(t.shape))
        np_dtype = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
                    GGMLQuantizationType.BF16: np.uint16}.get(t.tensor_type)  # bf16 stays raw bits
        if np_dtype is None:
            sys.exit(f"error: {src}: tensor {t.name} is {t.tensor_type.name}; only F32/F16/BF16 invert")
        data = np.asarray(t.data).reshape(-1).view(np.uint8).view(np_dtype).reshape(shape)
        st_dtype = t.tensor_type.name
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            data = _unpermute(data, n_head)
        elif arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            data = _unpermute(data, n_head_kv)
        if dtype is not None and dtype != st_dtype:
            data, st_dtype = _cast(data, st_dtype, dtype), dtype
        tensors[hf] = (np.ascontiguousarray(data), st_dtype)
    config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    dtypes = {d for _, d in tensors.values()}
    config["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[
        "BF16" if "BF16" in dtypes else "F16" if "F16" in dtypes else "F32"]
    _write_json(out / "config.json", config)
    write_safetensors(out, tensors, shards)
    del tensors

    model = kv.get("tokenizer.ggml.model")
    if model == "llama":
        write_sentencepiece(out, kv)
    elif model == "gpt2":
        write_bpe(out, kv)
    elif model is not None:
        sys.exit(f"error: {src}: tokenizer model {model!r} (only llama and gpt2)")


def _config(kv: dict, arch: str, r: GGUFReader) -> dict:
    def k(name, default=None):
        return kv.get(f"{arch}.{name}", default)

    n_embd, n_head = k("embedding_length"), k("attention.head_count")
    n_vocab = k("vocab_size") or len(kv.get("tokenizer.ggml.tokens") or []) or next(
        int(t.shape[1]) for t in r.tensors if t.name == "token_embd.weight")
    config = {
        "architectures": [HF_ARCH[arch][0]], "model_type": HF_ARCH[arch][1],
        "hidden_size": n_embd, "intermediate_size": k("feed_forward_length"),
        "num_attention_heads": n_head, "num_key_value_heads": k("attention.head_count_kv", n_head),
        "num_hidden_layers": k("block_count"), "max_position_embeddings": k("context_length"),
        "rms_norm_eps": _short(k("attention.layer_norm_rms_epsilon")),
        "vocab_size": n_vocab, "hidden_act": "silu",
    }
    if k("rope.freq_base") is not None:
        config["rope_theta"] = _short(k("rope.freq_base"))
    head_dim = k("attention.key_length")
    if head_dim is not None:
        config["head_dim"] = head_dim
    if arch == "llama" and k("rope.dimension_count") not in (None, (head_dim or n_embd // n_head)):
        sys.exit("error: rope.dimension_count differs from the head size: no HF config expresses that")
    for typ in ("bos", "eos"):
        if (tid := kv.get(f"tokenizer.ggml.{typ}_token_id")) is not None:
            config[f"{typ}_token_id"] = int(tid)
    return config


def _short(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def _hf_name(name: str) -> str | None:
    base, _, suffix = name.rpartition(".")
    if base.startswith("blk."):
        _, bid, part = base.split(".", 2)
        return f"model.layers.{bid}.{BLOCK_NAMES[part]}.{suffix}" if part in BLOCK_NAMES else None
    return f"{TOP_NAMES[base]}.{suffix}" if base in TOP_NAMES else None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's LlamaModel.permute."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _cast(data: np.ndarray, have: str, want: str) -> np.ndarray:
    f32 = (data.astype(np.uint32) << 16).view(np.float32) if have == "BF16" else data.astype(np.float32)
    if want == "F32":
        return f32
    if want == "F16":
        return f32.astype(np.float16)
    u = f32.view(np.uint32)  # round to nearest even, as ggml's fp32 -> bf16
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)


def write_safetensors(out: Path, tensors: dict[str, tuple[np.ndarray, str]], shards: int = 1) -> None:
    """model.safetensors, or `shards` files with model.safetensors.index.json. Written by hand
    (the format is an 8-byte header size, a JSON header, the data) because safetensors' NumPy
    writer has no bfloat16."""
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    weight_map = {}
    total = 0
    for i, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in group:
            data, dtype = tensors[name]
            header[name] = {"dtype": dtype, "shape": list(data.shape), "data_offsets": [offset, offset + data.nbytes]}
            offset += data.nbytes
            weight_map[name] = fname
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8 bytes
        with open(out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name in group:
                f.write(tensors[name][0].tobytes())
        total += offset
    if shards > 1:
        _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


# ------------------------------------------------------------------ tokenizers


def write_sentencepiece(out: Path, kv: dict) -> None:
    """tokenizer.model (a SentencePiece ModelProto) and tokenizer_config.json for a `llama` vocab."""
    tokens, scores, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.scores"], kv["tokenizer.ggml.token_type"]
    ids = {typ: kv.get(f"tokenizer.ggml.{typ}_token_id") for typ in ("unknown", "bos", "eos")}
    pieces = b"".join(_field(1, _field(1, t.encode()) + _f32(2, s) + _varint_field(3, int(ty)))
                      for t, s, ty in zip(tokens, scores, types))
    byte_fallback = any(int(ty) == gguf.TokenType.BYTE for ty in types)
    trainer = (_varint_field(3, 2) + _varint_field(4, len(tokens))  # model_type BPE, vocab_size
               + _varint_field(35, int(byte_fallback))
               + _varint_field(40, _id(ids["unknown"], 0)) + _varint_field(41, _id(ids["bos"], 1))
               + _varint_field(42, _id(ids["eos"], 2)) + _varint_field(43, -1))
    add_space_prefix = kv.get("tokenizer.ggml.add_space_prefix", True)
    normalizer = (_field(1, b"identity") + _varint_field(3, int(add_space_prefix))
                  + _varint_field(4, 0))  # llama: no collapsing of whitespace
    with open(out / "tokenizer.model", "wb") as f:
        f.write(pieces + _field(2, trainer) + _field(3, normalizer))
    config = {"tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False, "legacy": True}
    ids["padding"] = kv.get("tokenizer.ggml.padding_token_id")
    for typ, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        if ids[key] is not None and 0 <= ids[key] < len(tokens):  # 0xFFFFFFFF means none
            config[f"{typ}_token"] = tokens[ids[key]]
    for typ in ("bos", "eos"):
        if (flag := kv.get(f"tokenizer.ggml.add_{typ}_token")) is not None:
            config[f"add_{typ}_token"] = bool(flag)
    if (template := kv.get("tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    _write_json(out / "tokenizer_config.json", config)


def write_bpe(out: Path, kv: dict) -> None:
    """tokenizer.json and tokenizer_config.json for a `gpt2` (byte-level BPE) vocab."""
    pre = kv.get("tokenizer.ggml.pre", "llama-bpe")
    if pre not in PRE_TOKENIZERS:
        sys.exit(f"error: pre-tokenizer {pre!r} (only {', '.join(PRE_TOKENIZERS)})")
    spec = PRE_TOKENIZERS[pre]
    tokens, types = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]
    vocab, added = {}, []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        ty = int(ty)
        if ty in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED):
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": ty == gguf.TokenType.USER_DEFINED, "special": ty == gguf.TokenType.CONTROL})
        elif ty != gguf.TokenType.UNUSED:
            vocab[t] = i
    bos_id, eos_id = kv.get("tokenizer.ggml.bos_token_id"), kv.get("tokenizer.ggml.eos_token_id")
    bos = tokens[bos_id] if bos_id is not None else None
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if spec["bos_template"] and bos is not None:
        post = {"type": "Sequence", "processors": [post, {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}]}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": spec["normalizer"],
        "pre_tokenizer": spec["pre_tokenizer"],
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": spec["ignore_merges"], "vocab": vocab,
                  "merges": list(kv.get("tokenizer.ggml.merges") or [])},
    }
    _write_json(out / "tokenizer.json", tokenizer, indent=None)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True}
    if bos is not None:
        config["bos_token"] = bos
    if eos_id is not None:
        config["eos_token"] = tokens[eos_id]
    if (pad_id := kv.get("tokenizer.ggml.padding_token_id")) is not None and 0 <= pad_id < len(tokens):
        config["pad_token"] = tokens[pad_id]
    if (template := kv.get("tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    _write_json(out / "tokenizer_config.json", config)


def _id(v, default: int) -> int:
    return default if v is None else int(v)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 fields are 10-byte two's complement varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varint_field(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _f32(num: int, value: float) -> bytes:
    return _varint(num << 3 | 5) + struct.pack("<f", value)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _write_json(path: Path, obj, indent: int | None = 2) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)


# ------------------------------------------------------------------ synthetic models


def synthetic_gguf(path: Path, vocab_gguf: Path, n_embd: int, n_ff: int, n_layer: int, n_head: int,
                   n_head_kv: int, dtype: str = "F32", seed: int = 0, arch: str = "llama",
                   chat_template: str | None = None) -> None:
    """A random llama-family GGUF (as convert_hf_to_gguf would write it: norms F32, matrices in
    `dtype`) with the vocabulary, and its tokenizer metadata, of `vocab_gguf`."""
    vr = GGUFReader(vocab_gguf)
    tok_kv = {name: f for name, f in vr.fields.items() if name.startswith("tokenizer.")}
    n_vocab = len(tok_kv["tokenizer.ggml.tokens"].contents())
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"synthetic-{arch}")
    w.add_block_count(n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type({"F32": 0, "F16": 1, "BF16": 32}[dtype])
    if arch == "llama":
        w.add_vocab_size(n_vocab)
        w.add_rope_dimension_count(n_embd // n_head)
    for name, f in tok_kv.items():
        value = f.contents()
        vtype = gguf.GGUFValueType(f.types[0])
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, value, vtype, sub_type=gguf.GGUFValueType(f.types[-1]))
        else:
            w.add_key_value(name, value, vtype)
    if chat_template and "tokenizer.chat_template" not in tok_kv:
        w.add_chat_template(chat_template)

    head_dim = n_embd // n_head

    def matrix(rows, cols, scale):
        x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(scale)
        if dtype == "F32":
            return x, None
        if dtype == "F16":
            return x.astype(np.float16), None
        return _cast(x, "F32", "BF16"), GGMLQuantizationType.BF16

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    def add(name, data_raw):
        data, raw = data_raw if isinstance(data_raw, tuple) else (data_raw, None)
        w.add_tensor(name, data, raw_dtype=raw)

    add("token_embd.weight", matrix(n_vocab, n_embd, 1.0))
    add("output_norm.weight", norm(n_embd))
    add("output.weight", matrix(n_vocab, n_embd, n_embd ** -0.5))
    for b in range(n_layer):
        add(f"blk.{b}.attn_norm.weight", norm(n_embd))
        add(f"blk.{b}.attn_q.weight", matrix(n_head * head_dim, n_embd, n_embd ** -0.5))
        add(f"blk.{b}.attn_k.weight", matrix(n_head_kv * head_dim, n_embd, n_embd ** -0.5))
        add(f"blk.{b}.attn_v.weight", matrix(n_head_kv * head_dim, n_embd, n_embd ** -0.5))
        if arch == "qwen2":
            for t, rows in (("q", n_head), ("k", n_head_kv), ("v", n_head_kv)):
                add(f"blk.{b}.attn_{t}.bias", (0.1 * rng.standard_normal(rows * head_dim, dtype=np.float32)).astype(np.float32))
        add(f"blk.{b}.attn_output.weight", matrix(n_embd, n_head * head_dim, n_embd ** -0.5))
        add(f"blk.{b}.ffn_norm.weight", norm(n_embd))
        add(f"blk.{b}.ffn_gate.weight", matrix(n_ff, n_embd, n_embd ** -0.5))
        add(f"blk.{b}.ffn_up.weight", matrix(n_ff, n_embd, n_embd ** -0.5))
        add(f"blk.{b}.ffn_down.weight", matrix(n_embd, n_ff, n_ff ** -0.5))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------ model families (needs torch + transformers)

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR", "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp"))

# Each family: its config.json as the model's own repository has it, shrunk (fewer and narrower
# layers, fewer experts; every key and style of the original kept, old-style rope keys included),
# the llama.cpp vocabulary whose tokenizer files stand in for the real ones, and a real chat
# template from llama.cpp's models/templates where there is one. The weights come from
# transformers' own model class for that config, so tensor names and shapes are what
# save_pretrained writes; the config.json written beside them is ours (the real layout).
FAMILIES: dict[str, dict] = {
    "qwen3": dict(vocab="qwen2", template="Qwen-Qwen3-0.6B.jinja", config={
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 32, "hidden_act": "silu",
        "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 96, "max_position_embeddings": 40960,
        "max_window_layers": 2, "model_type": "qwen3", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 151936}),
    "gemma2": dict(vocab="llama-spm", template="google-gemma-2-2b-it.jinja", config={
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": 50.0, "bos_token_id": 1, "cache_implementation": "hybrid", "eos_token_id": 2,
        "final_logit_softcapping": 30.0, "head_dim": 32, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 8192, "model_type": "gemma2",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": 0,
        "query_pre_attn_scalar": 32, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
        "torch_dtype": "float32", "use_cache": True, "vocab_size": 32000}),
    "gemma3": dict(vocab="llama-spm", config={
        "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attn_logit_softcapping": None, "bos_token_id": 1, "cache_implementation": "hybrid", "eos_token_id": [2, 106],
        "final_logit_softcapping": None, "head_dim": 32, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 32768,
        "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "pad_token_id": 0, "query_pre_attn_scalar": 32, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
        "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000}),
    # gemma-3-4b-it: the text config names only what differs from Gemma3TextConfig's defaults
    "gemma3mm": dict(vocab="llama-spm", config={
        "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
        "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02,
        "mm_tokens_per_image": 4, "model_type": "gemma3",
        "text_config": {"hidden_size": 64, "intermediate_size": 128, "model_type": "gemma3_text",
                        "num_hidden_layers": 2, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                        "sliding_window": 1024, "vocab_size": 32000},
        "torch_dtype": "bfloat16",
        "vision_config": {"hidden_size": 32, "image_size": 28, "intermediate_size": 64, "model_type": "siglip_vision_model",
                          "num_attention_heads": 2, "num_hidden_layers": 1, "patch_size": 14, "vision_use_head": False}}),
    "phi3": dict(vocab="phi-3", template="microsoft-Phi-3.5-mini-instruct.jinja", config={
        "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
        "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 4096, "model_type": "phi3", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 4, "original_max_position_embeddings": 4096,
        "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None,
        "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "vocab_size": 32064}),
    "granite": dict(vocab="gpt-2", template="ibm-granite-granite-3.3-2B-Instruct.jinja", config={
        "architectures": ["GraniteForCausalLM"], "attention_bias": False, "attention_dropout": 0.1,
        "attention_multiplier": 0.015625, "bos_token_id": 0, "embedding_multiplier": 12.0, "eos_token_id": 0,
        "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
        "logits_scaling": 8.0, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "granite",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": 0,
        "residual_multiplier": 0.22, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000000.0,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 50257}),
    "olmo2": dict(vocab="gpt-2", config={
        "architectures": ["Olmo2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "eos_token_id": 50256, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 4096, "model_type": "olmo2", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 4, "pad_token_id": 50256, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 500000, "tie_word_embeddings": False, "torch_dtype": "float32",
        "use_cache": True, "vocab_size": 50304}),
    "smollm3": dict(vocab="llama-bpe", template="HuggingFaceTB-SmolLM3-3B.jinja", config={
        "architectures": ["SmolLM3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": None, "eos_token_id": 128009, "hidden_act": "silu", "hidden_size": 64,
        "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 65536,
        "max_window_layers": 2, "mlp_bias": False, "model_type": "smollm3", "no_rope_layer_interval": 4,
        "no_rope_layers": [1, 1], "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "pad_token_id": 128004, "pretraining_tp": 2, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 5000000.0, "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "use_cache": False, "use_sliding_window": False, "vocab_size": 128256}),
    "mixtral": dict(vocab="llama-spm", config={
        "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 32,
        "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 4,
        "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_key_value_heads": 2, "num_local_experts": 8,
        "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 32000}),
    "qwen3moe": dict(vocab="qwen2", template="Qwen-Qwen3-0.6B.jinja", config={
        "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 32,
        "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 96,
        "max_position_embeddings": 40960, "max_window_layers": 2, "mlp_only_layers": [], "model_type": "qwen3_moe",
        "moe_intermediate_size": 32, "norm_topk_prob": True, "num_attention_heads": 4, "num_experts": 8,
        "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_key_value_heads": 2, "output_router_logits": False,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 151936}),
    "qwen2moe": dict(vocab="qwen2", template="Qwen-Qwen2.5-7B-Instruct.jinja", config={
        "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 96, "max_position_embeddings": 8192, "max_window_layers": 2, "model_type": "qwen2_moe",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 151936, "decoder_sparse_step": 1,
        "moe_intermediate_size": 32, "shared_expert_intermediate_size": 96, "num_experts_per_tok": 2,
        "num_experts": 6, "norm_topk_prob": False, "output_router_logits": False, "router_aux_loss_coef": 0.001}),
    "mistral3": dict(vocab="llama-bpe", template="Mistral-Small-3.2-24B-Instruct-2506.jinja", config={
        "architectures": ["Mistral3ForConditionalGeneration"], "image_token_index": 10, "model_type": "mistral3",
        "multimodal_projector_bias": False, "projector_hidden_act": "gelu", "spatial_merge_size": 2,
        "text_config": {"attention_dropout": 0.0, "head_dim": 32, "hidden_act": "silu", "hidden_size": 64,
                        "initializer_range": 0.02, "intermediate_size": 128, "max_position_embeddings": 131072,
                        "model_type": "mistral", "num_attention_heads": 4, "num_hidden_layers": 2,
                        "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0,
                        "sliding_window": None, "use_cache": True, "vocab_size": 128256},
        "torch_dtype": "bfloat16",
        "vision_config": {"attention_dropout": 0.0, "head_dim": 16, "hidden_act": "gelu", "hidden_size": 32,
                          "image_size": 28, "initializer_range": 0.02, "intermediate_size": 64, "model_type": "pixtral",
                          "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 1, "patch_size": 14,
                          "rope_theta": 10000.0},
        "vision_feature_layer": -1}),
    "gptoss": dict(vocab="llama-bpe", template="openai-gpt-oss-120b.jinja", config={
        "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": 128009, "experts_per_token": 2, "head_dim": 32, "hidden_act": "silu", "hidden_size": 64,
        "initial_context_length": 4096, "initializer_range": 0.02, "intermediate_size": 64,
        "layer_types": ["sliding_attention", "full_attention"], "max_position_embeddings": 131072,
        "model_type": "gpt_oss", "num_attention_heads": 4, "num_experts_per_tok": 2, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "num_local_experts": 4, "output_router_logits": False, "pad_token_id": 128004,
        "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                           "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
        "rms_norm_eps": 1e-05, "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                                                "original_max_position_embeddings": 4096, "rope_type": "yarn",
                                                "truncate": False},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "use_cache": True, "vocab_size": 128256}),
}


def family_checkpoint(name: str, out: Path, dtype: str = "F32", shards: int = 1, seed: int = 0,
                      mxfp4: bool = True) -> None:
    """A tiny random checkpoint of one family, written by transformers, with the family's real
    config.json layout and tokenizer files from a llama.cpp vocabulary."""
    import torch
    import transformers

    spec = FAMILIES[name]
    config_json = json.loads(json.dumps(spec["config"]))
    load = {k: v for k, v in config_json.items() if k != "quantization_config"}
    config = transformers.AutoConfig.for_model(**load)
    arch = config_json["architectures"][0]
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config)
    state = {}
    gen = torch.Generator().manual_seed(seed)
    for key, value in model.state_dict().items():
        if key in state or not value.is_floating_point():
            continue
        if value.ndim == 1 and "norm" in key:
            data = 0.1 * torch.randn(value.shape, generator=gen) + (0.0 if "gemma" in name else 1.0)
        else:
            data = torch.randn(value.shape, generator=gen) * (value.shape[-1] ** -0.5)
        state[key] = data
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    model.load_state_dict(state, strict=False)
    model = model.to(torch_dtype)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    model.save_pretrained(out, max_shard_size=max(total // shards + 1, 1) if shards > 1 else "50GB")
    for stale in ("generation_config.json",):
        (out / stale).unlink(missing_ok=True)
    config_json["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    if name == "gptoss" and mxfp4:
        _gpt_oss_to_mxfp4(out, seed)
    else:
        config_json.pop("quantization_config", None)
    _write_json(out / "config.json", config_json)

    vr = GGUFReader(LLAMA_CPP / "models" / f"ggml-vocab-{spec['vocab']}.gguf")
    kv = {n: f.contents() for n, f in vr.fields.items() if n.startswith("tokenizer.")}
    if (template := spec.get("template")) is not None:
        kv["tokenizer.chat_template"] = (LLAMA_CPP / "models" / "templates" / template).read_text(encoding="utf-8")
    if kv["tokenizer.ggml.model"] != "llama":
        write_bpe(out, kv)
        return
    # a SentencePiece vocabulary: pieces up to the first added token go to tokenizer.model, the added
    # (control) tokens after them to tokenizer_config.json's added_tokens_decoder, as Phi-3 has them
    types = [int(t) for t in kv["tokenizer.ggml.token_type"]]
    n = next((i for i in range(len(types)) if i > 0 and types[i] == gguf.TokenType.CONTROL
              and all(t != gguf.TokenType.NORMAL for t in types[i:])), len(types))
    added = {str(i): {"content": kv["tokenizer.ggml.tokens"][i], "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False, "special": True}
             for i in range(n, len(types)) if types[i] == gguf.TokenType.CONTROL}
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        kv[key] = kv[key][:n]
    write_sentencepiece(out, kv)
    if added:
        config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["added_tokens_decoder"] = added
        for typ, key in (("eos", "eos"), ("pad", "padding")):
            tid = kv.get(f"tokenizer.ggml.{key}_token_id")
            if tid is not None and str(tid) in added:
                config[f"{typ}_token"] = added[str(tid)]["content"]
        _write_json(out / "tokenizer_config.json", config)


def _gpt_oss_to_mxfp4(out: Path, seed: int) -> None:
    """Replace gpt-oss's expert matrices by MXFP4 blocks and scales, as openai/gpt-oss-* ship them:
    `*_blocks` (n_expert, rows, cols/32, 16) uint8 and `*_scales` (n_expert, rows, cols/32) uint8
    (E8M0 exponents), the biases kept in the model's dtype."""
    import torch
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(seed + 1)
    files = sorted(out.glob("model*.safetensors"))
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
        f.unlink()
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    result = {}
    for key, value in tensors.items():
        if key.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            # transformers keeps (n_expert, in, out); the MXFP4 blocks are (n_expert, out, in/32, 16)
            n_expert, cols, rows = value.shape
            result[key + "_blocks"] = torch.randint(0, 256, (n_expert, rows, cols // 32, 16), generator=gen, dtype=torch.uint8)
            result[key + "_scales"] = torch.randint(120, 130, (n_expert, rows, cols // 32), generator=gen, dtype=torch.uint8)
        else:
            result[key] = value.contiguous()
    save_file(result, str(out / "model.safetensors"), metadata={"format": "pt"})


LARGE = dict(n_embd=1024, n_ff=2816, n_layer=18, n_head=16, n_head_kv=8, dtype="BF16", shards=4)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("from-gguf", help="invert an F32/F16/BF16 llama/qwen2 GGUF into an HF folder")
    a.add_argument("gguf", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--dtype", choices=["F32", "F16", "BF16"], help="store the weights in this type")
    a.add_argument("--shards", type=int, default=1, help="split the weights over this many files, with an index")
    s = sub.add_parser("synthetic", help="a random model with a real vocabulary: GGUF and HF folder")
    s.add_argument("out", type=Path)
    s.add_argument("--vocab", type=Path, required=True, help="a GGUF whose tokenizer to use (e.g. ggml-vocab-llama-bpe.gguf)")
    s.add_argument("--gguf", type=Path, help="where to keep the synthetic GGUF (default: OUT.gguf)")
    s.add_argument("--arch", choices=list(HF_ARCH), default="llama")
    s.add_argument("--n-embd", type=int, default=64)
    s.add_argument("--n-ff", type=int, default=160)
    s.add_argument("--n-layer", type=int, default=2)
    s.add_argument("--n-head", type=int, default=4)
    s.add_argument("--n-head-kv", type=int, default=2)
    s.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    s.add_argument("--shards", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chat-template", help="a chat template to put in the vocabulary")
    s.add_argument("--large", action="store_true", help=f"preset for >= 500 MB of weights: {LARGE}")
    fm = sub.add_parser("family", help="a tiny random checkpoint of one model family, written by transformers "
                                       "(needs torch and transformers, e.g. /work/torchenv/bin/python)")
    fm.add_argument("family", choices=sorted(FAMILIES))
    fm.add_argument("out", type=Path)
    fm.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    fm.add_argument("--shards", type=int, default=1)
    fm.add_argument("--seed", type=int, default=0)
    fm.add_argument("--no-mxfp4", action="store_true", help="gpt-oss: keep the experts unquantized")
    args = ap.parse_args(argv)
    if args.cmd == "family":
        family_checkpoint(args.family, args.out, args.dtype, args.shards, args.seed, mxfp4=not args.no_mxfp4)
        print(f"wrote {args.out}")
        return
    if args.cmd == "from-gguf":
        gguf_to_hf(args.gguf, args.out, args.dtype, args.shards)
        print(f"wrote {args.out}")
        return
    if args.large:
        for key, value in LARGE.items():
            setattr(args, key, value)
    path = args.gguf or args.out.with_suffix(".gguf")
    synthetic_gguf(path, args.vocab, args.n_embd, args.n_ff, args.n_layer, args.n_head, args.n_head_kv,
                   args.dtype, args.seed, args.arch, args.chat_template)
    gguf_to_hf(path, args.out, None, args.shards)
    print(f"wrote {path} and {args.out}")


if __name__ == "__main__":
    main()
