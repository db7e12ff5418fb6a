"""Input checks made before quantizing: llama.cpp refuses a tensor with NaN or Inf weights.

One parallel pass over the rows on the float32 bits: a weight is not finite exactly when its
exponent bits are all ones, i.e. when |bits| (sign cleared) >= 0x7F800000. An unsigned max over a
row vectorizes, needs no float compare (so no fastmath), and runs at memory speed on both cores;
it is also the first touch of a freshly mapped slab, so its page faults are split across threads.
"""

import numpy as np
from numba import njit, prange

from .common import ABS_MASK, NOT_FINITE


@njit(cache=True, nogil=True, parallel=True)
def _nonfinite_rows(bits):
    nrows, n = bits.shape
    bad = np.zeros(nrows, dtype=np.bool_)
    for r in prange(nrows):
        m = np.uint32(0)
        for j in range(n):
            m = max(m, bits[r, j] & ABS_MASK)
        bad[r] = m >= NOT_FINITE
    return bad


def first_nonfinite_row(x: np.ndarray) -> int:
    """Index of the first row of float32 (nrows, n) holding NaN or +-Inf, or -1 if none
    (a 1-D array is one row)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    if bits.ndim != 2:
        bits = bits.reshape(1, -1) if bits.ndim < 2 else bits.reshape(bits.shape[0], -1)
    bad = np.flatnonzero(_nonfinite_rows(bits))
    return int(bad[0]) if bad.size else -1
