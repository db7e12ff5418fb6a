"""Several file types from one read: `pyquantize convert IN --types Q4_K_M,Q6_K -o 'out/{name}-{type}.gguf'`.

The same spine as convert(), widened: one source, one plan per type (the plans list the same
tensors in the same order: the order does not depend on the type), then one pass over the
tensors. Each tensor is loaded once and converted to float32 rows once per slab; each distinct
target type of that tensor is quantized once and its bytes go to every output that wants them
(Q4_K_M, Q5_K_M and Q6_K all take Q6_K for output.weight). Every output's bytes are those of a
single-type run: rows are quantized independently, so slab boundaries do not show.

Everything that can fail before the first byte is checked for every type first: each plan (a
missing imatrix, a row size no type fits, requantizing), kernels, colliding output names, an
output that is the input, output folders. All outputs are written to temporary files and renamed
together at the end; manifests (quantize_cli/manifest.py) are written after the renames.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import kernels
from kernels.gguf_compat import GGMLQuantizationType as T

from . import manifest as mf
from .convert import (ConvertResult, ImatrixInput, check_output_rows, check_plan, copy_tensor, expert_imatrix,
                      imatrix_for, plan_with_imatrix, split_output_paths, tensor_slabs)
from .errors import OutputError, PlanError, PyquantizeError
from .plan import Plan, QuantizeOptions
from .formats.gguf import check_metadata_types
from .formats.gguf_writer import ShardWriter
from .formats.output import atomic_outputs, check_writable
from .formats.values import TensorInfo
from .sources import Source, open_source

Progress = Callable[[str, str, list, int], None]
PIPELINE = True  # off: every kernel on all threads, one after another (for comparing)


@dataclass
class Target:
    """One output of a batch: a file type (by its name, as `pyquantize types` lists it), the
    options for it, and where it goes."""

    type_name: str
    options: QuantizeOptions
    dst: Path


@dataclass
class TargetResult:
    target: Target
    skipped: bool = False
    result: ConvertResult | None = None
    manifest: dict | None = None
    manifest_path: Path | None = None


@dataclass
class BatchResult:
    targets: list[TargetResult]
    input: dict | None
    seconds: float
    compile_seconds: float
    bytes_read: int = 0  # input tensor bytes, each read once


def input_stem(src: Path) -> str:
    """{name}: the input's file name without .gguf and without a -00001-of-00003 shard suffix
    (a folder's own name for a Hugging Face checkpoint)."""
    if src.is_dir():
        return src.resolve().name
    m = mf.SPLIT_RE.match(src.name)
    name = m.group("prefix") if m else src.name
    return name[:-5] if name.endswith(".gguf") else Path(name).stem


def expand_output(template: str, src: Path, type_name: str) -> Path:
    """Fill {type} and {name} in an output template; any other {field} is a usage error."""
    try:
        return Path(template.format_map({"type": type_name, "name": input_stem(src)}))
    except (KeyError, IndexError, ValueError) as exc:
        raise PlanError(f"-o {template!r}: only {{type}} and {{name}} can be filled in ({exc}); "
                        "write a literal brace as {{ or }}") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_outputs(src: Path, targets: list[Target], plans: list[Plan]) -> list[list[Path]]:
    """Every output path of every target; no two the same, none the input, folders writable."""
    inputs = mf.input_files(src) if src.exists() else [src]
    seen: dict[Path, str] = {}
    all_paths = []
    for target, plan in zip(targets, plans):
        paths = split_output_paths(target.dst, plan.n_splits)
        for p in paths:
            key = p.resolve()
            if key in seen:
                raise OutputError(f"{p}: both {seen[key]} and {target.type_name} would be written here; "
                                  "put {type} in the output name (-o 'out/{name}-{type}.gguf')")
            seen[key] = target.type_name
            for i in inputs:
                if (p.exists() and _same_file(p, i)) or key == i.resolve():
                    raise OutputError(f"{p}: output is the input file; choose another output name")
        all_paths.append(paths)
    for paths in all_paths:
        for p in paths:
            check_writable(p)
    return all_paths


def plan_targets(source: Source, targets: list[Target], imatrix: ImatrixInput | None) -> list[Plan]:
    """One checked plan per target; the first problem of any type stops the batch before work."""
    plans = []
    for target in targets:
        try:
            plan = plan_with_imatrix(source, target.options, imatrix)
            check_plan(plan, imatrix)
        except PyquantizeError as exc:
            text = str(exc)
            if not text.startswith(target.type_name):
                exc.args = (f"{target.type_name}: {text}",)
            raise
        plans.append(plan)
    first = [id(tp.ref) for tp in plans[0].tensors]
    for plan in plans[1:]:
        if [id(tp.ref) for tp in plan.tensors] != first:  # make_plan's order never depends on the type
            raise AssertionError("plans of one batch list different tensors")
    return plans


def convert_types(
    src: str | Path,
    targets: list[Target],
    imatrix: ImatrixInput | None = None,
    nthreads: int | None = None,
    progress: Progress | None = None,
    source: Source | None = None,
    manifests: bool = True,
    skip_unchanged: bool = False,
    option_docs: list[dict] | None = None,
    command: list[str] | None = None,
) -> BatchResult:
    """Quantize `src` to every target in one pass. `option_docs[i]` is target i's normalized
    options for its manifest (manifest.options_doc); `progress(event, tensor name, type names,
    nbytes)` gets ("plan", "", [], input bytes) once the kernels are ready, then "start"/"done"
    per tensor."""
    src = Path(src)
    start = time.perf_counter()
    if not targets:
        raise PlanError("no file types given; e.g. --types Q4_K_M,Q8_0")
    names = [t.type_name for t in targets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PlanError(f"--types names {', '.join(dupes)} twice; give each file type once")
    if (manifests or skip_unchanged) and option_docs is None:
        option_docs = [mf.options_doc(t.type_name, t.options, imatrix.path_text if imatrix else None) for t in targets]
    own_source = source is None
    source = source or open_source(src)
    try:
        input_id = mf.input_identity(src) if (manifests or skip_unchanged) else None
        results = [TargetResult(t) for t in targets]
        todo = list(range(len(targets)))
        if skip_unchanged:
            todo = [i for i in todo if not mf.is_unchanged(targets[i].dst, option_docs[i], input_id)]
            for i in set(range(len(targets))) - set(todo):
                results[i].skipped = True
                results[i].manifest_path = mf.manifest_path(targets[i].dst)
                results[i].manifest = mf.read_manifest(targets[i].dst)
        if not todo:
            return BatchResult(results, input_id, time.perf_counter() - start, 0.0)

        run = [targets[i] for i in todo]
        # each target plans with its own copy of the options (plan_with_imatrix fills in imatrix fields)
        for t in run:
            t.options = dataclasses.replace(t.options)
        for t in run:  # metadata a single run refuses to write
            check_metadata_types(source.kv, t.options.kv_overrides, src)
        plans = plan_targets(source, run, imatrix)
        outputs = check_outputs(src, run, plans)

        t_compile = time.perf_counter()
        qtypes = {tp.type for plan in plans for tp in plan.tensors if tp.quantize}
        to_read = {tp.ref.type for plan in plans for tp in plan.tensors if tp.quantize and tp.ref.type != T.F32}
        threads = 0
        if qtypes:
            threads = kernels.set_threads(nthreads)
            kernels.warmup(sorted(qtypes), with_imatrix=imatrix is not None, dequantize_types=sorted(to_read),
                           check_inputs=True)
        compile_seconds = time.perf_counter() - t_compile

        if manifests:
            for t in run:  # an old manifest must not outlive the output it describes
                mf.remove_manifest(t.dst)
        if progress:
            progress("plan", "", [t.type_name for t in run], sum(tp.ref.nbytes for tp in plans[0].tensors))
        digests = _write_plans(plans, outputs, imatrix, progress, manifests, threads)
        seconds = time.perf_counter() - start
        for k, i in enumerate(todo):
            plan = plans[k]
            res = ConvertResult(outputs[k], plan, plan.n_elements, sum(tp.ref.nbytes for tp in plan.tensors),
                                sum(tp.nbytes for tp in plan.tensors), seconds, compile_seconds)
            results[i].result = res
            if manifests:
                files = [(p, size, digest) for p, (size, digest) in zip(outputs[k], digests[k])]
                doc = mf.make_manifest(files, plan, option_docs[i], input_id, command)
                results[i].manifest = doc
                results[i].manifest_path = mf.write_manifest(targets[i].dst, doc)
        return BatchResult(results, input_id, time.perf_counter() - start, compile_seconds,
                           bytes_read=sum(tp.ref.nbytes for tp in plans[0].tensors))
    finally:
        if own_source:
            source.close()


def _write_plans(plans: list[Plan], outputs: list[list[Path]], imatrix: ImatrixInput | None,
                 progress: Progress | None, hashing: bool, threads: int) -> list[list[tuple[int, str]]]:
    """Write every plan's shards in one pass over the tensors; returns (size, sha256) per file
    (sha256 "" when not hashing)."""
    flat = [p for paths in outputs for p in paths]
    with atomic_outputs(flat) as temps, ExitStack() as stack:
        it = iter(temps)
        files: list[list] = []
        for paths in outputs:
            # "r+b": the temp file is new and empty (see convert.write_plan on O_TRUNC)
            files.append([stack.enter_context(open(next(it), "r+b", buffering=1 << 20)) for _ in paths])
        sinks = [[mf.HashingFile(f) if hashing else f for f in fs] for fs in files]
        writers = []
        for plan, fs in zip(plans, sinks):
            shard_writers = []
            for shard, f in enumerate(fs):
                members = [tp for tp in plan.tensors if tp.split == shard]
                infos = [TensorInfo(tp.name, tp.ne, int(tp.type), tp.nbytes) for tp in members]
                shard_writers.append(ShardWriter(f, plan.shard_kv(shard), infos))
            writers.append(shard_writers)

        pipe = stack.enter_context(_Pipeline(threads if PIPELINE else 0))
        for i in range(len(plans[0].tensors)):
            tps = [plan.tensors[i] for plan in plans]
            ref = tps[0].ref
            outs = [ws[tp.split] for ws, tp in zip(writers, tps)]
            if progress:
                progress("start", ref.name, sorted({tp.type.name for tp in tps}, key=[tp.type.name for tp in tps].index),
                         ref.nbytes)
            try:
                if any(tp.quantize for tp in tps):
                    _quantize_for_all(tps, outs, imatrix, pipe)
                else:  # validated as a single run validates what it copies
                    pipe.then([], copy_tensor, tps[0], lambda raw, outs=outs: [w.write(raw) for w in outs])
            except PyquantizeError:
                pipe.drain()  # a slab before this one may have failed first: report that, as a single run would
                raise
            pipe.then([], _end_tensor, ref, outs, progress)
        pipe.drain()
        for ws in writers:
            for w in ws:
                w.close()
        for fs in files:
            for f in fs:
                f.flush()
        return [[(s.size, s.sha256.hexdigest()) if hashing else (os.fstat(f.fileno()).st_size, "")
                 for s, f in zip(ss, fs)] for ss, fs in zip(sinks, files)]


def _end_tensor(ref, outs, progress: Progress | None) -> None:
    for w in outs:
        w.end_tensor()
    ref.release()
    if progress:
        progress("done", ref.name, [], ref.nbytes)


def _quantize_for_all(tps, outs, imatrix: ImatrixInput | None, pipe: "_Pipeline") -> None:
    """One tensor, slab by slab: float32 rows once, each distinct (type, imatrix entry) once,
    the bytes to every output wanting them; outputs that keep the tensor get its raw bytes."""
    groups: dict[tuple, list] = {}
    keep = []
    for tp, w in zip(tps, outs):
        if tp.quantize:
            groups.setdefault((tp.type, tp.imatrix_name), [tp, []])[1].append(w)
        else:
            keep.append(w)
    imatrices = {key: imatrix_for(tp, imatrix) for key, (tp, _) in groups.items()}
    ref = tps[0].ref
    n_per_row = ref.n_per_row
    row_bytes = kernels.row_bytes(ref.type, n_per_row)
    sinks = [ws for _, ws in groups.values()]

    def written(chunk, row, *quantized):
        for q, ws in zip(quantized, sinks):
            for w in ws:
                w.write(q)
        for w in keep:
            w.write(chunk)
        ref.release(row * row_bytes, row * row_bytes + chunk.nbytes)  # the slab's input pages are done with

    for row, expert, chunk, x in tensor_slabs(ref, release=False):
        futures = [pipe.submit(_quantize_checked, x, tp, expert_imatrix(imatrices[key], expert, n_per_row), row)
                   for key, (tp, _) in groups.items()]
        pipe.then(futures, written, chunk, row, slab=True)


def _quantize_checked(x, tp, imatrix, row: int):
    q = kernels.quantize(x, tp.type, imatrix)
    check_output_rows(q, tp, row)  # llama-quantize's validation of every slab, as a single run does
    return q


class _Pipeline:
    """Kernels on `workers` threads, each calling its kernels single-threaded, while this thread
    reads, converts and checks the next slabs and writes the finished ones in order.

    Quantizing a slab with every core (prange) and then writing it leaves a core idle at every
    join and during every write; with the types of a slab and the next slabs as separate tasks the
    cores stay busy, and the bytes are the same (rows are quantized independently). At most
    WINDOW slabs are in flight. Numba's workqueue threading layer cannot run kernels from two
    threads at once: there (and with workers=0) everything runs here, in order, as before."""

    WINDOW = 2  # legacy set, 315 M model: peak RSS 195 MB at 4, 182 at 2 and 1 (wall within noise)

    def __init__(self, workers: int):
        self.steps: deque = deque()
        self.in_flight = 0
        self.pool = None
        self.threads = None
        if workers and _threading_layer() in ("omp", "tbb"):
            import numba

            self.threads = numba.get_num_threads()
            numba.set_num_threads(1)  # this thread's own kernels (dequantize, NaN check) too
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="quantize",
                                           initializer=numba.set_num_threads, initargs=(1,))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            import numba

            self.pool.shutdown(wait=True, cancel_futures=True)
            numba.set_num_threads(self.threads)

    def submit(self, fn, *args) -> Future:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future = Future()
        done.set_result(fn(*args))
        return done

    def then(self, futures: list[Future], fn, *args, slab: bool = False) -> None:
        """Call fn(*args, *results of futures) on this thread once every earlier step is done."""
        self.steps.append((futures, fn, args, slab))
        self.in_flight += slab
        while self.steps and (self.pool is None or self.in_flight > self.WINDOW):
            self._finish_one()

    def drain(self) -> None:
        while self.steps:
            self._finish_one()

    def _finish_one(self) -> None:
        futures, fn, args, slab = self.steps.popleft()
        self.in_flight -= slab
        try:
            fn(*args, *[f.result() for f in futures])
        except BaseException:
            self.steps.clear()  # the first failure in order is the one reported; nothing after it runs
            raise


def _threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return ""
