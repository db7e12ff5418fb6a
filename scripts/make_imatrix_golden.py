#!/usr/bin/env python3
"""Write the golden data of the imatrix, model and tokenizer tests, from llama.cpp itself.

- tests/golden/tokenizer_ids.json: token ids llama.cpp gives (llama-cpp-python, vocab_only) for
  varied texts and for the whole calibration text (its length, sha256 and first ids), for
  stories260K (SentencePiece) and the GPT-2 vocabulary (byte-level BPE).
- tests/golden/stories260K_logits.npz: llama.cpp's logits (F32 KV cache, no flash attention) for
  the first 512 calibration tokens, a few rows.
- tests/golden/stories260K-imatrix.gguf and stories260K-imatrix.json: llama-imatrix's file for the
  first 2 chunks of 512 tokens of the calibration text (-ctk f32 -ctv f32 -fa off) and its
  per-chunk perplexities. Needs the llama-imatrix binary (scripts/build_llama_cpp.sh).

    python scripts/make_imatrix_golden.py [tokens] [logits] [imatrix | imatrix-ctypes]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
GOLDEN = ROOT / "tests" / "golden"
STORIES = DATA / "stories260K.gguf"
GPT2 = DATA / "ggml-vocab-gpt-2.gguf"
CALIBRATION = DATA / "calibration-en.txt"
LLAMA_BIN = Path(os.environ.get("LLAMA_CPP_BIN", "/work/ref/build/bin"))

TEXTS = [
    "Hello world", " Hello World!", "  leading spaces", "trailing   ", "\n\n\n", "\t tab\tseparated\r\nCRLF",
    "digits 1234567890 and 3.14159 and 1,000,000", "Äpfel naïve café 日本語 한국어 Ελληνικά русский 🦙🎉",
    "def f(x):\n    return x**2  # code\n\tif x != 0: pass", "zwj 👩\u200d👩\u200d👧 \u200b\u00a0nbsp",
    "it's I'M they'LL we'Ve", "<s> literal special </s> <unk> <|endoftext|>", " " * 20 + "x",
    "ideographic\u3000space \u2028 line sep", "1 12 123 1234 12345", "Once upon a time, there was a little girl",
]


def ids_digest(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype="<i4").tobytes()).hexdigest()


def calibration_text() -> str:
    text = CALIBRATION.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text  # as llama-imatrix's -f reads it


def make_tokens() -> None:
    from llama_cpp import Llama

    out = {}
    cal = calibration_text()
    for label, path in (("stories260K", STORIES), ("gpt-2", GPT2)):
        ref = Llama(model_path=str(path), vocab_only=True, verbose=False)
        cases = []
        for text in TEXTS:
            for add_special, parse_special in ((True, False), (False, False), (True, True)):
                ids = ref.tokenize(text.encode(), add_bos=add_special, special=parse_special)
                cases.append({"text": text, "add_special": add_special, "parse_special": parse_special, "ids": ids})
        ids = ref.tokenize(cal.encode(), add_bos=True, special=False)
        out[label] = {"cases": cases, "calibration": {"n": len(ids), "sha256": ids_digest(ids), "head": ids[:64],
                                                      "tail": ids[-64:]}}
    (GOLDEN / "tokenizer_ids.json").write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n")
    print("wrote tests/golden/tokenizer_ids.json")


def make_logits() -> None:
    from llama_cpp import Llama

    ref = Llama(model_path=str(STORIES), vocab_only=True, verbose=False)
    ids = ref.tokenize(calibration_text().encode(), add_bos=True, special=False)[:512]
    del ref
    llm = Llama(model_path=str(STORIES), n_ctx=512, n_batch=512, n_ubatch=512, logits_all=True, verbose=False,
                n_threads=1, type_k=0, type_v=0, flash_attn=False)
    llm.eval(ids)
    logits = np.array(llm.scores[:512], dtype=np.float32)
    rows = np.array([0, 1, 100, 255, 256, 400, 511])
    np.savez_compressed(GOLDEN / "stories260K_logits.npz", tokens=np.array(ids, dtype=np.int32), rows=rows,
                        logits=logits[rows])
    print("wrote tests/golden/stories260K_logits.npz")


def run_llama_imatrix(model: Path, text: Path, out: Path, extra: list[str]) -> tuple[str, list[float]]:
    exe = LLAMA_BIN / "llama-imatrix"
    cmd = [str(exe), "-m", str(model), "-f", str(text), "-o", str(out), "-c", "512", "-ctk", "f32", "-ctv", "f32",
           "-fa", "off", "-t", "1", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"llama-imatrix failed:\n{proc.stderr[-3000:]}")
    ppl = [float(x) for x in re.findall(r"\[\d+\]([0-9.]+),", proc.stdout + proc.stderr)]
    return proc.stdout + proc.stderr, ppl


def make_imatrix() -> None:
    if not (LLAMA_BIN / "llama-imatrix").exists():
        raise SystemExit(f"{LLAMA_BIN / 'llama-imatrix'} not found: build it with scripts/build_llama_cpp.sh")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "imatrix.gguf"
        # llama-imatrix records the -f path as the dataset name: run from tests/data with a relative one
        cwd = os.getcwd()
        os.chdir(DATA)
        try:
            _, ppl = run_llama_imatrix(STORIES.name and Path(STORIES.name), Path(CALIBRATION.name), out,
                                       ["--chunks", "2"])
        finally:
            os.chdir(cwd)
        shutil.copy(out, GOLDEN / "stories260K-imatrix.gguf")
    (GOLDEN / "stories260K-imatrix.json").write_text(
        json.dumps({"chunks": 2, "ctx": 512, "ppl": ppl, "source": "llama-imatrix"}) + "\n")
    print(f"wrote tests/golden/stories260K-imatrix.gguf, per-chunk ppl {ppl}")


def make_imatrix_ctypes() -> None:
    """The same file through libllama's eval callback (scripts/llama_imatrix_ctypes.py), for when the
    llama-imatrix binary is not built; the .json records which one made the file."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import llama_imatrix_ctypes as ref

    stats, ppl = ref.collect(STORIES, calibration_text(), n_ctx=512, chunks=2)
    ref.save(stats, GOLDEN / "stories260K-imatrix.gguf", CALIBRATION.name, 512)
    (GOLDEN / "stories260K-imatrix.json").write_text(json.dumps(
        {"chunks": 2, "ctx": 512, "ppl": [round(p, 4) for p in ppl], "source": "libllama eval callback"}) + "\n")
    print(f"wrote tests/golden/stories260K-imatrix.gguf (libllama callback), per-chunk ppl {ppl}")


if __name__ == "__main__":
    what = sys.argv[1:] or ["tokens", "logits", "imatrix"]
    GOLDEN.mkdir(exist_ok=True)
    for w in what:
        {"tokens": make_tokens, "logits": make_logits, "imatrix": make_imatrix,
         "imatrix-ctypes": make_imatrix_ctypes}[w]()
