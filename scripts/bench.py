#!/usr/bin/env python3
"""End to end: `pyquantize convert` against llama-quantize on the same file, in the same run.

For every file type and thread count (1 and 2), both tools quantize the same input in separate
processes, alternating (ours first on even rounds, llama-quantize first on odd ones) so that
load from other processes and page-cache state hurt both alike; before each run the previous
runs' outputs are flushed to disk (os.sync, untimed), so that no run pays for its predecessor's
writeback. Reported per row: median wall
seconds of each, the ratio ours / llama-quantize, M weights/s, peak RSS of each process
(ru_maxrss from wait4) and whether the two outputs are byte-identical.

The batch row (--batch-types, on --batch-models at 2 threads): one `convert --types A,B,C,D` run
(with its manifests, and again with --no-manifest) against the same types as single runs of ours
and of llama-quantize; the sums of wall time, the ratios and peak RSS, and whether all outputs are
byte-identical.

Start-up is reported apart: `pyquantize --help` and `inspect`, and converts of the two tiny
models the tests use (stories260K to Q8_0, the 5.5 M-weight synthetic llama to Q4_K_M) cold
(first run after the Numba cache is emptied: every kernel it needs is compiled) and warm (cache
loaded), each with its kernel compile/load seconds.

Our runs use a Numba cache and a bytecode cache of their own under the bench's cache folder
(NUMBA_CACHE_DIR, PYTHONPYCACHEPREFIX), so emptying the Numba cache never touches the
__pycache__ folders other processes use, and a `PYTHONDONTWRITEBYTECODE=1` environment does not
make every start recompile our modules (a user's install keeps its .pyc files).

The reference is the llama-quantize binary from scripts/build_llama_cpp.sh ($LLAMA_QUANTIZE, or
../ref/build/bin/llama-quantize); without it, llama_model_quantize from llama-cpp-python's
libllama.so in a small Python wrapper process (its RSS and start-up then include Python's).

    python scripts/bench.py        # synthetic F32 llamas: 308 M weights in small tensors, 465 M in a
                                   # llama-7B-shaped slice (32000 x 4096 embeddings); and stories260K
    python scripts/bench.py --types Q4_K_M,Q8_0 --threads 2 --repeat 5 --json out.json
    python scripts/bench.py --models stories --types all      # every file type on the tiny model
    python scripts/bench.py --startup-only
    python scripts/bench.py --batch-only --repeat 2          # four types in one run, on the 308 M model
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CACHE = Path(os.environ.get("PYQUANTIZE_BENCH_CACHE", Path.home() / ".cache" / "pyquantize-bench"))
STORIES = ROOT / "tests" / "data" / "stories260K.gguf"
PYQUANTIZE = [str(Path(sys.executable).parent / "pyquantize")]

# Synthetic models (make_synthetic.py arguments), generated once into CACHE. "big": 308 M weights,
# every dimension a multiple of 256 (the vocabulary is a row count, so it need not be).
SYNTHETIC = {
    "big": ["--layers", "6", "--embd", "2048", "--ff", "5632", "--heads", "16", "--vocab", "1600"],
    "big-f16": ["--layers", "6", "--embd", "2048", "--ff", "5632", "--heads", "16", "--vocab", "1600", "--dtype", "f16"],
    # llama-7B-shaped slice: one layer, the full 32000 x 4096 embeddings (524 MB F32 tensors)
    "7b-slice": ["--layers", "1", "--embd", "4096", "--ff", "11008", "--heads", "32", "--vocab", "32000"],
    "mid": ["--layers", "4", "--embd", "1024", "--ff", "2816", "--heads", "8", "--vocab", "1600"],
    "small": ["--layers", "8", "--embd", "256", "--ff", "512", "--heads", "4", "--kv-heads", "2", "--vocab", "512",
              "--outliers"],
}
DEFAULT_TYPES = "F16,Q8_0,Q4_0,Q4_K_M,Q6_K,IQ4_XS"
TARGET_RATIO = {1: 1.0, 2: 0.8}
TARGET_HELP_S = 0.5
TARGET_TINY_S = 1.5


# --- processes -------------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    max_rss_mb: float
    stdout: str = ""
    compile_seconds: float = 0.0  # ours only: kernel compile or cache load, from --json


class RunFailed(RuntimeError):
    pass


def run(cmd: list[str], env: dict | None = None) -> Run:
    """Run a command; wall seconds, user+sys CPU seconds and peak RSS of that process alone."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RunFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n  " + "\n  ".join(tail))
        out.seek(0)
        return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read().decode(errors="replace"))


