"""llama-perplexity's KL-divergence base file (--kl-divergence-base), read and written byte for
byte as tools/perplexity/perplexity.cpp does:

    "_logits_"                      8 bytes
    n_ctx, n_vocab, n_chunk         int32 each (little-endian, as the C writes them natively)
    tokens                          int32 x n_chunk * n_ctx (the text's tokens, before any BOS swap)
    per chunk, per scored token     uint16 x row_width(n_vocab): float32 scale, float32 min_log_prob,
                                    then n_vocab uint16 q with log p = scale * q + min_log_prob,
                                    padded to an even count

A chunk scores positions n_ctx/2 .. n_ctx-2 (each predicts the next token): n_ctx - 1 - n_ctx/2
rows per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EvalError
from ..runtime.logprobs import row_width

MAGIC = b"_logits_"
HEADER = 8 + 3 * 4


def scored_per_chunk(n_ctx: int) -> int:
    return n_ctx - 1 - n_ctx // 2


@dataclass
class BaseFile:
    path: Path
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray     # int32 (n_chunk * n_ctx,)
    log_probs: np.ndarray  # uint16 memmap (n_chunk, scored_per_chunk(n_ctx), row_width(n_vocab))

    def chunk(self, i: int) -> np.ndarray:
        return self.log_probs[i]


def read_base(path: Path) -> BaseFile:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"{path}: no such KL-divergence base file (make one with --kl-divergence-base FILE "
                        "without --kl-divergence)")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER)
    if len(head) < 8 or head[:8] != MAGIC:
        raise EvalError(f"{path}: not a KL-divergence base file (it does not start with '_logits_')")
    if len(head) < HEADER:
        raise EvalError(f"{path}: the KL-divergence base file is truncated (no complete header)")
    n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(head, dtype="<i4", count=3, offset=8))
    if n_ctx < 4 or n_vocab < 1 or n_chunk < 1:
        raise EvalError(f"{path}: the KL-divergence base file's header is damaged "
                        f"(n_ctx={n_ctx}, n_vocab={n_vocab}, n_chunk={n_chunk})")
    n_tokens = n_ctx * n_chunk
    rows = scored_per_chunk(n_ctx)
    nv = row_width(n_vocab)
    expected = HEADER + 4 * n_tokens + 2 * n_chunk * rows * nv
    if size != expected:
        raise EvalError(f"{path}: the KL-divergence base file has {size} bytes, its header (n_ctx={n_ctx}, "
                        f"n_vocab={n_vocab}, n_chunk={n_chunk}) needs {expected}; it is truncated or damaged")
    tokens = np.fromfile(path, dtype="<i4", count=n_tokens, offset=HEADER).astype(np.int32)
    if tokens.min() < 0 or tokens.max() >= n_vocab:
        raise EvalError(f"{path}: the base file holds token ids outside its vocabulary of {n_vocab}; it is damaged")
    log_probs = np.memmap(path, dtype="<u2", mode="r", offset=HEADER + 4 * n_tokens,
                          shape=(n_chunk, rows, nv))
    return BaseFile(path, n_ctx, n_vocab, n_chunk, tokens, log_probs)


class BaseWriter:
    """Writes a base file to an open binary file: the header and tokens first, then each chunk's
    rows as they are computed (memory stays near one chunk)."""

    def __init__(self, f, n_ctx: int, n_vocab: int, n_chunk: int, tokens: np.ndarray):
        self.f = f
        self.rows = scored_per_chunk(n_ctx)
        self.nv = row_width(n_vocab)
        f.write(MAGIC)
        f.write(np.array([n_ctx, n_vocab, n_chunk], dtype="<i4").tobytes())
        f.write(np.asarray(tokens[:n_chunk * n_ctx], dtype="<i4").tobytes())

    def write_chunk(self, rows: np.ndarray) -> None:
        assert rows.shape == (self.rows, self.nv), rows.shape
        self.f.write(np.ascontiguousarray(rows, dtype="<u2").tobytes())
