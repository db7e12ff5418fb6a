"""The importance-matrix collector (tools/imatrix/imatrix.cpp's IMatrixCollector) and the
statistics llama-imatrix --show-statistics prints. The files are in formats/imatrix_file.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ImatrixError
from ..formats.imatrix_file import _read_raw


# --- the collector ------------------------------------------------------------------------------------

@dataclass
class Stats:
    values: np.ndarray  # float32, n_in * n_mat: running in_sum2
    counts: np.ndarray  # int64, n_mat


class Collector:
    """IMatrixCollector: accumulates in_sum2 and counts from the forward pass's matmul inputs."""

    def __init__(self, chunk_size: int = 512, process_output: bool = False, prompt_file: str = ""):
        self.chunk_size = chunk_size
        self.process_output = process_output
        self.prompt_file = prompt_file
        self.stats: dict[str, Stats] = {}
        self.datasets: list[str] = []
        self.last_chunk = 0

    def wants(self, name: str) -> bool:
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def observe(self, name: str, x: np.ndarray, expert: Optional[tuple[int, int]] = None,
                check_rows: bool = True) -> None:
        """One matmul input: x (n_tokens, n_in) float32, for weight `name`. llama-imatrix ignores
        dense micro-batches under 16 rows; `check_rows=False` when the caller has applied that.
        `expert` = (e, n_expert): the rows routed to expert e of a 3-D expert tensor (MUL_MAT_ID),
        which llama-imatrix collects whatever the batch size, with one count per expert."""
        if not name.endswith(".weight"):
            name += ".weight"
        if expert is not None:
            self._observe_expert(name, x, *expert)
            return
        if not self.wants(name) or (check_rows and x.shape[0] < 16) or x.shape[0] == 0:
            return
        n_tokens, n_in = x.shape
        e = self.stats.get(name)
        if e is not None and e.counts.size > 1 and (e.counts == e.counts[0]).all():
            e.counts = e.counts[:1].copy()  # one count per dense tensor (merging older 3-d files)
        if e is None:
            e = self.stats[name] = Stats(np.zeros(n_in, dtype=np.float32), np.zeros(1, dtype=np.int64))
        elif e.values.size != n_in:
            raise ImatrixError(f"{name}: the imatrix has {e.values.size} values per row, the model {n_in}; "
                               "the --in-file was made for another model")
        # sequential float32 sums over tokens, in token order, as the C loop does
        sq = np.square(x, dtype=np.float32)
        e.values[:] = np.add.reduce(np.concatenate([e.values[None, :], sq]), axis=0, dtype=np.float32)
        if not np.isfinite(e.values).all():
            raise ImatrixError(f"non-finite values (NaN or Inf) in the activations feeding {name}")
        e.counts += n_tokens

    def _observe_expert(self, name: str, x: np.ndarray, e: int, n_expert: int) -> None:
        n_rows, n_in = x.shape
        st = self.stats.get(name)
        if st is not None and st.counts.size == 1 and n_expert > 1:
            st.counts = np.full(n_expert, st.counts[0], dtype=np.int64)  # broadcast an old file's one count
        if st is None:
            st = self.stats[name] = Stats(np.zeros(n_in * n_expert, dtype=np.float32),
                                          np.zeros(n_expert, dtype=np.int64))
        elif st.values.size != n_in * n_expert or st.counts.size != n_expert:
            raise ImatrixError(f"{name}: the imatrix has {st.values.size} values in {st.counts.size} experts, the "
                               f"model {n_in * n_expert} in {n_expert}; the --in-file was made for another model")
        block = st.values[e * n_in:(e + 1) * n_in]
        # sequential float32 sums over the rows, in llama-imatrix's order (slot, then token)
        sq = np.square(x, dtype=np.float32)
        block[:] = np.add.reduce(np.concatenate([block[None, :], sq]), axis=0, dtype=np.float32)
        if not np.isfinite(block).all():
            raise ImatrixError(f"non-finite values (NaN or Inf) in the activations feeding {name} (expert {e})")
        st.counts[e] += n_rows

    def merge_file(self, path: str | Path, known_shapes: Optional[dict[str, int]] = None) -> None:
        """IMatrixCollector::load_imatrix: add a GGUF or legacy file's data (for --in-file)."""
        path = Path(path)
        raw = _read_raw(path)
        for name, sums in raw.sums.items():
            if known_shapes is not None and name in known_shapes and sums.size % known_shapes[name]:
                raise ImatrixError(f"{path}: {name} has {sums.size} values, which does not fit the model's "
                                   f"{known_shapes[name]} columns; the file was made for another model")
            e = self.stats.get(name)
            if raw.is_legacy:
                if e is None:
                    e = self.stats[name] = Stats(np.zeros(sums.size, np.float32), np.zeros(1, np.int64))
                elif e.values.size != sums.size:
                    raise ImatrixError(f"{path}: {name} has {sums.size} values, earlier data {e.values.size}")
                e.values += sums * np.float32(self.chunk_size)
                e.counts += int(raw.counts[name][0]) * self.chunk_size
            else:
                cnt = raw.counts[name]
                if e is None:
                    e = self.stats[name] = Stats(np.zeros(sums.size, np.float32), np.zeros(cnt.size, np.int64))
                elif e.values.size != sums.size:
                    raise ImatrixError(f"{path}: {name} has {sums.size} values, earlier data {e.values.size}; "
                                       "the files are for different models")
                if e.counts.size == 1 and cnt.size > 1:
                    e.counts = np.full(cnt.size, e.counts[0], dtype=np.int64)
                elif e.counts.size != cnt.size:
                    raise ImatrixError(f"{path}: {name} has {cnt.size} counts, earlier data {e.counts.size}")
                e.values += sums
                e.counts += cnt
        self.datasets.extend(raw.datasets)
        max_count = max((int(c) for e in self.stats.values() for c in e.counts), default=0)
        self.last_chunk = max_count // self.chunk_size

    def chunk_done(self) -> tuple[int, int]:
        """After a chunk: (last_chunk, chunk_step) from the counts, as the C callback tracks them."""
        max_count = max((int(c) for e in self.stats.values() for c in e.counts), default=0)
        n_chunk = max_count // self.chunk_size
        step = n_chunk - self.last_chunk
        if step > 0:
            self.last_chunk = n_chunk
        return self.last_chunk, step

    def all_datasets(self) -> list[str]:
        return self.datasets + ([self.prompt_file] if self.prompt_file else [])



