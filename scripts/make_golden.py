#!/usr/bin/env python3
"""Write tests/golden/<TYPE>.npz: inputs and llama.cpp's bytes for them, from libggml.

Needs llama-cpp-python (the reference library). Fixed seed, so the files only change when the
cases or ggml change. Each file holds, per case and imatrix kind, the input rows, the imatrix
(if any), ggml_quantize_chunk's bytes and ggml's dequantization of those bytes.

    python scripts/make_golden.py Q4_0 Q4_K ...   # some types
    python scripts/make_golden.py                  # every type our registry can quantize
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import ggml_ref  # noqa: E402
import kernels.gguf_compat  # noqa: E402,F401  (Q2_0)
from cases import CASES, IMATRIX_KINDS, make_imatrix, make_rows  # noqa: E402

SEED = 20261127
OUT = ROOT / "tests" / "golden"


def golden_for(qtype: GGMLQuantizationType) -> dict[str, np.ndarray]:
    block = GGML_QUANT_SIZES[qtype][0]
    n_per_row = max(256, block) * 2  # two super-blocks: small files, still more than one block
    rng = np.random.default_rng(SEED + int(qtype))
    needs = ggml_ref.lib().ggml_quantize_requires_imatrix(int(qtype))
    arrays: dict[str, np.ndarray] = {}
    for case in CASES:
        rows = make_rows(case, 5, n_per_row, rng)  # odd row count on purpose
        # an imatrix changes nothing in a float conversion: one kind is enough there
        kinds = ("none",) if qtype in (GGMLQuantizationType.F16, GGMLQuantizationType.BF16) else IMATRIX_KINDS
        for kind in kinds:
            imatrix = make_imatrix(kind, n_per_row, rng)
            if imatrix is None and needs:
                continue
            q = ggml_ref.quantize(rows, qtype, imatrix)
            key = f"{case}.{kind}"
            arrays[f"{key}.x"] = rows
            if imatrix is not None:
                arrays[f"{key}.imatrix"] = imatrix
            arrays[f"{key}.q"] = q
            arrays[f"{key}.dq"] = ggml_ref.dequantize(q, qtype, n_per_row)
    return arrays


def main(argv: list[str]) -> int:
    if ggml_ref.lib() is None:
        print(ggml_ref.WHY_ABSENT, file=sys.stderr)
        return 1
    if argv:
        types = [GGMLQuantizationType[name.upper()] for name in argv]
    else:
        import kernels
        types = [t for t in kernels.registry() if kernels.can_quantize(t) and t not in (GGMLQuantizationType.F32,)]
    OUT.mkdir(parents=True, exist_ok=True)
    for qtype in types:
        arrays = golden_for(qtype)
        path = OUT / f"{qtype.name}.npz"
        np.savez_compressed(path, **arrays)
        print(f"{path.relative_to(ROOT)}: {len(arrays)} arrays, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
