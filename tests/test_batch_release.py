"""The release: `python -m build` makes a wheel and an sdist; the wheel installs in a fresh venv
(dependencies from the index or pip's cache) and converts the test model byte-identically.
Slow (a venv and a cold Numba compile: 1-2 minutes); `.ci/run` runs it."""

import hashlib
import importlib.util
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from quantize_cli import __version__

ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"
Q8_0_SHA256 = "ff8701a45da28293b7af11a695ab33575b692e9b109a2eae6238c906c31415da"  # llama-quantize's


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs the 'build' package (pip install build)")
def test_wheel_and_sdist_install_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], check=True, capture_output=True)
    wheel = next(dist.glob("pyquantize_gguf-*.whl"))
    sdist = next(dist.glob("pyquantize_gguf-*.tar.gz"))
    assert wheel.name == f"pyquantize_gguf-{__version__}-py3-none-any.whl"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run([bin_dir / "pip", "install", "-q", str(wheel)], check=True)
    version = subprocess.run([bin_dir / "pyquantize", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"pyquantize {__version__}"
    out = tmp_path / "q8.gguf"
    subprocess.run([bin_dir / "pyquantize", "convert", str(STORIES), str(out), "Q8_0", "-q"], check=True, cwd=tmp_path)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == Q8_0_SHA256
    # the sdist builds the same wheel contents
    rebuilt = tmp_path / "rebuilt"
    subprocess.run([bin_dir / "pip", "wheel", "-q", "--no-deps", "-w", str(rebuilt), str(sdist)], check=True)
    assert next(rebuilt.glob("*.whl")).name == wheel.name