# --- statistics (--show-statistics) ---------------------------------------------------------------

@dataclass
class TensorStats:
    tensor: str
    values: np.ndarray
    total: float
    mean: float
    max: float
    min: float
    elements: int
    stddev: float
    active: float
    entropy: float
    zd: float
    cossim: float = 0.0


def _split_name(name: str) -> tuple[str, str]:
    """process_tensor_name: (layer, short tensor name)."""
    parts = name.split(".")
    layer = next((parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "blk"), "-")
    tensor = next((parts[i - 1] for i in range(1, len(parts)) if parts[i] == "weight"), "") or name
    return layer, tensor


def compute_statistics(stats: dict[str, Stats]) -> list[TensorStats]:
    out: list[TensorStats] = []
    for name, e in stats.items():
        if not e.counts.size or e.values.size % e.counts.size:
            continue
        per = e.values.size // e.counts.size
        acts = np.concatenate([e.values[i * per:(i + 1) * per] / np.float32(c)
                               for i, c in enumerate(e.counts) if c != 0] or [np.zeros(0, np.float32)])
        acts = acts.astype(np.float32)
        if acts.size == 0:
            continue
        total = float(np.sum(acts, dtype=np.float32))
        mean = total / acts.size
        sq_total = float(np.dot(acts, acts))
        var = sq_total / acts.size - mean * mean
        dev = math.sqrt(max(0.0, var))
        active = 1 - float(np.count_nonzero(np.abs(acts) <= 1e-5)) / acts.size
        entropy = 0.0
        if total > 0:
            p = acts / np.float32(total)
            p = p[p > 0]
            entropy = float(-(p * np.log2(p)).sum())
        zd = float(np.count_nonzero((acts - mean) / dev > 1)) / acts.size if dev > 0 else 0.0
        out.append(TensorStats(name, e.values, total, mean, float(acts.max()), float(acts.min()), int(acts.size),
                               dev, active, entropy, zd))
    by_name = {t.tensor: t for t in out}
    for t in out:
        layer, _ = _split_name(t.tensor)
        if layer.isdigit():
            prev = by_name.get(t.tensor.replace(f"blk.{layer}.", f"blk.{int(layer) - 1}.", 1))
            if prev is not None and prev.values.size == t.values.size:
                denom = float(np.linalg.norm(t.values) * np.linalg.norm(prev.values))
                t.cossim = float(np.dot(t.values, prev.values)) / denom if denom else 0.0
    out.sort(key=lambda t: (_split_name(t.tensor)[1], -t.total))
    return out


def format_statistics(path: str, stats: list[TensorStats]) -> str:
    """The two tables llama-imatrix --show-statistics prints."""
    lines = [f"Computing statistics for {path} ({len(stats)} tensors)", ""]
    lines.append(f"{'Layer':>6} {'Tensor':<20} {'Σ(Act²)':>12} {'Min':>10} {'Max':>12} {'μ':>9} {'σ':>9} "
                 f"{'% Active':>9} {'N':>7} {'Entropy':>10} {'E (norm)':>9} {'ZD':>8} {'CosSim':>8}")
    lines.append("=" * 130)
    layers: dict[int, list[float]] = {}
    for t in stats:
        layer, short = _split_name(t.tensor)
        norm = 100.0 * t.entropy / math.log2(t.elements) if t.elements > 1 else 0.0
        lines.append(f"{layer:>6} {short:<20} {t.total:>12.2f} {t.min:>10.4f} {t.max:>12.4f} {t.mean:>9.2f} "
                     f"{t.stddev:>9.2f} {100 * t.active:>8.2f}% {t.elements:>7d} {t.entropy:>10.4f} "
                     f"{norm:>8.2f}% {100 * t.zd:>7.2f}% {t.cossim:>8.4f}")
        blk = int(layer) if layer.isdigit() else -1
        acc = layers.setdefault(blk, [0.0, 0.0, 0.0, 0])
        acc[0] += t.elements * t.total
        acc[1] += t.elements * t.zd
        acc[2] += t.elements * t.cossim
        acc[3] += t.elements
    n_layers = sum(1 for k in layers if k >= 0)
    lines += ["", f"Computing weighted average statistics per layer ({n_layers} layers)", ""]
    lines.append(f"{'Layer':>6} {'μΣ(Act²)':>14} {'μZD':>10} {'μCosSim':>8}")
    lines.append("=" * 48)
    for blk in sorted(k for k in layers if k >= 0):
        b, zd, cs, n = layers[blk]
        if n:
            lines.append(f"{blk:>6} {b / n:>14.2f} {100 * zd / n:>9.4f}% {cs / n:>8.4f}")
    return "\n".join(lines)
