"""The model runtime: a NumPy forward pass read straight from a GGUF (model.py), llama.cpp's
tokenizers (tokenizer.py) and llama-perplexity's log-prob arithmetic over logits rows
(logprobs.py). The imatrix collector, the evaluations (eval/) and the target search's
sensitivities (plan/target_sensitivity.py) run on it."""
