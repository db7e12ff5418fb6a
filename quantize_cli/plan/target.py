"""Target mode: `convert IN OUT --target-bpw 4.5` / `--target-size 95MiB` chooses a type for every
quantizable tensor, minimising predicted damage under a size limit, instead of llama.cpp's
name rules.

    base plan (make_plan at Q8_0: which tensors are quantizable, imatrix entries, --tensor-type pins)
      -> per tensor and candidate type: bytes and weighted squared error (target_measure.py)
      -> per tensor: sensitivity, KLD per unit of error, from the forward pass (target_sensitivity.py)
      -> multiple-choice knapsack under the limit (target_solve.py)
      -> the same Plan, with each free tensor's type and reason replaced; the writer is unchanged.

The size limit counts what it says: `--target-size` the whole file (header, metadata, tensor
infos and alignment padding included), `--target-bpw` the tensor data's bits per weight as
llama-quantize and `inspect` report it. Measurements are cached per (input, imatrix, options) in
`--search-cache DIR`, so several targets for one model measure once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from kernels.gguf_compat import GGMLQuantizationType as T, GGUFValueType

import kernels

from ..errors import PlanError
from ..formats.gguf_writer import alignment_of, header_bytes, pad
from ..formats.values import KV, TensorInfo
from ..sources.base import Source
from .ftypes import FTYPE_GUESSED, FType, row_bytes, type_sizes
from .make import Plan, TensorPlan
from .options import QuantizeOptions, _compile, parse_tensor_type
from .rules import _fallback, _guess_ftype, allows_quantization
from .target_solve import Infeasible, Item, solve
from .target_store import DEFAULT_MAX_BYTES, TensorStore

CACHE_VERSION = 1
# Every type stock llama.cpp loads that is worth a place in a mix. Left out unless named in
# --target-types: IQ1_S/IQ1_M (too lossy for a whole tensor), TQ1_0/TQ2_0 (ternary models only),
# MXFP4/NVFP4/Q1_0/Q2_0 (too new for older llama.cpp builds, ollama, LM Studio).
DEFAULT_TYPES = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S,
                 T.IQ4_XS, T.IQ4_NL, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16)
# ggml_quantize_requires_imatrix (the kernels refuse these without one; kept here so that a cached
# search imports no kernel family it will not write; tests/test_target.py checks it)
NEEDS_IMATRIX = frozenset((T.IQ2_XXS, T.IQ2_XS, T.IQ1_S))
# The first run that writes a file for a model also quantizes what the targets within this range
# of its own would choose (solved at each step), so that a nearby second target mostly copies
# bytes: SmolLM2-135M at 4.5 bpw, the mix of 5 bpw is 66 M of 134 M weights away.
NEARBY = tuple(round(1 + k * 0.025, 3) for k in range(-6, 7) if k)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


@dataclass
class TargetOptions:
    bpw: float | None = None
    size: int | None = None  # whole-file bytes
    types: list[T] = field(default_factory=lambda: list(DEFAULT_TYPES))
    cache_dir: Path | None = None
    text: Path | None = None  # calibration text for the sensitivities; None: weighted error only
    chunks: int = 1
    ctx: int = 128
    rows: int = 64  # rows measured per tensor and candidate (0: all)
    cache_max: int = DEFAULT_MAX_BYTES  # disk for quantized tensors in cache_dir (0: keep none)
    # set by target_plan when cache_dir is given: the quantized tensors the writer may reuse
    store: "TensorStore | None" = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        return f"--target-size {self.size}" if self.size is not None else f"--target-bpw {self.bpw:g}"


def parse_size(text: str, flag: str = "--target-size") -> int:
    """'95MiB', '100 MB', '1.5GiB', '123456' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text or "")
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _SIZE_UNITS:
        raise PlanError(f"{flag} {text!r}: expected a number with an optional unit "
                        "(B, KB, KiB, MB, MiB, GB, GiB), e.g. 95MiB")
    size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise PlanError(f"{flag} {text!r}: must be more than 0 bytes")
    return size


