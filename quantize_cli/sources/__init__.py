"""Model sources: GGUF files (one or split) and Hugging Face safetensors folders.

    base.py   Source and TensorRef: the interface every input format provides
    gguf.py   GGUF files, memory-mapped; split models
    hf.py     Hugging Face checkpoint folders (hf_vocab.py: their tokenizers)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from .base import Source, TensorRef
from .gguf import GGUFFileSource, SplitGGUFSource, split_paths

__all__ = ["GGUFFileSource", "Source", "SplitGGUFSource", "TensorRef", "open_source", "split_paths"]


def open_source(path: str | Path) -> Source:
    """Open a model: a GGUF file, the first shard of a split GGUF, or a Hugging Face safetensors folder."""
    path = Path(path)
    if path.is_dir():
        from .hf import HFSource  # imports the gguf package and yaml: only for folders

        return HFSource(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    paths = split_paths(path)
    if paths and len(paths) > 1:
        return SplitGGUFSource(paths)
    return GGUFFileSource(path)
