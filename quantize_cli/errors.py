"""The user-facing errors. Each message is one sentence naming the thing and the fix; the CLI
prints it as `error: ...` on stderr and exits non-zero. Any other exception is a bug."""


class PyquantizeError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 1


class SourceError(PyquantizeError):
    """The input model cannot be read: wrong magic, truncated, unsupported version or dtype."""


class PlanError(PyquantizeError):
    """The requested conversion cannot be planned: unknown type, bad option, missing imatrix."""


class ImatrixError(PyquantizeError):
    """An importance-matrix file cannot be read, or does not fit the model."""


class OutputError(PyquantizeError):
    """The output cannot be written: directory missing or not writable, same file as the input."""


class KernelError(PyquantizeError):
    """A type has no kernel yet, or the data cannot be quantized (NaN/Inf weights)."""


_LINE_BREAKS = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
                for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def one_line(message: str) -> str:
    """The message with every character that would break the line escaped (a tensor name may
    hold a newline or U+2028): the CLI's `error:` line stays one line."""
    return message.translate(_LINE_BREAKS)


def excerpt(value: str | bytes, limit: int = 80) -> str:
    """A short, escaped excerpt of text or bytes read from a file (or a library's message about
    them), for an error line: never more than `limit` characters of it, never a raw newline."""
    if isinstance(value, bytes):
        value = value[:limit].decode("utf-8", errors="backslashreplace") + ("..." if len(value) > limit else "")
    text = value.encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."


class UsageError(PyquantizeError):
    """The command line itself is wrong (arguments missing or contradicting each other): exit 2,
    as for the option errors the argument parser reports."""

    exit_code = 2
