"""Default tier: the planner's parsing, errors, metadata order, reasons and generic rules, on
hand-built metadata-only models (the golden tests cover the type choice itself)."""

import pytest
from gguf import GGMLQuantizationType as T, GGUFValueType as V

import plan_cases
from quantize_cli.errors import PlanError
from quantize_cli.plan import (
    FILE_TYPES, FType, QuantizeOptions, make_plan, parse_file_type, parse_override_kv, parse_prune_layers,
    parse_tensor_type, parse_tensor_type_option, plan_to_json, read_tensor_type_file,
)


def llama(n_layer=8, embd=256, ff=768, head=8, head_kv=2, arch="llama", tied=False, extra_kv=(), names=None):
    kv = [["general.architecture", 8, arch], ["general.name", 8, "t"],
          [f"{arch}.block_count", 4, n_layer], [f"{arch}.attention.head_count", 4, head],
          [f"{arch}.attention.head_count_kv", 4, head_kv], *extra_kv]
    kv_dim = embd // head * head_kv
    tensors = [["token_embd.weight", [embd, 512], "F32"], ["output_norm.weight", [embd], "F32"]]
    if not tied:
        tensors.append(["output.weight", [embd, 512], "F32"])
    for i in range(n_layer):
        tensors += [[f"blk.{i}.attn_norm.weight", [embd], "F32"], [f"blk.{i}.attn_q.weight", [embd, embd], "F32"],
                    [f"blk.{i}.attn_k.weight", [embd, kv_dim], "F32"], [f"blk.{i}.attn_v.weight", [embd, kv_dim], "F32"],
                    [f"blk.{i}.attn_output.weight", [embd, embd], "F32"], [f"blk.{i}.ffn_norm.weight", [embd], "F32"],
                    [f"blk.{i}.ffn_gate.weight", [embd, ff], "F32"], [f"blk.{i}.ffn_down.weight", [ff, embd], "F32"],
                    [f"blk.{i}.ffn_up.weight", [embd, ff], "F32"]]
    if names is not None:
        tensors = names
    offset = 0
    rows = []
    for name, ne, type_name in tensors:
        rows.append([name, ne, type_name, 0, offset])
        offset += 1
    return plan_cases.GoldenSource({"model": "test", "kv": kv, "tensors": rows})


def opts(name="Q4_K_M", **kw):
    ftype, canonical = parse_file_type(name)
    return QuantizeOptions(ftype=ftype, only_copy=canonical == "COPY", **kw)


def by_name(plan):
    return {t.name: t for t in plan.tensors}


# --- parsing, as llama-quantize parses ------------------------------------------------------------

def test_file_types_are_llama_quantizes_list():
    assert list(FILE_TYPES)[:3] == ["Q1_0", "Q2_0", "Q4_0"] and list(FILE_TYPES)[-2:] == ["F32", "COPY"]
    assert len(FILE_TYPES) == 39
    assert FILE_TYPES["Q4_K"] == (15, "alias for Q4_K_M")
    assert FILE_TYPES["Q4_K_M"] == (15, " 4.58G, +0.1754 ppl @ Llama-3-8B")


@pytest.mark.parametrize("text,expected", [
    ("q4_k_m", (15, "Q4_K_M")), ("Q4_K", (15, "Q4_K")), ("q3_k", (12, "Q3_K")), ("Q5_K", (17, "Q5_K")),
    ("copy", (0, "COPY")), ("iq2_xxs", (19, "IQ2_XXS")), ("mxfp4_moe", (38, "MXFP4_MOE")),
    # by number: the first entry of the list with that number (an alias comes before its *_M)
    ("15", (15, "Q4_K")), ("0", (0, "F32")), ("7", (7, "Q8_0")), (" 18", (18, "Q6_K")), ("7abc", (7, "Q8_0")),
    ("41", (41, "Q2_0")),
])
def test_parse_file_type(text, expected):
    assert parse_file_type(text) == expected


@pytest.mark.parametrize("text", ["Q9_9", "", "4", "Q4_K_XL", "1024"])
def test_parse_file_type_unknown(text):
    with pytest.raises(PlanError, match="pyquantize types"):
        parse_file_type(text)


