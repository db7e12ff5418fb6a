"""Golden plans (tests/golden_plans/*.json, made by scripts/make_golden_plans.py from llama.cpp's
own choice) turned into planner inputs: a metadata-only Source and QuantizeOptions."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from gguf import GGMLQuantizationType as T, GGUFValueType

from quantize_cli.plan import QuantizeOptions, parse_file_type, parse_override_kv
from quantize_cli.formats.values import KV
from quantize_cli.sources.base import Source, TensorRef

GOLDEN = Path(__file__).parent / "golden_plans"


def _no_data():
    raise AssertionError("the planner must not read tensor data")


class GoldenSource(Source):
    """A model as a golden file records it: scalar metadata and tensor shapes, no data."""

    def __init__(self, doc: dict):
        self.path = Path(doc["model"])
        self.kv = [KV(key, GGUFValueType(vtype), value) for key, vtype, value in doc["kv"]]
        self.tensors = [TensorRef(name, tuple(ne), T[type_name], _no_data, split=split, offset=offset)
                        for name, ne, type_name, split, offset in doc["tensors"]]
        self.n_splits = max(t.split for t in self.tensors) + 1


def load(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def all_models() -> list[str]:
    return sorted(p.stem for p in GOLDEN.glob("*.json"))


def case_id(case: dict) -> str:
    opts = case["options"]
    parts = [case["file_type"]]
    for key, value in opts.items():
        if value is True:
            parts.append(key)
        elif isinstance(value, list):
            parts.append(f"{key}=" + ",".join(str(v[0] if isinstance(v, list) else v) for v in value))
        else:
            parts.append(f"{key}={value}")
    return "+".join(parts)


def options_for(case: dict) -> QuantizeOptions:
    opts = case["options"]
    ftype, name = parse_file_type(case["file_type"])
    return QuantizeOptions(
        ftype=ftype,
        only_copy=name == "COPY",
        allow_requantize=opts.get("allow_requantize", False),
        leave_output_tensor=opts.get("leave_output_tensor", False),
        pure=opts.get("pure", False),
        keep_split=opts.get("keep_split", False),
        output_tensor_type=T[opts["output_tensor_type"]] if "output_tensor_type" in opts else None,
        token_embedding_type=T[opts["token_embedding_type"]] if "token_embedding_type" in opts else None,
        tensor_types=[(p.lower(), T[t]) for p, t in opts.get("tensor_types", [])],
        prune_layers=list(opts.get("prune_layers", [])),
        include_weights=list(opts.get("include_weights", [])),
        exclude_weights=list(opts.get("exclude_weights", [])),
        kv_overrides=[parse_override_kv(f"{k}={kind}:{v}") for k, kind, v in opts.get("kv_overrides", [])],
    )


def imatrix_names(source: Source, case: dict) -> list[str] | None:
    """The imatrix the golden case was made with, before --include/--exclude-weights filtering."""
    if not case["options"].get("imatrix"):
        return None
    return [t.name for t in source.tensors if len(t.ne) >= 2 and t.name.endswith("weight") and t.ne[1] > 1]


def expected_tensors(doc: dict, case: dict) -> list[tuple[str, str]]:
    if "types" in case:
        return list(zip(doc["order"], case["types"].split(" ")))
    return [tuple(t.split(" ")) for t in case["tensors"]]


# --- comparing a file llama.cpp wrote with our plan (reference tier) ----------------------------

def _expected_layout(plan, shard: int = 0):
    """(metadata bytes per key, [(name, ne, type id, size)]) of one output file of our plan."""
    kv = {}
    for pair in plan.shard_kv(shard):
        kv[pair.key] = _serialize_kv(pair)
    tensors = [(t.name, tuple(t.ne), int(t.type), t.nbytes) for t in plan.tensors if t.split == shard]
    return kv, tensors


def _actual_layout(path: Path):
    layout = _ref().read_gguf_layout(path)
    kv = {}
    for key, vtype, raw in layout["kv"]:
        kv[key] = struct.pack("<Q", len(key.encode())) + key.encode() + struct.pack("<I", vtype) + raw
    tensors = layout["tensors"]
    ends = [t[3] for t in tensors[1:]] + [layout["size"] - layout["data_offset"]]
    sizes = []
    for (name, ne, qtype, offset), end in zip(tensors, ends):
        sizes.append((name, ne, qtype, end - offset))
    return kv, sizes, layout


def _pad(n: int) -> int:
    return (n + 31) // 32 * 32


def compare_file(plan, path: Path, shard: int = 0):
    want_kv, want_tensors = _expected_layout(plan, shard)
    got_kv, got_tensors, layout = _actual_layout(path)
    assert list(got_kv) == list(want_kv), "metadata keys or their order differ"
    for key in want_kv:
        assert got_kv[key] == want_kv[key], f"metadata {key} differs"
    assert [t[:3] for t in got_tensors] == [t[:3] for t in want_tensors]
    # each tensor's data is padded to 32 bytes; the file ends with the last tensor's padding
    for (name, _, _, got), (_, _, _, want) in zip(got_tensors, want_tensors):
        assert got == _pad(want), f"{name}: {got} bytes in the file, {want} planned"


def _ref():
    import llama_quantize_ref

    return llama_quantize_ref


def _serialize_kv(pair):
    from quantize_cli.formats.gguf_writer import serialize_kv

    return serialize_kv(pair)
