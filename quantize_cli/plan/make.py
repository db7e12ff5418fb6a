"""The plan: one decision per tensor (target type and why), mirroring llama.cpp's
src/llama-quant.cpp and tools/quantize/quantize.cpp. A pure function of (source tensors and
metadata, options, imatrix entry names): it reads no tensor data and writes nothing.

Order matters, as in llama.cpp: the per-category counters (i_attention_wv, i_ffn_down, ...)
advance in the order tensors are planned, which is llama_model_loader's weights_map order
(non-layer tensors by name first, then ``blk.N`` tensors by numeric layer, names sorted within a
layer) or, with --keep-split, (shard, offset) order.

llama.cpp only quantizes architectures it knows. For any other architecture this module uses
the same name-based rules with hyper-parameters read generically (``{arch}.block_count`` or the
highest ``blk.N``, ``{arch}.attention.head_count[_kv]``, ``{arch}.expert_count``) and also treats
Hugging Face style names (``embed_tokens``, ``lm_head``) as token embedding / output; the plan's
``notes`` say which generic rules were used.
"""


from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from kernels.gguf_compat import GGMLQuantizationType as T, GGUFValueType

from ..errors import PlanError
from ..formats.values import KV
from ..sources.base import Source, TensorRef
from .ftypes import DEFAULT_TYPE, GGML_QNT_VERSION, _NOT_QUANTIZED, FType, ftype_name, row_bytes, type_sizes
from .options import QuantizeOptions, _compile, imatrix_kv
from .rules import (Cat, _get_type, _is_attn_v, _sscanf_layer, _State, category, llama_order, model_info, source_ftype,
                    tensor_requires_imatrix, why_not_quantized)


@dataclass
class TensorPlan:
    name: str  # output name (differs from the source's when layers are pruned)
    ref: TensorRef
    type: T  # target type
    reason: str
    requires_imatrix: bool = False
    imatrix_name: str = ""  # the imatrix entry to use ("" for none)
    split: int = 0

    @property
    def ne(self) -> tuple[int, ...]:
        return self.ref.ne

    @property
    def quantize(self) -> bool:
        return self.type != self.ref.type

    @property
    def nbytes(self) -> int:
        if not self.quantize:
            return source_nbytes(self.ref)
        return self.ref.nrows * row_bytes(self.type, self.ref.n_per_row)


