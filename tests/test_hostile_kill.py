"""kill -9 at several points of a conversion of a few-hundred-MB model, and of an imatrix run:
OUT's directory holds exactly what it held before (OUT's old contents included), IN is unchanged.
On Linux the output is an unnamed O_TMPFILE until complete, so nothing can be left; with the
named-temp fallback a killed run leaves its locked temp, and the next run removes it.

Slow tier: the model is generated (scripts/make_synthetic.py, ~320 MB F32) once per session.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hostile_corpus as corpus

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent
MODEL_ARGS = ["--layers", "6", "--embd", "1024", "--ff", "2816", "--heads", "8", "--vocab", "1600"]


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def listing(directory: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big-f32.gguf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic.py"), str(path), *MODEL_ARGS], check=True,
                   capture_output=True, timeout=600)
    assert path.stat().st_size > 200 << 20
    return path


def writing(pid: int, directory: Path) -> bool:
    """Whether the process has an output open in `directory` (an unnamed O_TMPFILE shows in
    /proc as 'DIR/#inode (deleted)', the fallback as its .part name)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + "/") and ("(deleted)" in target or target.endswith(".part")):
            return True
    return False


def run_and_kill(argv: list[str], cwd: Path, after: float | None, env: dict | None = None) -> tuple[int, bool]:
    """Start the command and SIGKILL it `after` seconds later (None: as soon as it writes its
    output). Returns the exit status and whether it was writing its output when killed."""
    proc = subprocess.Popen([sys.executable, "-m", "quantize_cli.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if after is None:
        deadline = time.monotonic() + 600
        while not writing(proc.pid, cwd) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    else:
        time.sleep(after)
    was_writing = writing(proc.pid, cwd)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60), was_writing


def full_run_seconds(argv: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quantize_cli.cli", *argv], cwd=cwd, check=True, capture_output=True,
                   timeout=1200)
    return time.perf_counter() - t


def test_kill_convert_leaves_nothing(big_model, tmp_path):
    work = tmp_path / "out"
    work.mkdir()
    out = work / "big-q8_0.gguf"
    argv = ["convert", str(big_model), str(out), "Q8_0", "--quiet", "--threads", "1"]
    seconds = full_run_seconds(argv, work)  # also warms Numba's cache
    out.write_bytes(b"the previous OUT")
    (work / "neighbour.txt").write_bytes(b"keep me")
    before, model_sha = listing(work), sha(big_model)
    n_writing = 0
    for fraction in (0.1, 0.35, 0.6, 0.85, 0.97, None):
        rc, was_writing = run_and_kill(argv, work, None if fraction is None else seconds * fraction)
        n_writing += was_writing
        assert rc == -signal.SIGKILL or rc == 0
        if rc == 0:  # finished before the kill: a whole new OUT, nothing else
            assert sorted(listing(work)) == sorted(before)
            out.write_bytes(b"the previous OUT")
            continue
        assert listing(work) == before, f"killed at {fraction} of {seconds:.1f} s"
    assert sha(big_model) == model_sha
    assert n_writing >= 1, "no kill landed while the output was being written"


def test_kill_with_named_temp_fallback_then_cleanup(big_model, tmp_path):
    work = tmp_path / "out"
    work.mkdir()
    out = work / "big-q8_0.gguf"
    argv = ["convert", str(big_model), str(out), "Q8_0", "--quiet", "--threads", "1"]
    env = {**os.environ, "PYQUANTIZE_NO_TMPFILE": "1"}
    full_run_seconds(argv, work)  # warms Numba's cache
    out.unlink()
    assert run_and_kill(argv, work, None, env) == (-signal.SIGKILL, True)
    left = [p for p in work.iterdir() if p.name.startswith(f".{out.name}.pyquantize-")]
    assert len(left) == 1, "the fallback leaves its named temp file after SIGKILL"
    old = time.time() - 3600
    os.utime(left[0], (old, old))  # a dead run's file, older than any live run's
    subprocess.run([sys.executable, "-m", "quantize_cli.cli", *argv], cwd=work, env=env, check=True,
                   capture_output=True, timeout=1200)
    assert [p.name for p in work.iterdir()] == [out.name]


def test_kill_imatrix_leaves_nothing(tmp_path):
    (tmp_path / "in.gguf").write_bytes(corpus.stories_bytes())
    (tmp_path / "text.txt").write_bytes(corpus.TEXT.read_bytes())
    argv = ["imatrix", "in.gguf", "-f", "text.txt", "-o", "i.gguf", "-c", "128", "--chunks", "40", "-t", "1",
            "-ofreq", "5", "--no-ppl", "-q"]
    seconds = full_run_seconds(argv, tmp_path)
    (tmp_path / "i.gguf").write_bytes(b"the previous imatrix")
    before = listing(tmp_path)
    for fraction in (0.2, 0.5, 0.8):
        rc, _ = run_and_kill(argv, tmp_path, seconds * fraction)
        now = listing(tmp_path)
        assert set(now) == set(before), f"killed at {fraction:.0%}: {sorted(set(now) ^ set(before))}"
        # OUT is either as it was or a complete imatrix written at an -ofreq checkpoint
        if now["i.gguf"] != before["i.gguf"]:
            from quantize_cli.formats.imatrix_file import load_imatrix

            assert load_imatrix(tmp_path / "i.gguf").entries
        for name in before:
            if name != "i.gguf":
                assert now[name] == before[name]
        assert rc in (-signal.SIGKILL, 0)
