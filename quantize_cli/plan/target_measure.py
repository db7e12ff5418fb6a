"""What a candidate type costs one tensor: bytes, and measured damage.

Damage is the imatrix-weighted squared error of quantize -> dequantize,

    E(t, type) = sum over rows r, columns j of  a_j * (W[r, j] - Q(W)[r, j])^2

with a_j the imatrix's mean squared input activation of column j: the expected squared error the
quantized matrix adds to its output per token, if input columns are uncorrelated. Tensors without
an imatrix entry (token_embd) use a_j = 1. It is measured on an evenly spaced sample of rows
(every row when `rows` is 0 or the tensor is small) and scaled to the whole tensor; the kernels are
the ones the writer uses, so the error is exactly the one the file will have on those rows.

The sensitivity (target_sensitivity.py) turns E into predicted KL divergence of the logits.
"""

from __future__ import annotations

import numpy as np
from kernels.gguf_compat import GGMLQuantizationType as T

import kernels

from ..sources.base import TensorRef


def tensor_rows_f32(ref: TensorRef, rows: np.ndarray | None = None) -> np.ndarray:
    """Float32 rows of a tensor (all, or the given row indices), dequantizing its storage type."""
    raw = ref.load()
    n = ref.n_per_row
    nbytes_row = kernels.row_bytes(ref.type, n)
    blob = raw.reshape(ref.nrows, nbytes_row)
    if rows is not None:
        blob = blob[rows]
    if ref.type == T.F32:
        return np.ascontiguousarray(blob).view(np.float32).reshape(-1, n)
    return kernels.dequantize(np.ascontiguousarray(blob), ref.type, n)


def sample_rows(ref: TensorRef, rows: int) -> np.ndarray:
    """Evenly spaced row indices, at least one per expert of a 3-D tensor, sorted; all rows when
    `rows` is 0 or covers the tensor."""
    nrows = ref.nrows
    if rows <= 0 or rows >= nrows:
        return np.arange(nrows)
    n_expert = int(ref.ne[2]) if len(ref.ne) > 2 else 1
    per_expert = nrows // n_expert
    take = max(1, rows // n_expert)
    picks = [e * per_expert + np.unique(np.linspace(0, per_expert - 1, min(take, per_expert)).astype(np.int64))
             for e in range(n_expert)]
    return np.concatenate(picks)


def weighted_error(x: np.ndarray, q: np.ndarray, weights: np.ndarray | None) -> float:
    """sum a_j (x - q)^2 over every row, in float64 (deterministic: NumPy reductions on one thread)."""
    d = (x.astype(np.float64) - q.astype(np.float64)) ** 2
    col = d.sum(axis=0)
    return float(col.sum() if weights is None else (col * weights.astype(np.float64)).sum())


def quantize_roundtrip(x: np.ndarray, qtype: T, imatrix: np.ndarray | None) -> np.ndarray:
    """Q(x): quantize with the writer's kernel, dequantize back to float32."""
    if qtype == T.F32:
        return x
    blob = kernels.quantize(x, qtype, imatrix)
    return kernels.dequantize(blob, qtype, x.shape[1])


def expert_weights(imatrix: np.ndarray | None, ref: TensorRef) -> list[np.ndarray | None]:
    """The imatrix slice of each expert (one slice for a 2-D tensor)."""
    n_expert = int(ref.ne[2]) if len(ref.ne) > 2 else 1
    n = ref.n_per_row
    if imatrix is None:
        return [None] * n_expert
    return [np.ascontiguousarray(imatrix[e * n:(e + 1) * n], dtype=np.float32) for e in range(n_expert)]


def measure(ref: TensorRef, types: list[T], imatrix: np.ndarray | None, rows: int) -> dict[str, float]:
    """E(t, type) for each candidate type, scaled from the sampled rows to the whole tensor."""
    picks = sample_rows(ref, rows)
    x = tensor_rows_f32(ref, picks)
    per_expert = ref.nrows // (int(ref.ne[2]) if len(ref.ne) > 2 else 1)
    experts = picks // per_expert
    slices = expert_weights(imatrix, ref)
    scale = ref.nrows / len(picks)
    out: dict[str, float] = {}
    for qtype in types:
        err = 0.0
        for e in np.unique(experts):
            xe = np.ascontiguousarray(x[experts == e])
            err += weighted_error(xe, quantize_roundtrip(xe, qtype, slices[e]), slices[e])
        out[qtype.name] = err * scale
    return out


def quantized_tensor(ref: TensorRef, qtype: T, imatrix: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The whole tensor through Q (float32, (nrows, n_per_row)) and its full weighted error."""
    x = tensor_rows_f32(ref)
    per_expert = ref.nrows // (int(ref.ne[2]) if len(ref.ne) > 2 else 1)
    slices = expert_weights(imatrix, ref)
    q = np.empty_like(x)
    err = 0.0
    for e, w in enumerate(slices):
        xe = np.ascontiguousarray(x[e * per_expert:(e + 1) * per_expert])
        q[e * per_expert:(e + 1) * per_expert] = quantize_roundtrip(xe, qtype, w)
        err += weighted_error(xe, q[e * per_expert:(e + 1) * per_expert], w)
    return q, err
