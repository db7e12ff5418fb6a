"""Hostile input: every case of the generated corpus (tests/hostile_corpus.py) is refused cleanly.

For each case: a non-zero exit code, no traceback, exactly one `error:` line on stderr, nothing
new in the directory (no OUT, no temp file), every file that was there unchanged (sha256), and
no hang (an alarm stops the run after CASE_SECONDS). Cases run in-process through Typer's
runner; a few also run as real processes through the installed entry point.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hostile_corpus as corpus
from quantize_cli.cli import app

CASE_SECONDS = 30
CASES = corpus.all_cases()


def snapshot(directory: Path) -> dict[str, str]:
    """Every entry under `directory`: sha256 of regular files, the kind of anything else."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            p = Path(root) / name
            if p.is_symlink():
                out[str(p)] = "symlink -> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir" if p.is_dir() else "special"
    return out


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"no answer in {CASE_SECONDS} s")


def check_refusal(case: corpus.Case, exit_code: int, stderr: str, before: dict, after: dict,
                  directory: Path) -> None:
    assert exit_code != 0, f"{case.id}: accepted (exit 0)"
    if case.exit_code is not None:
        assert exit_code == case.exit_code
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, f"{case.id}: expected one error line, got:\n{stderr}"
    if not case.usage:
        assert len(lines) == 1, f"{case.id}: more than the error line on stderr:\n{stderr}"
    # a short line: excerpts of what was read, not the file's bytes (paths left out of the count)
    short = errors[0].replace(str(directory), "DIR")
    assert len(short) < 320, f"{case.id}: error line too long ({len(short)} characters): {short}"
    for fragment in case.fragments:
        assert fragment in errors[0], f"{case.id}: {fragment!r} not in {errors[0]!r}"
    new = sorted(set(after) - set(before))
    assert not new, f"{case.id}: left behind {new}"
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"{case.id}: changed {changed}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_cleanly(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = case.build(tmp_path)
    before = snapshot(tmp_path)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        result = CliRunner().invoke(app, argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    check_refusal(case, result.exit_code, result.stderr, before, snapshot(tmp_path), tmp_path)


REAL_PROCESS = ["FIFO as convert IN", "FIFO as imatrix -f", "offsets overlap", "imatrix -o MODEL",
                "convert OUT is IN (hardlink)", "huge weight Q8_0"]


@pytest.mark.parametrize("case_id", REAL_PROCESS)
def test_refused_cleanly_as_a_process(case_id, tmp_path):
    case = next(c for c in CASES if c.id == case_id)
    argv = case.build(tmp_path)
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "quantize_cli.cli", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    check_refusal(case, proc.returncode, proc.stderr, before, snapshot(tmp_path), tmp_path)


def test_corpus_covers_the_issue_classes():
    klasses = {c.klass for c in CASES}
    assert {"header", "truncation", "counts", "lengths", "metadata", "tensor info", "offsets", "weights",
            "imatrix file", "cli", "imatrix command", "fifo", "safetensors folder"} <= klasses
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
