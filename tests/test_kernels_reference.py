"""Reference tier: every registered quantizer against ggml_quantize_chunk on fresh random and
adversarial data (seed printed), with and without an importance matrix; dequantizers against
ggml's to_float. Skips, saying why, when llama-cpp-python is absent.

PYQUANTIZE_REF_WEIGHTS sets how many weights per type and imatrix kind (default 2**18); the
acceptance runs use 10_000_000."""

import os
import time

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

import kernels
from cases import CASES, IMATRIX_KINDS, make_imatrix, make_rows

pytestmark = pytest.mark.reference

WEIGHTS = int(os.environ.get("PYQUANTIZE_REF_WEIGHTS", 2**18))
SEED = int(os.environ.get("PYQUANTIZE_REF_SEED", time.time_ns() % 2**32))

QTYPES = [t for t in kernels.registry() if kernels.can_quantize(t) and t != GGMLQuantizationType.F32]


@pytest.mark.parametrize("imatrix_kind", IMATRIX_KINDS)
@pytest.mark.parametrize("qtype", QTYPES, ids=[t.name for t in QTYPES])
def test_quantize_matches_ggml(ggml, qtype, imatrix_kind):
    needs = ggml.lib().ggml_quantize_requires_imatrix(int(qtype))
    if imatrix_kind == "none" and needs:
        pytest.skip(f"{qtype.name} requires an imatrix")
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(SEED + int(qtype))
    print(f"seed {SEED} (PYQUANTIZE_REF_SEED to repeat)")
    done = 0
    blocks = 0
    while done < WEIGHTS:
        for case in CASES:
            n_per_row = max(256, block) * int(rng.integers(1, 5))
            nrows = int(rng.integers(1, 8)) * 2 + 1
            x = make_rows(case, nrows, n_per_row, rng)
            imatrix = make_imatrix(imatrix_kind, n_per_row, rng)
            ref = ggml.quantize(x, qtype, imatrix)
            ours = kernels.quantize(x, qtype, imatrix)
            problem = ggml.first_difference(ours, ref, block_bytes)
            assert problem is None, f"{qtype.name} case {case} imatrix {imatrix_kind} seed {SEED}: {problem}"
            # dequantizers once per type: on the plain path, or the first imatrix path for types that need one
            first_path = imatrix_kind == "none" or (needs and imatrix_kind == "positive")
            if first_path and kernels.can_dequantize(qtype):
                np.testing.assert_array_equal(
                    kernels.dequantize(ref, qtype, n_per_row).view(np.uint32),
                    ggml.dequantize(ref, qtype, n_per_row).view(np.uint32),
                    err_msg=f"{qtype.name} dequantize, case {case}")
            done += x.size
            blocks += x.size // block
    print(f"{qtype.name} imatrix={imatrix_kind}: {blocks} blocks ({done} weights) identical")
