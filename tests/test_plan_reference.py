"""Reference tier: the planner against llama.cpp itself (llama_model_quantize from llama-cpp-python).

1. Golden plans regenerated now, from the installed llama.cpp, equal the committed ones, and our
   plan equals them (so the default tier checks the right thing).
2. Real quantizations: the file llama.cpp writes has exactly our plan's tensor order, names and
   types, our per-tensor byte sizes, our metadata (every key, type and value byte) and our file
   size, for every file type on stories260K and for each option on a synthetic model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import ggml_ref
import llama_quantize_ref as ref
import plan_cases
from quantize_cli.plan import QuantizeOptions, make_plan, parse_override_kv, parse_file_type
from quantize_cli.sources import open_source

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import make_golden_plans as golden  # noqa: E402

pytestmark = pytest.mark.reference

REGENERATED = list(golden.MODELS)  # every golden model, rebuilt and re-asked (about 15 s)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    if ref.lib() is None:
        pytest.skip(ggml_ref.WHY_ABSENT)
    return tmp_path_factory.mktemp("plan-models")


@pytest.mark.parametrize("model", REGENERATED)
def test_golden_plans_are_current(work, model):
    fresh = golden.golden_for(model, work)
    committed = plan_cases.load(model)
    for new, old in zip(fresh["cases"], committed["cases"]):
        assert new == old, f"{model} {plan_cases.case_id(old)}: llama.cpp now chooses differently; " \
                           "rerun scripts/make_golden_plans.py"
    assert len(fresh["cases"]) == len(committed["cases"])
    assert fresh["tensors"] == committed["tensors"] and fresh["kv"] == committed["kv"]


def _imatrix(source, include=(), exclude=()):
    import numpy as np

    data = {}
    for t in source.tensors:
        if len(t.ne) >= 2 and t.name.endswith("weight") and t.ne[1] > 1:
            data[t.name] = np.ones(t.ne[0] * (t.ne[2] if len(t.ne) > 2 else 1), dtype=np.float32)
    for part in exclude:
        data = {k: v for k, v in data.items() if part not in k}
    if include:
        data = {k: v for k, v in data.items() if any(part in k for part in include)}
    return data


STORIES_TYPES = [ft for ft in golden.FILE_TYPES if ft != "Q1_0"]  # Q1_0: llama.cpp fails here


@pytest.mark.parametrize("file_type", STORIES_TYPES)
def test_real_quantize_stories_matches_plan(work, file_type):
    """Every file type on the real model (fallback paths), with an imatrix so that every type runs,
    with the quantize.imatrix.* metadata llama-quantize adds."""
    path = Path(plan_cases.GOLDEN.parent / "data" / "stories260K.gguf")
    source = open_source(path)
    imatrix = _imatrix(source)
    ftype, name = parse_file_type(file_type)
    options = QuantizeOptions(ftype=ftype, only_copy=name == "COPY", imatrix_file="imatrix.gguf",
                              imatrix_datasets=["calibration-en.txt"], imatrix_chunks=10)
    plan = make_plan(source, options, {k: v.size for k, v in imatrix.items()})
    assert not plan.errors, plan.errors
    overrides = [("quantize.imatrix.file", "str", "imatrix.gguf"), ("quantize.imatrix.dataset", "str", "calibration-en.txt"),
                 ("quantize.imatrix.entries_count", "int", len(imatrix)), ("quantize.imatrix.chunks_count", "int", 10)]
    out = work / f"stories-{file_type}.gguf"
    rc, log = ref.quantize(path, out, golden.FILE_TYPES[file_type], only_copy=name == "COPY",
                           imatrix=imatrix, kv_overrides=overrides)
    assert rc == 0, log[-2000:]
    plan_cases.compare_file(plan, out)
    out.unlink()


OPTION_RUNS = [
    ("llama-gqa4", "Q4_K_M", {"pure": True}),
    ("llama-gqa4", "Q4_K_M", {"leave_output_tensor": True}),
    ("llama-gqa4", "Q3_K_M", {"output_tensor_type": "Q8_0", "token_embedding_type": "Q4_0"}),
    ("llama-tied16", "Q4_K_S", {"output_tensor_type": "Q5_0"}),
    ("llama-gqa4", "Q4_K_M", {"tensor_types": [["attn_v", "Q8_0"], [r"blk\.[0-3]\.ffn_down", "IQ4_NL"], ["FFN", "Q5_K"]]}),
    ("llama-gqa4", "Q4_K_M", {"prune_layers": [1, 6]}),
    ("llama-gqa4", "Q4_0", {"prune_layers": [0, 3], "imatrix": True}),
    ("llama-gqa4", "Q4_0", {"imatrix": True, "include_weights": ["attn"]}),
    ("llama-gqa4", "Q5_0", {"imatrix": True, "exclude_weights": ["blk"]}),
    ("llama-gqa4", "Q4_K_M", {"kv_overrides": [["llama.block_count", "int", 16], ["some.int", "int", -5], ["general.name", "str", "renamed"],
                                               ["some.float", "float", 0.1], ["some.flag", "bool", "true"],
                                               ["general.architecture", "str", "llama"]]}),
    ("llama-gqa4", "COPY", {"kv_overrides": [["general.file_type", "int", 7]]}),
    ("llama-gqa4-split", "Q4_K_M", {"keep_split": True}),
    ("llama-gqa4-split", "Q8_0", {}),
    ("llama-gqa4-q8_0", "Q4_K_M", {"allow_requantize": True}),
    ("llama-gqa4-q8_0", "COPY", {}),
    ("llama-moe4", "Q4_K_M", {"imatrix": True}),
    ("falcon-qkv", "Q3_K_L", {}),
]


@pytest.mark.parametrize("model,file_type,opts", OPTION_RUNS,
                         ids=[f"{m}:{plan_cases.case_id({'file_type': f, 'options': o})}" for m, f, o in OPTION_RUNS])
def test_real_quantize_with_option_matches_plan(work, model, file_type, opts):
    path = golden.model_path(model, work)
    source = open_source(path)
    case = {"file_type": file_type, "options": opts}
    options = plan_cases.options_for(case)
    imatrix = _imatrix(source, opts.get("include_weights", ()), opts.get("exclude_weights", ())) if opts.get("imatrix") else None
    names = plan_cases.imatrix_names(source, case)
    plan = make_plan(source, options, names)
    assert not plan.errors, plan.errors
    # llama-quantize strips .gguf from OUT with --keep-split; the library appends -0000i-of-0000n.gguf
    out = work / ("out" if options.keep_split else "out.gguf")
    rc, log = ref.quantize(
        path, out, golden.FILE_TYPES[file_type], only_copy=file_type == "COPY", pure=options.pure,
        leave_output_tensor=options.leave_output_tensor, keep_split=options.keep_split,
        allow_requantize=options.allow_requantize,
        output_tensor_type=options.output_tensor_type, token_embedding_type=options.token_embedding_type,
        tensor_types=[(p, int(t)) for p, t in options.tensor_types] or None, prune_layers=options.prune_layers or None,
        imatrix=imatrix or None, kv_overrides=[tuple(o) for o in opts.get("kv_overrides", [])] or None)
    assert rc == 0, log[-2000:]
    if options.keep_split:
        assert plan.n_splits > 1
        for shard in range(plan.n_splits):
            shard_path = work / f"out-{shard + 1:05d}-of-{plan.n_splits:05d}.gguf"
            plan_cases.compare_file(plan, shard_path, shard)
            shard_path.unlink()
    else:
        plan_cases.compare_file(plan, out)
        out.unlink()


def test_requantize_refused_like_llama_cpp(work):
    path = golden.model_path("llama-gqa4-q8_0", work)
    plan = make_plan(open_source(path), QuantizeOptions(ftype=parse_file_type("Q4_K_M")[0]))
    assert any("--allow-requantize" in e for e in plan.errors)
    rc, log = ref.quantize(path, work / "refused.gguf", 15)
    assert rc != 0 and "requantizing from type q8_0 is disabled" in log


def test_imatrix_required_like_llama_cpp(work):
    path = golden.model_path("llama-gqa4", work)
    plan = make_plan(open_source(path), QuantizeOptions(ftype=parse_file_type("IQ2_XXS")[0]))
    assert plan.missing_imatrix and plan.errors
    rc, log = ref.quantize(path, work / "refused.gguf", 19)
    assert rc != 0 and "requires an imatrix" in log
    assert plan.missing_imatrix[0] in log  # llama.cpp names the first offending tensor; we name them all


def test_override_kv_parsing_matches_llama_cpp_types():
    assert parse_override_kv("a=int:-5").value == 5
    assert parse_override_kv("a=float:0.1").vtype.name == "FLOAT32"