class Ours:
    """`pyquantize convert`, with the bench's own Numba and bytecode caches."""

    def __init__(self):
        self.numba_cache = CACHE / "numba-cache"
        self.env = dict(os.environ)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(CACHE / "pycache")
        self.env["NUMBA_CACHE_DIR"] = str(self.numba_cache)

    def clear_numba_cache(self) -> None:
        shutil.rmtree(self.numba_cache, ignore_errors=True)

    def convert(self, src: Path, dst: Path, ftype: str, threads: int, imatrix: Path | None) -> Run:
        cmd = PYQUANTIZE + ["convert", str(src), str(dst), ftype, str(threads), "--json"]
        if imatrix:
            cmd += ["--imatrix", str(imatrix)]
        r = run(cmd, self.env)
        doc = json.loads(r.stdout)
        r.stdout = ""
        r.compile_seconds = doc["compile_seconds"]
        return r

    def batch(self, src: Path, template: Path, ftypes: list[str], threads: int, manifest: bool = True) -> Run:
        """`convert IN --types A,B,... -o TEMPLATE`: every type from one read."""
        cmd = PYQUANTIZE + ["convert", str(src), "--types", ",".join(ftypes), "-o", str(template), "-t", str(threads),
                            "--json"] + ([] if manifest else ["--no-manifest"])
        r = run(cmd, self.env)
        doc = json.loads(r.stdout)
        r.stdout = ""
        r.compile_seconds = doc["compile_seconds"]
        return r

    def command(self, *args: str) -> Run:
        return run(PYQUANTIZE + list(args), self.env)


class Reference:
    """llama-quantize, or llama_model_quantize in a wrapper process when the binary is absent."""

    def __init__(self, explicit: str | None):
        candidates = [explicit, os.environ.get("LLAMA_QUANTIZE"),
                      str(Path(os.environ.get("LLAMA_CPP_BUILD", ROOT.parent / "ref" / "build")) / "bin" / "llama-quantize")]
        self.binary = next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)
        if self.binary:
            self.kind = f"llama-quantize binary ({self.binary})"
        else:
            import llama_quantize_ref

            if llama_quantize_ref.lib() is None:
                raise SystemExit("no reference: build llama-quantize (scripts/build_llama_cpp.sh), set LLAMA_QUANTIZE, "
                                 "or install llama-cpp-python (make install-reference)")
            self.kind = "llama_model_quantize via ctypes in a Python wrapper process (no llama-quantize binary found)"

    def convert(self, src: Path, dst: Path, ftype: str, threads: int, imatrix: Path | None) -> Run:
        if self.binary:
            cmd = [self.binary] + (["--imatrix", str(imatrix)] if imatrix else []) + [str(src), str(dst), ftype, str(threads)]
        else:
            cmd = [sys.executable, __file__, "--_reference", str(src), str(dst), ftype, str(threads), str(imatrix or "")]
        return run(cmd)


def _reference_wrapper(src: str, dst: str, ftype_name: str, threads: str, imatrix: str) -> int:
    """The fallback reference process: what llama-quantize does, through the library call."""
    import llama_quantize_ref
    from quantize_cli.plan import FILE_TYPES

    ftype, _ = FILE_TYPES[ftype_name.upper()]
    entries = None
    if imatrix:
        from quantize_cli.formats.imatrix_file import load_imatrix

        entries = dict(load_imatrix(imatrix).entries)
    rc, log = llama_quantize_ref.quantize(src, dst, ftype, nthread=int(threads), only_copy=ftype_name.upper() == "COPY",
                                          imatrix=entries)
    if rc:
        sys.stderr.write(log)
    return rc


