"""The evaluation commands' error type."""

from ..errors import PyquantizeError


class EvalError(PyquantizeError):
    """Perplexity or KL divergence cannot be measured: text too short, base file from another
    model or text, candidates with another vocabulary."""