def test_parse_tensor_type():
    assert parse_tensor_type("q4_K") == T.Q4_K
    assert parse_tensor_type("IQ4_NL") == T.IQ4_NL
    assert parse_tensor_type("bf16") == T.BF16
    assert parse_tensor_type("mxfp4") == T.MXFP4
    with pytest.raises(PlanError, match="unknown tensor type 'q4_k_m'"):
        parse_tensor_type("q4_k_m")


def test_parse_tensor_type_option_lowercases_the_pattern_like_llama_quantize():
    assert parse_tensor_type_option("ATTN_V=q8_0") == ("attn_v", T.Q8_0)
    assert parse_tensor_type_option(r"blk\.[0-3]\.ffn_down=IQ4_NL") == (r"blk\.[0-3]\.ffn_down", T.IQ4_NL)
    for bad, why in [("attn_v", "NAME=TYPE"), ("=q8_0", "missing"), ("attn_v=", "missing"),
                     ("attn_v=q9_9", "unknown tensor type"), ("attn_(=q8_0", "not a valid regular expression"),
                     ("a=b=q8_0", "unknown tensor type 'b=q8_0'")]:
        with pytest.raises(PlanError, match=why):
            parse_tensor_type_option(bad)


def test_tensor_type_file(tmp_path):
    f = tmp_path / "types.txt"
    f.write_text("attn_v=q8_0  ffn_down=q6_k\n\n output=Q8_0\n")
    assert read_tensor_type_file(f) == [("attn_v", T.Q8_0), ("ffn_down", T.Q6_K), ("output", T.Q8_0)]
    with pytest.raises(PlanError, match="cannot read"):
        read_tensor_type_file(tmp_path / "missing.txt")


def test_parse_prune_layers():
    assert parse_prune_layers("5,1,5,3") == [1, 3, 5]
    for bad in ("a", "-1", "1,,2"):
        with pytest.raises(PlanError, match="invalid layer"):
            parse_prune_layers(bad)


def test_parse_override_kv_writes_what_llama_quantize_writes():
    kv = parse_override_kv("llama.block_count=int:-12")
    assert (kv.key, kv.vtype, kv.value) == ("llama.block_count", V.UINT32, 12)  # u32 of |value|
    assert parse_override_kv("x=int:12abc").value == 12  # atol
    assert parse_override_kv("x=float:0.5").vtype == V.FLOAT32
    assert parse_override_kv("x=bool:false").value is False
    assert parse_override_kv("general.name=str:a=b:c").value == "a=b:c"
    for bad, why in [("x", "KEY=TYPE:VALUE"), ("x=i32:1", "int, float, bool or str"), ("x=bool:yes", "true or false"),
                     ("x=str:" + "a" * 128, "127"), ("k" * 128 + "=int:1", "under 128")]:
        with pytest.raises(PlanError, match=why):
            parse_override_kv(bad)


# --- errors ---------------------------------------------------------------------------------------

def test_include_and_exclude_together():
    with pytest.raises(PlanError, match="cannot be used together"):
        make_plan(llama(), opts(include_weights=["attn"], exclude_weights=["ffn"]), ["blk.0.attn_v.weight"])


def test_prune_of_a_missing_layer():
    with pytest.raises(PlanError, match="--prune-layers 9: no such layer .*0..7"):
        make_plan(llama(), opts(prune_layers=[1, 9]))


def test_imatrix_required_names_every_tensor():
    plan = make_plan(llama(), opts("IQ2_XXS"))
    # 6 of the 7 matrices a layer (attn_v is Q4_K with GQA 4), less blk.0.ffn_down (Q2_K in the first 1/8)
    assert len(plan.missing_imatrix) == 8 * 6 - 1
    assert "blk.0.attn_q.weight" in plan.errors[0] and "required (--imatrix FILE)" in plan.errors[0]
    plan = make_plan(llama(), opts("IQ2_XXS"), ["blk.0.attn_q.weight"])
    assert "blk.0.attn_q.weight" not in plan.missing_imatrix and "has no entry for" in plan.errors[0]


