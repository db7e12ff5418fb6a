"""File formats, below every pipeline: no imports from sources, plan or runtime.

    values.py        KV and TensorInfo, the value types everything above shares
    gguf.py          GGUF reading (header, metadata, tensor infos) from a memory map
    gguf_writer.py   GGUF writing: header first, then tensors streamed in order
    output.py        atomic outputs: temporary files renamed over the targets only when complete
    imatrix_file.py  importance matrices: llama.cpp's GGUF imatrix and the legacy .dat
    text.py          the text files of -f (imatrix, perplexity), read as llama.cpp reads them
"""
