"""config.json read the way convert_hf_to_gguf.py reads it: the architecture (which picks the
family in hf_families.py), text_config merged over the top level, the quantization check, the rope
parameters, and `Dims`, the numbers the tensor shapes follow from."""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from . import hf_families as fam
from .hf_vocab import _read_json


class Dims:
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

    def attention_shapes(self) -> dict[str, tuple[int, ...]]:
        """HF (numpy) shapes by GGUF name: (out_features, in_features) for matrices."""
        q, kv = self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        shapes = {"token_embd.weight": (self.n_vocab, self.n_embd), "output.weight": (self.n_vocab, self.n_embd),
                  "output_norm.weight": (self.n_embd,)}
        for b in range(self.n_layer):
            shapes.update({
                f"blk.{b}.attn_q.weight": (q, self.n_embd), f"blk.{b}.attn_q.bias": (q,),
                f"blk.{b}.attn_k.weight": (kv, self.n_embd), f"blk.{b}.attn_k.bias": (kv,),
                f"blk.{b}.attn_v.weight": (kv, self.n_embd), f"blk.{b}.attn_v.bias": (kv,),
                f"blk.{b}.attn_output.weight": (self.n_embd, q),
            })
        return shapes

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """attention_shapes plus the dense feed-forward and the norms."""
        shapes = self.attention_shapes()
        for b in range(self.n_layer):
            shapes.update({
                f"blk.{b}.attn_norm.weight": (self.n_embd,), f"blk.{b}.ffn_norm.weight": (self.n_embd,),
                f"blk.{b}.ffn_gate.weight": (self.n_ff, self.n_embd), f"blk.{b}.ffn_up.weight": (self.n_ff, self.n_embd),
                f"blk.{b}.ffn_down.weight": (self.n_embd, self.n_ff),
            })
        return shapes


def load_config(path: Path) -> dict:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{path}: no config.json; a Hugging Face checkpoint folder needs one")
    hp = _read_json(config_path)
    if not isinstance(hp, dict):
        raise SourceError(f"{config_path}: expected a JSON object, found {type(hp).__name__}")
    return hp


def merge_text_config(hp: dict, family: fam.Family) -> dict:
    """TextModel.__init__: text_config's keys over the top level's, with the defaults transformers'
    AutoConfig fills into a sub-config that names only what differs from them."""
    text = hp.get("text_config")
    if isinstance(text, dict):
        return {**hp, **family.text_defaults, **text}
    return dict(hp)


def check_quantization(path: Path, hp: dict, family: fam.Family) -> str | None:
    """The checkpoint's quant_method where we read it as the converter does: "mxfp4" for gpt-oss
    (its blocks are taken as they are), "fp8" for block-scaled float8 weights (dequantized, as
    ModelBase.dequant_model does; gpt-oss's own dequant_model has no FP8); None when unquantized.
    Other quantized checkpoints are refused."""
    qc = hp.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method", "unknown") if isinstance(qc, dict) else "unknown"
    if method == "mxfp4" and family.gpt_oss:
        return method
    if method == "fp8" and not family.gpt_oss:
        block = qc.get("weight_block_size")
        if block is not None and (not isinstance(block, list) or not all(isinstance(b, int) and b > 0 for b in block)):
            raise SourceError(f"{path / 'config.json'}: quantization_config.weight_block_size {block!r} is not a list of positive integers")
        return method
    raise SourceError(
        f"{path / 'config.json'}: the checkpoint is already quantized (quant_method {method!r}); "
        f"convert the unquantized F32/F16/BF16 weights instead")


def architecture(path: Path, hp: dict) -> str:
    """get_model_architecture: architectures[0], or text_config's where it names one."""
    arches = hp.get("architectures")
    text = hp.get("text_config") if isinstance(hp.get("text_config"), dict) else {}
    if isinstance(text.get("architectures"), list) and text["architectures"]:
        arches = text["architectures"]
    if not isinstance(arches, list) or not arches or not isinstance(arches[0], str):
        raise SourceError(f"{path / 'config.json'}: no \"architectures\" list; supported: {fam.supported()}")
    if arches[0] not in fam.FAMILIES:
        raise SourceError(
            f"{path / 'config.json'}: architecture {arches[0]} is not supported; supported: {fam.supported()}; "
            f"for others, run llama.cpp's convert_hf_to_gguf.py, then pyquantize convert on its GGUF")
    return arches[0]


def rope_parameters(hp: dict) -> dict:
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
