"""Default tier: our plan equals llama.cpp's choice, tensor by tensor, for every golden case
(every file type on each model, with and without an imatrix, and each llama-quantize option).
The golden files were made by scripts/make_golden_plans.py from llama_model_quantize's dry run."""

import pytest

import plan_cases
from quantize_cli.errors import PlanError
from quantize_cli.plan import make_plan

CASES = [(model, i) for model in plan_cases.all_models() for i in range(len(plan_cases.load(model)["cases"]))]
_DOCS = {model: plan_cases.load(model) for model in plan_cases.all_models()}


def _id(param):
    model, i = param
    return f"{model}:{plan_cases.case_id(_DOCS[model]['cases'][i])}"


def test_golden_files_exist():
    assert len(_DOCS) >= 8, "tests/golden_plans is missing: run scripts/make_golden_plans.py"


@pytest.mark.parametrize("param", CASES, ids=[_id(p) for p in CASES])
def test_plan_matches_llama_cpp(param):
    model, i = param
    doc = _DOCS[model]
    case = doc["cases"][i]
    source = plan_cases.GoldenSource(doc)
    options = plan_cases.options_for(case)
    names = plan_cases.imatrix_names(source, case)
    if "error" in case:
        with pytest.raises(PlanError):
            make_plan(source, options, names)
        return
    plan = make_plan(source, options, names)
    ours = [(t.name, t.type.name) for t in plan.tensors]
    expected = plan_cases.expected_tensors(doc, case)
    diff = [f"{e[0]}: llama.cpp {e[1]}, ours {o[1]} ({t.reason})" if o[0] == e[0] else f"order: {o[0]} vs {e[0]}"
            for o, e, t in zip(ours, expected, plan.tensors) if o != e]
    assert len(ours) == len(expected) and not diff, "\n".join(diff[:10]) or f"{len(ours)} tensors vs {len(expected)}"
    assert plan.bytes_out == case["bytes_out"]
    assert plan.n_fallback == case["n_fallback"]
    assert bool(plan.missing_imatrix) == case["requires_imatrix"], plan.missing_imatrix
