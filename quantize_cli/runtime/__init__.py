"""The model runtime: a NumPy forward pass read straight from a GGUF (model.py) and llama.cpp's
tokenizers (tokenizer.py). The imatrix collector and the evaluations run on it."""
