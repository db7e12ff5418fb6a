"""convert(): the library entry point that `pyquantize convert` wraps.

source -> plan -> kernels -> writer, one tensor at a time: a tensor is loaded (memory-mapped),
converted to float32 rows where it must be, quantized in slabs of rows, written, and dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from kernels.gguf_compat import GGMLQuantizationType as T

import kernels

from .errors import ImatrixError, KernelError, PlanError
from .plan import Plan, QuantizeOptions, TensorPlan, make_plan
from .sources import Source, open_source
from .formats.gguf_writer import ShardWriter
from .formats.gguf import check_metadata_types
from .formats.output import atomic_outputs, check_writable, refuse_overwriting_inputs
from .formats.rows import describe as describe_bad, first_invalid_block
from .formats.values import TensorInfo

if TYPE_CHECKING:
    from .plan.target import TargetOptions

FLOAT_TYPES = (T.F32, T.F16, T.BF16)
# Float32 rows handled per slab. Small enough that the slab stays in cache between the NaN/Inf
# check and the kernel, and that memory stays near one slab (its input pages are dropped once it
# is quantized): 4 MiB against 64 MiB measured Q8_0 of a 308 M-weight model 2.70 -> 1.95 s and
# peak RSS 228 -> 176 MB; 1-8 MiB are alike, K-quants do not care.
SLAB_BYTES = 4 << 20


@dataclass
class ImatrixInput:
    """What the converter needs of an importance matrix (after --include/--exclude-weights)."""

    path_text: str  # as given on the command line: llama-quantize records it verbatim
    entries: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


@dataclass
class ConvertResult:
    outputs: list[Path]
    plan: Plan
    n_elements: int
    bytes_in: int
    bytes_out: int
    seconds: float
    compile_seconds: float

    @property
    def bpw_in(self) -> float:
        return self.bytes_in * 8 / max(self.n_elements, 1)

    @property
    def bpw_out(self) -> float:
        return self.bytes_out * 8 / max(self.n_elements, 1)


def load_imatrix_input(path: str) -> ImatrixInput:
    """Load an imatrix file (GGUF or legacy .dat) as llama-quantize's load_imatrix does. The
    plan applies --include/--exclude-weights to its entry names."""
    from .formats.imatrix_file import load_imatrix

    data = load_imatrix(path)
    return ImatrixInput(path, dict(data.entries), list(data.datasets), int(data.chunk_count))


def split_output_paths(out: Path, n_splits: int) -> list[Path]:
    """llama_split_path names: PREFIX-00001-of-00003.gguf, PREFIX being OUT without .gguf."""
    if n_splits <= 1:
        return [out]
    text = str(out)
    prefix = text[: text.find(".gguf")] if ".gguf" in text else text
    return [Path(f"{prefix}-{i + 1:05d}-of-{n_splits:05d}.gguf") for i in range(n_splits)]


def default_output_path(src: Path, ftype_name: str) -> Path:
    """llama-quantize's default: ggml-model-<TYPE>.gguf beside the input."""
    base = src if src.is_dir() else src.parent
    return base / f"ggml-model-{ftype_name}.gguf"


def check_plan(plan: Plan, imatrix: ImatrixInput | None) -> None:
    """Everything that would stop llama-quantize halfway, found before a byte is written."""
    if plan.errors:
        raise PlanError(plan.errors[0])
    for tp in plan.tensors:
        if not tp.quantize:
            continue
        if not kernels.can_quantize(tp.type):
            raise KernelError(f"{tp.name}: no {tp.type.name} quantizer in this version of pyquantize yet")
        if tp.ref.type not in FLOAT_TYPES and not kernels.can_dequantize(tp.ref.type):
            raise KernelError(f"{tp.name}: cannot read {tp.ref.type.name} input yet (no dequantizer)")
        values = imatrix.entries.get(tp.imatrix_name) if imatrix is not None and tp.imatrix_name else None
        if values is not None and not np.isfinite(values).all():
            # llama.cpp refuses the whole imatrix; name the entry
            raise ImatrixError(f"{imatrix.path_text}: imatrix entry {tp.imatrix_name} contains NaN or Inf values")


def _rows_f32(raw: np.ndarray, src_type: T, n_per_row: int) -> np.ndarray:
    if src_type == T.F32:
        return raw.view(np.float32).reshape(-1, n_per_row)
    return kernels.dequantize(raw.reshape(-1, kernels.row_bytes(src_type, n_per_row)), src_type, n_per_row)