def test_imatrix_of_the_wrong_size():
    sizes = {"blk.0.ffn_down.weight": 256, "token_embd.weight": 7}
    plan = make_plan(llama(), opts("Q4_K_M"), sizes)
    assert plan.errors == ["blk.0.ffn_down.weight: imatrix entry 'blk.0.ffn_down.weight' has 256 values, "
                           "the tensor needs 768; the imatrix was made for another model"]
    assert by_name(plan)["token_embd.weight"].imatrix_name == ""  # llama.cpp ignores a bad token_embd entry
    import numpy as np

    plan = make_plan(llama(), opts("Q4_K_M"), {name: np.ones(n, np.float32) for name, n in sizes.items()})
    assert len(plan.errors) == 1  # the values themselves work as well as their counts


def test_requantize_needs_allow_requantize():
    source = llama(names=[["blk.0.attn_q.weight", [256, 256], "Q8_0"], ["blk.0.attn_norm.weight", [256], "F32"]])
    assert "--allow-requantize" in make_plan(source, opts("Q4_K_M")).errors[0]
    assert make_plan(source, opts("Q4_K_M", allow_requantize=True)).errors == []


def test_explicit_type_that_does_not_fit_the_row():
    plan = make_plan(llama(embd=64, head=8, head_kv=4, ff=172), opts("Q5_K_M", output_tensor_type=T.Q4_K))
    assert by_name(plan)["output.weight"].type == T.Q4_K  # no fallback after --output-tensor-type, as in llama.cpp
    assert "output.weight: row 64 is not a multiple of 256 (Q4_K); llama.cpp aborts here" in plan.errors[0]


# --- reasons, metadata, json -----------------------------------------------------------------------

def test_reasons_are_short_sentences():
    plan = by_name(make_plan(llama(embd=256, ff=640), opts("Q4_K_M")))
    assert plan["blk.0.attn_v.weight"].reason == \
        "attn_v #0 of 8: first/last 1/8 of layers or every 3rd (use_more_bits) -> Q6_K"
    assert plan["blk.2.attn_v.weight"].reason == "Q4_K_M default -> Q4_K"
    assert plan["blk.1.ffn_down.weight"].reason == "row 640 not a multiple of 256 (Q4_K) -> fallback Q5_0"
    assert plan["blk.0.ffn_down.weight"].reason == "row 640 not a multiple of 256 (Q6_K) -> fallback Q8_0"
    assert plan["output.weight"].reason == "output: at least Q6_K -> Q6_K"
    assert plan["output_norm.weight"].reason == "1-D: kept"
    plan = by_name(make_plan(llama(), opts("Q4_K_M", tensor_types=[("attn_v", T.Q8_0)])))
    assert plan["blk.3.attn_v.weight"].reason == "--tensor-type attn_v=Q8_0 -> Q8_0"


def test_fallback_to_f16_when_no_block_fits():
    plan = by_name(make_plan(llama(embd=64, head=8, head_kv=4, ff=172), opts("Q4_K_M")))
    assert plan["blk.1.ffn_down.weight"].type == T.F16
    assert "nor of 32 (Q5_0) -> fallback F16" in plan["blk.1.ffn_down.weight"].reason


def test_tied_embeddings_take_the_output_rule():
    plan = by_name(make_plan(llama(tied=True), opts("Q4_K_M")))
    assert plan["token_embd.weight"].type == T.Q6_K
    assert plan["token_embd.weight"].reason.startswith("token_embd (tied to output)")
    assert by_name(make_plan(llama(), opts("Q4_K_M")))["token_embd.weight"].type == T.Q4_K


