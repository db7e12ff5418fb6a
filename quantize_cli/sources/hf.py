"""A Hugging Face checkpoint folder as a source: config.json, safetensors weights, tokenizer files.

It gives what llama.cpp's convert_hf_to_gguf.py would write for the same folder (LlamaModel and
Qwen2Model in its conversion/ package): the same metadata pairs in the same order, the same GGUF
tensor names (the gguf package's TensorNameMap), in the same order, the Q/K rows permuted as
llama.cpp's `llama` architecture expects. Metadata is produced by driving a path-less
`gguf.GGUFWriter` exactly as the converter does and reading its pairs back, so key names, value
types and order come from the same gguf code.

Where we differ on purpose:
- Tensors keep their stored type (F32/F16/BF16) instead of being converted to one `--outtype`:
  the planner chooses the output type, as llama-quantize would from a GGUF. 1-D tensors and norms
  are F32 (widened on load, exactly), as the converter writes them for every outtype.
- `general.file_type` says what the weights are (F32 when all are, else the type of the first
  matrix), like an F32/F16/BF16 GGUF of the model would; convert replaces it with the target's.

Weights are memory-mapped and each tensor is read, and permuted or widened if it must be, only
when its `load()` is called.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import struct
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import yaml
import gguf
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import SourceError, excerpt
from ..formats.output import check_input_file
from ..formats.values import KV
from .base import Source, TensorRef
from .hf_vocab import HFVocab, _read_json

logger = logging.getLogger(__name__)

# HF architecture -> (gguf architecture, permute Q/K rows, vocabulary routine)
ARCHITECTURES: dict[str, tuple[gguf.MODEL_ARCH, bool, str]] = {
    "LlamaForCausalLM": (gguf.MODEL_ARCH.LLAMA, True, "llama"),
    "LLaMAForCausalLM": (gguf.MODEL_ARCH.LLAMA, True, "llama"),
    "MistralForCausalLM": (gguf.MODEL_ARCH.LLAMA, True, "llama"),
    "Qwen2ForCausalLM": (gguf.MODEL_ARCH.QWEN2, False, "qwen2"),
}

# safetensors dtype -> (numpy dtype of the stored elements, ggml type we expose)
DTYPES: dict[str, tuple[np.dtype, GGMLQuantizationType]] = {
    "F32": (np.dtype("<f4"), GGMLQuantizationType.F32),
    "F16": (np.dtype("<f2"), GGMLQuantizationType.F16),
    "BF16": (np.dtype("<u2"), GGMLQuantizationType.BF16),
    "F64": (np.dtype("<f8"), GGMLQuantizationType.F32),  # the converter narrows F64 to F32 too
}

# tensors the converter drops ("we don't need these")
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

# every block of a llama-family model needs these (biases, where present, are optional)
BLOCK_TENSORS = (gguf.MODEL_TENSOR.ATTN_NORM, gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K,
                 gguf.MODEL_TENSOR.ATTN_V, gguf.MODEL_TENSOR.ATTN_OUT, gguf.MODEL_TENSOR.FFN_NORM,
                 gguf.MODEL_TENSOR.FFN_GATE, gguf.MODEL_TENSOR.FFN_DOWN, gguf.MODEL_TENSOR.FFN_UP)


class HFSource(HFVocab, Source):
    """A folder with config.json, model.safetensors (or shards and model.safetensors.index.json),
    and tokenizer.model or tokenizer.json. `no_vocab=True` converts without a vocabulary
    (`tokenizer.ggml.model = none`), whether or not tokenizer files are there."""

    def __init__(self, path: str | Path, no_vocab: bool = False):
        self.path = Path(path)
        self.no_vocab = no_vocab
        if not self.path.is_dir():
            raise SourceError(f"{self.path}: not a directory")
        self.hparams = _load_config(self.path)
        self.hf_arch = _architecture(self.path, self.hparams)
        self.arch, self.permute_qk, self.vocab_kind = ARCHITECTURES[self.hf_arch]
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.arch]
        self.dims = _Dims(self.path, self.hparams)
        self.rope_parameters = _rope_parameters(self.hparams)
        self.tensors = self._index_tensors()
        self.kv = self._metadata()

    # ---------------------------------------------------------------- tensors

    def _index_tensors(self) -> list[TensorRef]:
        entries = _read_shards(self.path)  # (hf name, dtype, shape, shard path, offset, nbytes), convert order
        tensor_map = gguf.get_tensor_name_map(self.arch, self.dims.n_layer)
        expected = self.dims.expected_shapes(self.arch_name)
        tensors = list(self._extra_tensors())
        for hf_name, dtype, shape, shard, offset, nbytes in entries:
            if hf_name.endswith(SKIPPED_SUFFIXES):
                continue
            name = tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise SourceError(
                    f"{shard.name}: tensor {hf_name} has no {self.arch_name} GGUF name "
                    f"(is config.json's num_hidden_layers {self.dims.n_layer} right?)")
            if dtype not in DTYPES:
                raise SourceError(
                    f"{shard.name}: tensor {hf_name} has dtype {dtype}, which is not supported "
                    f"(only F32, F16, BF16): convert the checkpoint to one of those first")
            want = expected.get(name)
            if want is not None and tuple(shape) != want:
                raise SourceError(
                    f"{shard.name}: tensor {hf_name} has shape {list(shape)} but config.json implies "
                    f"{list(want)}: the config does not match the weights")
            np_dtype, stored = DTYPES[dtype]
            # the converter keeps 1-D tensors and norms in F32 whatever the output type
            out_type = GGMLQuantizationType.F32 if len(shape) <= 1 or name.endswith("_norm.weight") else stored
            permute = None
            if self.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                permute = self.dims.n_head
            elif self.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                permute = self.dims.n_head_kv
            tensors.append(TensorRef(
                name=name, ne=tuple(int(d) for d in reversed(shape)) or (1,), type=out_type,
                load=_loader(shard, offset, nbytes, np_dtype, dtype, tuple(shape), out_type, permute),
                offset=offset))
        self._check_complete(tensors)
        return tensors

    def _extra_tensors(self) -> Iterable[TensorRef]:
        """rope_freqs for llama3-type rope scaling, as LlamaModel.generate_extra_tensors makes it."""
        rope = self.rope_parameters.get("full_attention", self.rope_parameters)
        if self.arch != gguf.MODEL_ARCH.LLAMA or str(rope.get("rope_type", "")).lower() != "llama3":
            return
        base = rope.get("rope_theta", 10000.0)
        dim = self.dims.head_dim
        # torch computes these in float32, and so do we
        freqs = np.float32(1.0) / np.power(np.float32(base), np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
        factor = rope.get("factor", 8.0)
        low_freq_factor = rope.get("low_freq_factor", 1.0)
        high_freq_factor = rope.get("high_freq_factor", 4.0)
        old_context_len = rope.get("original_max_position_embeddings", 8192)
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        factors = []
        for freq in freqs:  # float32 scalars: with NumPy's promotion rules the smooth ramp stays float32, as in torch
            wavelen = 2 * math.pi / freq
            if wavelen < high_freq_wavelen:
                factors.append(1)
            elif wavelen > low_freq_wavelen:
                factors.append(factor)
            else:
                smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        data = np.array(factors, dtype=np.float32)
        yield TensorRef(name=gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", ne=(len(data),),
                        type=GGMLQuantizationType.F32, load=lambda: data.view(np.uint8))

    def _check_complete(self, tensors: list[TensorRef]) -> None:
        names = {t.name for t in tensors}
        missing = [gguf.TENSOR_NAMES[k] + ".weight" for k in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT_NORM)]
        missing += [gguf.TENSOR_NAMES[k].format(bid=b) + ".weight" for b in range(self.dims.n_layer) for k in BLOCK_TENSORS]
        missing = [n for n in missing if n not in names]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise SourceError(
                f"{self.path}: the weights lack {', '.join(missing[:3])}{more} (as GGUF names) that "
                f"config.json ({self.dims.n_layer} layers) requires: a shard or tensor is missing")
        seen: set[str] = set()
        for t in tensors:
            if t.name in seen:
                raise SourceError(f"{self.path}: two checkpoint tensors map to {t.name}")
            seen.add(t.name)

    # ---------------------------------------------------------------- metadata

    def _metadata(self) -> list[KV]:
        """Drive a path-less GGUFWriter in the order ModelBase.write() does and read its pairs back."""
        w = gguf.GGUFWriter(path=None, arch=self.arch_name)  # general.architecture
        total = sum(t.n_elements for t in self.tensors)
        try:
            meta = gguf.Metadata.load(None, self.path, None, total)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.path / 'README.md'}: the model card's front matter is not valid YAML "
                              f"({str(exc).splitlines()[0]}); fix or remove it") from None
        if meta.name is None:
            meta.name = self.path.name
        if meta.size_label is None and total > 0:
            meta.size_label = gguf.size_label(total, total, 0, 0)
        w.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(w)
        self._set_parameters(w)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        self._set_vocab(w)
        return [_kv(key, v) for key, v in w.kv_data[0].items()]

    def _find(self, keys: Iterable[str]) -> Any:
        return next((self.hparams[k] for k in keys if k in self.hparams), None)

    def _set_parameters(self, w: gguf.GGUFWriter) -> None:
        """TextModel.set_gguf_parameters, then LlamaModel's additions (the subset dense
        llama-family models reach)."""
        hp = self.hparams
        w.add_block_count(self.dims.n_layer)
        if (n_ctx := self._find(["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                 "max_sequence_length", "model_max_length"])) is not None:
            w.add_context_length(n_ctx)
        if (n_embd := self._find(["hidden_size", "n_embd", "dim"])) is not None:
            w.add_embedding_length(n_embd)
        if (n_ff := self._find(["prefix_dense_intermediate_size", "dense_intermediate_size",
                                "intermediate_size", "n_inner", "hidden_dim"])) is not None:
            w.add_feed_forward_length(n_ff)
        if (n_head := self._find(["num_attention_heads", "n_head", "n_heads"])) is not None:
            w.add_head_count(n_head)
        if (n_head_kv := self._find(["num_key_value_heads", "n_kv_heads"])) is not None:
            w.add_head_count_kv(n_head_kv)
        if hp.get("is_causal") is False:
            w.add_causal_attention(False)

        rope = self.rope_parameters.get("full_attention", self.rope_parameters)
        if (rope_type := rope.get("rope_type")) is not None:
            factor = rope.get("factor")
            if rope_type == "linear" and factor is not None:
                w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                w.add_rope_scaling_factor(factor)
            elif rope_type == "yarn" and factor is not None:
                w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
                w.add_rope_scaling_factor(factor)
                if "original_max_position_embeddings" not in rope:
                    raise SourceError(f"{self.path / 'config.json'}: yarn rope scaling needs original_max_position_embeddings")
                w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
                if (v := rope.get("extrapolation_factor")) is not None:
                    w.add_rope_scaling_yarn_ext_factor(v)
                if (v := rope.get("attention_factor", rope.get("attn_factor"))) is not None:
                    w.add_rope_scaling_yarn_attn_factor(v)
                if (v := rope.get("beta_fast")) is not None:
                    w.add_rope_scaling_yarn_beta_fast(v)
                if (v := rope.get("beta_slow")) is not None:
                    w.add_rope_scaling_yarn_beta_slow(v)
            elif rope_type in ("su", "longrope"):
                w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
            elif rope_type == "dynamic" or str(rope_type).lower() == "llama3":
                pass  # llama3: the rope_freqs tensor; dynamic: nothing for these architectures
            else:
                logger.warning("unknown RoPE type %r in config.json: ignored, as convert_hf_to_gguf.py does", rope_type)
        if (theta := rope.get("rope_theta")) is not None:
            w.add_rope_freq_base(theta)
        if (theta_swa := self.rope_parameters.get("sliding_attention", {}).get("rope_theta")) is not None:
            w.add_rope_freq_base_swa(theta_swa)
        if (eps := self._find(["rms_norm_eps", "norm_eps"])) is not None:
            w.add_layer_norm_rms_eps(eps)
        if (eps := self._find(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"])) is not None:
            w.add_layer_norm_eps(eps)
        if (head_dim := hp.get("head_dim")) is not None:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_file_type(self._file_type())
        if self.arch == gguf.MODEL_ARCH.LLAMA:
            w.add_vocab_size(self.dims.n_vocab)
            w.add_rope_dimension_count(self.dims.head_dim)

    def _file_type(self) -> gguf.LlamaFileType:
        matrices = [t for t in self.tensors if len(t.ne) >= 2]
        if all(t.type == GGMLQuantizationType.F32 for t in matrices):
            return gguf.LlamaFileType.ALL_F32
        return {GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
                GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16}.get(matrices[0].type, gguf.LlamaFileType.ALL_F32)

    def close(self) -> None:
        for t in self.tensors:
            t.load = _closed(t.name)


# -------------------------------------------------------------------- helpers


class _Dims:
    """The config numbers the tensor shapes follow from."""

    def __init__(self, path: Path, hp: dict):
        def need(keys: list[str]) -> int:
            for k in keys:
                if k in hp:
                    v = hp[k]
                    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                        raise SourceError(f"{path / 'config.json'}: {k} is {v!r}, expected a positive integer")
                    return v
            raise SourceError(f"{path / 'config.json'}: missing {keys[0]}")

        self.n_layer = need(["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
        self.n_embd = need(["hidden_size", "n_embd", "dim"])
        self.n_head = need(["n_heads", "num_attention_heads"])
        self.n_head_kv = need(["n_kv_heads", "num_key_value_heads"]) if any(
            k in hp for k in ("n_kv_heads", "num_key_value_heads")) else self.n_head
        self.n_ff = need(["intermediate_size"])
        self.n_vocab = need(["vocab_size"])
        head_dim = hp.get("head_dim")
        self.head_dim = head_dim if isinstance(head_dim, int) and head_dim > 0 else self.n_embd // self.n_head
        if head_dim is None and self.n_embd % self.n_head:
            raise SourceError(f"{path / 'config.json'}: hidden_size {self.n_embd} is not a multiple of num_attention_heads {self.n_head}")
        if self.n_head % self.n_head_kv:
            raise SourceError(f"{path / 'config.json'}: num_attention_heads {self.n_head} is not a multiple of num_key_value_heads {self.n_head_kv}")

    def expected_shapes(self, arch: str) -> dict[str, tuple[int, ...]]:
        """HF (numpy) shapes by GGUF name: (out_features, in_features) for matrices."""
        q, kv = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        shapes = {"token_embd.weight": (self.n_vocab, self.n_embd), "output.weight": (self.n_vocab, self.n_embd),
                  "output_norm.weight": (self.n_embd,)}
        for b in range(self.n_layer):
            shapes.update({
                f"blk.{b}.attn_norm.weight": (self.n_embd,), f"blk.{b}.ffn_norm.weight": (self.n_embd,),
                f"blk.{b}.attn_q.weight": (q, self.n_embd), f"blk.{b}.attn_q.bias": (q,),
                f"blk.{b}.attn_k.weight": (kv, self.n_embd), f"blk.{b}.attn_k.bias": (kv,),
                f"blk.{b}.attn_v.weight": (kv, self.n_embd), f"blk.{b}.attn_v.bias": (kv,),
                f"blk.{b}.attn_output.weight": (self.n_embd, q),
                f"blk.{b}.ffn_gate.weight": (self.n_ff, self.n_embd), f"blk.{b}.ffn_up.weight": (self.n_ff, self.n_embd),
                f"blk.{b}.ffn_down.weight": (self.n_embd, self.n_ff),
            })
        return shapes


def _load_config(path: Path) -> dict:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{path}: no config.json; a Hugging Face checkpoint folder needs one")
    hp = _read_json(config_path)
    if not isinstance(hp, dict):
        raise SourceError(f"{config_path}: expected a JSON object, found {type(hp).__name__}")
    if "text_config" in hp and isinstance(hp["text_config"], dict):
        hp = {**hp, **hp["text_config"]}
    if qc := hp.get("quantization_config"):
        method = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
        raise SourceError(
            f"{config_path}: the checkpoint is already quantized (quant_method {method!r}); "
            f"convert the unquantized F32/F16/BF16 weights instead")
    return hp


def _architecture(path: Path, hp: dict) -> str:
    arches = hp.get("architectures")
    supported = ", ".join(sorted(ARCHITECTURES))
    if not isinstance(arches, list) or not arches or not isinstance(arches[0], str):
        raise SourceError(f"{path / 'config.json'}: no \"architectures\" list; supported: {supported}")
    if arches[0] not in ARCHITECTURES:
        raise SourceError(f"{path / 'config.json'}: architecture {arches[0]} is not supported; supported: {supported}")
    return arches[0]


def _rope_parameters(hp: dict) -> dict:
    """TextModel.__init__: rope_parameters (or rope_scaling) with the global rope settings mirrored in."""
    rope = dict(hp.get("rope_parameters", hp.get("rope_scaling")) or {})

    def find(keys):
        return next((hp[k] for k in keys if k in hp), None)

    rope_theta = find(["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"])
    local_theta = find(["local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq"])
    partial = find(["partial_rotary_factor", "rope_pct", "rope_percent"])
    orig_ctx = find(["original_max_position_embeddings"])
    if "full_attention" not in rope and "sliding_attention" not in rope:
        if local_theta is not None:
            rope["sliding_attention"] = {"rope_theta": local_theta}
        if "rope_theta" not in rope and rope_theta is not None:
            rope["rope_theta"] = rope_theta
        if "rope_type" not in rope and (rope_type := rope.get("type")) is not None:
            rope["rope_type"] = rope_type
        if "partial_rotary_factor" not in rope and partial is not None:
            rope["partial_rotary_factor"] = partial
        if "original_max_position_embeddings" not in rope and orig_ctx is not None:
            rope["original_max_position_embeddings"] = orig_ctx
    return rope


def _read_shards(path: Path) -> list[tuple[str, str, list[int], Path, int, int]]:
    """Every tensor of the checkpoint in the converter's order: shards sorted by file name, tensors
    sorted by name within a shard. Each is (name, dtype, shape, shard, byte offset, byte count)."""
    from safetensors import SafetensorError, safe_open

    index_path = path / "model.safetensors.index.json"
    weight_map: dict[str, str] = {}
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise SourceError(f"{index_path}: no \"weight_map\" object of tensor name -> shard file")
        parts = sorted(set(weight_map.values()))
        missing = [p for p in parts if not (path / p).is_file()]
        if missing:
            raise SourceError(f"{path}: shard {missing[0]} listed in model.safetensors.index.json is missing"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    else:
        parts = sorted(p.name for p in path.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors"))
    if not parts:
        if any(path.glob("pytorch_model*.bin")) or any(path.glob("*.pt")):
            raise SourceError(f"{path}: only PyTorch pickle weights (.bin/.pt); save the model as safetensors first")
        raise SourceError(f"{path}: no model.safetensors or model.safetensors.index.json")

    entries = []
    in_parts: dict[str, str] = {}
    for part in parts:
        shard = path / part
        check_input_file(shard, "safetensors file", SourceError)  # a FIFO would block the open
        try:
            with safe_open(str(shard), framework="numpy"):  # validates the header against the file size
                pass
        except SafetensorError as exc:
            raise SourceError(f"{shard}: not a valid safetensors file ({excerpt(str(exc))})") from None
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        start = 8 + n
        for name in sorted(k for k in header if k != "__metadata__"):
            meta = header[name]
            begin, end = meta["data_offsets"]
            if name in in_parts:
                raise SourceError(f"{path}: tensor {name} is in both {in_parts[name]} and {part}")
            in_parts[name] = part
            entries.append((name, meta["dtype"], list(meta["shape"]), shard, start + begin, end - begin))

    if weight_map:
        absent = sorted(set(weight_map) - set(in_parts))
        if absent:
            raise SourceError(f"{path}: tensor {absent[0]} is listed in model.safetensors.index.json "
                              f"(in {weight_map[absent[0]]}) but no shard holds it")
        extra = sorted(set(in_parts) - set(weight_map))
        if extra:
            raise SourceError(f"{path}: tensor {extra[0]} in {in_parts[extra[0]]} is not listed in model.safetensors.index.json")
    return entries


def _loader(shard: Path, offset: int, nbytes: int, np_dtype: np.dtype, dtype: str, shape: tuple[int, ...],
            out_type: GGMLQuantizationType, permute_heads: int | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        data = _map(shard, offset, nbytes).view(np_dtype)
        if out_type == GGMLQuantizationType.F32 and dtype != "F32":
            data = _bf16_to_f32(data) if dtype == "BF16" else data.astype(np.float32)
        if permute_heads is not None:
            data = _permute(data.reshape(shape), permute_heads)
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return load


def _map(path: Path, offset: int, nbytes: int) -> np.ndarray:
    """The tensor's bytes, memory-mapped on their own: the mapping goes when the array does, so
    pages read for one tensor do not stay in the process (as they would with one map per shard,
    which counts every tensor read so far in its resident size)."""
    if nbytes == 0:
        return np.empty(0, np.uint8)
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), offset + nbytes - start, access=mmap.ACCESS_READ, offset=start)
    return np.frombuffer(mm, np.uint8, count=nbytes, offset=offset - start)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute: within each head, interleave the two rotary halves of the rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _bf16_to_f32(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.uint32) << 16).view(np.float32)


def _closed(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        raise ValueError(f"{name}: the source is closed")
    return load


def _kv(key: str, v: gguf.GGUFValue) -> KV:
    """A GGUFWriter pair as a KV: enums to ints, bytes to str, arrays with their element type."""
    if v.type == GGUFValueType.ARRAY:
        item_type = v.sub_type or GGUFValueType.get_type(v.value[0])  # as GGUFWriter picks it
        if item_type == GGUFValueType.STRING:
            items = [x.decode("utf-8") if isinstance(x, (bytes, bytearray)) else x for x in v.value]
        elif item_type == GGUFValueType.FLOAT32:
            items = [float(x) for x in v.value]
        elif item_type == GGUFValueType.BOOL:
            items = [bool(x) for x in v.value]
        else:
            items = [int(x) for x in v.value]
        return KV(key, v.type, items, item_type=item_type)
    value = v.value
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8")
    elif isinstance(value, int) and not isinstance(value, bool):
        value = int(value)  # enums (file type, rope scaling) to plain ints
    return KV(key, v.type, value)

