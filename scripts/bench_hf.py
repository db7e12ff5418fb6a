#!/usr/bin/env python3
"""A Hugging Face checkpoint to Q4_K_M: our one pass against the two-step route, in the same run.

The checkpoint: a random llama-shaped model of 349 M weights, BF16, in 4 safetensors shards with
their index, and llama.cpp's SentencePiece vocabulary (scripts/make_hf_checkpoint.py synthetic),
made once into the bench cache (~/.cache/pyquantize-bench/hf-llama-349m-bf16, 0.7 GB).

    ours       pyquantize convert DIR out.gguf Q4_K_M T
    two-step   convert_hf_to_gguf.py DIR --outtype bf16, then llama-quantize BF16.gguf out.gguf Q4_K_M T

Reported: wall seconds of each (the two-step route's is the sum of its two processes), the ratio
ours / two-step (target <= 0.5), the peak RSS of each process (ru_maxrss from wait4), and whether
the two outputs are byte-identical. Runs alternate (ours first on even rounds), with os.sync
(untimed) before each, as scripts/bench.py does.

convert_hf_to_gguf.py needs torch: the interpreter is PYQUANTIZE_TORCH_PYTHON (default
/work/torchenv/bin/python; the README's "Hugging Face checkpoints" section says how to make one) and
the llama.cpp sources LLAMA_CPP_DIR. Without them the bench says so and exits 0.

    python scripts/bench_hf.py                       # 2 threads, 1 round
    python scripts/bench_hf.py --repeat 3 --json bench-out/hf.json
    LLAMA_QUANTIZE=/work/ref/build/bin/llama-quantize python scripts/bench_hf.py   # from a worktree
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402  (the process runner, our convert with the bench's caches, llama-quantize)

LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR", "/work/ref/llama_cpp_python-0.3.36/vendor/llama.cpp"))
TORCH_PYTHON = Path(os.environ.get("PYQUANTIZE_TORCH_PYTHON", "/work/torchenv/bin/python"))
# 24 layers of 1024 wide (16 heads, 8 KV heads), feed-forward 2816, vocabulary 32000: 349 M weights
SHAPE = ["--n-embd", "1024", "--n-ff", "2816", "--n-layer", "24", "--n-head", "16", "--n-head-kv", "8"]
NAME = "hf-llama-349m-bf16"
TARGET_RATIO = 0.5


def why_no_torch() -> str | None:
    script = LLAMA_CPP / "convert_hf_to_gguf.py"
    if not script.is_file():
        return f"no convert_hf_to_gguf.py at {script} (set LLAMA_CPP_DIR)"
    if not TORCH_PYTHON.is_file():
        return f"no torch interpreter at {TORCH_PYTHON} (set PYQUANTIZE_TORCH_PYTHON; see the README)"
    probe = subprocess.run([str(TORCH_PYTHON), "-c", "import torch, transformers, gguf"], capture_output=True, text=True)
    if probe.returncode:
        return f"{TORCH_PYTHON} lacks torch/transformers/gguf: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def checkpoint() -> Path:
    """The BF16 sharded checkpoint, made once (its synthetic GGUF is a temporary)."""
    out = bench.CACHE / NAME
    if (out / "config.json").is_file():
        with_head_dim(out)
        return out
    bench.CACHE.mkdir(parents=True, exist_ok=True)
    tmp = bench.CACHE / f".{NAME}.tmp"
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    vocab = LLAMA_CPP / "models" / "ggml-vocab-llama-spm.gguf"
    print(f"generating {out} ...", flush=True)
    with tempfile.TemporaryDirectory(dir=bench.CACHE) as work:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_hf_checkpoint.py"), "synthetic", str(tmp),
                        "--vocab", str(vocab), "--gguf", str(Path(work) / "synthetic.gguf"), *SHAPE,
                        "--dtype", "BF16", "--shards", "4"], check=True)
    tmp.rename(out)
    with_head_dim(out)
    return out


def with_head_dim(folder: Path) -> None:
    """config.json names head_dim, as current Llama checkpoints do. Without it the converter still
    writes attention.key_length/value_length (transformers' LlamaConfig fills head_dim in) and we
    do not: a difference the bench is not about (see the README)."""
    config = json.loads((folder / "config.json").read_text())
    if "head_dim" not in config:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
        (folder / "config.json").write_text(json.dumps(config, indent=2))


def n_weights(folder: Path) -> int:
    from quantize_cli.sources.hf import HFSource

    with HFSource(folder) as source:
        return sum(t.n_elements for t in source.tensors)


def measure(ours: bench.Ours, ref: bench.Reference, folder: Path, threads: int, repeat: int, work: Path) -> dict:
    mine, converter, quantizer = [], [], []
    ours_out, bf16, theirs_out = work / "ours.gguf", work / "two-step-bf16.gguf", work / "two-step.gguf"

    def run_ours():
        mine.append(ours.convert(folder, bench.fresh(ours_out), "Q4_K_M", threads, None))

    def run_two_step():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        converter.append(bench.run([str(TORCH_PYTHON), str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(folder),
                                    "--outtype", "bf16", "--outfile", str(bench.fresh(bf16))], env))
        os.sync()
        quantizer.append(ref.convert(bf16, bench.fresh(theirs_out), "Q4_K_M", threads, None))

    for i in range(repeat):
        for step in ((run_ours, run_two_step) if i % 2 == 0 else (run_two_step, run_ours)):
            os.sync()
            step()
    two_step = [a.seconds + b.seconds for a, b in zip(converter, quantizer)]
    doc = {
        "model": NAME, "n_weights": n_weights(folder), "threads": threads, "repeat": repeat,
        "ours_s": bench.median([r.seconds for r in mine]), "two_step_s": bench.median(two_step),
        "convert_hf_to_gguf_s": bench.median([r.seconds for r in converter]),
        "llama_quantize_s": bench.median([r.seconds for r in quantizer]),
        "ours_compile_s": bench.median([r.compile_seconds for r in mine]),
        "ours_rss_mb": max(r.max_rss_mb for r in mine),
        "convert_hf_to_gguf_rss_mb": max(r.max_rss_mb for r in converter),
        "llama_quantize_rss_mb": max(r.max_rss_mb for r in quantizer),
        "same_bytes": bench.same_bytes(ours_out, theirs_out), "loadavg": bench.loadavg(),
    }
    doc["ratio"] = doc["ours_s"] / doc["two_step_s"]
    return doc


def report(d: dict) -> str:
    return "\n".join([
        f"{d['model']} ({d['n_weights'] / 1e6:.0f} M weights, BF16, 4 shards) -> Q4_K_M at {d['threads']} threads, "
        f"median of {d['repeat']}; load average {d['loadavg']}",
        f"  ours (one pass)            {d['ours_s']:7.1f} s  peak RSS {d['ours_rss_mb']:6.0f} MB"
        f"  (kernel compile/load {d['ours_compile_s']:.1f} s)",
        f"  two-step                   {d['two_step_s']:7.1f} s",
        f"    convert_hf_to_gguf.py    {d['convert_hf_to_gguf_s']:7.1f} s  peak RSS {d['convert_hf_to_gguf_rss_mb']:6.0f} MB",
        f"    llama-quantize           {d['llama_quantize_s']:7.1f} s  peak RSS {d['llama_quantize_rss_mb']:6.0f} MB",
        f"  ratio ours / two-step {d['ratio']:.2f} (target <= {TARGET_RATIO}); outputs identical "
        f"{'yes' if d['same_bytes'] else 'NO'}",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--reference", help="llama-quantize binary (default: $LLAMA_QUANTIZE or ../ref/build/bin)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if (why := why_no_torch()) is not None:
        print(f"bench-hf skipped: {why}")
        return 0
    ours, ref = bench.Ours(), bench.Reference(args.reference)
    folder = checkpoint()
    with tempfile.TemporaryDirectory(dir=bench.CACHE) as work:
        doc = measure(ours, ref, folder, args.threads, args.repeat, Path(work))
    doc["reference"] = ref.kind
    print(report(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if doc["same_bytes"] else 1


if __name__ == "__main__":
    sys.exit(main())
