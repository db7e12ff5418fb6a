"""Target mode's cache of quantized tensors (plan/target_store.py): a second target copies bytes
from the cache, and its file is byte for byte the file a run without the cache writes; damaged
entries are found and quantized again; the disk bound holds."""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantize_cli.cli import app
from quantize_cli.plan.target_store import HEADER, MAGIC

DATA = Path(__file__).parent / "data"
STORIES = DATA / "stories260K.gguf"
TEXT = DATA / "calibration-en.txt"
runner = CliRunner()


@pytest.fixture(scope="module")
def imatrix(tmp_path_factory):
    out = tmp_path_factory.mktemp("im") / "stories-imatrix.gguf"
    result = runner.invoke(app, ["imatrix", str(STORIES), "-f", str(TEXT), "-o", str(out), "-c", "64", "--chunks", "4"])
    assert result.exit_code == 0, result.output
    return out


def _convert(*args):
    result = runner.invoke(app, ["convert", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copied(output: str) -> tuple[int, int]:
    m = re.search(r"search cache: (\d+) tensors copied, (\d+) quantized into it", output)
    assert m, output
    return int(m.group(1)), int(m.group(2))


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("q-*.bin"))


@pytest.fixture(scope="module")
def cold(tmp_path_factory, imatrix):
    """A cache filled by one run at --target-bpw 7, and the uncached file of 7.5 bpw."""
    tmp = tmp_path_factory.mktemp("cold")
    cache = tmp / "cache"
    _convert(STORIES, tmp / "first.gguf", "--target-bpw", "7", "--imatrix", imatrix, "--search-cache", cache, "-t", "2")
    _convert(STORIES, tmp / "plain.gguf", "--target-bpw", "7.5", "--imatrix", imatrix, "--quiet", "-t", "1")
    return cache, tmp / "plain.gguf"


def test_second_target_copies_and_writes_the_same_bytes(tmp_path, imatrix, cold):
    cache, uncached = cold
    assert _entries(cache)
    work = tmp_path / "cache"
    shutil.copytree(cache, work)
    out = tmp_path / "second.gguf"
    copied, quantized = _copied(_convert(STORIES, out, "--target-bpw", "7.5", "--imatrix", imatrix,
                                         "--search-cache", work, "-t", "2"))
    assert copied > 0
    assert _sha(out) == _sha(uncached)
    # and again at one thread, now from a cache that holds every tensor of this mix
    again = tmp_path / "again.gguf"
    copied2, quantized2 = _copied(_convert(STORIES, again, "--target-bpw", "7.5", "--imatrix", imatrix,
                                           "--search-cache", work, "-t", "1"))
    assert quantized2 == 0 and copied2 >= copied
    assert _sha(again) == _sha(uncached)


def _damage(entries: list[Path]) -> None:
    """Flip a payload byte, truncate, garble a header, swap in another entry's bytes."""
    flip, cut, head, swap = entries[:4]
    data = bytearray(flip.read_bytes())
    data[HEADER.size + (len(data) - HEADER.size) // 2] ^= 0x40
    flip.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:-7])
    data = bytearray(head.read_bytes())
    data[:4] = b"XXXX"
    head.write_bytes(bytes(data))
    swap.write_bytes(entries[4].read_bytes())  # a valid entry of another tensor or type


def test_damaged_entries_are_quantized_again(tmp_path, imatrix, cold):
    cache, uncached = cold
    work = tmp_path / "cache"
    shutil.copytree(cache, work)
    # damage what the 7.5 bpw mix will read: entries it copies when the cache is whole
    before = {p.name: p.stat().st_mtime_ns for p in _entries(work)}
    probe = tmp_path / "probe"
    shutil.copytree(work, probe)
    _convert(STORIES, tmp_path / "probe.gguf", "--target-bpw", "7.5", "--imatrix", imatrix, "--search-cache", probe)
    read = [work / p.name for p in _entries(probe) if p.name in before and p.stat().st_mtime_ns != before[p.name]]
    assert len(read) >= 5
    _damage(read)
    out = tmp_path / "second.gguf"
    _convert(STORIES, out, "--target-bpw", "7.5", "--imatrix", imatrix, "--search-cache", work)
    assert _sha(out) == _sha(uncached)
    for p in read[:4]:  # rewritten whole
        head = p.read_bytes()[:HEADER.size]
        magic, _, length, _, _ = HEADER.unpack(head)
        assert magic == MAGIC and p.stat().st_size == HEADER.size + length