def parse_types(text: str) -> list[T]:
    """'Q3_K,Q4_K,IQ4_XS' -> ggml types, each one a kernel can write."""
    out: list[T] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        qtype = parse_tensor_type(part)
        if not kernels.can_quantize(qtype) and qtype != T.F32:
            raise PlanError(f"--target-types: no {qtype.name} quantizer in this version of pyquantize; leave it out")
        if qtype not in out:
            out.append(qtype)
    if not out:
        raise PlanError("--target-types: name at least one type, e.g. Q3_K,Q4_K,Q5_K,Q6_K,IQ4_XS")
    return out


def check_options(options: QuantizeOptions, target: TargetOptions) -> None:
    """Refuse what contradicts a search (the CLI checks it before anything is read)."""
    if target.bpw is not None and target.size is not None:
        raise PlanError("--target-bpw and --target-size cannot be used together; keep one")
    if target.bpw is not None and not 0 < target.bpw <= 32:
        raise PlanError(f"--target-bpw {target.bpw:g}: must be between 0 and 32")
    if options.keep_split:
        raise PlanError(f"--keep-split conflicts with {target.describe()}: the limit is for one output file")
    for flag, on in (("--output-tensor-type", options.output_tensor_type is not None),
                     ("--token-embedding-type", options.token_embedding_type is not None),
                     ("--pure", options.pure), ("COPY", options.only_copy)):
        if on:
            raise PlanError(f"{flag} conflicts with {target.describe()}, which chooses every tensor's type; "
                            "pin single tensors with --tensor-type REGEX=TYPE instead")
    if target.text is not None and not Path(target.text).is_file():
        raise PlanError(f"--search-text {target.text}: no such file; give the calibration text (like the imatrix's)")
    if target.chunks < 1 or target.ctx < 8 or target.rows < 0:
        raise PlanError("--search-chunks must be at least 1, --search-ctx at least 8, --search-rows at least 0")


# ---------------------------------------------------------------------------------------------


@dataclass
class _Free:
    index: int  # in the plan
    tp: TensorPlan
    types: list[T]


def candidate_types(tp: TensorPlan, types: list[T]) -> list[T]:
    """The types this tensor can take: each wanted type, or llama.cpp's fallback where its block
    does not divide the row; types that need an imatrix only where the tensor has an entry."""
    out: list[T] = []
    for qtype in types:
        if qtype not in (T.F32, T.F16, T.BF16) and tp.ne[0] % type_sizes(qtype)[0]:
            qtype = _fallback(tp.ne[0], qtype)[0]
        if qtype in NEEDS_IMATRIX and not tp.imatrix_name:
            continue
        if qtype not in out:
            out.append(qtype)
    return out