@dataclass
class Plan:
    tensors: list[TensorPlan]
    kv: list[KV]  # output metadata, in order (split keys are added per shard by the writer)
    ftype: int
    n_splits: int = 1
    n_fallback: int = 0
    n_elements: int = 0  # of every source tensor, pruned ones included (llama.cpp's bpw divides by it)
    has_imatrix: bool = False
    block_count: int | None = None  # set when layers were pruned
    arch: str = ""
    generic: bool = False  # architecture unknown to llama.cpp: generic rules
    notes: list[str] = field(default_factory=list)  # which generic rules were used
    warnings: list[str] = field(default_factory=list)
    # what llama.cpp would stop on when writing (imatrix missing or of the wrong size, requantizing
    # without --allow-requantize); empty when the plan can run. make_plan never raises for these,
    # so that --dry-run can show the plan anyway.
    errors: list[str] = field(default_factory=list)
    missing_imatrix: list[str] = field(default_factory=list)  # tensors that need an imatrix entry and have none

    @property
    def bytes_in(self) -> int:
        return sum(source_nbytes(t.ref) for t in self.tensors)

    @property
    def bytes_out(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def shard_kv(self, split: int) -> list[KV]:
        """Metadata of output shard `split` with --keep-split: shard 0 has every pair, the others
        only the split keys (llama.cpp starts them from gguf_init_empty)."""
        keys = [
            KV("split.no", GGUFValueType.UINT16, split),
            KV("split.count", GGUFValueType.UINT16, self.n_splits),
            KV("split.tensors.count", GGUFValueType.INT32, len(self.tensors)),
        ]
        if self.n_splits <= 1:
            return list(self.kv)
        return (list(self.kv) if split == 0 else []) + keys


def source_nbytes(ref: TensorRef) -> int:
    return ref.nrows * row_bytes(ref.type, ref.n_per_row)



# ---------------------------------------------------------------------------------------------
# pruning and metadata


def _remap_layers(order: list[TensorRef], prune: list[int]) -> tuple[dict[str, str], dict[int, str], int]:
    """remap_layer over the weights_map order: new name per kept tensor ('' when pruned), the
    block mapping (original -> new id, '' when pruned) and the new block count."""
    names: dict[str, str] = {}
    mapped: dict[int, str] = {}
    next_id = 0
    for ref in order:
        if not prune:
            names[ref.name] = ref.name
            continue
        m = re.search(r"blk\.(\d+)\.", ref.name)
        if not m:
            names[ref.name] = ref.name
            continue
        blk = int(m.group(1))
        if blk not in mapped:
            if blk in prune:
                mapped[blk] = ""
            elif blk < prune[0]:
                mapped[blk] = str(blk)
                next_id = blk + 1
            else:
                mapped[blk] = str(next_id)
                next_id += 1
        new = mapped[blk]
        names[ref.name] = "" if not new else ref.name[:m.start(1)] + new + ref.name[m.end(1):]
    return names, mapped, next_id


def _remap_imatrix(name: str, mapped: dict[int, str]) -> str:
    """remap_imatrix: the imatrix entry of a renamed tensor is under its original layer."""
    if not mapped:
        return name
    m = re.search(r"blk\.(\d+)\.", name)
    if not m:
        return name
    for original, new in sorted(mapped.items()):
        if new == m.group(1):
            return name[:m.start(1)] + str(original) + name[m.end(1):]
    raise PlanError(f"{name}: no original layer maps to block {m.group(1)} (imatrix remapping)")


def filter_imatrix(names: Iterable[str], include: list[str], exclude: list[str]) -> list[str]:
    """prepare_imatrix: --exclude-weights drops entries whose name contains any of the strings,
    --include-weights keeps only entries containing one of them."""
    kept = list(names)
    for part in exclude:
        kept = [n for n in kept if part not in n]
    if include:
        kept = [n for n in kept if any(part in n for part in include)]
    return kept


def output_kv(source: Source, ftype: int, options: QuantizeOptions, block_count: int | None,
              n_imatrix_entries: int = 0) -> list[KV]:
    """llama-quantize's metadata: input pairs in order, then quantization_version and file_type
    (gguf_set_val moves an existing key to the end), split keys removed, then the overrides
    (--override-kv in order, then quantize.imatrix.*), then the pruned block count."""
    out: list[KV] = [kv for kv in source.kv]

    def set_kv(new: KV) -> None:
        out[:] = [kv for kv in out if kv.key != new.key]
        out.append(new)

    set_kv(KV("general.quantization_version", GGUFValueType.UINT32, GGML_QNT_VERSION))
    set_kv(KV("general.file_type", GGUFValueType.UINT32, int(ftype) & 0xFFFFFFFF))
    out[:] = [kv for kv in out if kv.key not in ("split.no", "split.count", "split.tensors.count")]
    overrides = list(options.kv_overrides)
    if n_imatrix_entries and options.imatrix_file:
        overrides += imatrix_kv(options.imatrix_file, options.imatrix_datasets, n_imatrix_entries, options.imatrix_chunks)
    for kv in overrides:
        set_kv(kv)
    if block_count is not None:
        arch = source.kv_value("general.architecture", "llama")
        set_kv(KV(f"{arch}.block_count", GGUFValueType.UINT32, block_count))
    return out


# ---------------------------------------------------------------------------------------------
# the plan


def make_plan(source: Source, options: QuantizeOptions,
              imatrix_names: Mapping[str, int] | Iterable[str] | None = None) -> Plan:
    """One decision per tensor, in output order.

    imatrix_names: the imatrix entries (before --include/--exclude-weights filtering), either
    names or a mapping name -> number of values (or the values), and then sizes are checked as
    llama.cpp does.
    """
    if options.include_weights and options.exclude_weights:
        raise PlanError("--include-weights and --exclude-weights cannot be used together; keep one")

    info, notes = model_info(source, options.kv_overrides)
    generic = not info.known

    if options.only_copy:
        ftype = source_ftype(source, options.kv_overrides)
        default_type = T.F32
        ftype_enum = FType.F32
    else:
        try:
            ftype_enum = FType(int(options.ftype))
        except ValueError:
            raise PlanError(f"invalid file type {options.ftype}: see FILE_TYPES for the ones llama-quantize makes") from None
        if ftype_enum not in DEFAULT_TYPE:
            raise PlanError(f"file type {ftype_enum.name} is not one llama-quantize can produce")
        default_type = DEFAULT_TYPE[ftype_enum]
        if default_type is None:
            raise PlanError(f"file type {ftype_enum.name} needs a gguf package that knows its ggml type; "
                            "the installed one does not (upgrade gguf)")
        ftype = int(ftype_enum)

    # imatrix entries left after --include/--exclude-weights; none left means no imatrix at all
    sizes: dict[str, int] | None = None
    if imatrix_names is None:
        entries: list[str] = []
    elif isinstance(imatrix_names, Mapping):
        # name -> number of values, or name -> the values themselves
        sizes = {k: v if isinstance(v, int) else int(getattr(v, "size", None) or len(v)) for k, v in imatrix_names.items()}
        entries = filter_imatrix(sizes, options.include_weights, options.exclude_weights)
    else:
        entries = filter_imatrix(imatrix_names, options.include_weights, options.exclude_weights)
    imatrix = set(entries)
    has_imatrix = bool(imatrix)

    patterns = [(_compile(p), t) for p, t in options.tensor_types]

    # weights_map order; pruning renames and drops there, before any --keep-split sorting
    order = llama_order(source.tensors)
    prune = sorted(set(options.prune_layers))
    if prune:
        layers = {il for il in (_sscanf_layer(t.name) for t in order) if il is not None}
        missing = [il for il in prune if il not in layers]
        if missing:
            have = f"0..{max(layers)}" if layers else "none"
            raise PlanError(f"--prune-layers {','.join(map(str, missing))}: no such layer (the model has layers {have})")
    new_names, mapped, blk_id = _remap_layers(order, prune)
    kept = [ref for ref in order if new_names[ref.name]]
    if options.keep_split:
        kept.sort(key=lambda ref: (ref.split, ref.offset))

    qs = _State(info, options, has_imatrix, patterns)
    cats = {}
    for ref in kept:
        name = new_names[ref.name]
        cat = category(name, generic)
        cats[ref.name] = cat
        if _is_attn_v(cat):
            qs.n_attention_wv += 1
        if cat == Cat.OUTPUT:
            qs.has_tied_embeddings = False

    decisions: list[TensorPlan] = []
    missing_imatrix: list[str] = []
    wrong_size: list[str] = []
    errors: list[str] = []
    requantize: list[str] = []
    for ref in kept:
        name = new_names[ref.name]
        split = ref.split if options.keep_split else 0
        why_not = why_not_quantized(name, ref.ne, options, info.arch)
        if why_not is not None:
            if generic and not options.only_copy:
                why_not = "generic: " + why_not
            decisions.append(TensorPlan(name, ref, ref.type, why_not, split=split))
            continue
        qtype, why = _get_type(qs, ref, name, default_type, ftype_enum, cats[ref.name])
        if generic:
            why = "generic: " + why
        requires = tensor_requires_imatrix(name, qtype, ftype, cats[ref.name])
        reason = why if "->" in why else f"{why} -> {qtype.name}"
        tensor_plan = TensorPlan(name, ref, qtype, reason, requires_imatrix=requires, split=split)
        if not has_imatrix:
            if requires:  # llama.cpp checks this before quantizing anything
                missing_imatrix.append(name)
        elif tensor_plan.quantize:
            entry = _remap_imatrix(name, mapped)
            if entry in imatrix:
                ne2 = ref.ne[2] if len(ref.ne) > 2 else 1
                want = ref.ne[0] * ne2
                if sizes is not None and sizes[entry] != want:
                    if category(name) != Cat.TOKEN_EMBD:
                        wrong_size.append(f"{name}: imatrix entry '{entry}' has {sizes[entry]} values, the tensor "
                                          f"needs {want}; the imatrix was made for another model")
                    # llama.cpp ignores a token_embd entry of the wrong size
                else:
                    tensor_plan.imatrix_name = entry
            if requires and not tensor_plan.imatrix_name:
                missing_imatrix.append(name)
        if tensor_plan.quantize and ref.ne[0] % type_sizes(qtype)[0]:
            # only an explicit --output-tensor-type / --token-embedding-type skips the fallback
            errors.append(f"{name}: row {ref.ne[0]} is not a multiple of {type_sizes(qtype)[0]} ({qtype.name}); "
                          f"llama.cpp aborts here: choose a type whose block size divides {ref.ne[0]}")
        if tensor_plan.quantize and ref.type not in _NOT_QUANTIZED and not options.allow_requantize:
            requantize.append(f"{name} ({ref.type.name})")
        decisions.append(tensor_plan)

    # what would stop llama.cpp (at its first offending tensor) once it starts writing; a dry run
    # only warns about the imatrix, as llama.cpp's does
    errors = wrong_size + errors
    warnings: list[str] = []
    if missing_imatrix:
        shown = ", ".join(missing_imatrix[:5]) + (f" and {len(missing_imatrix) - 5} more" if len(missing_imatrix) > 5 else "")
        where = "has no entry for" if has_imatrix else "is required (--imatrix FILE) for"
        message = (f"{ftype_name(ftype)}: an importance matrix {where} {len(missing_imatrix)} tensor(s) "
                   f"({shown}); without one these very low-bit types give garbage")
        errors.append(message)
        warnings.append(message)
    if requantize:
        errors.append(f"{len(requantize)} tensor(s) are already quantized ({', '.join(requantize[:3])}"
                      f"{' ...' if len(requantize) > 3 else ''}); pass --allow-requantize to requantize them")
    if qs.n_fallback:
        warnings.append(f"{qs.n_fallback} of {len(source.tensors)} tensor(s) required fallback quantization")

    n_splits = 1
    if options.keep_split:
        n_splits = max([t.split + 1 for t in decisions] + [1])
    block_count = blk_id if prune else None
    n_entries = len(imatrix) if has_imatrix else 0
    return Plan(decisions, output_kv(source, ftype, options, block_count, n_entries), ftype,
                n_splits=n_splits, n_fallback=qs.n_fallback,
                n_elements=sum(t.n_elements for t in source.tensors), has_imatrix=has_imatrix,
                block_count=block_count, arch=info.arch, generic=generic, notes=notes, warnings=warnings,
                errors=errors, missing_imatrix=missing_imatrix)


def plan_to_json(plan: Plan) -> dict:
    """The --dry-run --json document: one entry per tensor in output order, then the totals.
    bpw divides by every source tensor's weights (pruned ones too), as llama-quantize does."""
    tensors = [{
        "name": t.name,
        "shape": list(t.ne),
        "from": t.ref.type.name,
        "to": t.type.name,
        "reason": t.reason,
        "bytes": t.nbytes,
        "bytes_in": source_nbytes(t.ref),
        **({"imatrix": t.imatrix_name} if t.imatrix_name else {}),
        **({"split": t.split} if plan.n_splits > 1 else {}),
    } for t in plan.tensors]
    n = plan.n_elements
    bytes_in, bytes_out = plan.bytes_in, plan.bytes_out
    return {
        "file_type": plan.ftype,
        "file_type_name": ftype_name(plan.ftype),
        "arch": plan.arch,
        "generic": plan.generic,
        "notes": list(plan.notes),
        "tensors": tensors,
        "n_tensors": len(tensors),
        "n_elements": n,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "bpw_in": round(bytes_in * 8 / n, 4) if n else 0.0,
        "bpw_out": round(bytes_out * 8 / n, 4) if n else 0.0,
        "n_fallback": plan.n_fallback,
        "n_splits": plan.n_splits,
        "has_imatrix": plan.has_imatrix,
        "warnings": list(plan.warnings),
        "errors": list(plan.errors),
    }