def test_other_imatrix_reuses_nothing(tmp_path, imatrix, cold):
    cache, _ = cold
    other = tmp_path / "other-imatrix.gguf"
    result = runner.invoke(app, ["imatrix", str(STORIES), "-f", str(TEXT), "-o", str(other), "-c", "64", "--chunks", "2"])
    assert result.exit_code == 0, result.output
    work = tmp_path / "cache"
    shutil.copytree(cache, work)
    out = tmp_path / "o.gguf"
    copied, _ = _copied(_convert(STORIES, out, "--target-bpw", "7.5", "--imatrix", other, "--search-cache", work))
    assert copied <= 1  # token_embd has no imatrix entry: its bytes do not depend on the imatrix
    _convert(STORIES, tmp_path / "u.gguf", "--target-bpw", "7.5", "--imatrix", other, "--quiet")
    assert _sha(out) == _sha(tmp_path / "u.gguf")


def test_target_size_met_from_the_cache(tmp_path, imatrix, cold):
    cache, _ = cold
    work = tmp_path / "cache"
    shutil.copytree(cache, work)
    limit = 300_000
    out = tmp_path / "t.gguf"
    copied, _ = _copied(_convert(STORIES, out, "--target-size", limit, "--imatrix", imatrix, "--search-cache", work))
    assert copied > 0
    assert 0.97 * limit < out.stat().st_size <= limit
    _convert(STORIES, tmp_path / "u.gguf", "--target-size", limit, "--imatrix", imatrix, "--quiet")
    assert _sha(out) == _sha(tmp_path / "u.gguf")


def test_disk_bound(tmp_path, imatrix):
    none = tmp_path / "none"
    _convert(STORIES, tmp_path / "a.gguf", "--target-bpw", "7", "--imatrix", imatrix, "--search-cache", none,
             "--search-cache-max", "0", "--quiet")
    assert not _entries(none) and list(none.glob("errors-*.json"))
    capped = tmp_path / "capped"
    cap = 100_000
    _convert(STORIES, tmp_path / "b.gguf", "--target-bpw", "7", "--imatrix", imatrix, "--search-cache", capped,
             "--search-cache-max", cap, "--quiet")
    sizes = [p.stat().st_size for p in _entries(capped)]
    assert sizes and sum(sizes) <= cap
    # a later run's entries push the least recently used ones out, never past the bound
    _convert(STORIES, tmp_path / "c.gguf", "--target-bpw", "8.5", "--imatrix", imatrix, "--search-cache", capped,
             "--search-cache-max", cap, "--quiet")
    assert sum(p.stat().st_size for p in _entries(capped)) <= cap
    assert _sha(tmp_path / "a.gguf") == _sha(tmp_path / "b.gguf")


def test_header_layout():
    assert HEADER.size == 32 and struct.calcsize("<4sIQI12s") == 32


def test_unwritable_cache_does_not_stop_the_run(tmp_path, imatrix, cold, monkeypatch):
    from types import SimpleNamespace

    import quantize_cli.plan.target_store as target_store

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(target_store, "tempfile", SimpleNamespace(mkstemp=full))
    _, uncached = cold
    out = tmp_path / "t.gguf"
    copied, stored = _copied(_convert(STORIES, out, "--target-bpw", "7.5", "--imatrix", imatrix,
                                      "--search-cache", tmp_path / "cache"))
    assert (copied, stored) == (0, 0) and not _entries(tmp_path / "cache")
    assert _sha(out) == _sha(uncached)


@pytest.mark.parametrize("args,message", [
    (["--target-bpw", "7", "--search-cache-max", "lots"], "error: --search-cache-max 'lots': expected a number"),
    (["--search-cache-max", "1GiB"], "--target-types/--search-* need --target-bpw or --target-size"),
])
def test_search_cache_max_refusals(tmp_path, args, message):
    result = runner.invoke(app, ["convert", str(STORIES), str(tmp_path / "t.gguf"), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "t.gguf").exists()


def test_other_kernels_reuse_nothing(tmp_path, imatrix, cold, monkeypatch):
    """An edited kernel source (or another pyquantize, Numba or NumPy) is another key."""
    import quantize_cli.plan.target_store as target_store

    real = target_store.kernel_identity()
    monkeypatch.setattr(target_store, "kernel_identity", lambda: real + "-edited")
    cache, uncached = cold
    work = tmp_path / "cache"
    shutil.copytree(cache, work)
    out = tmp_path / "t.gguf"
    copied, _ = _copied(_convert(STORIES, out, "--target-bpw", "7.5", "--imatrix", imatrix, "--search-cache", work))
    assert copied == 0
    assert _sha(out) == _sha(uncached)


def test_stale_temporary_entries_are_removed(tmp_path, imatrix):
    import os
    import time

    cache = tmp_path / "cache"
    cache.mkdir()
    stale, live = cache / ".q-stale.tmp", cache / ".q-live.tmp"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x" * 100)
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    _convert(STORIES, tmp_path / "t.gguf", "--target-bpw", "7", "--imatrix", imatrix, "--search-cache", cache, "--quiet")
    assert not stale.exists() and live.exists()
