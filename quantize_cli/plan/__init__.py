"""The plan: one decision per tensor (target type and why), mirroring llama.cpp's
src/llama-quant.cpp and tools/quantize/quantize.cpp. A pure function of (source tensors and
metadata, options, imatrix entry names): it reads no tensor data and writes nothing.

    ftypes.py   file types (llama_ftype), their default ggml types, type sizes
    options.py  QuantizeOptions and the parsing of llama-quantize's option values
    rules.py    per-tensor rules: order, categories, what is quantized, type choice, fallback
    make.py     make_plan: the rules over a whole model, output metadata, pruning, JSON
"""

from .ftypes import FILE_TYPES, FType, ftype_name, parse_file_type, row_bytes, type_sizes
from .make import Plan, TensorPlan, make_plan, plan_to_json, source_nbytes
from .options import (QuantizeOptions, parse_override_kv, parse_prune_layers, parse_tensor_type,
                      parse_tensor_type_option, read_tensor_type_file)

__all__ = [
    "FILE_TYPES", "FType", "Plan", "QuantizeOptions", "TensorPlan", "ftype_name", "make_plan", "parse_file_type",
    "parse_override_kv", "parse_prune_layers", "parse_tensor_type", "parse_tensor_type_option", "plan_to_json",
    "read_tensor_type_file", "row_bytes", "source_nbytes", "type_sizes",
]
