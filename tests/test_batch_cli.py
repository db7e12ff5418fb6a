"""What pipelines meet at the command line: --version, exit codes, a closed stdout (| head),
types --json, inspect A B, shell completion."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantize_cli import __version__
from quantize_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"
SCRIPT = Path(sys.executable).parent / "pyquantize"
runner = CliRunner()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from quantize_cli.cli import main; main()", *args]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"pyquantize {__version__}\n"


@pytest.mark.parametrize("args, code", [
    (["convert", str(STORIES)], 2),                      # TYPE missing
    (["convert", str(STORIES), "Q8_0", "x.gguf", "nope"], 2),  # unexpected argument
    (["convert", str(STORIES), "Q8_0", "--threads", "two"], 2),  # option parser
    (["convert", "missing.gguf", "Q8_0"], 1),            # an error
    (["inspect", str(STORIES), str(STORIES), str(STORIES)], 2),
])
def test_exit_codes(args, code):
    assert runner.invoke(app, args).exit_code == code


@pytest.mark.parametrize("args", [["inspect", str(STORIES)], ["inspect", str(STORIES), "--json"], ["types"],
                                  ["convert", str(STORIES), "Q8_0", "--dry-run"]])
def test_closed_stdout_is_not_an_error(args):
    """`pyquantize inspect FILE | head -1`: the reader leaves early; no message, exit 0."""
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its line, while pyquantize is still printing
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and err == "", err


def test_types_json():
    doc = json.loads(runner.invoke(app, ["types", "--json"]).output)
    by_name = {t["name"]: t for t in doc}
    assert by_name["Q4_K_M"]["ftype"] == 15 and by_name["Q8_0"]["ftype"] == 7 and by_name["COPY"]
    assert all(set(t) == {"name", "ftype", "description"} for t in doc)


def test_inspect_two_files_diff(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert runner.invoke(app, ["convert", str(STORIES), str(a), "Q8_0", "-q"]).exit_code == 0
    assert runner.invoke(app, ["convert", str(STORIES), str(b), "Q8_0", "-q", "--tensor-type", "attn_q=q4_0"]).exit_code == 0
    result = runner.invoke(app, ["inspect", str(a), str(b)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"--- {a}" and lines[1] == f"+++ {b}"
    # the diff names exactly the tensors whose type or size differ: the five attn_q
    doc = json.loads(runner.invoke(app, ["inspect", str(a), str(b), "--json"]).output)
    ta = {t["name"]: t for t in json.loads(runner.invoke(app, ["inspect", str(a), "--json"]).output)["tensors"]}
    tb = {t["name"]: t for t in json.loads(runner.invoke(app, ["inspect", str(b), "--json"]).output)["tensors"]}
    differ = sorted(n for n in ta if (ta[n]["type"], ta[n]["bytes"]) != (tb[n]["type"], tb[n]["bytes"]))
    assert sorted(c["name"] for c in doc["changed"]) == differ == [f"blk.{i}.attn_q.weight" for i in range(5)]
    assert {(c["type_a"], c["type_b"]) for c in doc["changed"]} == {("Q8_0", "Q4_0")}
    assert doc["n_same"] == len(ta) - len(differ) and doc["only_a"] == doc["only_b"] == []
    assert lines[-1].startswith(f"{len(differ)} tensor(s) differ, 0 only in A, 0 only in B")
    same = runner.invoke(app, ["inspect", str(a), str(a)])
    assert same.output.splitlines()[-1].startswith("0 tensor(s) differ")


@pytest.mark.skipif(not SCRIPT.exists(), reason="the pyquantize script is not installed in this environment")
def test_shell_completion_script_and_candidates():
    """README: eval "$(_PYQUANTIZE_COMPLETE=source_bash pyquantize)" (the script names itself)."""
    env = dict(os.environ, _PYQUANTIZE_COMPLETE="source_bash")
    script = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True)
    assert "complete -o default -F _pyquantize_completion pyquantize" in script.stdout
    env = dict(os.environ, _PYQUANTIZE_COMPLETE="complete_bash", COMP_WORDS="pyquantize convert x --ty",
               COMP_CWORD="3")
    assert subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True).stdout.split() == ["--types"]
