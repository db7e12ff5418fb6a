"""The release: `python -m build` makes a wheel and an sdist; the wheel installs in a fresh venv
with pip, and as an application with pipx (dependencies from the index or pip's cache), and
converts the test model byte-identically. Slow (venvs and cold Numba compiles: a few minutes);
`.ci/run` runs it."""

import hashlib
import importlib.util
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from quantize_cli import __version__

ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"
Q8_0_SHA256 = "ff8701a45da28293b7af11a695ab33575b692e9b109a2eae6238c906c31415da"  # llama-quantize's

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs the 'build' package (pip install build)"),
]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True, capture_output=True)
    return out


def check_installed_command(pyquantize: Path, work: Path, env: dict | None = None) -> None:
    """`pyquantize --version` and the two-command flow's convert, from an installed command."""
    version = subprocess.run([pyquantize, "--version"], capture_output=True, text=True, check=True, env=env)
    assert version.stdout.strip() == f"pyquantize {__version__}"
    out = work / "q8.gguf"
    subprocess.run([pyquantize, "convert", str(STORIES), str(out), "Q8_0", "-q"], check=True, cwd=work, env=env)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == Q8_0_SHA256


def test_wheel_and_sdist_install_in_a_fresh_venv(tmp_path, dist):
    wheel = next(dist.glob("pyquantize_gguf-*.whl"))
    sdist = next(dist.glob("pyquantize_gguf-*.tar.gz"))
    assert wheel.name == f"pyquantize_gguf-{__version__}-py3-none-any.whl"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run([bin_dir / "pip", "install", "-q", str(wheel)], check=True)
    check_installed_command(bin_dir / "pyquantize", tmp_path)
    # the sdist builds the same wheel contents
    rebuilt = tmp_path / "rebuilt"
    subprocess.run([bin_dir / "pip", "wheel", "-q", "--no-deps", "-w", str(rebuilt), str(sdist)], check=True)
    assert next(rebuilt.glob("*.whl")).name == wheel.name


def test_wheel_installs_as_an_application_with_pipx(tmp_path, dist):
    wheel = next(dist.glob("pyquantize_gguf-*.whl"))
    tools = tmp_path / "tools"  # pipx itself, in a venv of its own
    venv.create(tools, with_pip=True)
    got = subprocess.run([tools / "bin" / "pip", "install", "-q", "pipx"], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"pipx is not installable here: {got.stderr.strip().splitlines()[-1:]}")
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"))
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([tools / "bin" / "pipx", "install", str(wheel)], check=True, env=env, capture_output=True)
    listed = subprocess.run([tools / "bin" / "pipx", "list", "--short"], check=True, env=env, capture_output=True, text=True)
    assert f"pyquantize-gguf {__version__}" in listed.stdout
    check_installed_command(tmp_path / "bin" / "pyquantize", tmp_path, env)