def test_output_metadata_order():
    source = llama(extra_kv=[["general.file_type", 4, 0], ["general.quantization_version", 4, 2],
                             ["split.count", 2, 2], ["tail.key", 4, 1]])
    options = opts("Q4_K_M", prune_layers=[7], kv_overrides=[parse_override_kv("general.name=str:new"),
                                                              parse_override_kv("tail.key=int:5")],
                   imatrix_file="m.gguf", imatrix_datasets=["a.txt", "b.txt"], imatrix_chunks=3)
    plan = make_plan(source, options, ["blk.0.attn_v.weight", "blk.1.attn_v.weight"])
    keys = [kv.key for kv in plan.kv]
    assert keys == ["general.architecture", "llama.attention.head_count", "llama.attention.head_count_kv",
                    "general.quantization_version", "general.file_type", "general.name", "tail.key",
                    "quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                    "quantize.imatrix.chunks_count", "llama.block_count"]
    values = {kv.key: kv.get() for kv in plan.kv}
    assert values["general.file_type"] == 15 and values["tail.key"] == 5 and values["llama.block_count"] == 7
    assert values["quantize.imatrix.dataset"] == "a.txt" and values["quantize.imatrix.entries_count"] == 2


def test_imatrix_filtering_and_has_imatrix():
    names = ["blk.0.ffn_down.weight", "blk.0.attn_v.weight"]
    plan = make_plan(llama(), opts("Q4_0", exclude_weights=["blk"]), names)
    assert not plan.has_imatrix and by_name(plan)["blk.0.ffn_down.weight"].type == T.Q4_0
    plan = make_plan(llama(), opts("Q4_0", include_weights=["attn_v"]), names)
    assert plan.has_imatrix and by_name(plan)["blk.0.ffn_down.weight"].type == T.Q4_1
    assert by_name(plan)["blk.0.ffn_down.weight"].imatrix_name == ""
    assert by_name(plan)["blk.0.attn_v.weight"].imatrix_name == "blk.0.attn_v.weight"


def test_prune_renames_and_looks_up_the_imatrix_under_the_old_name():
    plan = make_plan(llama(), opts("Q4_0", prune_layers=[1]), ["blk.2.attn_q.weight"])
    t = by_name(plan)
    assert "blk.7.attn_q.weight" not in t and t["blk.1.attn_q.weight"].ref.name == "blk.2.attn_q.weight"
    assert t["blk.1.attn_q.weight"].imatrix_name == "blk.2.attn_q.weight"
    assert plan.block_count == 7 and plan.n_elements == sum(r.n_elements for r in llama().tensors)


def test_plan_to_json():
    plan = make_plan(llama(), opts("Q4_K_M"))
    doc = plan_to_json(plan)
    assert doc["file_type"] == 15 and doc["file_type_name"] == "Q4_K_M" and not doc["generic"]
    first = doc["tensors"][0]
    assert set(first) >= {"name", "shape", "from", "to", "reason", "bytes", "bytes_in"}
    assert doc["bytes_out"] == sum(t["bytes"] for t in doc["tensors"]) == plan.bytes_out
    assert doc["bpw_out"] == round(doc["bytes_out"] * 8 / doc["n_elements"], 4)


def test_copy_keeps_every_type_and_the_file_type():
    plan = make_plan(llama(extra_kv=[["general.file_type", 4, 1]]), opts("COPY"))
    assert all(not t.quantize for t in plan.tensors) and plan.ftype == 1
    assert make_plan(llama(), opts("COPY")).ftype == FType.F32 | 1024  # guessed, as llama.cpp marks it


# --- architectures llama.cpp does not know -------------------------------------------------------

def test_unknown_architecture_uses_generic_rules():
    names = [["model.embed_tokens.weight", [256, 512], "F32"], ["lm_head.weight", [256, 512], "F32"],
             ["model.norm.weight", [256], "F32"],
             ["model.layers.0.mlp.down_proj.weight", [768, 256], "F32"],
             ["model.layers.0.conv.bias", [256], "F32"], ["model.layers.0.mixer.weight", [250, 256], "F32"]]
    plan = make_plan(llama(arch="newarch", names=names), opts("Q4_K_M"))
    assert plan.generic and "unknown to llama.cpp" in plan.notes[0]
    t = by_name(plan)
    assert t["lm_head.weight"].type == T.Q6_K and t["lm_head.weight"].reason == "generic: output: at least Q6_K -> Q6_K"
    assert t["model.embed_tokens.weight"].type == T.Q4_K
    assert t["model.layers.0.mlp.down_proj.weight"].type == T.Q4_K
    assert t["model.layers.0.mixer.weight"].type == T.F16  # row 250: no block fits
    assert t["model.norm.weight"].reason == "generic: 1-D: kept"
    assert plan_to_json(plan)["generic"] is True


def test_unknown_architecture_with_llama_names_keeps_the_mixture():
    plan = by_name(make_plan(llama(arch="mystery"), opts("Q4_K_M")))
    assert plan["blk.0.attn_v.weight"].type == T.Q6_K and plan["blk.0.attn_v.weight"].reason.startswith("generic: ")
