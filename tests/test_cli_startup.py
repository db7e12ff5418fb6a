"""`pyquantize --help` starts without the commands' modules: no NumPy, Numba, gguf or kernels, and
of our package only cli.py and errors.py (the heavy commands are in cli.LAZY_COMMANDS)."""

import subprocess
import sys

SCRIPT = """
import sys
sys.argv = ["pyquantize", "--help"]
from quantize_cli.cli import main
try:
    main()
except SystemExit:
    pass
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""


def test_help_imports_only_the_command_line():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    loaded = set(r.stderr.split())
    assert "quantize_cli.cli" in loaded, r.stderr[-2000:]
    ours = {m for m in loaded if m.split(".")[0] in ("quantize_cli", "kernels")}
    assert ours == {"quantize_cli", "quantize_cli.cli", "quantize_cli.errors"}
    assert not {m for m in loaded if m.split(".")[0] in ("numpy", "numba", "gguf", "yaml", "safetensors")}
    for name in ("convert", "inspect", "types", "imatrix", "perplexity", "compare"):  # the lazy ones listed too
        assert f" {name} " in r.stdout
