"""Test inputs shared by the golden generator and the reference tier: random rows plus the
adversarial ones that break quantizers (outliers, zeros, constants, extreme magnitudes)."""

from __future__ import annotations

import numpy as np

CASES = ("normal", "outliers", "zeros", "constant", "tiny", "huge", "negative", "mixed_rows", "ties")


def make_rows(case: str, nrows: int, n_per_row: int, rng: np.random.Generator) -> np.ndarray:
    shape = (nrows, n_per_row)
    if case == "normal":
        x = rng.standard_normal(shape)
    elif case == "outliers":
        x = rng.standard_normal(shape)
        idx = rng.integers(0, x.size, size=max(1, x.size // 200))
        x.flat[idx] *= 40.0
    elif case == "zeros":
        x = np.zeros(shape)
    elif case == "constant":
        x = np.full(shape, 0.375) * np.where(np.arange(nrows) % 2, -1.0, 1.0)[:, None]
    elif case == "tiny":
        x = rng.standard_normal(shape) * 1e-30
    elif case == "huge":
        x = rng.standard_normal(shape) * 1e4
    elif case == "negative":
        x = -np.abs(rng.standard_normal(shape))
    elif case == "ties":
        # few distinct magnitudes, both signs, signed zeros: blocks whose largest magnitude comes
        # with both signs (the first one decides in Q4_0/Q5_0), and all-zero blocks of -0.0
        x = rng.choice(np.array([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0]), size=shape)
        x[rng.random(nrows) < 0.1] = -0.0
        x *= np.float32(rng.choice([1.0, 3e-39, 1e-20, 7.0]))
    elif case == "mixed_rows":
        # every row a different character: a zero row, a constant row, sparse rows, uniform rows
        x = rng.uniform(-1, 1, shape)
        x[0::5] = 0.0
        x[1::5] = -2.5
        x[2::5] *= rng.random(shape)[2::5] < 0.05
        x[3::5] = rng.standard_normal(x[3::5].shape) * np.float32(rng.uniform(0.01, 100))
    else:
        raise ValueError(case)
    return np.ascontiguousarray(x, dtype=np.float32)


def make_imatrix(kind: str, n_per_row: int, rng: np.random.Generator) -> np.ndarray | None:
    """None, positive importance weights, or weights with zero entries (as real imatrices have)."""
    if kind == "none":
        return None
    w = rng.random(n_per_row) ** 2 * 10.0 + 1e-3
    if kind == "with_zeros":
        w[rng.random(n_per_row) < 0.2] = 0.0
    return np.ascontiguousarray(w, dtype=np.float32)


IMATRIX_KINDS = ("none", "positive", "with_zeros")