def check_finite(x: np.ndarray, name: str, first_row: int) -> None:
    """Refuse NaN or Inf weights, naming the first bad row (kernels/checks.py: one parallel pass)."""
    bad = kernels.first_nonfinite_row(x)
    if bad >= 0:
        raise KernelError(f"{name}: row {first_row + bad} contains NaN or Inf weights; "
                          "the input model is damaged")


def check_output_rows(out: np.ndarray, tp: TensorPlan, first_row: int) -> None:
    """llama-quantize validates every quantized slab (ggml_validate_row_data) and stops with
    "quantized data validation failed": refuse the same slabs, naming tensor, row and block."""
    bad = first_invalid_block(tp.type, out.reshape(-1, kernels.row_bytes(tp.type, tp.ref.n_per_row)))
    if bad is not None:
        name = tp.type.name
        raise KernelError(f"{tp.name}: {describe_bad(bad, tp.type, first_row)} after quantizing to {name}: "
                          f"the weights are too large for {name} (llama.cpp refuses this too: quantized data "
                          "validation failed); choose a wider type for this tensor (--tensor-type)")


def copy_tensor(tp: TensorPlan, emit: Callable[[np.ndarray], None]) -> None:
    """A tensor kept as it is, validated in slabs as llama-quantize validates what it copies
    ("tensor '...' has invalid data")."""
    ref = tp.ref
    raw = ref.load()
    row_bytes = kernels.row_bytes(ref.type, ref.n_per_row) if ref.n_per_row else 0
    nrows = ref.nrows
    slab_rows = max(1, SLAB_BYTES // max(1, row_bytes))
    for row in range(0, nrows, slab_rows):
        end = min(nrows, row + slab_rows)
        slab = raw[row * row_bytes:end * row_bytes]
        bad = first_invalid_block(ref.type, slab.reshape(end - row, row_bytes))
        if bad is not None:
            raise KernelError(f"{tp.name}: {describe_bad(bad, ref.type, row)} in the input ({ref.type.name}); "
                              "the input model is damaged (llama.cpp refuses it too: tensor has invalid data)")
        emit(slab)


def tensor_slabs(ref, release: bool = True) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """A tensor's rows, slab by slab, for quantizing: (first row, expert, the slab's input bytes,
    its float32 rows checked for NaN/Inf). A slab holds at most SLAB_BYTES of float32 and never
    straddles two experts of a 3-D tensor (each expert takes its own imatrix slice). With
    `release`, the slab's input pages are released when the next slab is asked for."""
    n_per_row = ref.n_per_row
    raw = ref.load()
    src_row_bytes = kernels.row_bytes(ref.type, n_per_row)
    nrows = ref.nrows
    rows_per_expert = int(ref.ne[1]) if len(ref.ne) > 1 else 1
    slab_rows = max(1, min(nrows, SLAB_BYTES // max(1, n_per_row * 4)))
    row = 0
    while row < nrows:
        expert = row // rows_per_expert
        end = min(nrows, row + slab_rows, (expert + 1) * rows_per_expert)
        chunk = raw[row * src_row_bytes:end * src_row_bytes]
        x = _rows_f32(chunk, ref.type, n_per_row)
        check_finite(x, ref.name, row)
        yield row, expert, chunk, x
        if release:
            ref.release(row * src_row_bytes, end * src_row_bytes)  # the slab's input pages are done with
        row = end


def expert_imatrix(imatrix: np.ndarray | None, expert: int, n_per_row: int) -> np.ndarray | None:
    """The imatrix slice of one expert (the whole imatrix of a 2-D tensor: expert 0)."""
    return imatrix[expert * n_per_row:(expert + 1) * n_per_row] if imatrix is not None else None


def quantize_tensor(tp: TensorPlan, imatrix: np.ndarray | None, emit: Callable[[np.ndarray], None]) -> None:
    """Quantize one tensor in slabs of rows and hand each slab's bytes to `emit`.
    For 3-D (expert) tensors each expert's rows take that expert's slice of the imatrix."""
    for row, expert, _, x in tensor_slabs(tp.ref):
        out = kernels.quantize(x, tp.type, expert_imatrix(imatrix, expert, tp.ref.n_per_row))
        check_output_rows(out, tp, row)
        emit(out)


def convert(
    src: str | Path,
    dst: str | Path,
    options: QuantizeOptions,
    imatrix: ImatrixInput | None = None,
    nthreads: int | None = None,
    progress: Callable[[str, TensorPlan, int], None] | None = None,
    source: Source | None = None,
    target: "TargetOptions | None" = None,
    log: Callable[[str], None] | None = None,
) -> ConvertResult:
    """Quantize `src` into `dst` as llama-quantize would. `progress(event, tensor, nbytes)` is
    called once with ("plan", None, total input bytes) when the kernels are ready, then with
    "start" and "done" for each tensor (for progress bars)."""
    src, dst = Path(src), Path(dst)
    start = time.perf_counter()
    inputs = [src] + ([Path(imatrix.path_text)] if imatrix is not None else [])
    check_writable(dst)
    refuse_overwriting_inputs([dst], inputs)
    own_source = source is None
    source = source or open_source(src)
    try:
        check_metadata_types(source.kv, options.kv_overrides, src)
        plan = plan_for(source, options, imatrix, target, src, log)
        check_plan(plan, imatrix)
        outputs = split_output_paths(dst, plan.n_splits)
        for out in outputs:
            check_writable(out)
        refuse_overwriting_inputs(outputs, inputs + [t.path for t in getattr(source, "shards", [])])

        t_compile = time.perf_counter()
        store = target.store if target is not None else None
        keys = stored_keys(plan, imatrix, store)
        todo = {tp.type for tp in plan.tensors if tp.quantize and tp.name not in keys.present}
        to_read = {tp.ref.type for tp in plan.tensors if tp.quantize and tp.ref.type != T.F32}
        if todo:  # a plain copy (COPY, F32 -> F32) needs no kernel, so Numba is not even imported
            kernels.set_threads(nthreads)
            kernels.warmup(sorted(todo), with_imatrix=imatrix is not None, dequantize_types=sorted(to_read),
                           check_inputs=True)
        compile_seconds = time.perf_counter() - t_compile

        if progress:
            progress("plan", None, sum(tp.ref.nbytes for tp in plan.tensors))
        write_plan(plan, outputs, imatrix, progress, inputs=inputs, keys=keys)
        if store is not None:
            fill_store(store, imatrix, log)
        n_elements = sum(tp.ref.n_elements for tp in plan.tensors)
        return ConvertResult(outputs, plan, n_elements,
                             sum(tp.ref.nbytes for tp in plan.tensors), sum(tp.nbytes for tp in plan.tensors),
                             time.perf_counter() - start, compile_seconds)
    finally:
        if own_source:
            source.close()


def plan_for(source: Source, options: QuantizeOptions, imatrix: ImatrixInput | None,
             target: "TargetOptions | None" = None, src: Path | None = None,
             log: Callable[[str], None] | None = None) -> Plan:
    """The plan: llama.cpp's rules, or with `target` the searched mix (plan/target.py) built on
    the plan at the base file type (Q8_0): which tensors are quantizable, imatrix entries, pins."""
    if target is None:
        return plan_with_imatrix(source, options, imatrix)
    from .plan.target import check_options, target_plan

    check_options(options, target)
    base = plan_with_imatrix(source, options, imatrix)
    model_path = Path(src) if src is not None and Path(src).is_file() else None
    return target_plan(source, base, options, imatrix.entries if imatrix is not None else None, target,
                       model_path, log)


def plan_with_imatrix(source: Source, options: QuantizeOptions, imatrix: ImatrixInput | None) -> Plan:
    """make_plan, told where the imatrix came from (for the quantize.imatrix.* metadata)."""
    if imatrix is not None:
        options.imatrix_file = imatrix.path_text
        options.imatrix_datasets = list(imatrix.datasets)
        options.imatrix_chunks = imatrix.chunk_count
        return make_plan(source, options, {name: v.size for name, v in imatrix.entries.items()})
    return make_plan(source, options, None)


def imatrix_for(tp: TensorPlan, imatrix: ImatrixInput | None) -> np.ndarray | None:
    """The tensor's imatrix values, or None where the plan found no usable entry (llama.cpp then
    quantizes without one)."""
    if imatrix is None or not tp.imatrix_name:
        return None
    return np.ascontiguousarray(imatrix.entries[tp.imatrix_name], dtype=np.float32)


@dataclass
class StoredKeys:
    """Target mode with --search-cache: each kept tensor's key in the store, and which are there."""

    store: object = None
    key: dict[str, str] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)


def stored_keys(plan: Plan, imatrix: ImatrixInput | None, store) -> StoredKeys:
    out = StoredKeys(store)
    if store is None:
        return out
    for tp in plan.tensors:
        if tp.quantize and store.keeps(tp.type):
            out.key[tp.name] = key = store.key(tp.ref, tp.type, imatrix_for(tp, imatrix))
            if store.has(key, tp.nbytes):
                out.present.add(tp.name)
    return out


def write_tensor(tp: TensorPlan, imatrix: ImatrixInput | None, emit: Callable[[np.ndarray], None],
                 keys: StoredKeys | None = None) -> None:
    """Quantize one tensor, or copy its bytes from the search cache; a tensor the cache keeps and
    lacks is stored there as it is written."""
    key = keys.key.get(tp.name) if keys is not None else None
    if key is None:
        return quantize_tensor(tp, imatrix_for(tp, imatrix), emit)
    store = keys.store
    blob = store.get(key, tp.nbytes) if tp.name in keys.present else None
    if blob is not None:  # its CRC matched: the bytes the kernel made; validated as written ones are
        check_output_rows(blob, tp, 0)
        return emit(blob)
    if not store.fits(tp.nbytes):
        return quantize_tensor(tp, imatrix_for(tp, imatrix), emit)
    entry = store.writer(key)
    try:
        def both(out: np.ndarray) -> None:
            emit(out)
            entry.write(out)

        quantize_tensor(tp, imatrix_for(tp, imatrix), both)
    except BaseException:
        entry.abort()
        raise
    entry.commit()


def fill_store(store, imatrix: ImatrixInput | None, log: Callable[[str], None] | None = None) -> None:
    """After the output is written: quantize into the cache what nearby targets would choose
    (plan/target.py decides, once per range of targets), within --search-cache-max; then trim
    the cache to it."""
    todo, done = store.nearby() if store.nearby is not None else ([], lambda: None)
    try:
        for n, tp in enumerate(todo):
            key = store.key(tp.ref, tp.type, imatrix_for(tp, imatrix))
            if not store.keeps(tp.type) or store.has(key, tp.nbytes):
                continue
            if not store.fits(tp.nbytes):
                continue  # it would only push this run's own tensors out
            if log and n % 32 == 0:
                log(f"search cache: quantizing candidates of nearby targets, {n}/{len(todo)}")
            entry = store.writer(key)
            try:
                quantize_tensor(tp, imatrix_for(tp, imatrix), entry.write)
            except KernelError:
                entry.abort()  # this type cannot hold the tensor (an Inf scale): no target will choose it
                continue
            except BaseException:
                entry.abort()
                raise
            entry.commit()
            tp.ref.release()
        done()
    except KeyboardInterrupt:  # the output is complete; what is stored stays, the range is not recorded
        if log:
            log("search cache: filling interrupted; the output is complete")
    removed = store.trim()
    if log:
        log(f"search cache: {store.hits} tensors copied, {store.stored} quantized into it "
            f"({store.bytes_written / 2**20:.1f} MiB); {store.size_on_disk() / 2**20:.1f} MiB of tensors kept"
            + (f", {removed / 2**20:.1f} MiB least recently used removed" if removed else ""))


def write_plan(plan: Plan, outputs: list[Path], imatrix: ImatrixInput | None,
               progress: Callable[[str, TensorPlan, int], None] | None = None, inputs=(),
               keys: StoredKeys | None = None) -> None:
    with atomic_outputs(outputs, inputs) as temps:
        for shard, tmp in enumerate(temps):
            members = [tp for tp in plan.tensors if tp.split == shard]
            infos = [TensorInfo(tp.name, tp.ne, int(tp.type), tp.nbytes) for tp in members]
            # Writes stay on this thread: writing on a background thread measured no faster on 2
            # cores (both are busy quantizing) and held up to 30 MB more.
            # "r+b", not "wb": the temp file is new and empty, and opening it with O_TRUNC makes
            # ext4 (auto_da_alloc) flush every dirty page of it at close: 0.2 s per 600 MB.
            with open(tmp, "r+b", buffering=1 << 20) as f:
                writer = ShardWriter(f, plan.shard_kv(shard), infos)
                for tp in members:
                    if progress:
                        progress("start", tp, tp.ref.nbytes)
                    if tp.quantize:
                        write_tensor(tp, imatrix, writer.write, keys)
                    else:
                        copy_tensor(tp, writer.write)
                    writer.end_tensor()
                    tp.ref.release()
                    if progress:
                        progress("done", tp, tp.ref.nbytes)
                writer.close()

