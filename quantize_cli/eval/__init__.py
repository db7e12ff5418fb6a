"""Measuring what a quant costs, as llama-perplexity does: perplexity, KL divergence against a
base model (llama-perplexity's base-file format), and compare (one row per candidate)."""
