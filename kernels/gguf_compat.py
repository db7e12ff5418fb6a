"""ggml types that the installed ``gguf`` package does not name yet.

The registry, the planner and the reader are keyed by ``gguf.GGMLQuantizationType``. ggml gains
types before gguf-py ships them: gguf 0.19.0 (the newest on PyPI in November 2026) stops at
type 41 (Q1_0) while llama.cpp writes Q2_0 as type 42. ``ensure()`` adds such a type to gguf's
enum and to ``GGML_QUANT_SIZES``, so every module can name it the way it names the others.

It only ever adds: a value gguf already names is left alone (whatever gguf calls it), and so is
a name gguf already uses for another value; the Q2_0 kernel registers only when the enum
member and its sizes are exactly ggml's (kernels/q1q2.py). Idempotent, cheap, no Numba.
"""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

# (name, ggml type value, (weights per block, bytes per block)), from ggml.h / ggml.c type_traits
MISSING_TYPES = (
    ("Q2_0", 42, (64, 18)),
)


def _add_member(cls: type, name: str, value: int) -> GGMLQuantizationType:
    """A new member of an IntEnum, made as EnumType makes its own (Python 3.10 to 3.13)."""
    member = int.__new__(cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = cls
    member._sort_order_ = len(cls._member_names_)
    cls._member_map_[name] = member
    cls._value2member_map_[value] = member
    cls._member_names_.append(name)
    type.__setattr__(cls, name, member)  # EnumType.__setattr__ refuses to rebind members
    return member


def ensure() -> None:
    for name, value, sizes in MISSING_TYPES:
        if value in GGMLQuantizationType._value2member_map_:
            member = GGMLQuantizationType(value)
        elif name in GGMLQuantizationType._member_map_:
            continue  # gguf gave the name to another value: not ours to change
        else:
            member = _add_member(GGMLQuantizationType, name, value)
        if member.name == name:
            GGML_QUANT_SIZES.setdefault(member, sizes)


ensure()
