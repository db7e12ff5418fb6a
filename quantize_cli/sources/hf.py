"""A Hugging Face checkpoint folder as a source: config.json, safetensors weights, tokenizer files.

It gives what llama.cpp's convert_hf_to_gguf.py writes for the same folder: the same metadata
pairs in the same order, the same GGUF tensor names (the gguf package's TensorNameMap) in the same
order, and the same tensor data. What differs between model families (metadata steps, tensor
transforms, vocabulary routine) is in one table, hf_families.py; this module is the machinery that
reads a checkpoint through that table: tensor names and transforms, then the metadata. Beside it:
hf_config.py (config.json: architecture, rope parameters, dimensions), hf_safetensors.py (shards
and tensor bytes), hf_vocab.py (the vocabulary). Metadata is produced by driving a path-less
`gguf.GGUFWriter` as the converter does and reading its pairs back.

Where we differ on purpose:
- Tensors keep their stored type (F32/F16/BF16) instead of being converted to one `--outtype`:
  the planner chooses the output type, as llama-quantize would from a GGUF. The tensors the
  converter always writes as F32 (1-D tensors, norms, MoE routers, biases) are F32 here too,
  widened exactly on load.
  FP8 weights (quant_method "fp8") are dequantized with their scales to float32, as the converter
  does before any output type applies, so they are F32 tensors here.
- `general.file_type` says what the weights are (F32 when all are, else the type of the first
  matrix), like an F32/F16/BF16 GGUF of the model would; convert replaces it with the target's.

Weights are memory-mapped, and each tensor is read and transformed only when its `load()` is
called (a stacked-expert tensor reads its experts then).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import yaml
import gguf
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import SourceError
from ..formats.values import KV
from .base import Source, TensorRef
from . import hf_families as fam
from .hf_config import Dims, architecture, check_quantization, load_config, merge_text_config, rope_parameters
from .hf_safetensors import DTYPES, FP8_DTYPES, Entry, attach_fp8_scales, bf16_to_f32, read_shards
from .hf_vocab import HFVocab, _read_json

logger = logging.getLogger(__name__)

# tensors the converter drops ("we don't need these")
SKIPPED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")

# TextModel.filter_tensors: multimodal parts of a checkpoint, left out of the text model
MULTIMODAL_PREFIXES = ("mlp", "vit.", "vpm.", "siglip2.", "conformer.", "merger.", "resampler.", "sound_encoder.",
                       "sound_projection.", "speech_embeddings.")
MULTIMODAL_PARTS = ("visual.", "vision.", "audio.", "talker.", "vision_", "audio_", "token2wav.", "code2wav.",
                    "projector.", "pre_mm_projector_norm", "image_newline", "view_seperator", "patch_embed",
                    "patch_embedding", "patch_merger.", "patch_merge_mlp.", "model.connector.")

# the converter writes these as F32 whatever the output type (ModelBase.prepare_tensors)
ALWAYS_F32 = (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP)

T = gguf.MODEL_TENSOR


class HFSource(HFVocab, Source):
    """A folder with config.json, model.safetensors (or shards and model.safetensors.index.json),
    and tokenizer.model or tokenizer.json. `no_vocab=True` converts without a vocabulary
    (`tokenizer.ggml.model = none`), whether or not tokenizer files are there."""

    def __init__(self, path: str | Path, no_vocab: bool = False):
        self.path = Path(path)
        self.no_vocab = no_vocab
        if not self.path.is_dir():
            raise SourceError(f"{self.path}: not a directory")
        raw = load_config(self.path)
        self.hf_arch = architecture(self.path, raw)
        self.family = fam.FAMILIES[self.hf_arch]
        self.hparams = merge_text_config(raw, self.family)
        self.quant_method = check_quantization(self.path, self.hparams, self.family)
        self.mxfp4 = self.quant_method == "mxfp4"
        for key in self.family.drop_hparams:
            self.hparams.pop(key, None)
        self._check_variant()
        self.arch = self.family.arch
        self.vocab_kind = self.family.vocab
        self.arch_name = gguf.MODEL_ARCH_NAMES[self.arch]
        self.dims = Dims(self.path, self.hparams)
        self.rope_parameters = rope_parameters(self.hparams)
        self._early_kv: list[Callable[[gguf.GGUFWriter], None]] = []  # keys the converter writes while preparing tensors
        self.tensors = self._index_tensors()
        self.kv = self._metadata()

    def _check_variant(self) -> None:
        """Checkpoints the converter routes elsewhere than the family's plain text model."""
        cfg = self.path / "config.json"
        if self.hf_arch == "Mistral3ForConditionalGeneration" and self.hparams.get("model_type") == "mistral4":
            raise SourceError(f"{cfg}: Mistral 4 (model_type mistral4) is not supported; use convert_hf_to_gguf.py, then pyquantize on its GGUF")
        if self.hf_arch == "Qwen3ForCausalLM":
            readme = self.path / "README.md"
            text = readme.read_text(encoding="utf-8", errors="replace").lower() if readme.is_file() else ""
            hints = " ".join(str(x).lower() for x in (self.path.name, self.hparams.get("_name_or_path", "")))
            if "# qwen3-reranker" in text or "# qwen3-vl-reranker" in text or "qwen3-reranker" in hints or "qwen3-vl-reranker" in hints:
                raise SourceError(f"{self.path}: Qwen3 rerankers are not supported; use convert_hf_to_gguf.py, then pyquantize on its GGUF")
        if "draft_vocab_size" in self.hparams:
            raise SourceError(f"{cfg}: EAGLE-3 draft models are not supported")

    # ---------------------------------------------------------------- tensors

    def _index_tensors(self) -> list[TensorRef]:
        entries = [Entry(*row) for row in read_shards(self.path)]  # in the converter's order
        if self.quant_method == "fp8":
            entries = attach_fp8_scales(self.path, entries, self.hparams["quantization_config"].get("weight_block_size"))
        self.tensor_map = gguf.get_tensor_name_map(self.arch, self.dims.n_layer)
        tensors = [*self._extra_tensors(entries), *self._emit(entries)]
        self._check_complete(tensors)
        return tensors

    def _filter(self, name: str) -> str | None:
        """ModelBase/TextModel/family filter_tensors: the HF name the converter works with, or None."""
        f = self.family
        if name.startswith(MULTIMODAL_PREFIXES) or any(p in name for p in MULTIMODAL_PARTS):
            return None
        if f.arch == gguf.MODEL_ARCH.GRANITE and (name.startswith("encoder.") or "image_" in name
                                                   or "layerwise_projectors" in name or "spatial_projectors" in name):
            return None
        if name in f.drop:
            return None
        if f.gpt_oss and "sinks" in name:
            name += ".weight"
        if name.endswith("e_score_correction_bias"):
            name = name.replace("e_score_correction_bias", "e_score_correction.bias")
        name = name.replace("language_model.", "")
        if f.permute_qk:  # LlamaModel.filter_tensors
            name = name.replace("text_model.", "")
        return name

    def _map_name(self, hf_name: str, entry: Entry) -> str:
        name = self.tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SourceError(
                f"{entry.shard.name}: tensor {entry.name} has no {self.arch_name} GGUF name "
                f"(is config.json's num_hidden_layers {self.dims.n_layer} right?)")
        return name

    def _out_type(self, name: str, ndim: int, stored: GGMLQuantizationType) -> GGMLQuantizationType:
        """ModelBase.prepare_tensors' always-F32 rules; everything else keeps its stored type."""
        if ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
            return GGMLQuantizationType.F32
        if any(_is(name, key) for key in ALWAYS_F32):
            return GGMLQuantizationType.F32
        return stored

    def _stored(self, entry: Entry) -> GGMLQuantizationType:
        if entry.scale is not None:  # an FP8 weight, dequantized to float32 as the converter does
            return GGMLQuantizationType.F32
        if entry.dtype in FP8_DTYPES:
            raise SourceError(
                f"{entry.shard.name}: tensor {entry.name} is {entry.dtype} without a weight_scale_inv; "
                f"convert_hf_to_gguf.py dequantizes FP8 weights only with their scales (quantization_config fp8)")
        if entry.dtype not in DTYPES:
            raise SourceError(
                f"{entry.shard.name}: tensor {entry.name} has dtype {entry.dtype}, which is not supported "
                f"(only F32, F16, BF16): convert the checkpoint to one of those first")
        return DTYPES[entry.dtype][1]

    def _ref(self, name: str, shape: tuple[int, ...], stored: GGMLQuantizationType,
             compute: Callable[[], np.ndarray], offset: int = 0) -> TensorRef:
        """A tensor the converter writes as `name`: `compute()` gives its elements (stored dtype,
        BF16 as uint16 bits, or float32/float16 after arithmetic); the type follows the converter."""
        out_type = self._out_type(name, len(shape), stored)

        def load() -> np.ndarray:
            data = compute()
            if out_type == GGMLQuantizationType.F32 and data.dtype != np.float32:
                data = bf16_to_f32(data) if data.dtype == np.uint16 else data.astype(np.float32)
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)

        return TensorRef(name=name, ne=tuple(int(d) for d in reversed(shape)) or (1,), type=out_type,
                         load=load, offset=offset)

    def _emit(self, entries: list[Entry]) -> Iterator[TensorRef]:
        """The converter's main loop: every kept tensor through its family's transforms, in order."""
        f = self.family
        expected = self.dims.expected_shapes() if f.dense_shapes else self.dims.attention_shapes()
        buffers: dict[int, dict[tuple[int, str], Entry]] = {}
        n_expert = None
        if f.experts is not None:
            n_expert = next((self.hparams[k] for k in f.experts.count if k in self.hparams), None)
        for entry in entries:
            hf_name = self._filter(entry.name)
            if hf_name is None or hf_name.endswith(SKIPPED_SUFFIXES):
                continue
            if f.gpt_oss:
                yield from self._gpt_oss_tensor(hf_name, entry)
                continue
            if f.fused_experts and hf_name.endswith(("mlp.experts.down_proj", "mlp.experts.down_proj.weight",
                                                     "mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj.weight")):
                yield from self._fused_experts(hf_name, entry)
                continue
            if f.experts is not None and (hit := fam.expert_match(f.experts, hf_name)) is not None:
                bid, xid, proj = hit
                if n_expert is None:
                    raise SourceError(f"{self.path / 'config.json'}: missing {f.experts.count[-1]} for the expert tensors")
                group = buffers.setdefault(bid, {})
                group[(xid, proj)] = entry
                if len(group) >= n_expert * len(f.experts.order):
                    yield from self._stack_experts(bid, group, n_expert)
                    del buffers[bid]
                continue
            stored = self._stored(entry)
            name = self._map_name(hf_name, entry)
            want = expected.get(name)
            if want is not None and tuple(entry.shape) != want and not (f.trim_vocab_rows and name == "token_embd.weight"):
                raise SourceError(
                    f"{entry.shard.name}: tensor {entry.name} has shape {list(entry.shape)} but config.json implies "
                    f"{list(want)}: the config does not match the weights")
            yield self._plain(hf_name, name, entry, stored)
        if leftover := [e.name for group in buffers.values() for e in group.values()]:
            raise SourceError(f"{self.path}: expert tensors {', '.join(leftover[:3])} do not complete their layer's "
                              f"{n_expert} experts: a shard is missing or config.json's expert count is wrong")

    def _plain(self, hf_name: str, name: str, entry: Entry, stored: GGMLQuantizationType) -> TensorRef:
        f, shape = self.family, tuple(entry.shape)
        steps: list[Callable[[np.ndarray], np.ndarray]] = []
        if f.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            steps.append(lambda x: _permute(x, self.dims.n_head))
        elif f.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            steps.append(lambda x: _permute(x, self.dims.n_head_kv))
        if f.trim_vocab_rows and "embed_tokens.weight" in hf_name:
            rows = min(shape[0], self._vocab_rows())
            shape = (rows, *shape[1:])
            steps.append(lambda x: x[:rows])
        if f.norm_plus_one and hf_name.endswith("norm.weight"):
            steps.append(lambda x: _plus_one(x, entry.dtype))

        def compute() -> np.ndarray:
            data = entry.values()
            for step in steps:
                data = step(data)
            return data

        return self._ref(name, shape, stored, compute, entry.offset)

    def _stack_experts(self, bid: int, group: dict[tuple[int, str], Entry], n_expert: int) -> Iterator[TensorRef]:
        """LlamaModel/Qwen2MoeModel.modify_tensors: one (n_expert, rows, cols) tensor per projection."""
        spec = self.family.experts
        for proj in spec.order:
            members = []
            for xid in range(n_expert):
                if (xid, proj) not in group:
                    raise SourceError(f"{self.path}: layer {bid} lacks expert {xid}'s {proj} weight")
                members.append(group[(xid, proj)])
            shapes = {tuple(e.shape) for e in members}
            dtypes = {(e.dtype, e.scale is None) for e in members}
            if len(shapes) != 1 or len(dtypes) != 1:
                raise SourceError(f"{self.path}: layer {bid}'s {proj} experts differ in shape or dtype")
            stored = self._stored(members[0])
            name = self._map_name(spec.stacked.format(bid=bid, w=proj), members[0])

            def compute(members=members) -> np.ndarray:
                return np.stack([e.values() for e in members])

            yield self._ref(name, (n_expert, *shapes.pop()), stored, compute, members[-1].offset)

    def _fused_experts(self, hf_name: str, entry: Entry) -> Iterator[TensorRef]:
        """Qwen2MoeModel.modify_tensors for experts stored as 3-D tensors: down_proj as it is,
        gate_up_proj split in halves along its rows."""
        stored = self._stored(entry)
        base = hf_name.removesuffix(".weight")
        if base.endswith("down_proj"):
            yield self._plain(base + ".weight", self._map_name(base + ".weight", entry), entry, stored)
            return
        if len(entry.shape) < 3 or entry.shape[-2] % 2:
            raise SourceError(f"{entry.shard.name}: tensor {entry.name} has shape {list(entry.shape)}; expected (n_expert, 2*n_ff, n_embd)")
        n_ff = entry.shape[-2] // 2
        stem = base.removesuffix(".gate_up_proj")
        for part, rows in (("gate_proj", slice(0, n_ff)), ("up_proj", slice(n_ff, None))):
            name = self._map_name(f"{stem}.{part}.weight", entry)
            yield self._ref(name, (*entry.shape[:-2], n_ff, entry.shape[-1]), stored,
                            lambda rows=rows: entry.values()[..., rows, :], entry.offset)

    def _gpt_oss_tensor(self, hf_name: str, entry: Entry) -> Iterator[TensorRef]:
        """GptOssModel.modify_tensors (MXFP4 blocks are handled in _extra_tensors)."""
        if "down_proj" in hf_name:
            if hf_name.endswith("_bias"):
                hf_name = hf_name.replace("down_proj_bias", "down_proj.bias")
            elif "_blocks" in hf_name or "_scales" in hf_name:
                return
            else:  # unquantized experts, stored (n_expert, n_ff, n_embd)
                name = self._map_name(hf_name.replace("down_proj", "down_proj.weight"), entry)
                shape = (entry.shape[0], entry.shape[2], entry.shape[1])
                yield self._ref(name, shape, self._stored(entry), lambda: entry.raw().swapaxes(-1, -2), entry.offset)
                return
        if "gate_up_proj" in hf_name:
            stored = self._stored(entry) if "_blocks" not in hf_name and "_scales" not in hf_name else None
            if hf_name.endswith("_bias"):
                for part, cols in (("gate_proj", slice(0, None, 2)), ("up_proj", slice(1, None, 2))):
                    name = self._map_name(hf_name.replace("gate_up_proj_bias", f"{part}.bias"), entry)
                    yield self._ref(name, (*entry.shape[:-1], entry.shape[-1] // 2), stored,
                                    lambda cols=cols: entry.raw()[..., cols], entry.offset)
            elif stored is not None:  # unquantized: (n_expert, n_embd, 2*n_ff), gate and up interleaved
                n_expert, n_embd, n_ff2 = entry.shape
                for part, rows in (("gate_proj", slice(0, None, 2)), ("up_proj", slice(1, None, 2))):
                    name = self._map_name(hf_name.replace("gate_up_proj", f"{part}.weight"), entry)
                    yield self._ref(name, (n_expert, n_ff2 // 2, n_embd), stored,
                                    lambda rows=rows: entry.raw().swapaxes(-1, -2)[:, rows, :], entry.offset)
            return
        stored = self._stored(entry)
        yield self._plain(hf_name, self._map_name(hf_name, entry), entry, stored)

    def _extra_tensors(self, entries: list[Entry]) -> Iterable[TensorRef]:
        """generate_extra_tensors: what the converter writes before the checkpoint's own tensors."""
        f = self.family
        if f.extra == "llama3_rope":
            rope = self.rope_parameters.get("full_attention", self.rope_parameters)
            factors = fam.llama3_rope_factors(rope, self.dims.head_dim) if rope else None
            if factors is not None:
                yield _f32_tensor(gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight", factors)
        elif f.extra == "phi3_rope":
            m = fam.Meta(self.hparams, self.rope_parameters, None, self.dims.n_layer, 0, self.path)
            if (found := fam.phi3_rope_factors(m)) is not None:
                attn_factor, long_factors, short_factors = found
                self._early_kv.append(lambda w: w.add_rope_scaling_attn_factors(attn_factor))
                yield _f32_tensor(gguf.TENSOR_NAMES[T.ROPE_FACTORS_LONG] + ".weight", long_factors)
                yield _f32_tensor(gguf.TENSOR_NAMES[T.ROPE_FACTORS_SHORT] + ".weight", short_factors)
        elif f.gpt_oss and self.mxfp4:
            yield from self._gpt_oss_mxfp4(entries)

    def _gpt_oss_mxfp4(self, entries: list[Entry]) -> Iterator[TensorRef]:
        """GptOssModel.generate_extra_tensors: MXFP4 expert blocks into ggml's MXFP4 layout, in the
        order their scales come (down; then gate and up from the interleaved gate_up rows)."""
        blocks: dict[str, Entry] = {}
        for entry in entries:
            hf_name = self._filter(entry.name)
            if hf_name is None:
                continue
            for proj in ("down_proj", "gate_up_proj"):
                if f"mlp.experts.{proj}_blocks" in hf_name:
                    blocks[proj] = entry
                elif f"mlp.experts.{proj}_scales" in hf_name:
                    if proj not in blocks:
                        raise SourceError(f"{self.path}: {entry.name} comes without its {proj}_blocks")
                    b, s = blocks[proj], entry
                    if b.dtype != "U8" or s.dtype != "U8" or len(b.shape) != 4 or b.shape[-1] != 16 or tuple(s.shape) != tuple(b.shape[:3]):
                        raise SourceError(f"{self.path}: {b.name} and {s.name} are not MXFP4 blocks (U8, (e, rows, cols/32, 16)) and scales")
                    if proj == "down_proj":
                        parts = [(hf_name.replace("_scales", ".weight"), slice(None))]
                    else:
                        parts = [(hf_name.replace("gate_up_proj_scales", "gate_proj.weight"), slice(0, None, 2)),
                                 (hf_name.replace("gate_up_proj_scales", "up_proj.weight"), slice(1, None, 2))]
                    for mapped, rows in parts:
                        name = self._map_name(mapped, entry)
                        n_expert, n_rows, n_blocks = b.shape[0], len(range(b.shape[1])[rows]), b.shape[2]

                        def load(b=b, s=s, rows=rows) -> np.ndarray:
                            packed = _mxfp4_nibbles(np.ascontiguousarray(b.raw()[:, rows]))
                            scales = s.raw()[:, rows][..., None]
                            return np.concatenate((scales, packed), axis=-1).reshape(-1)

                        yield TensorRef(name=name, ne=(n_blocks * 32, n_rows, n_expert), type=GGMLQuantizationType.MXFP4,
                                        load=load, offset=s.offset)

    def _vocab_rows(self) -> int:
        """Gemma3Model.modify_tensors: how many token_embd rows the vocabulary has."""
        if (self.path / "tokenizer.model").is_file():
            from sentencepiece import SentencePieceProcessor

            size = self._find(["vocab_size_per_layer_input", "vocab_size"])
            if size:
                return size
            spm = SentencePieceProcessor()
            spm.LoadFromFile(str(self.path / "tokenizer.model"))
            return spm.vocab_size()
        tj = _read_json(self.path / "tokenizer.json", required=False)
        if not isinstance(tj, dict):
            return self.dims.n_vocab
        return len((tj.get("model") or {}).get("vocab") or {}) + len(tj.get("added_tokens") or [])

    def _check_complete(self, tensors: list[TensorRef]) -> None:
        names = {t.name for t in tensors}
        missing = [gguf.TENSOR_NAMES[k] + ".weight" for k in (T.TOKEN_EMBD, T.OUTPUT_NORM)]
        missing += [gguf.TENSOR_NAMES[k].format(bid=b) + ".weight" for b in range(self.dims.n_layer)
                    for k in self.family.block_tensors]
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
        for add in self._early_kv:
            add(w)
        total, shared, expert, n_expert = _parameter_count(self.tensors)
        try:
            meta = gguf.Metadata.load(None, self.path, None, total)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.path / 'README.md'}: the model card's front matter is not valid YAML "
                              f"({str(exc).splitlines()[0]}); fix or remove it") from None
        _generation_config_penalty(meta, self.path)
        if meta.name is None:
            meta.name = self.path.name
        if meta.size_label is None and total > 0:
            meta.size_label = gguf.size_label(total, shared, expert, n_expert)
        w.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(w)
        m = fam.Meta(self.hparams, self.rope_parameters, w, self.dims.n_layer, int(self._file_type()), self.path)
        writer_log = logging.getLogger("gguf.gguf_writer")
        level = writer_log.level
        writer_log.setLevel(logging.ERROR)  # Gemma 3 rewrites keys on purpose; the writer warns of each
        try:
            for step in self.family.params:
                step(m)
        finally:
            writer_log.setLevel(level)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        self._set_vocab(w)
        return [_kv(key, v) for key, v in w.kv_data[0].items()]

    def _find(self, keys: Iterable[str]) -> Any:
        return next((self.hparams[k] for k in keys if k in self.hparams), None)

    def _file_type(self) -> gguf.LlamaFileType:
        if self.mxfp4:  # ModelBase.prepare_metadata
            return gguf.LlamaFileType.MOSTLY_MXFP4_MOE
        matrices = [t for t in self.tensors if len(t.ne) >= 2]
        if all(t.type == GGMLQuantizationType.F32 for t in matrices):
            return gguf.LlamaFileType.ALL_F32
        return {GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
                GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16}.get(matrices[0].type, gguf.LlamaFileType.ALL_F32)

    def close(self) -> None:
        for t in self.tensors:
            t.load = _closed(t.name)


def _generation_config_penalty(meta: gguf.Metadata, path: Path) -> None:
    """llama.cpp's gguf-py (newer than the gguf release we depend on) also reads
    generation_config.json's repetition_penalty."""
    gen = _read_json(path / "generation_config.json", required=False)
    if isinstance(gen, dict) and "penalty_repeat" not in gen and "repetition_penalty" in gen:
        meta.sampling_penalty_repeat = gen["repetition_penalty"]


def _parameter_count(tensors: list[TensorRef]) -> tuple[int, int, int, int]:
    """GGUFWriter.get_total_parameter_count: (total, shared, expert, expert count)."""
    total = shared = expert = expert_sum = n_expert_tensors = 0
    for t in tensors:
        shape = tuple(reversed(t.ne))
        size = int(np.prod(shape, dtype=np.int64))
        if "_exps." in t.name and len(shape) >= 3:
            count = shape[-2 if ".bias" in t.name else -3]
            expert += size // count
            expert_sum += count
            n_expert_tensors += 1
        else:
            shared += size
        total += size
    return total, shared, expert, (expert_sum // n_expert_tensors) if n_expert_tensors else 0


def _is(name: str, key: gguf.MODEL_TENSOR) -> bool:
    """ModelBase.match_model_tensor_name for block tensors."""
    pattern = re.escape(gguf.TENSOR_NAMES[key]).replace(r"\{bid\}", r"\d+") + r"\.weight"
    return re.fullmatch(pattern, name) is not None


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute: within each head, interleave the two rotary halves of the rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _plus_one(x: np.ndarray, dtype: str) -> np.ndarray:
    """Gemma's norm offset. The converter widens BF16 to float32 first and adds in float32; F16
    stays float16 in torch, so its sum is rounded to float16 once (float32 holds it exactly)."""
    if dtype == "F16":
        return (x.astype(np.float32) + np.float32(1)).astype(np.float16)
    if dtype == "BF16":
        x = bf16_to_f32(x)
    return x.astype(np.float32) + np.float32(1)


def _mxfp4_nibbles(blocks: np.ndarray) -> np.ndarray:
    """GptOssModel.transform_nibble_layout: 16-byte groups whose byte j holds elements 2j (low
    nibble) and 2j+1 (high) become ggml's layout, byte j holding elements j and j+16."""
    lo, hi = blocks & 0x0F, blocks >> 4
    vals = np.stack((lo, hi), axis=-1).reshape(*blocks.shape[:-1], 32)  # elements in order
    return (vals[..., :16] | (vals[..., 16:] << 4)).astype(np.uint8)


def _f32_tensor(name: str, values: list[float]) -> TensorRef:
    data = np.array(values, dtype=np.float32)
    return TensorRef(name=name, ne=(len(data),), type=GGMLQuantizationType.F32, load=lambda: data.view(np.uint8))


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
