"""The background writer: bytes land in order, and a write error on its thread reaches the caller
as a clean failure (one-line error, previous output intact, no temporary file left)."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest

from quantize_cli import writer as writer_mod
from quantize_cli.convert import convert
from quantize_cli.errors import OutputError
from quantize_cli.plan import QuantizeOptions, parse_file_type
from quantize_cli.writer import WriteBehind

STORIES = Path(__file__).resolve().parent / "data" / "stories260K.gguf"


def test_order_and_calls():
    f = io.BytesIO()
    seen = []
    out = WriteBehind(f, depth=1)
    for i in range(50):
        out.write(bytes([i]) * 3)
        out.call(lambda i=i: seen.append((i, len(f.getvalue()))))
    out.close()
    assert f.getvalue() == b"".join(bytes([i]) * 3 for i in range(50))
    assert seen == [(i, 3 * (i + 1)) for i in range(50)]  # each call ran after its bytes were written


def test_error_on_the_thread_is_raised_by_close():
    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    out = WriteBehind(Full())
    out.write(b"x")
    with pytest.raises(OSError, match="No space"):
        out.close()


def test_disk_full_during_convert_leaves_nothing(tmp_path, monkeypatch):
    real = WriteBehind.__init__

    class FailingFile:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += 1
            if self.n == 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

    def init(self, f, depth=2):
        real(self, FailingFile(f), depth)

    monkeypatch.setattr(writer_mod.WriteBehind, "__init__", init)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous contents")
    ftype, _ = parse_file_type("Q8_0")
    with pytest.raises(OutputError, match="No space left on device"):
        convert(STORIES, out, QuantizeOptions(ftype=ftype), nthreads=1)
    assert out.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf"]
