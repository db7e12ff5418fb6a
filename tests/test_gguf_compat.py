"""kernels/gguf_compat.py: ggml's Q2_0 (type 42) named through gguf's own enum, end to end."""

import subprocess
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

import kernels
from kernels import gguf_compat, q1q2
from quantize_cli.plan import parse_tensor_type, type_sizes


def test_q2_0_is_a_member_like_the_others():
    member = T(42)
    assert member is T.Q2_0 is T["Q2_0"]
    assert member.name == "Q2_0" and member.value == 42 and isinstance(member, T) and member == 42
    assert list(T)[-1] is member and "Q2_0" in T.__members__
    assert GGML_QUANT_SIZES[member] == (64, 18) == type_sizes(member)
    assert parse_tensor_type("q2_0") is member


def test_ensure_is_idempotent_and_leaves_known_types_alone():
    before = (len(T), dict(GGML_QUANT_SIZES))
    gguf_compat.ensure()
    gguf_compat.ensure()
    assert (len(T), dict(GGML_QUANT_SIZES)) == before
    assert GGML_QUANT_SIZES[T.Q1_0] == (128, 18) and T(41) is T.Q1_0


def test_kernel_registered_and_round_trips():
    kernel = kernels.get(T.Q2_0)
    assert kernel.quantize is q1q2.quantize_q2_0 and kernel.row_bytes(128) == 36
    # levels are {-1, 0, 1, 2} x amax; roundf takes halves away from zero
    x = np.array([[0.0, 0.5, -0.5, 1.0] * 32, [0.0, 4.0, -4.0, 4.0] * 32], dtype=np.float32)
    blob = kernels.quantize(x, T.Q2_0)
    assert blob.shape == (2, 36)
    expect = np.array([[0.0, 1.0, -1.0, 1.0] * 32, [0.0, 4.0, -4.0, 4.0] * 32], dtype=np.float32)
    np.testing.assert_array_equal(kernels.dequantize(blob, T.Q2_0, 128), expect)


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_fresh_interpreter_reader_first():
    """Reading a type-42 tensor needs no import order: the reader applies the shim itself."""
    assert _run("from quantize_cli.formats.gguf import read_gguf_layout; from gguf import GGMLQuantizationType as T;"
                "print(T(42).name)") == "Q2_0"


def test_light_constants_then_full_package_share_one_enum():
    """The planner's path loads gguf.constants alone (no reader, vocab, yaml); a later full import
    of gguf reuses that module, so enum members stay one object, Q2_0 included."""
    out = _run("import sys, quantize_cli.convert, kernels.gguf_compat as c;"
               "print(sorted(m for m in sys.modules if m.startswith('gguf')));"
               "import gguf; print(gguf.GGMLQuantizationType is c.GGMLQuantizationType, gguf.GGMLQuantizationType(42).name)")
    assert out.splitlines() == ["['gguf.constants']", "True Q2_0"]


def test_full_package_first():
    out = _run("import gguf, kernels; from kernels.gguf_compat import GGMLQuantizationType as T;"
               "print(T is gguf.GGMLQuantizationType, T(42).name, kernels.get(T.Q2_0).name)")
    assert out == "True Q2_0 Q2_0"
