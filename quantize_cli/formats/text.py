"""The text files of -f (imatrix calibration text, perplexity text), read as llama.cpp reads them."""

from __future__ import annotations

from pathlib import Path

from ..errors import ImatrixError


def read_text(path: Path) -> str:
    """The calibration text as llama-imatrix reads it (-f): UTF-8, one trailing newline dropped."""
    from .output import check_input_file

    check_input_file(path, "text file", ImatrixError, missing="no such text file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImatrixError(f"{path}: no such text file") from None
    except IsADirectoryError:
        raise ImatrixError(f"{path}: is a directory, not a text file") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImatrixError(f"{path}: the text is not UTF-8 (invalid byte 0x{data[exc.start]:02x} at offset "
                           f"{exc.start}); convert it to UTF-8 first") from None
    if text.endswith("\n"):
        text = text[:-1]
    return text
