"""pyquantize: GGUF quantization byte-identical to llama.cpp."""

__version__ = "0.2.0"
