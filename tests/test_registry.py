"""The type registry: FAMILY_OF names each family's types exactly, and a lookup imports only
the family it needs."""

import subprocess
import sys
from pathlib import Path

import kernels

ROOT = Path(__file__).resolve().parent.parent


def test_family_of_matches_every_family():
    for family in kernels.FAMILIES:
        registered = {t.name for t in kernels.family_kernels(family)}
        listed = {name for name, f in kernels.FAMILY_OF.items() if f == family}
        assert registered == listed, family
    assert set(kernels.FAMILY_OF.values()) == set(kernels.FAMILIES)


def test_registry_holds_every_listed_type():
    names = {t.name for t in kernels.registry()}
    assert names == set(kernels.FAMILY_OF)
    assert kernels.get(kernels.GGMLQuantizationType.Q4_K).name == "Q4_K"
    assert kernels.can_quantize(kernels.GGMLQuantizationType.IQ2_XXS)
    assert not kernels.can_quantize(kernels.GGMLQuantizationType.I8)  # a type no family provides


def test_lookup_imports_only_its_family():
    # then Q4_K_M's K-quants and an IQ3 type: the modules the families share (kquants_common,
    # iquants_common) register nothing, so neither kquants_q2q3 nor iq2 comes along
    code = (
        "import sys, kernels\n"
        "from kernels.gguf_compat import GGMLQuantizationType as T\n"
        "def families(): return sorted(m for m in sys.modules if m.startswith('kernels.') and m[8:] in kernels.FAMILIES)\n"
        "assert kernels.can_quantize(T.Q4_0) and kernels.can_dequantize(T.F16)\n"
        "print(' '.join(families()))\n"
        "assert kernels.can_quantize(T.Q4_K) and kernels.can_quantize(T.Q6_K) and kernels.can_quantize(T.IQ3_S)\n"
        "print(' '.join(families()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "kernels.floats kernels.legacy",
        "kernels.floats kernels.iq3 kernels.kquants_q4q8 kernels.legacy",
    ]