# --- inputs ----------------------------------------------------------------------------------------

def model_path(name: str) -> Path:
    if name == "stories":
        return STORIES
    if name in SYNTHETIC:
        dtype = "f16" if "f16" in SYNTHETIC[name] else "f32"
        path = CACHE / f"llama-{name}-{dtype}.gguf"
        if not path.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            print(f"generating {path} ...", flush=True)
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_synthetic.py"), str(path), *SYNTHETIC[name]],
                           check=True)
        return path
    path = Path(name)
    if not path.exists():
        raise SystemExit(f"{name}: not a model file nor one of stories, {', '.join(SYNTHETIC)}")
    return path


@functools.lru_cache(maxsize=None)
def n_weights(path: Path) -> int:
    from quantize_cli.sources import open_source

    with open_source(path) as source:
        return sum(t.n_elements for t in source.tensors)


def random_imatrix(model: Path, out: Path) -> Path:
    """A GGUF imatrix with random positive values for every blk.* matrix (same for both tools)."""
    if out.exists() and out.stat().st_mtime >= model.stat().st_mtime:
        return out
    import numpy as np

    from quantize_cli.formats.imatrix_file import save_imatrix
    from quantize_cli.imatrix.collector import Collector, Stats
    from quantize_cli.sources import open_source

    rng = np.random.default_rng(0)
    collector = Collector(prompt_file="bench-random")
    with open_source(model) as source:
        for t in source.tensors:
            if len(t.ne) >= 2 and t.name.startswith("blk."):
                values = (rng.random(t.ne[0]) ** 2 * 5 + 1e-3).astype(np.float32) * 512
                collector.stats[t.name] = Stats(values, np.array([512], dtype=np.int64))
    save_imatrix(out, collector)
    return out


def needs_imatrix(path: Path, ftype_name: str) -> bool:
    """Whether llama-quantize refuses this conversion without an importance matrix (the plan knows
    which tensors require one); the bench then gives both tools the same random one."""
    from quantize_cli.errors import PyquantizeError
    from quantize_cli.plan import FILE_TYPES, QuantizeOptions, make_plan
    from quantize_cli.sources import open_source

    with open_source(path) as source:
        try:
            plan = make_plan(source, QuantizeOptions(ftype=FILE_TYPES[ftype_name][0]), None)
        except PyquantizeError:
            return False  # the run itself fails and the table says why
    return any(tp.requires_imatrix for tp in plan.tensors)


def file_types(spec: str) -> list[str]:
    from quantize_cli.plan import FILE_TYPES

    if spec == "all":
        aliases = {"Q3_K", "Q4_K", "Q5_K"}
        return [name for name in FILE_TYPES if name not in aliases]
    names = [n.strip().upper() for n in spec.split(",") if n.strip()]
    for n in names:
        if n not in FILE_TYPES:
            raise SystemExit(f"unknown file type {n}; see `pyquantize types`")
    return names


def same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 << 20), fb.read(16 << 20)
            if x != y:
                return False
            if not x:
                return True


# --- measurements ----------------------------------------------------------------------------------

def median(xs):
    return statistics.median(xs) if xs else None


