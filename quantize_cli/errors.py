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


class UsageError(PyquantizeError):
    """The command line itself is wrong (arguments missing or contradicting each other): exit 2,
    as for the option errors the argument parser reports."""

    exit_code = 2
