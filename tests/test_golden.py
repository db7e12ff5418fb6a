"""Default tier: our kernels against committed llama.cpp outputs (tests/golden/*.npz).

No compiler or llama.cpp needed. scripts/make_golden.py writes the files from libggml."""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

import kernels
from ggml_ref import first_difference

# tests/golden/<TYPE>.npz, one per ggml type (other golden data shares the folder)
GOLDEN = sorted(p for p in (Path(__file__).parent / "golden").glob("*.npz") if p.stem in GGMLQuantizationType.__members__)


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden(path):
    qtype = GGMLQuantizationType[path.stem]
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    data = np.load(path)
    keys = sorted({k.rsplit(".", 1)[0] for k in data.files})
    assert keys, "empty golden file"
    for key in keys:
        x = data[f"{key}.x"]
        imatrix = data[f"{key}.imatrix"] if f"{key}.imatrix" in data.files else None
        ours = kernels.quantize(x, qtype, imatrix)
        problem = first_difference(ours, data[f"{key}.q"], block_bytes)
        assert problem is None, f"{qtype.name} {key}: {problem}"
        if kernels.can_dequantize(qtype):
            dq = kernels.dequantize(data[f"{key}.q"], qtype, x.shape[1])
            np.testing.assert_array_equal(dq.view(np.uint32), data[f"{key}.dq"].view(np.uint32), err_msg=f"{qtype.name} {key} dequantize")


def test_every_quantizer_has_golden_vectors():
    have = {p.stem for p in GOLDEN}
    missing = [t.name for t in kernels.registry() if kernels.can_quantize(t) and t != GGMLQuantizationType.F32 and t.name not in have]
    assert not missing, f"no tests/golden file for {missing}: run scripts/make_golden.py {' '.join(missing)}"