def measure_startup(ours: Ours, ref: Reference, repeat: int, work: Path) -> dict:
    doc = {}
    run([sys.executable, "-c", "pass"], ours.env)  # untimed: warms the OS caches
    for _ in range(2):
        ours.command("--help")
    doc["python_bare_s"] = median([run([sys.executable, "-c", "pass"], ours.env).seconds for _ in range(repeat)])
    helps = [ours.command("--help") for _ in range(repeat)]
    doc["help_s"] = median([r.seconds for r in helps])
    doc["help_rss_mb"] = max(r.max_rss_mb for r in helps)
    doc["inspect_s"] = median([ours.command("inspect", str(STORIES), "--json").seconds for _ in range(repeat)])
    # tiny convert: cold (Numba cache emptied first), then warm, alternating with the reference
    tiny = []
    for model, ftype in (("stories", "Q8_0"), ("small", "Q4_K_M")):
        path = model_path(model)
        ours.clear_numba_cache()
        cold = ours.convert(path, work / "tiny-ours.gguf", ftype, 2, None)
        warm, theirs = [], []
        for i in range(repeat):
            pair = [lambda: warm.append(ours.convert(path, work / "tiny-ours.gguf", ftype, 2, None)),
                    lambda: theirs.append(ref.convert(path, work / "tiny-ref.gguf", ftype, 2, None))]
            for f in pair if i % 2 == 0 else pair[::-1]:
                f()
        tiny.append({
            "model": model, "n_weights": n_weights(path), "type": ftype,
            "cold_s": cold.seconds, "cold_compile_s": cold.compile_seconds,
            "warm_s": median([r.seconds for r in warm]), "warm_compile_s": median([r.compile_seconds for r in warm]),
            "ref_s": median([r.seconds for r in theirs]),
            "same_bytes": same_bytes(work / "tiny-ours.gguf", work / "tiny-ref.gguf"),
        })
    doc["tiny_convert"] = tiny
    return doc


def fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)
    return path


def measure(ours: Ours, ref: Reference, model: str, path: Path, ftype: str, threads: int, repeat: int,
            work: Path, imatrix: Path | None) -> dict:
    mine, theirs = [], []
    out_ours, out_ref = work / "ours.gguf", work / "ref.gguf"
    first = ours.convert(path, out_ours, ftype, threads, imatrix)  # untimed: compiles what the cache lacks
    for i in range(repeat):
        # each run writes a new file, as a pipeline converting a checkpoint does: overwriting one
        # makes ext4 (auto_da_alloc) flush the new data early, at our rename or at llama-quantize's
        # close of the truncated file, a cost of the previous run's leftovers, not of the tool
        pair = [lambda: mine.append(ours.convert(path, fresh(out_ours), ftype, threads, imatrix)),
                lambda: theirs.append(ref.convert(path, fresh(out_ref), ftype, threads, imatrix))]
        for f in pair if i % 2 == 0 else pair[::-1]:
            # the previous runs' outputs are still being written back (ext4 flushes dirty pages after
            # 30 s, in kernel threads): flush them first, so that no run pays for the one before it
            os.sync()
            f()
    identical = same_bytes(out_ours, out_ref)
    out_ours.unlink(missing_ok=True)
    out_ref.unlink(missing_ok=True)
    weights = n_weights(path)
    ours_s, ref_s = median([r.seconds for r in mine]), median([r.seconds for r in theirs])
    return {
        "model": model, "type": ftype, "threads": threads, "imatrix": imatrix is not None, "n_weights": weights,
        "ours_s": ours_s, "ref_s": ref_s, "ratio": ours_s / ref_s,
        "ours_mw_s": weights / ours_s / 1e6, "ref_mw_s": weights / ref_s / 1e6,
        "ours_cpu_s": median([r.cpu_seconds for r in mine]), "ref_cpu_s": median([r.cpu_seconds for r in theirs]),
        "ours_compile_s": median([r.compile_seconds for r in mine]),
        "ours_first_s": first.seconds, "ours_first_compile_s": first.compile_seconds,
        "ours_rss_mb": max(r.max_rss_mb for r in mine), "ref_rss_mb": max(r.max_rss_mb for r in theirs),
        "ours_runs_s": [round(r.seconds, 3) for r in mine], "ref_runs_s": [round(r.seconds, 3) for r in theirs],
        "same_bytes": identical,
    }


