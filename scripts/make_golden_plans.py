#!/usr/bin/env python3
"""Golden plans: llama.cpp's own per-tensor type choice, as data, for every file type on a set of
models (and each llama-quantize option on one of them), written to tests/golden_plans/MODEL.json.

The choice comes from llama_model_quantize with dry_run set (llama-cpp-python's libllama.so,
through tests/llama_quantize_ref.py): it logs every tensor with its target type in output order,
without quantizing. Nothing in this script asks pyquantize's planner; byte sizes come from
libggml's ggml_row_size. Synthetic models are made by scripts/make_synthetic.py (fixed seed), so
each golden file records the arguments that rebuild its model and the model's metadata and tensor
shapes, which is all the default-tier test needs.

    .venv/bin/python scripts/make_golden_plans.py [--only MODEL ...] [--work DIR] [--check]

--check compares with the committed files instead of writing them (exit 1 on a difference).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "scripts")]

import llama_quantize_ref as ref  # noqa: E402
import make_synthetic  # noqa: E402

GOLDEN = ROOT / "tests" / "golden_plans"
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"

# llama-quantize's file types, without the aliases Q3_K Q4_K Q5_K (same numbers as *_M)
FILE_TYPES = {
    "Q1_0": 40, "Q2_0": 41, "Q4_0": 2, "Q4_1": 3, "MXFP4_MOE": 38, "Q5_0": 8, "Q5_1": 9, "IQ2_XXS": 19,
    "IQ2_XS": 20, "IQ2_S": 28, "IQ2_M": 29, "IQ1_S": 24, "IQ1_M": 31, "TQ1_0": 36, "TQ2_0": 37, "Q2_K": 10,
    "Q2_K_S": 21, "IQ3_XXS": 23, "IQ3_S": 26, "IQ3_M": 27, "IQ3_XS": 22, "Q3_K_S": 11, "Q3_K_M": 12,
    "Q3_K_L": 13, "IQ4_NL": 25, "IQ4_XS": 30, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17,
    "Q6_K": 18, "Q8_0": 7, "F16": 1, "BF16": 32, "F32": 0, "COPY": 0,
}
FLOAT_FILE_TYPES = ("F16", "BF16", "F32", "COPY")

# ggml type ids by name (ggml.h), for options given by name
GGML_TYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11,
    "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19, "IQ4_NL": 20,
    "IQ3_S": 21, "IQ2_S": 22, "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30, "TQ1_0": 34, "TQ2_0": 35, "MXFP4": 39,
    "Q1_0": 41, "Q2_0": 42,
}
GGML_TYPE_NAMES = {v: k for k, v in GGML_TYPES.items()}

SYNTH = "--embd 256 --heads 8 --vocab 512"
MODELS: dict[str, dict] = {
    "stories260K": {"path": "tests/data/stories260K.gguf"},
    "llama-gqa4": {"args": f"--layers 8 {SYNTH} --ff 768 --kv-heads 2"},
    "llama-gqa1": {"args": f"--layers 8 {SYNTH} --ff 768 --kv-heads 8"},
    "llama-tied16": {"args": f"--layers 16 {SYNTH} --ff 512 --kv-heads 4 --tied --dtype f16"},
    "llama-moe8": {"args": f"--layers 8 {SYNTH} --ff 256 --kv-heads 4 --experts 8 --dtype f16"},
    "llama-moe4": {"args": f"--layers 8 {SYNTH} --ff 256 --kv-heads 2 --experts 4 --dtype bf16"},
    "falcon-qkv": {"args": f"--arch falcon --fused-qkv --layers 8 {SYNTH} --ff 512 --kv-heads 1 --dtype f16"},
    "llama-70b-shape": {"args": "--layers 80 --embd 256 --heads 4 --vocab 512 --ff 256 --kv-heads 1 --dtype f16",
                        "imatrix_cases": False},
    "llama-gqa4-split": {"args": f"--layers 8 {SYNTH} --ff 768 --kv-heads 2 --dtype f16 --split-max-tensors 30",
                         "file_types": False},
    "llama-gqa4-q8_0": {"from": "llama-gqa4", "quantize": "Q8_0", "file_types": False},
}

# each llama-quantize option at least once (model, file type, options); imatrix: an entry of ones
# for every 2-D+ weight of the input, then filtered by include/exclude as llama-quantize does
OPTION_CASES: list[tuple[str, str, dict]] = [
    ("llama-gqa4", "Q4_K_M", {"pure": True}),
    ("llama-gqa4", "Q2_K", {"pure": True}),
    ("llama-gqa4", "IQ2_XXS", {"pure": True, "imatrix": True}),
    ("llama-gqa4", "Q4_K_M", {"leave_output_tensor": True}),
    ("llama-gqa4", "IQ2_XS", {"leave_output_tensor": True, "imatrix": True}),
    ("llama-gqa4", "Q4_K_M", {"output_tensor_type": "Q8_0", "token_embedding_type": "Q4_0"}),
    ("llama-gqa4", "Q3_K_M", {"output_tensor_type": "IQ4_NL"}),
    ("llama-gqa4", "F16", {"output_tensor_type": "Q8_0", "token_embedding_type": "Q5_1"}),
    ("llama-tied16", "Q4_K_M", {"output_tensor_type": "Q5_0"}),
    ("llama-tied16", "Q4_K_M", {"token_embedding_type": "Q3_K"}),
    ("llama-tied16", "IQ2_M", {"output_tensor_type": "Q8_0", "token_embedding_type": "Q4_K", "imatrix": True}),
    ("llama-gqa4", "Q4_K_M", {"tensor_types": [["attn_v", "Q8_0"], [r"blk\.[0-3]\.ffn_down", "IQ4_NL"],
                                               ["ffn", "Q5_K"], ["output", "Q4_0"]]}),
    ("llama-gqa4", "Q4_K_M", {"tensor_types": [["attn_(q|k)", "Q2_K"], ["^blk\\.7\\.", "Q8_0"]]}),
    ("llama-gqa4", "IQ3_XXS", {"tensor_types": [["token_embd", "Q6_K"], ["attn_v", "IQ2_XXS"]], "imatrix": True}),
    ("llama-gqa4", "F16", {"tensor_types": [["attn_v", "Q8_0"]]}),
    ("llama-gqa4", "Q4_K_M", {"prune_layers": [1, 6]}),
    ("llama-gqa4", "Q3_K_M", {"prune_layers": [0]}),
    ("llama-gqa4", "Q4_0", {"prune_layers": [2, 3], "imatrix": True}),
    ("llama-moe4", "IQ3_XS", {"prune_layers": [7], "imatrix": True}),
    ("llama-gqa4", "Q4_0", {"imatrix": True, "include_weights": ["attn"]}),
    ("llama-gqa4", "Q4_0", {"imatrix": True, "exclude_weights": ["blk", "output", "token_embd"]}),
    ("llama-gqa4", "IQ4_NL", {"imatrix": True, "exclude_weights": ["ffn_down"]}),
    ("llama-gqa4", "Q4_K_M", {"kv_overrides": [["llama.block_count", "int", 16], ["general.name", "str", "renamed"]]}),
    ("llama-gqa1", "IQ2_XS", {"kv_overrides": [["llama.attention.head_count_kv", "int", 2]], "imatrix": True}),
    ("llama-gqa4", "COPY", {"kv_overrides": [["general.file_type", "int", 7]]}),
    ("llama-gqa4-split", "Q4_K_M", {"keep_split": True}),
    ("llama-gqa4-split", "Q4_K_M", {}),
    ("llama-gqa4-split", "IQ3_XS", {"keep_split": True, "imatrix": True}),
    ("llama-gqa4-q8_0", "Q4_K_M", {"allow_requantize": True}),
    ("llama-gqa4-q8_0", "Q4_K_M", {}),
    ("llama-gqa4-q8_0", "COPY", {}),
    ("stories260K", "Q4_K_M", {"pure": True}),
    ("stories260K", "Q5_K_M", {"output_tensor_type": "Q4_K", "token_embedding_type": "IQ4_XS"}),
]


def model_path(name: str, work: Path) -> Path:
    spec = MODELS[name]
    if "path" in spec:
        return ROOT / spec["path"]
    if "from" in spec:
        out = work / f"{name}.gguf"
        if not out.exists():
            rc, log = ref.quantize(model_path(spec["from"], work), out, FILE_TYPES[spec["quantize"]])
            if rc:
                raise SystemExit(f"could not make {name}:\n{log[-2000:]}")
        return out
    out = work / f"{name}.gguf"
    split = "--split-max-tensors" in spec["args"]
    first = work / f"{name}-00001-of-{_n_shards(spec['args']):05d}.gguf" if split else out
    if not first.exists():
        make_synthetic.main([str(out), *shlex.split(spec["args"])])
    return first


def _n_shards(args: str) -> int:
    opts = shlex.split(args)
    per = int(opts[opts.index("--split-max-tensors") + 1])
    layers = int(opts[opts.index("--layers") + 1])
    n = 3 + 9 * layers  # token_embd, output_norm, output + 9 a layer (dense, unfused, untied)
    return (n + per - 1) // per


def read_model(path: Path) -> dict:
    """What the planner needs of a model: scalar metadata and every tensor (in file order, with
    its shard and data offset); split models are read shard by shard."""
    m = re.match(r"(.*)-(\d{5})-of-(\d{5})\.gguf$", path.name)
    paths = [path.with_name(f"{m.group(1)}-{i:05d}-of-{m.group(3)}.gguf") for i in range(1, int(m.group(3)) + 1)] if m else [path]
    kv, tensors = [], []
    for split, p in enumerate(paths):
        layout = ref.read_gguf_layout(p)
        if split == 0:
            for key, vtype, raw in layout["kv"]:
                if vtype in (8,):
                    kv.append([key, vtype, raw[8:].decode()])
                elif vtype != 9:
                    kv.append([key, vtype, struct.unpack(ref._GGUF_SCALAR[vtype], raw)[0]])
        for name, ne, qtype, offset in layout["tensors"]:
            tensors.append([name, list(ne), GGML_TYPE_NAMES[qtype], split, layout["data_offset"] + offset])
    return {"kv": kv, "tensors": tensors}


def imatrix_for(model: dict, include: list[str], exclude: list[str]) -> dict:
    """Ones for every 2-D+ *weight of the model, filtered like quantize.cpp's prepare_imatrix."""
    import numpy as np

    data = {}
    for name, ne, *_ in model["tensors"]:
        if len(ne) >= 2 and name.endswith("weight") and ne[1] > 1:
            data[name] = np.ones(ne[0] * (ne[2] if len(ne) > 2 else 1), dtype=np.float32)
    for part in exclude:
        data = {k: v for k, v in data.items() if part not in k}
    if include:
        data = {k: v for k, v in data.items() if any(part in k for part in include)}
    return data


