"""pyquantize: GGUF quantization byte-identical to llama.cpp."""