def measure_batch(ours: Ours, ref: Reference, model: str, path: Path, ftypes: list[str], threads: int, repeat: int,
                  work: Path) -> dict:
    """Several types in one run (convert --types, with and without manifests) against the same
    types as separate single-type runs of ours and of llama-quantize. Each round runs the four
    contenders in a rotating order; a contender's time is its total wall time for all the types,
    its RSS the peak of its largest process."""
    names = ["batch", "batch_nomanifest", "ours", "ref"]
    totals: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, float] = {n: 0.0 for n in names}

    def single_runs(tool, prefix: str) -> list[Run]:
        runs = []
        for t in ftypes:
            os.sync()
            runs.append(tool.convert(path, fresh(work / f"{prefix}-{t}.gguf"), t, threads, None))
        return runs

    def batch(prefix: str, manifest: bool) -> list[Run]:
        for t in ftypes:
            fresh(work / f"{prefix}-{t}.gguf")
        os.sync()
        return [ours.batch(path, work / f"{prefix}-{{type}}.gguf", ftypes, threads, manifest)]

    contenders = {"batch": lambda: batch("b", True), "batch_nomanifest": lambda: batch("n", False),
                  "ours": lambda: single_runs(ours, "s"), "ref": lambda: single_runs(ref, "r")}
    batch("b", True)  # untimed: compiles what the cache lacks
    for i in range(repeat):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            runs = contenders[name]()
            totals[name].append(sum(r.seconds for r in runs))
            cpu[name].append(sum(r.cpu_seconds for r in runs))
            rss[name] = max(rss[name], max(r.max_rss_mb for r in runs))
    same = {t: same_bytes(work / f"b-{t}.gguf", work / f"s-{t}.gguf") and same_bytes(work / f"b-{t}.gguf", work / f"r-{t}.gguf")
            and same_bytes(work / f"n-{t}.gguf", work / f"s-{t}.gguf") for t in ftypes}
    for prefix in "bnsr":
        for t in ftypes:
            (work / f"{prefix}-{t}.gguf").unlink(missing_ok=True)
            (work / f"{prefix}-{t}.gguf.manifest.json").unlink(missing_ok=True)
    med = {n: median(totals[n]) for n in names}
    return {
        "model": model, "types": ftypes, "threads": threads, "n_weights": n_weights(path),
        "batch_s": med["batch"], "batch_nomanifest_s": med["batch_nomanifest"],
        "ours_singles_s": med["ours"], "ref_singles_s": med["ref"],
        # the same work as the single runs (which write no manifest); with the manifests' sha256 on top
        "ratio_ours": med["batch_nomanifest"] / med["ours"], "ratio_ours_manifest": med["batch"] / med["ours"],
        "ratio_ref": med["batch"] / med["ref"],
        "batch_rss_mb": rss["batch"], "batch_nomanifest_rss_mb": rss["batch_nomanifest"],
        "ours_single_rss_mb": rss["ours"], "ref_single_rss_mb": rss["ref"],
        "rss_ratio": rss["batch"] / rss["ours"],
        "runs_s": {n: [round(x, 3) for x in totals[n]] for n in names},
        "cpu_s": {n: median(cpu[n]) for n in names}, "load_avg": os.getloadavg()[0],
        "same_bytes": all(same.values()), "same_bytes_per_type": same,
    }


TARGET_BATCH = {"ratio_ours": 0.6, "ratio_ref": 0.4, "rss_ratio": 1.5}


def batch_text(r: dict) -> list[str]:
    missed = [k for k, limit in TARGET_BATCH.items() if r[k] > limit]
    return [
        f"{r['model']} ({r['n_weights'] / 1e6:.0f} M weights), {','.join(r['types'])} at {r['threads']} threads "
        f"(sum of wall times, median of rounds):",
        f"  one run --types            {r['batch_s']:7.2f} s  CPU {r['cpu_s']['batch']:6.2f} s  peak RSS {r['batch_rss_mb']:5.0f} MB"
        f"   (--no-manifest: {r['batch_nomanifest_s']:.2f} s, CPU {r['cpu_s']['batch_nomanifest']:.2f} s, "
        f"{r['batch_nomanifest_rss_mb']:.0f} MB)",
        f"  {len(r['types'])} single pyquantize runs   {r['ours_singles_s']:7.2f} s  CPU {r['cpu_s']['ours']:6.2f} s  "
        f"peak RSS {r['ours_single_rss_mb']:5.0f} MB",
        f"  {len(r['types'])} llama-quantize runs      {r['ref_singles_s']:7.2f} s  CPU {r['cpu_s']['ref']:6.2f} s  "
        f"peak RSS {r['ref_single_rss_mb']:5.0f} MB   (load average {r['load_avg']:.2f} at the end)",
        f"  ratio vs our singles {r['ratio_ours']:.2f} with --no-manifest, the same work (target <= "
        f"{TARGET_BATCH['ratio_ours']}; {r['ratio_ours_manifest']:.2f} with manifests), vs llama-quantize "
        f"{r['ratio_ref']:.2f} (<= {TARGET_BATCH['ratio_ref']}), RSS vs a single run {r['rss_ratio']:.2f} "
        f"(<= {TARGET_BATCH['rss_ratio']}); outputs identical {'yes' if r['same_bytes'] else 'NO'}"
        + (f"  (missed: {', '.join(missed)})" if missed else ""),
    ]


