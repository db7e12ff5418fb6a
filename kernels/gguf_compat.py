"""ggml's type and value-type constants, from the ``gguf`` package, and the types it lacks.

Two jobs, both cheap and Numba-free:

- Load ``gguf.constants`` alone. Importing the ``gguf`` package runs its ``__init__``, which
  also imports its reader, writer, vocabulary (sentencepiece), metadata (yaml) and quants
  modules: 50 ms of every start-up, for constants the planner, reader and writer need. The
  module is registered under its own name, so a later ``import gguf`` (the IQ grids, the
  imatrix reader) reuses it and every enum member stays one object. If gguf's layout ever
  changes so that this fails, the plain import is used.
- Add ggml types that gguf does not name yet. gguf 0.19.0 (the newest on PyPI in November 2026)
  stops at type 41 (Q1_0) while llama.cpp writes Q2_0 as type 42. ``ensure()`` adds such a
  type to the enum and to ``GGML_QUANT_SIZES``, so every module names it like the others. It
  only ever adds: a value gguf already names is left alone, and so is a name gguf uses for
  another value; the Q2_0 kernel registers only when the member and its sizes are exactly
  ggml's (kernels/q1q2.py).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_constants():
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    if "gguf" not in sys.modules:
        try:
            spec = importlib.util.find_spec("gguf")
            path = Path(spec.submodule_search_locations[0]) / "constants.py"
            cspec = importlib.util.spec_from_file_location("gguf.constants", path)
            module = importlib.util.module_from_spec(cspec)
            sys.modules["gguf.constants"] = module
            cspec.loader.exec_module(module)
            return module
        except Exception:
            sys.modules.pop("gguf.constants", None)
    import gguf.constants

    return gguf.constants


_constants = _load_constants()
GGMLQuantizationType = _constants.GGMLQuantizationType
GGML_QUANT_SIZES = _constants.GGML_QUANT_SIZES
GGUFValueType = _constants.GGUFValueType

# (name, ggml type value, (weights per block, bytes per block)), from ggml.h / ggml.c type_traits
MISSING_TYPES = (
    ("Q2_0", 42, (64, 18)),
)


def _add_member(cls: type, name: str, value: int):
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
