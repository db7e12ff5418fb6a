"""`compare BASE CANDIDATE... -f TEXT`: one row per candidate quant (type mix, size, bits per
weight, PPL, delta PPL, KL divergence, same top token), all measured on the same chunks.

The base runs once and its log-probabilities go to a temporary base file (llama-perplexity's
format, the same packing its KL-divergence mode reads, so the figures are comparable with it);
each candidate then streams through the same chunks against that file. One model is in memory
at a time; the temporary file holds n_chunk * (n_ctx/2) * n_vocab * 2 bytes and is removed at the end.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from .basefile import read_base
from .errors import EvalError
from ..runtime.tokenizer import Tokenizer
from .perplexity import ChunkRunner, PerplexityOptions, PerplexityResult, evaluate, open_model, run_kld


@dataclass
class Candidate:
    path: Path
    size_bytes: int
    bpw: float
    types: dict            # type name -> {"tensors", "elements", "bytes"}, largest first
    result: Optional[PerplexityResult] = None

    @property
    def types_short(self) -> str:
        """The type mix as inspect summarises it: types by share of the tensor bytes."""
        total = sum(e["bytes"] for e in self.types.values()) or 1
        return ", ".join(f"{t} {100 * e['bytes'] / total:.0f}%" for t, e in self.types.items()
                         if e["bytes"] * 100 >= total)


@dataclass
class CompareResult:
    base: Candidate
    candidates: List[Candidate] = field(default_factory=list)
    n_ctx: int = 0
    n_chunks: int = 0
    n_tokens: int = 0

    def rows(self) -> list[dict]:
        out = []
        base_ppl = self.base.result.ppl
        for c in self.candidates:
            k = c.result.kld
            out.append({"path": str(c.path), "size_bytes": c.size_bytes, "bpw": round(c.bpw, 4),
                        "types": c.types_short, "type_bytes": {t: e["bytes"] for t, e in c.types.items()},
                        "ppl": c.result.ppl, "dppl": c.result.ppl - base_ppl,
                        "kld_mean": k["kld"]["mean"], "kld_mean_err": k["kld"]["mean_err"],
                        "kld_p99": k["kld"]["p99"], "kld_median": k["kld"]["median"], "kld_max": k["kld"]["max"],
                        "same_top_p": k["same_top_p"], "rms_dp": k["rms_dp"],
                        "ln_ppl_ratio": k["ln_ppl_ratio"], "seconds": round(c.result.seconds, 3)})
        return out

    def to_json(self) -> dict:
        return {"base": {"path": str(self.base.path), "ppl": self.base.result.ppl,
                         "ppl_err": self.base.result.ppl_err, "size_bytes": self.base.size_bytes,
                         "bpw": round(self.base.bpw, 4), "types": self.base.types_short},
                "n_ctx": self.n_ctx, "n_chunks": self.n_chunks, "n_tokens": self.n_tokens,
                "candidates": self.rows()}

    def markdown(self) -> str:
        b = self.base
        lines = [f"Base {b.path.name}: {b.size_bytes / 1048576:.2f} MiB, {b.bpw:.2f} bpw, "
                 f"PPL {b.result.ppl:.4f}; {self.n_chunks} chunks of {self.n_ctx} tokens "
                 f"({self.n_tokens} scored)", "",
                 "| candidate | types | size MiB | bpw | PPL | ΔPPL | mean KLD | 99% KLD | same top |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r, c in zip(self.rows(), self.candidates):
            lines.append(f"| {c.path.name} | {r['types']} | {r['size_bytes'] / 1048576:.2f} | {r['bpw']:.2f} | "
                         f"{r['ppl']:.4f} | {r['dppl']:+.4f} | {r['kld_mean']:.6f} | {r['kld_p99']:.6f} | "
                         f"{100 * r['same_top_p']:.2f}% |")
        return "\n".join(lines) + "\n"


def describe_file(path: Path, tensors) -> Candidate:
    """Size, bits per weight and type mix from the model's tensor table (as inspect counts them)."""
    from kernels.gguf_compat import GGML_QUANT_SIZES

    by_type: dict[str, dict] = {}
    n_el = n_bytes = 0
    for t in tensors.values():
        el = int(np.prod(t.ne, dtype=np.int64))
        block, size = GGML_QUANT_SIZES[t.type]
        nb = el // block * size
        e = by_type.setdefault(t.type.name, {"tensors": 0, "elements": 0, "bytes": 0})
        e["tensors"] += 1
        e["elements"] += el
        e["bytes"] += nb
        n_el += el
        n_bytes += nb
    types = dict(sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"]))
    return Candidate(Path(path), Path(path).stat().st_size, n_bytes * 8 / n_el if n_el else 0.0, types)


def _vocab(path: Path) -> list:
    from ..runtime.tokenizer import read_gguf_metadata

    try:
        meta = read_gguf_metadata(path)
    except Exception as exc:
        from ..errors import PyquantizeError

        if isinstance(exc, PyquantizeError):
            raise EvalError(str(exc)) from None
        raise
    return list(meta.get("tokenizer.ggml.tokens") or [])


def check_same_vocab(base: Path, candidates: List[Path]) -> None:
    """Refuse candidates whose vocabulary differs from the base's: KL divergence compares
    distributions over the same tokens."""
    ref = _vocab(base)
    for c in candidates:
        if not Path(c).is_file():
            raise EvalError(f"{c}: no such candidate model file")
        voc = _vocab(c)
        if len(voc) != len(ref):
            raise EvalError(f"{c}: its vocabulary has {len(voc)} tokens, the base {base} has {len(ref)}; "
                            "KL divergence needs the same tokens (quantize the candidate from the same model)")
        for i, (a, b) in enumerate(zip(ref, voc)):
            if a != b:
                raise EvalError(f"{c}: token {i} is {b!r}, in the base {base} it is {a!r}; KL divergence needs the "
                                "same tokens (quantize the candidate from the same model)")


def compare(base_path: Path, candidates: List[Path], opts: PerplexityOptions,
            on_model: Optional[Callable[[str, Path], None]] = None,
            on_chunk=None, on_start=None, tmp_dir: Optional[Path] = None) -> CompareResult:
    base_path = Path(base_path)
    if not candidates:
        raise EvalError("give at least one CANDIDATE model to compare with the base")
    if opts.text_file is None:
        raise EvalError("give the text to measure on: -f TEXT")
    if not base_path.is_file():
        raise EvalError(f"{base_path}: no such base model file")
    check_same_vocab(base_path, [Path(c) for c in candidates])
    if tmp_dir is not None and not Path(tmp_dir).is_dir():
        raise EvalError(f"--tmp-dir {tmp_dir}: no such directory")
    with tempfile.TemporaryDirectory(prefix="pyquantize-compare-", dir=tmp_dir) as tmp:
        base_file = Path(tmp) / "base.kld"
        base_opts = PerplexityOptions(**{**opts.__dict__, "kl_base": base_file, "kl_divergence": False})
        if on_model is not None:
            on_model("base", base_path)
        base_result = evaluate(base_path, base_opts, on_chunk, on_start)
        base = read_base(base_file)
        result = CompareResult(base=None, n_ctx=base.n_ctx, n_chunks=base_result.n_chunks,
                               n_tokens=base_result.n_tokens)
        for cpath in candidates:
            cpath = Path(cpath)
            if on_model is not None:
                on_model("candidate", cpath)
            model = open_model(cpath, opts)
            try:
                if model.cfg.n_vocab != base.n_vocab:
                    raise EvalError(f"{cpath}: its output has {model.cfg.n_vocab} tokens, the base has {base.n_vocab}; "
                                    "KL divergence needs the same vocabulary")
                cand = describe_file(cpath, model.tensors)
                tok = Tokenizer(model.meta.get)
                runner = ChunkRunner(model, base.n_ctx, tok.add_bos, tok.bos_id)
                cand.result = run_kld(cpath, runner, base, base.n_chunk, on_chunk, on_start)
            finally:
                model.close()
            result.candidates.append(cand)
        base_model = open_model(base_path, opts)
        try:
            result.base = describe_file(base_path, base_model.tensors)
        finally:
            base_model.close()
        result.base.result = base_result
        del base
        return result