def reference_case(path: Path, model: dict, file_type: str, options: dict) -> dict:
    """Run llama.cpp's dry run for one case and return what it chose."""
    imatrix = imatrix_for(model, options.get("include_weights", []), options.get("exclude_weights", [])) \
        if options.get("imatrix") else None
    tt = [(p.lower(), GGML_TYPES[t]) for p, t in options.get("tensor_types", [])]
    kwargs = dict(
        dry_run=True, only_copy=file_type == "COPY", pure=options.get("pure", False),
        leave_output_tensor=options.get("leave_output_tensor", False), keep_split=options.get("keep_split", False),
        allow_requantize=options.get("allow_requantize", False),
        output_tensor_type=GGML_TYPES[options["output_tensor_type"]] if "output_tensor_type" in options else None,
        token_embedding_type=GGML_TYPES[options["token_embedding_type"]] if "token_embedding_type" in options else None,
        imatrix=imatrix or None, tensor_types=tt or None, prune_layers=options.get("prune_layers"),
        kv_overrides=[tuple(o) for o in options.get("kv_overrides", [])] or None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        rc, log = ref.quantize(path, Path(tmp) / "out.gguf", FILE_TYPES[file_type], **kwargs)
    case = {"file_type": file_type, "options": options}
    if rc != 0:
        errors = re.findall(r"failed to quantize: (.*)", log)
        case["error"] = errors[-1].strip() if errors else "failed"
        return case
    chosen = ref.dry_run_types(log)
    shapes = {t[0]: t[1] for t in model["tensors"]}
    so = ref.ggml_ref.lib()
    total = 0
    for name, type_name in chosen:
        ne = _shape_after_prune(name, shapes, options)
        rows = 1
        for d in ne[1:]:
            rows *= d
        total += rows * so.ggml_row_size(GGML_TYPES[type_name], ne[0])
    case["tensors"] = [f"{name} {type_name}" for name, type_name in chosen]
    case["bytes_out"] = total
    m = re.search(r"WARNING: (\d+) of (\d+) tensor\(s\) required fallback", log)
    case["n_fallback"] = int(m.group(1)) if m else 0
    case["requires_imatrix"] = "will require an imatrix" in log
    return case


def _shape_after_prune(name: str, shapes: dict, options: dict) -> list[int]:
    if name in shapes and not options.get("prune_layers"):
        return shapes[name]
    # a pruned model's blk.N names are renumbered; every layer has the same shapes here
    m = re.match(r"blk\.(\d+)\.(.*)", name)
    if m:
        for other, ne in shapes.items():
            if other.endswith("." + m.group(2)) and other.startswith("blk."):
                return ne
    return shapes[name]


def cases_for(name: str) -> list[tuple[str, dict]]:
    spec = MODELS[name]
    out: list[tuple[str, dict]] = []
    if spec.get("file_types", True):
        for ft in FILE_TYPES:
            out.append((ft, {}))
            if spec.get("imatrix_cases", True) and ft not in FLOAT_FILE_TYPES:
                out.append((ft, {"imatrix": True}))
    out += [(ft, opts) for model, ft, opts in OPTION_CASES if model == name]
    return out


def golden_for(name: str, work: Path) -> dict:
    path = model_path(name, work)
    model = read_model(path)
    spec = MODELS[name]
    doc = {
        "model": name,
        "made_by": (f"scripts/make_synthetic.py OUT.gguf {spec['args']}" if "args" in spec else
                    spec.get("path") or f"llama_model_quantize({spec['from']}, {spec['quantize']})"),
        "reference": "llama_model_quantize dry run, llama-cpp-python 0.3.36",
        "kv": model["kv"],
        "tensors": model["tensors"],
        "order": [],
        "cases": [reference_case(path, model, ft, opts) for ft, opts in cases_for(name)],
    }
    # llama.cpp's output order without options (that of the first case that ran), stored once;
    # a case whose names and order match it keeps only its types
    first = next((c["tensors"] for c in doc["cases"] if "tensors" in c and not c["options"]), None)
    if first is not None:
        doc["order"] = [t.split(" ")[0] for t in first]
        for case in doc["cases"]:
            if "tensors" in case and [t.split(" ")[0] for t in case["tensors"]] == doc["order"]:
                case["types"] = " ".join(t.split(" ")[1] for t in case.pop("tensors"))
    return doc


def dump(doc: dict) -> str:
    # one case (and one tensor) a line: small diffs when llama.cpp changes its mind; the keys of a
    # case: file_type, options, then error, or types (in "order") or tensors ("name TYPE", when
    # options change names or order), bytes_out, n_fallback, requires_imatrix
    lines = ["{", f'  "model": {json.dumps(doc["model"])},', f'  "made_by": {json.dumps(doc["made_by"])},',
             f'  "reference": {json.dumps(doc["reference"])},', f'  "kv": {json.dumps(doc["kv"])},', '  "tensors": [']
    lines += [f"    {json.dumps(t)}," for t in doc["tensors"]]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["  ],", f'  "order": {json.dumps(doc["order"])},', '  "cases": [']
    lines += [f"    {json.dumps(c)}," for c in doc["cases"]]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="model names (default: all)")
    p.add_argument("--work", type=Path, default=None, help="where synthetic models are built (default: a temp dir)")
    p.add_argument("--check", action="store_true", help="compare with the committed golden files, write nothing")
    args = p.parse_args(argv)
    if ref.lib() is None:
        raise SystemExit("llama-cpp-python is not installed: pip install llama-cpp-python")
    names = args.only or list(MODELS)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        bad = 0
        for name in names:
            text = dump(golden_for(name, work))
            target = GOLDEN / f"{name}.json"
            if args.check:
                same = target.exists() and target.read_text() == text
                bad += not same
                print(f"{'same' if same else 'DIFFERENT'}: {target.relative_to(ROOT)}")
            else:
                GOLDEN.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                print(f"wrote {target.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
