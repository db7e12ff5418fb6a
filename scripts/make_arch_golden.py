#!/usr/bin/env python3
"""Write tests/golden/arch_models.npz: llama.cpp's own logits and imatrix for the architecture
table's test models (scripts/make_arch_models.py), built with stories260K's 512-token vocabulary
so that the default test tier can rebuild them in seconds.

Per model NAME: `NAME/logits` (rows ROWS, first COLS columns, of the logits of TOKENS, through llama-cpp-python with an
F32 KV cache and no flash attention) and, for the mixture-of-experts models, `NAME/imatrix/<tensor>`
sums and counts from the llama-imatrix binary (-ctk f32 -ctv f32 -fa off, 2 chunks of 128 tokens
of tests/data/calibration-en.txt).

    python scripts/make_arch_golden.py [NAME ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

GOLDEN = ROOT / "tests" / "golden" / "arch_models.npz"
TEXT = ROOT / "tests" / "data" / "calibration-en.txt"
LLAMA_BIN = Path(os.environ.get("LLAMA_CPP_BIN", "/work/ref/build/bin"))
N_TOKENS = 96
ROWS = np.array([0, 1, 39, 40, 63, 64, 80, 95])  # around the sliding window (40) and the temperature step (64)
COLS = 512  # the first 512 logits of a row (all of them but phi3's)
MOE = ("mixtral", "qwen2moe", "qwen3moe", "gpt-oss")
IMATRIX_ARGS = ("-c", "128", "--chunks", "2", "-ctk", "f32", "-ctv", "f32", "-fa", "off", "-t", "1")


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
    from quantize_cli.formats.imatrix_file import load_imatrix

    cmd = [str(LLAMA_BIN / "llama-imatrix"), "-m", str(model), "-f", str(TEXT), "-o", str(out), *IMATRIX_ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    data = load_imatrix(out)
    arrays = {}
    for name in data.sums:
        arrays[f"imatrix/{name}/sums"] = data.sums[name]
        arrays[f"imatrix/{name}/counts"] = data.counts[name]
    return arrays


def main() -> None:
    import make_arch_models

    names = sys.argv[1:] or [n for n in make_arch_models.MODELS if n != "gpt-oss-mxfp4"]
    old = dict(np.load(GOLDEN)) if GOLDEN.exists() else {}
    out = {k: v for k, v in old.items() if k.split("/")[0] not in names}
    ids = golden_tokens()
    out["tokens"], out["rows"] = ids, ROWS
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model = make_arch_models.build(name, Path(tmp) / f"{name}.gguf", vocab=make_arch_models.small_vocab(name))
            out[f"{name}/logits"] = reference_logits(model, ids)[ROWS, :COLS]
            if name in MOE and not (LLAMA_BIN / "llama-imatrix").exists():
                print(f"{name}: {LLAMA_BIN / 'llama-imatrix'} is absent, its imatrix entries are kept as they were")
                out.update({k: v for k, v in old.items() if k.startswith(f"{name}/imatrix/")})
            elif name in MOE:
                for key, value in reference_imatrix(model, Path(tmp) / f"{name}.imatrix.gguf").items():
                    out[f"{name}/{key}"] = value
            print(f"{name}: logits range {np.ptp(out[f'{name}/logits']):.3f}")
    np.savez_compressed(GOLDEN, **out)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
