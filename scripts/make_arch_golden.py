#!/usr/bin/env python3
"""Write tests/golden/arch_models.npz: llama.cpp's own logits and imatrix for the architecture
table's test models (scripts/make_arch_models.py), built with stories260K's 512-token vocabulary
so that the default test tier can rebuild them in seconds.

Per model NAME: `NAME/logits` (rows ROWS, first COLS columns, of the logits of TOKENS, through llama-cpp-python with an
F32 KV cache and no flash attention) and, for the mixture-of-experts models, `NAME/imatrix/<tensor>`
sums and counts as llama-imatrix collects them (through libllama: scripts/llama_imatrix_ctypes.py,
F32 KV cache, no flash attention, 2 chunks of 128 tokens of tests/data/calibration-en.txt).

    python scripts/make_arch_golden.py [NAME ...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

GOLDEN = ROOT / "tests" / "golden" / "arch_models.npz"
TEXT = ROOT / "tests" / "data" / "calibration-en.txt"
N_TOKENS = 96
ROWS = np.array([0, 1, 39, 40, 63, 64, 80, 95])  # around the sliding window (40) and the temperature step (64)
COLS = 512  # the first 512 logits of a row (all of them but phi3's)
MOE = ("mixtral", "qwen2moe", "qwen3moe", "gpt-oss", "gemma4-moe", "glm4moe", "llama4", "deepseek2", "qwen35moe")
N_CTX, N_CHUNKS = 128, 2


def golden_entry(name: str) -> bool:
    """The imatrix entries kept: experts (per-expert counts), routers, MLA's per-head 3-D matrices."""
    return any(part in name for part in ("_exps", "gate_inp", "attn_k_b", "attn_v_b"))


def golden_tokens() -> np.ndarray:
    ids = np.random.default_rng(15).integers(3, 512, N_TOKENS)
    ids[0] = 1  # BOS
    return ids


def reference_logits(model: Path, ids: np.ndarray) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), n_ctx=len(ids), n_batch=len(ids), n_ubatch=len(ids), logits_all=True,
                verbose=False, n_threads=1, type_k=0, type_v=0, flash_attn=False)
    llm.eval([int(i) for i in ids])
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def reference_imatrix(model: Path, out: Path) -> dict[str, np.ndarray]:
    """llama-imatrix's collection through libllama (scripts/llama_imatrix_ctypes.py: MUL_MAT and
    MUL_MAT_ID as its callback takes them), one chunk per batch."""
    import llama_imatrix_ctypes

    from quantize_cli.formats.imatrix_file import load_imatrix

    text = TEXT.read_text(encoding="utf-8")
    stats, _ = llama_imatrix_ctypes.collect(model, text[:-1] if text.endswith("\n") else text, n_ctx=N_CTX,
                                            chunks=N_CHUNKS)
    llama_imatrix_ctypes.save(stats, out, str(TEXT), N_CTX)
    data = load_imatrix(out)
    arrays = {}
    for name in data.sums:
        if not golden_entry(name):  # the dense entries are checked elsewhere
            continue
        arrays[f"imatrix/{name}/sums"] = data.sums[name]
        arrays[f"imatrix/{name}/counts"] = data.counts[name]
    return arrays


def main() -> None:
    import make_arch_models

    skip = ("gpt-oss-mxfp4",) + make_arch_models.BENCH_ONLY
    names = sys.argv[1:] or [n for n in make_arch_models.MODELS if n not in skip]
    old = dict(np.load(GOLDEN)) if GOLDEN.exists() else {}
    out = {k: v for k, v in old.items() if k.split("/")[0] not in names}
    ids = golden_tokens()
    out["tokens"], out["rows"] = ids, ROWS
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model = make_arch_models.build(name, Path(tmp) / f"{name}.gguf", vocab=make_arch_models.small_vocab(name))
            out[f"{name}/logits"] = reference_logits(model, ids)[ROWS, :COLS]
            if name in MOE:
                for key, value in reference_imatrix(model, Path(tmp) / f"{name}.imatrix.gguf").items():
                    out[f"{name}/{key}"] = value
            print(f"{name}: logits range {np.ptp(out[f'{name}/logits']):.3f}")
    np.savez_compressed(GOLDEN, **out)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