# --- report ----------------------------------------------------------------------------------------

HEADER = (f"{'model':<8} {'type':<8} {'thr':>3} {'ours s':>8} {'ref s':>8} {'ratio':>6} {'ours Mw/s':>9} "
          f"{'ref Mw/s':>9} {'ours MB':>8} {'ref MB':>8} {'compile':>7} {'same':>5}")


def row_text(r: dict) -> str:
    flag = "" if r["ratio"] <= TARGET_RATIO.get(r["threads"], 1.0) else "  (ratio target missed)"
    if r["ours_rss_mb"] > r["ref_rss_mb"]:
        flag += "  (RSS above ref)"
    return (f"{r['model']:<8} {r['type']:<8} {r['threads']:>3} {r['ours_s']:>8.2f} {r['ref_s']:>8.2f} {r['ratio']:>6.2f} "
            f"{r['ours_mw_s']:>9.1f} {r['ref_mw_s']:>9.1f} {r['ours_rss_mb']:>8.0f} {r['ref_rss_mb']:>8.0f} "
            f"{r['ours_compile_s']:>7.2f} {'yes' if r['same_bytes'] else 'NO':>5}{flag}")


def startup_text(s: dict) -> list[str]:
    lines = [f"start-up (median): python -c pass {s['python_bare_s']:.2f} s; pyquantize --help {s['help_s']:.2f} s "
             f"(target < {TARGET_HELP_S}, RSS {s['help_rss_mb']:.0f} MB); inspect stories260K --json {s['inspect_s']:.2f} s"]
    for t in s["tiny_convert"]:
        lines.append(f"convert {t['model']} ({t['n_weights'] / 1e6:.1f} M weights) {t['type']:<6} cold {t['cold_s']:.2f} s (compile/load {t['cold_compile_s']:.2f}), "
                     f"warm {t['warm_s']:.2f} s (compile/load {t['warm_compile_s']:.2f}; target < {TARGET_TINY_S}), "
                     f"reference {t['ref_s']:.2f} s, same bytes {'yes' if t['same_bytes'] else 'NO'}")
    return lines


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_reference":
        return _reference_wrapper(*sys.argv[2:7])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="big,7b-slice,stories",
                    help=f"comma-separated: stories, {', '.join(SYNTHETIC)} (generated into {CACHE}) or GGUF paths "
                         "(default big,7b-slice,stories; --models big for a quicker run)")
    ap.add_argument("--types", default=DEFAULT_TYPES, help=f"file types, or 'all' (default {DEFAULT_TYPES})")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tool per row; the median is reported (default 3)")
    ap.add_argument("--llama-quantize", metavar="PATH", help="the reference binary (default $LLAMA_QUANTIZE or ../ref/build)")
    ap.add_argument("--batch-types", default="Q4_K_M,Q5_K_M,Q6_K,Q8_0",
                    help="types of the batch row: one `convert --types` run against single runs ('' to skip)")
    ap.add_argument("--batch-models", default="big", help="models of the batch row (default big), at 2 threads")
    ap.add_argument("--batch-only", action="store_true", help="only the batch row")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up measurements")
    ap.add_argument("--startup-only", action="store_true", help="only the start-up measurements")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    args = ap.parse_args(argv)

    ref = Reference(args.llama_quantize)
    ours = Ours()
    types = file_types(args.types)
    threads = [int(t) for t in args.threads.split(",")]
    models = [] if args.startup_only or args.batch_only else [m.strip() for m in args.models.split(",") if m.strip()]
    if args.batch_only:
        args.no_startup = True
    paths = {m: model_path(m) for m in models}
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=CACHE))
    doc = {"cores": os.cpu_count(), "load_start": loadavg(), "reference": ref.kind, "repeat": args.repeat,
           "numba_cache": str(ours.numba_cache), "rows": []}
    # Numba's cache does not see edits to a module whose functions another module inlined: start
    # from an empty cache, so every kernel is compiled from the source as it is now.
    ours.clear_numba_cache()
    print(f"reference: {ref.kind}")
    print(f"{os.cpu_count()} cores, load average {doc['load_start']} (1/5/15 min); median of {args.repeat} alternating runs")
    try:
        if not args.no_startup:
            doc["startup"] = measure_startup(ours, ref, max(args.repeat, 5), work)
            for line in startup_text(doc["startup"]):
                print(line, flush=True)
        if models:
            print()
            print(HEADER)
            print("-" * len(HEADER), flush=True)
        for model in models:
            imatrix = None
            for ftype in types:
                with_imatrix = needs_imatrix(paths[model], ftype)
                if with_imatrix and imatrix is None:
                    imatrix = random_imatrix(paths[model], CACHE / f"{paths[model].stem}.imatrix.gguf")
                for n in threads:
                    try:
                        r = measure(ours, ref, model, paths[model], ftype, n, args.repeat, work,
                                    imatrix if with_imatrix else None)
                    except RunFailed as exc:
                        print(f"{model:<8} {ftype:<8} {n:>3} failed: {exc}", flush=True)
                        doc["rows"].append({"model": model, "type": ftype, "threads": n, "error": str(exc)})
                        continue
                    doc["rows"].append(r)
                    print(row_text(r), flush=True)
        batch_types = file_types(args.batch_types) if args.batch_types and not args.startup_only else []
        batch_models = [m.strip() for m in args.batch_models.split(",") if m.strip()] if batch_types else []
        for model in batch_models:
            print(flush=True)
            try:
                r = measure_batch(ours, ref, model, model_path(model), batch_types, 2, args.repeat, work)
            except RunFailed as exc:
                print(f"batch {model} failed: {exc}", flush=True)
                doc.setdefault("batch", []).append({"model": model, "error": str(exc)})
                continue
            doc.setdefault("batch", []).append(r)
            for line in batch_text(r):
                print(line, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc["load_end"] = loadavg()
    done = [r for r in doc["rows"] if "error" not in r]
    doc["targets"] = {
        "ratio_met": [f"{r['model']} {r['type']} {r['threads']}t" for r in done if r["ratio"] <= TARGET_RATIO.get(r["threads"], 1.0)],
        "ratio_missed": [f"{r['model']} {r['type']} {r['threads']}t" for r in done if r["ratio"] > TARGET_RATIO.get(r["threads"], 1.0)],
        "rss_missed": [f"{r['model']} {r['type']} {r['threads']}t" for r in done if r["ours_rss_mb"] > r["ref_rss_mb"]],
    }
    if done:
        t = doc["targets"]
        print(f"\nratio target met in {len(t['ratio_met'])} of {len(done)} rows; RSS at or below llama-quantize's in "
              f"{len(done) - len(t['rss_missed'])} of {len(done)}")
    print(f"\nload average at the end {doc['load_end']}; ratio = ours / reference wall time "
          f"(targets: <= {TARGET_RATIO[2]} at 2 threads, <= {TARGET_RATIO[1]} at 1); MB = peak RSS; "
          "compile = our kernel compile/cache-load seconds inside 'ours s'")
    if args.json:
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
