"""The per-family table (quantize_cli/sources/hf_families.py) and its transforms, without torch.

The families themselves are checked against convert_hf_to_gguf.py in tests/test_hf_families.py
(reference tier); these are the fast checks of the pieces.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from quantize_cli.sources import hf_families as fam
from quantize_cli.sources.hf import _mxfp4_nibbles, _plus_one


@pytest.mark.parametrize("hf_arch", sorted(fam.FAMILIES))
def test_every_family_names_tensors_its_architecture_has(hf_arch):
    f = fam.FAMILIES[hf_arch]
    known = set(gguf.MODEL_TENSORS[f.arch])
    assert f.block_tensors and set(f.block_tensors) <= known
    assert f.vocab in {"llama", "spm_or_gpt2", "gpt2", "gemma2", "gemma3", "phi3"}
    assert f.params, "a family writes at least its hyperparameters"
    if f.experts is not None:
        names = gguf.get_tensor_name_map(f.arch, 1)
        for proj in f.experts.order:
            assert names.get_name(f.experts.stacked.format(bid=0, w=proj), try_suffixes=(".weight",)) is not None, proj


def test_expert_pattern_reads_layer_expert_projection():
    assert fam.expert_match(fam.MIXTRAL_EXPERTS, "model.layers.3.block_sparse_moe.experts.12.w2.weight") == (3, 12, "w2")
    assert fam.expert_match(fam.QWEN_EXPERTS, "model.layers.0.mlp.experts.7.up_proj.weight") == (0, 7, "up_proj")
    assert fam.expert_match(fam.QWEN_EXPERTS, "model.layers.0.mlp.shared_expert.up_proj.weight") is None


def _transform_nibble_layout(blocks: np.ndarray) -> np.ndarray:
    """GptOssModel.transform_nibble_layout step by step (the converter's torch code, in NumPy)."""
    t = ((blocks & 0x0F) << 4) | ((blocks & 0xF0) >> 4)
    a, b = t[..., :8], t[..., 8:]
    a = np.stack(((a & 0xF0), (a << 4) & 0xFF), axis=-1).reshape(t.shape)
    b = np.stack((b >> 4, b & 0x0F), axis=-1).reshape(t.shape)
    out = a | b
    return (((out & 0xF0) >> 4) | ((out & 0x0F) << 4)).astype(np.uint8)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_mxfp4_repack_is_the_converters_nibble_transform(n_expert, rows, n_blocks, seed):
    blocks = np.random.default_rng(seed).integers(0, 256, (n_expert, rows, n_blocks, 16), dtype=np.uint8)
    assert np.array_equal(_mxfp4_nibbles(blocks), _transform_nibble_layout(blocks))


def test_gemma_norm_offset_rounds_like_torch():
    # float16: one rounding of the exact sum, to float16 (then widened exactly)
    x16 = np.array([0.0, 1e-4, -0.5, 2047.0, 65000.0], np.float16)
    assert np.array_equal(_plus_one(x16, "F16"), (x16.astype(np.float64) + 1).astype(np.float16))
    # bfloat16 bits: widened, then added in float32
    bits = np.array([0x3F80, 0xBF00, 0x0001], np.uint16)
    want = (bits.astype(np.uint32) << 16).view(np.float32) + np.float32(1)
    got = _plus_one(bits, "BF16")
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_llama3_rope_factors_only_for_llama3():
    assert fam.llama3_rope_factors({"rope_type": "linear", "factor": 2.0}, 64) is None
    factors = fam.llama3_rope_factors({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                       "original_max_position_embeddings": 8192}, 64)
    assert len(factors) == 32 and factors[0] == 1 and factors[-1] == 8.0