def _hash_source(plan: Plan, window: int = 1 << 16) -> str:
    """The cache key of the input: every tensor's name, type and shape, and three 64 KiB windows
    of its data (start, middle, end). Hashing every byte cost a 540 MB model ~4 s and its whole
    size in memory; a different model or a re-export differs in the windows."""
    h = hashlib.blake2b(digest_size=20)
    for tp in plan.tensors:
        ref = tp.ref
        h.update(f"{ref.name}|{ref.type.name}|{ref.ne}\n".encode())
        data = np.ascontiguousarray(ref.load()).reshape(-1).view(np.uint8)
        n = data.size
        for start in sorted({0, max(0, n // 2 - window // 2), max(0, n - window)}):
            h.update(data[start:start + window].tobytes())
        ref.release()
    return h.hexdigest()


def _hash_imatrix(entries: dict[str, np.ndarray] | None) -> str:
    h = hashlib.blake2b(digest_size=20)
    for name in sorted(entries or {}):
        h.update(name.encode() + b"\n")
        h.update(np.ascontiguousarray(entries[name], dtype=np.float32).tobytes())
    return h.hexdigest()


class _Cache:
    """JSON files in DIR named by a hash of what the measurement depends on; written atomically."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PlanError(f"--search-cache {directory}: cannot create it ({exc.strerror}); choose a writable folder") from None

    def load(self, kind: str, key: str) -> dict | None:
        if self.directory is None:
            return None
        path = self.directory / f"{kind}-{key}.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # absent or damaged: measure again
        return doc if isinstance(doc, dict) and doc.get("version") == CACHE_VERSION else None

    def save(self, kind: str, key: str, doc: dict) -> None:
        if self.directory is None:
            return
        doc = dict(doc, version=CACHE_VERSION)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{kind}-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, sort_keys=True)
        os.replace(tmp, self.directory / f"{kind}-{key}.json")


def _key(*parts) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def target_plan(source: Source, base: Plan, options: QuantizeOptions, imatrix_entries: dict[str, np.ndarray] | None,
                target: TargetOptions, model_path: Path | None = None,
                log: Callable[[str], None] | None = None) -> Plan:
    """The base plan (make_plan at any quantized file type, usually Q8_0) with a type chosen by
    the search for every tensor that is quantizable and not pinned by --tensor-type."""
    check_options(options, target)
    say = log or (lambda _msg: None)
    patterns = [_compile(p) for p, _ in options.tensor_types]
    free: list[_Free] = []
    for i, tp in enumerate(base.tensors):
        if not allows_quantization(tp.name, tp.ne, options, base.arch or "llama"):
            continue
        if any(p.search(tp.name) for p in patterns):
            continue  # pinned: keeps its --tensor-type (with llama.cpp's fallback)
        free.append(_Free(i, tp, candidate_types(tp, target.types)))
    for f in free:
        if not f.types:
            raise PlanError(f"{f.tp.name}: none of --target-types fits a row of {f.tp.ne[0]}; add F16 or a 32-block type")

    def imatrix_of(tp: TensorPlan) -> np.ndarray | None:
        if not tp.imatrix_name or imatrix_entries is None:
            return None
        return np.ascontiguousarray(imatrix_entries[tp.imatrix_name], dtype=np.float32)

    # the size limit, with the new metadata and every fixed tensor counted: refuse an impossible
    # target before measuring anything
    tensors = list(base.tensors)
    unit = "KLD" if target.text is not None else "wSE"
    kv = _target_kv(base.kv, target, unit, 0.0, int(FType.Q8_0))
    alignment = alignment_of(kv)
    free_index = {f.index for f in free}
    if target.size is not None:
        infos = [TensorInfo(tp.name, tp.ne, int(tp.type), 0) for tp in tensors]
        fixed = len(header_bytes(kv, infos, alignment))
        fixed += sum(pad(tp.nbytes, alignment) for i, tp in enumerate(tensors) if i not in free_index)
        capacity = target.size - fixed

        def weight(nbytes: int) -> int:
            return pad(nbytes, alignment)
    else:
        capacity = int(target.bpw * base.n_elements / 8) - sum(tp.nbytes for i, tp in enumerate(tensors) if i not in free_index)

        def weight(nbytes: int) -> int:
            return nbytes

    smallest = sum(min(weight(f.tp.ref.nrows * row_bytes(t, f.tp.ref.n_per_row)) for t in f.types) for f in free)
    if smallest > capacity:
        if target.size is not None:
            need = f"{target.size - capacity + smallest} bytes"
        else:
            need = f"{(int(target.bpw * base.n_elements / 8) - capacity + smallest) * 8 / base.n_elements:.3f} bpw"
        raise PlanError(f"{target.describe()}: too small; the smallest mix of the candidate types takes {need}; "
                        "raise the target or add smaller types to --target-types")

    cache = _Cache(target.cache_dir)
    if target.cache_dir is not None:
        say("hashing the input and imatrix for the search cache")
        source_key = _hash_source(base)
        imatrix_key = _hash_imatrix(imatrix_entries)
    else:
        source_key = imatrix_key = ""
    mapping = [(f.tp.name, f.tp.imatrix_name) for f in free]

    # 1. weighted squared error of every candidate, on a sample of rows
    errors_key = _key("errors", source_key, imatrix_key, target.rows, mapping)
    cached = (cache.load("errors", errors_key) or {}).get("errors", {})
    errors: dict[str, dict[str, float]] = {}
    todo = sorted({t for f in free for t in f.types if t.name not in cached.get(f.tp.name, {})}, key=int)
    if todo:
        kernels.warmup([t for t in todo if t != T.F32], with_imatrix=imatrix_entries is not None)
    for n, f in enumerate(free):
        have = dict(cached.get(f.tp.name, {}))
        missing = [t for t in f.types if t.name not in have]
        if missing:
            if n % 16 == 0:
                say(f"measuring candidates: {n}/{len(free)} tensors")
            from .target_measure import measure

            have.update(measure(f.tp.ref, missing, imatrix_of(f.tp), target.rows))
        errors[f.tp.name] = have
    if todo:
        cache.save("errors", errors_key, {"errors": {**cached, **errors}})

    # 2. sensitivities from the forward pass (KLD per unit of weighted error)
    calibration = None
    sens_key = ""
    if target.text is not None:
        if model_path is None:
            raise PlanError("--search-text needs a GGUF input to run the forward pass; convert the checkpoint to F16 GGUF first")
        text_key = hashlib.blake2b(Path(target.text).read_bytes(), digest_size=16).hexdigest() if Path(target.text).is_file() else str(target.text)
        from .target_sensitivity import METHOD, calibrate

        sens_key = _key("sensitivity", source_key, imatrix_key, text_key, target.chunks, target.ctx, mapping, METHOD)
        calibration = cache.load("sensitivity", sens_key)
        if calibration is None:

            say(f"calibrating sensitivities on {target.chunks} x {target.ctx} tokens of {target.text}")
            cal = calibrate(Path(model_path), Path(target.text), [(f.tp.ref.name, f.tp.ref) for f in free],
                            lambda name: imatrix_of(next(f.tp for f in free if f.tp.ref.name == name)),
                            target.chunks, target.ctx, on_step=lambda g: say(f"calibrating: {g}"))
            calibration = {"sensitivity": cal.sensitivity, "group_kld": cal.group_kld, "n_tokens": cal.n_tokens}
            cache.save("sensitivity", sens_key, calibration)
    scale: dict[str, float] = {}
    if calibration is not None:
        sens = calibration["sensitivity"]
        known = sorted(sens.values())
        typical = known[len(known) // 2] if known else 1.0
        scale = {f.tp.name: float(sens.get(f.tp.ref.name, typical)) for f in free}

    items = []
    for f in free:
        ref = f.tp.ref
        s = scale.get(f.tp.name, 1.0)
        items.append(Item(tuple(weight(ref.nrows * row_bytes(t, ref.n_per_row)) for t in f.types),
                          tuple(s * errors[f.tp.name][t.name] for t in f.types)))
    choice = solve(items, capacity)  # feasible: checked above
    if target.cache_dir is not None and target.cache_max > 0:
        limit = target.size if target.size is not None else int(target.bpw * base.n_elements / 8)
        nearby_key = _key("nearby", errors_key, sens_key, target.size is None,
                          [[t.name for t in f.types] for f in free])
        target.store = TensorStore(target.cache_dir, source_key, target.cache_max)
        target.store.nearby = lambda: _nearby(cache, nearby_key, free, items, choice, capacity, limit, tensors)

    predicted = 0.0
    for f, it, k in zip(free, items, choice):
        qtype = f.types[k]
        predicted += it.error[k]
        tensors[f.index] = replace(f.tp, type=qtype, reason=f"target: {qtype.name} (predicted {unit} {it.error[k]:.3g})",
                                   requires_imatrix=qtype in NEEDS_IMATRIX)
    ftype = mixed_ftype([tp for i, tp in enumerate(tensors) if i in free_index])
    kv = _target_kv(base.kv, target, unit, predicted, ftype)
    notes = list(base.notes)
    out = replace(base, tensors=tensors, kv=kv, ftype=ftype, n_fallback=0,
                  warnings=[w for w in base.warnings if "fallback quantization" not in w], notes=notes)
    infos = [TensorInfo(tp.name, tp.ne, int(tp.type), tp.nbytes) for tp in tensors]
    file_bytes = len(header_bytes(kv, infos, alignment)) + sum(pad(tp.nbytes, alignment) for tp in tensors)
    calibrated = (f"sensitivities from {calibration['n_tokens']} tokens" if calibration is not None
                  else "uncalibrated (no --search-text): imatrix-weighted squared error")
    notes.append(f"{target.describe()}: file {file_bytes} bytes, tensor data {out.bytes_out * 8 / base.n_elements:.4f} bpw, "
                 f"predicted {unit} {predicted:.4g} ({calibrated})")
    if target.size is not None and file_bytes > target.size:  # the solver guarantees it; say so if not
        raise AssertionError(f"target search overshot: {file_bytes} > {target.size}")
    return out


def _nearby(cache: _Cache, nearby_key: str, free: list[_Free], items: list[Item], choice: list[int], capacity: int,
            limit: int, tensors: list[TensorPlan]) -> tuple[list[TensorPlan], Callable[[], None]]:
    """What the targets within NEARBY of this one would choose and this one does not: the plans
    (tensor, type) to quantize into the cache, and a callback recording that it was done. Empty
    when an earlier run already covered this target (the cache notes the ranges it filled)."""
    ranges = (cache.load("nearby", nearby_key) or {}).get("ranges", [])
    if any(lo <= limit <= hi for lo, hi in ranges):
        return [], lambda: None
    chosen = [{k} for k in choice]
    for factor in NEARBY:
        try:
            other = solve(items, capacity + int((factor - 1) * limit))
        except Infeasible:
            continue
        for picks, k in zip(chosen, other):
            picks.add(k)
    todo = [replace(tensors[f.index], type=f.types[k], requires_imatrix=f.types[k] in NEEDS_IMATRIX)
            for i, (f, picks) in enumerate(zip(free, chosen)) for k in sorted(picks) if k != choice[i]]
    span = [int(limit * NEARBY[0]), int(limit * NEARBY[-1])]
    return todo, lambda: cache.save("nearby", nearby_key, {"ranges": ranges + [span]})


def mixed_ftype(chosen: list[TensorPlan]) -> int:
    """general.file_type of a mix: the file type named after its most common tensor type, as
    llama_model_loader guesses it (llama.cpp's own mixes, Q4_K_M, are named so too), without the
    GUESSED flag."""
    from types import SimpleNamespace

    return _guess_ftype([SimpleNamespace(type=tp.type) for tp in chosen]) & ~FTYPE_GUESSED


def _target_kv(kv: list[KV], target: TargetOptions, unit: str, predicted: float, ftype: int) -> list[KV]:
    """The base metadata with general.file_type set and the search recorded under quantize.target.*
    (keys llama.cpp does not read). Every value has a fixed size, so the header's size is known
    before the search chooses."""
    out = [pair for pair in kv if not pair.key.startswith("quantize.target.")]
    out = [pair if pair.key != "general.file_type" else KV("general.file_type", GGUFValueType.UINT32, ftype) for pair in out]
    out.append(KV("quantize.target.limit", GGUFValueType.STRING, target.describe()))
    out.append(KV("quantize.target.types", GGUFValueType.ARRAY, [t.name for t in target.types], GGUFValueType.STRING))
    out.append(KV("quantize.target.predicted_error", GGUFValueType.FLOAT32, float(np.float32(predicted))))
    out.append(KV("quantize.target.error_unit", GGUFValueType.STRING, unit))
    return out
