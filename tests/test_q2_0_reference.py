"""Q2_0 (ggml type 42) is in llama.cpp but not yet in the gguf package we pin, so the registry
cannot name it and the generic tiers skip it. Its kernel is checked here against ggml directly."""

import numpy as np
import pytest

from cases import CASES, IMATRIX_KINDS, make_imatrix, make_rows
from kernels import q1q2

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS)
def test_q2_0_matches_ggml(ggml, imatrix_kind):
    rng = np.random.default_rng(42)
    for case in CASES:
        x = make_rows(case, 7, 64 * 6, rng)
        imatrix = make_imatrix(imatrix_kind, x.shape[1], rng)
        ref = ggml.quantize(x, q1q2.GGML_TYPE_Q2_0, imatrix)
        ours = q1q2.quantize_q2_0(x, imatrix)
        assert ggml.first_difference(ours, ref, q1q2.Q2_0_BYTES) is None, case
        np.testing.assert_array_equal(q1q2.dequantize_q2_0(ref, x.shape[1]).view(np.uint32),
                                      ggml.dequantize(ref, q1q2.GGML_TYPE_Q2_0, x.shape[1]).view(np.uint32))
