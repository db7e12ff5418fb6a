import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import ggml_ref  # noqa: E402
import kernels.gguf_compat  # noqa: E402,F401  (gguf's enum names Q2_0 before any test module enumerates it)


@pytest.fixture(scope="session")
def ggml():
    """The llama.cpp reference library; skips the test, saying why, when it is absent."""
    if ggml_ref.lib() is None:
        pytest.skip(ggml_ref.WHY_ABSENT)
    return ggml_ref


def pytest_report_header(config):
    path = ggml_ref.library_path("libggml-base.so")
    return f"llama.cpp reference: {path if path else 'absent - ' + ggml_ref.WHY_ABSENT}"
