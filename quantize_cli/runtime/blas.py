"""NumPy's BLAS thread count for the forward pass's matrix products (runtime/model.py's `_matmul`,
the attention in blocks.py), switched per product by its size."""

from __future__ import annotations

from typing import Optional

import numpy as np


class _Blas:
    """NumPy's BLAS thread count, switched per product: products under SMALL_FLOPS run on one
    thread, where waking and syncing more costs more than it saves (and much more on a busy
    machine). Best effort: OpenBLAS as bundled with numpy; elsewhere a no-op."""

    SMALL_FLOPS = 1 << 27

    def __init__(self) -> None:
        self.threads = 1
        self.current = None
        self._set = self._find()

    @staticmethod
    def _find():
        import ctypes
        import glob
        import os

        for lib in glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas*.so*")):
            try:
                so = ctypes.CDLL(lib)
            except OSError:
                continue
            for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                        "openblas_set_num_threads"):
                fn = getattr(so, sym, None)
                if fn is not None:
                    fn.argtypes = [ctypes.c_int]
                    return fn
        return None

    def configure(self, threads: int) -> bool:
        self.threads = max(1, threads)
        self.current = None
        return self._set is not None

    def for_flops(self, flops: float) -> None:
        want = 1 if flops < self.SMALL_FLOPS else self.threads
        if want != self.current and self._set is not None:
            self._set(want)
            self.current = want


BLAS = _Blas()


def set_threads(n: Optional[int]) -> int:
    """Threads for the matrix products (default: all cores)."""
    import os

    n = n if n and n > 0 else (os.cpu_count() or 1)
    BLAS.configure(n)
    return n
